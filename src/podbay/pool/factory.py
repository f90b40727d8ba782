"""How a pod's sandbox is obtained: one seam, three strategies (Kata's VM factory is the model).

    pool claim      a pre-started member of a warm pool of the same shape (`podbay.pool.warm`)
    template clone  a clone restored from the cached template of the shape (QEMU; built on first use)
    cold boot       the backend boots a fresh sandbox

The first that can serve is taken (`AsyncPlatform._choose_start`: a claim from `platform.pools`, else
`SandboxFactory.new_start`), and why lands in the pod's trace: `PodInfo.origin` names the path, and the phase
named after it carries the reason in its `detail`. Every strategy gives a `Start`: `prepare()` runs while the
pod's database is provisioned (layer disks, a template build on first use), `sandbox()` then starts or hands
over the sandbox with the pod's volumes. The factory makes every run directory it needs; whoever holds the
`RunDir` afterwards (the pod, or the pool for an idle member) is the one that removes it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from podbay.errors import Unsupported
from podbay.isolation.base import Backend, PodAssignment, Sandbox, SandboxConfig, SandboxShape
from podbay.isolation.qemu.attach import attach_volumes
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.qemu.snapshot import start_clone
from podbay.isolation.qemu.template import ClonedSandbox, Template, TemplateShape, build_template, clone_layer
from podbay.paths import PodbayPaths
from podbay.pool.warm import Member
from podbay.rundir import RunDir


class Origin(enum.StrEnum):
    POOL = "pool claim"
    TEMPLATE = "template clone"
    SNAPSHOT = "snapshot restore"
    FORK = "fork"
    COLD = "cold boot"


class Start(Protocol):
    """One way to a running sandbox for one pod, chosen by the factory."""

    origin: Origin
    why: str

    @property
    def run_dir(self) -> RunDir: ...

    @property
    def held(self) -> Sandbox | None:
        """A sandbox this start already holds before `sandbox()` (a claimed member): undone if creation fails."""

    async def prepare(self) -> None:
        """What can run while the pod's database is provisioned."""

    async def sandbox(self, assignment: PodAssignment) -> Sandbox:
        """The running sandbox, with the pod's volumes attached."""


@dataclass
class ColdBoot:
    backend: Backend
    shape: SandboxShape
    run_dir: RunDir
    boot_timeout_s: float
    why: str
    origin: Origin = Origin.COLD
    held: Sandbox | None = None
    _layer: Path | None = None

    async def prepare(self) -> None:
        self._layer = await self.backend.prepare_layer(self.run_dir.path, self.shape.layer_mib)

    async def sandbox(self, assignment: PodAssignment) -> Sandbox:
        config = sandbox_config(self.shape, self.run_dir, self._layer, assignment, self.boot_timeout_s)
        return await self.backend.start(config)


@dataclass
class TemplateClone:
    backend: QemuBackend
    paths: PodbayPaths
    shape: SandboxShape
    run_dir: RunDir
    boot_timeout_s: float
    why: str
    owned_memory: bool = False  # see PodSpec.snapshottable
    origin: Origin = Origin.TEMPLATE
    held: Sandbox | None = None
    _template: Template | None = None
    _layer: Path | None = None

    async def prepare(self) -> None:
        # Cached after the first use (built then, with progress on stderr).
        self._template = await build_template(
            self.paths, template_shape(self.shape), images=self.backend.images(), preload=self.shape.preload
        )
        self._layer = await clone_layer(self._template, self.run_dir.path)

    async def sandbox(self, assignment: PodAssignment) -> Sandbox:
        assert self._template is not None, "prepare() first"
        config = sandbox_config(self.shape, self.run_dir, self._layer, assignment, self.boot_timeout_s)
        return await start_clone(self._template, config, owned=self.owned_memory, hostname=self.run_dir.pod_id)


def template_shape(shape: SandboxShape) -> TemplateShape:
    return TemplateShape(
        vcpus=shape.vcpus, memory_mib=shape.memory_mib, layer_mib=shape.layer_mib, volume_slots=shape.volume_slots
    )


def sandbox_config(
    shape: SandboxShape, run_dir: RunDir, layer: Path | None, assignment: PodAssignment, boot_timeout_s: float
) -> SandboxConfig:
    return SandboxConfig(
        pod_id=run_dir.pod_id,
        run_dir=run_dir.path,
        vcpus=shape.vcpus,
        memory_mib=shape.memory_mib,
        layer=layer,
        volumes=assignment.volumes,
        boot_timeout_s=boot_timeout_s,
    )


class SandboxFactory:
    """Chooses and makes the `Start` of a sandbox: the pool, the template or a boot (see the module doc)."""

    def __init__(self, paths: PodbayPaths) -> None:
        self.paths = paths

    def new_start(
        self,
        backend: Backend,
        shape: SandboxShape,
        *,
        cold: bool,
        boot_timeout_s: float,
        why: str = "",
        owned_memory: bool = False,
    ) -> Start:
        """A template clone where the backend has templates (unless `cold`), else a cold boot; in a new run
        directory. `why` says what was tried before (the pool), and ends up in the trace."""
        templates = backend.capabilities.template_clone and isinstance(backend, QemuBackend)
        if shape.preload is not None and (cold or not templates):
            raise Unsupported(
                backend.name if not templates else "a cold boot",
                "preload a file (a template carries it)",
                "use the qemu backend, without cold=True",
            )
        run_dir = RunDir.make(self.paths.pods, backend.name)
        prefix = f"{why}; " if why else ""
        if cold:
            return ColdBoot(backend, shape, run_dir, boot_timeout_s, prefix + "a cold boot was asked for")
        if not templates or not isinstance(backend, QemuBackend):
            reason = f"{backend.name} has no templates"
            return ColdBoot(backend, shape, run_dir, boot_timeout_s, prefix + reason)
        reason = prefix + "the shape's template" + (", RAM of its own (snapshottable)" if owned_memory else "")
        return TemplateClone(backend, self.paths, shape, run_dir, boot_timeout_s, reason, owned_memory)


def require(backend: Backend, capability: str, operation: str, alternative: str) -> None:
    """Raise Unsupported unless `backend` declares `capability` (see `Capabilities`)."""
    if not getattr(backend.capabilities, capability):
        raise Unsupported(backend.name, operation, alternative)


@dataclass
class PoolClaim:
    """A claimed pool member: already running, resumed and reseeded; it takes the pod's state now."""

    member: Member
    why: str
    origin: Origin = Origin.POOL

    @property
    def run_dir(self) -> RunDir:
        return self.member.run_dir

    @property
    def held(self) -> Sandbox | None:
        return self.member.sandbox

    async def prepare(self) -> None:
        return None

    async def sandbox(self, assignment: PodAssignment) -> Sandbox:
        sandbox = self.member.sandbox
        if assignment.volumes:  # into the member's free volume slots: the guest mounts them at `init`
            if not isinstance(sandbox, ClonedSandbox):
                raise Unsupported(sandbox.info.backend, "attach a volume to a running pool member", _COLD)
            await attach_volumes(sandbox, assignment.volumes)
        return sandbox


_COLD = "create the pod without the pool (a template clone or a cold boot takes the volume at start)"
