"""Firecracker backend: the upstream binary driven over its REST API on a unix socket; it needs hardware KVM.

install.py   find the binary, or install the pinned upstream release into the cache (scripts/setup)
api.py       a small asyncio HTTP/1.1 client for Firecracker's API socket
backend.py   FirecrackerBackend: configure, boot and reach the guest agent through the hybrid vsock
"""
