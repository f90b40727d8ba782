"""The seam between the platform and an isolation technology (QEMU microVM, Firecracker, gVisor, runc).

A backend knows how to start a sandbox that runs the podbay guest agent and hands back a connected
GuestChannel. It knows nothing of databases, tenants or pods: the platform composes those.

A sandbox exists before its pod. What a sandbox *is* (`SandboxShape`: backend, vCPUs, memory, layer size,
volume slots; the images are the host's current ones) is fixed when it starts; what a pod *assigns* to it
(`PodAssignment`: its id, volumes, environment, context and credentials) comes at start for a cold boot or
a template clone, and after start for a pool member. `podbay.pool.factory` chooses how a sandbox is
obtained (pool claim, template clone, cold boot), Kata's VM factory being the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
class Capabilities:
    """What a backend can do on top of start/pause/destroy; `podbay doctor` lists it. An operation a backend
    lacks raises `Unsupported`, naming the backend and the alternative."""

    template_clone: bool = False  # start by restoring a saved, booted guest instead of booting
    pool: bool = True  # pre-started members, claimed by pods
    attach_after_start: bool = False  # a running member can take a pod's volume (pool claims with a volume)
    snapshot: bool = False  # save a running pod (memory, layer, volume) and restore it later
    fork: bool = False  # N running copies of a running pod
    # A later controller process can take over a running sandbox from its record after this one exits or dies
    # (a server restart, a kill -9): `ReattachableBackend.reattach`. Without it, a sandbox ends with its
    # controller (its agent exits when the host side of its channel goes).
    reattach: bool = False

    def as_dict(self) -> dict[str, bool]:
        return {field: bool(getattr(self, field)) for field in self.__dataclass_fields__}


@dataclass(frozen=True)
class SandboxShape:
    """What a sandbox is, fixed when it starts: a sandbox of one shape can serve any pod that asks for it."""

    backend: str
    vcpus: int
    memory_mib: int
    layer_mib: int
    volume_slots: int = 1  # disks for volumes (a template clone or pool member cannot add more)
    preload: Path | None = None  # a host file its template carries into the guest (template clones only)


@dataclass(frozen=True)
class PodAssignment:
    """What a pod gives the sandbox it gets: its identity and state. Never part of a template or a pool."""

    pod_id: str
    volumes: tuple[VolumeAttachment, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxConfig:
    """One start of a backend: a shape made concrete (its run directory, its layer) with the disks it gets."""

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

    @property
    def alive(self) -> bool:
        """Its VMM or runtime still runs (checked before a pool hands a member out)."""

    async def pause(self) -> None: ...
    async def resume(self) -> None: ...
    async def destroy(self) -> None:
        """Stop everything the sandbox started and remove its files; safe to call twice."""


class Backend(Protocol):
    name: str
    capabilities: Capabilities
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


class ReattachableSandbox(Sandbox, Protocol):
    """A sandbox a later process can take over (`Capabilities.reattach`)."""

    def record(self) -> dict[str, Any]:
        """What `ReattachableBackend.reattach` needs to rebuild this sandbox in another process (JSON-able; no
        secrets: it lands in the pod's record, a file in its run directory)."""

    async def detach(self) -> None:
        """Close this process's connections to the sandbox and leave it running, for a later process."""


class ReattachableBackend(Backend, Protocol):
    async def reattach(self, run_dir: Path, record: dict[str, Any], *, paused: bool) -> Sandbox:
        """Take over the running sandbox under `run_dir`, which `record` (its `record()`) describes: reconnect to
        it and check that its agent answers; leave it paused if `paused`, else running. Raises a PodbayError
        saying why it cannot (e.g. its VMM is gone); the caller then reaps what is left."""
