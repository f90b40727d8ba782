"""gVisor backend: the pod's system calls are served by gVisor's user-space kernel (the sentry), not the host's.

The sentry intercepts the pod with ptrace, which works on any host (the kvm platform would be faster but
needs /dev/kvm). The bundle is runc's (podbay.isolation.oci): the host-side overlayfs root and the
loop-mounted volumes reach the sandbox through gVisor's gofer, which serves files to the sentry.

Known gap of runsc 0.0~20221219 (Debian bookworm): its statx() refuses AT_NO_AUTOMOUNT with EINVAL, and
bookworm's coreutils pass that flag, so `ls <path>`, `ls -l` and `stat` fail inside the pod ("Invalid
argument"). Python's os.stat (newfstatat), pod.files and most programs are unaffected; later gVisor
releases accept the flag.
"""

from __future__ import annotations

from pathlib import Path

from podbay.isolation.oci import ContainerBackend, RuntimeProfile
from podbay.paths import PodbayPaths

GVISOR = RuntimeProfile(
    backend="gvisor",
    binary="runsc",
    package="runsc",
    state_root=Path("/run/podbay-runsc"),
    flags=(
        "--platform=ptrace",  # works without hardware virtualization; kvm would need /dev/kvm
        "--network=none",  # no network stack at all, only lo
        "--rootless=false",
        # runsc logs to stdout unless told otherwise, and stdout is the agent's channel: log to stderr, the
        # pipe the controller drains into a size-capped file (podbay.isolation.oci).
        "--log-fd=2",
    ),
    isolation="gvisor (user-space kernel)",
    accelerator="ptrace",
    security_boundary=True,
    note=(
        "gVisor: the pod talks to the sentry, a user-space kernel that is itself confined by seccomp and "
        "namespaces; the host kernel sees only the sentry's small set of system calls."
    ),
)


class GvisorBackend(ContainerBackend):
    def __init__(self, paths: PodbayPaths, rootfs_dir: Path | None = None) -> None:
        super().__init__(paths, GVISOR, rootfs_dir)
