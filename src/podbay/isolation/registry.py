"""Every isolation backend podbay knows, by name. Availability is checked per host, never assumed."""

from __future__ import annotations

from podbay.isolation.base import Backend
from podbay.isolation.firecracker.backend import FirecrackerBackend
from podbay.isolation.gvisor import GvisorBackend
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.qemu.fullvm import FullVmBackend
from podbay.isolation.runc import RuncBackend
from podbay.paths import PodbayPaths


def default_backends(paths: PodbayPaths) -> dict[str, Backend]:
    """All backends, available or not: an unavailable one refuses to start with its reason."""
    backends: list[Backend] = [
        QemuBackend(paths),
        FullVmBackend(paths),
        FirecrackerBackend(paths),
        GvisorBackend(paths),
        RuncBackend(paths),
    ]
    return {backend.name: backend for backend in backends}
