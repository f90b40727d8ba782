"""The seam between the platform and an isolation technology (QEMU microVM, later gVisor, runc, Firecracker).

A backend knows how to start a sandbox that runs the podbay guest agent and hands back a connected
GuestChannel. It knows nothing of databases, tenants or pods: the platform composes those.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from podbay.channel import GuestChannel
from podbay.models import SandboxInfo


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str


@dataclass(frozen=True)
class VolumeAttachment:
    """A persistent volume (an ext4 image on the host) that the guest sees mounted at `target`."""

    name: str
    image: Path
    target: str
    # The volume's flock, held by the controller. A backend passes it on to the process that keeps the volume
    # open (the VMM, the runtime), so the volume stays held while that process lives, even if the controller
    # dies. Never pass it into the guest: a guest could unlock it.
    lock_fd: int | None = None


@dataclass(frozen=True)
class SandboxConfig:
    pod_id: str
    run_dir: Path  # private to this sandbox; the backend may put sockets and logs here
    vcpus: int
    memory_mib: int
    layer: Path | None  # the pod's writable copy-on-write layer, as prepare_layer() made it
    volumes: tuple[VolumeAttachment, ...] = ()
    boot_timeout_s: float = 60.0


class Sandbox(Protocol):
    """A started sandbox: its channel to the agent, what the agent must mount, and how to stop it."""

    @property
    def info(self) -> SandboxInfo: ...

    @property
    def channel(self) -> GuestChannel: ...

    @property
    def guest_mounts(self) -> list[dict[str, Any]]:
        """What the agent must mount at `init` (volumes the backend attached as disks)."""

    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def destroy(self) -> None:
        """Stop everything the sandbox started and remove its files; safe to call twice."""


class Backend(Protocol):
    name: str
    # True when the host's kernel mounts the pod's volume images (containers); False when a guest kernel does.
    mounts_volumes_on_host: bool

    def availability(self) -> Availability: ...

    def describe(self) -> SandboxInfo:
        """What a sandbox of this backend is on this host (isolation, accelerator, boundary), before any start."""

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path | None:
        """Make the pod's writable layer (runs concurrently with database provisioning), or None."""

    async def start(self, config: SandboxConfig) -> Sandbox: ...

    async def reap(self, run_dir: Path) -> None:
        """Stop whatever a sandbox left running under `run_dir` after its controlling process died."""
