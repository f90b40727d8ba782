"""Firecracker backend: the upstream binary, run under its jailer, driven over its REST API on a unix socket; it
needs hardware KVM.

install.py   find Firecracker and its jailer, or install the pinned upstream release into the cache (scripts/setup)
api.py       a small asyncio HTTP/1.1 client for Firecracker's API socket
jail.py      the jail: chroot, the pod's own uid, cgroups, pid/network/IPC namespaces; placing files; undoing it
acl.py       a POSIX ACL entry that lets the pod's uid (only) write the pod's volume image while it has it
backend.py   FirecrackerBackend: launch the jailed VMM, configure, boot and reach the guest agent (hybrid vsock)
"""
