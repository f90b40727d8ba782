"""runc backend: the pod is a Linux container on the host's kernel — the fastest start, the weakest boundary.

The shared OCI logic (bundle, host mounts, the agent on stdio) lives in podbay.isolation.oci.
"""

from __future__ import annotations

from pathlib import Path

from podbay.isolation.oci import ContainerBackend, RuntimeProfile
from podbay.paths import PodbayPaths

RUNC = RuntimeProfile(
    backend="runc",
    binary="runc",
    package="runc",
    state_root=Path("/run/podbay-runc"),
    flags=(),
    isolation="container (runc)",
    accelerator="none",
    security_boundary=False,
    note=(
        "A Linux container: namespaces, cgroups, a minimal capability set and a seccomp deny-list, but it "
        "shares the host kernel, so a kernel bug is a way out. Not a security boundary for untrusted code."
    ),
)


class RuncBackend(ContainerBackend):
    def __init__(self, paths: PodbayPaths, rootfs_dir: Path | None = None) -> None:
        super().__init__(paths, RUNC, rootfs_dir)
