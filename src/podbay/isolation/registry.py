"""Every isolation backend podbay knows, by name. Availability is checked per host, never assumed."""

from __future__ import annotations

from podbay.isolation.base import Backend
from podbay.isolation.qemu.backend import QemuBackend
from podbay.paths import PodbayPaths


def default_backends(paths: PodbayPaths) -> dict[str, Backend]:
    """All backends, available or not: an unavailable one refuses to start with its reason."""
    backends: list[Backend] = [
        QemuBackend(paths),
    ]
    return {backend.name: backend for backend in backends}
