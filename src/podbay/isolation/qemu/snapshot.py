"""Snapshot, restore and fork of running QEMU pods: the mechanism, below the platform.

A snapshot is a directory of plain files, usable after every podbay process has exited:

    memory      the guest RAM (sparse: only the pages the guest ever touched take space)
    state       the device state, saved with `x-ignore-shared` (the RAM is not in it: ~50 KB)
    layer.ext4  the pod's writable layer, as the frozen guest left it (a sparse copy)
    vol<i>.img  each volume disk (a sparse copy); unused template slots are only recorded
    meta.json   what a restore must match; written last and fsynced, and the directory is renamed into place
                only then, so `dest` either holds a whole snapshot or does not exist

Where the RAM goes. A template clone maps its template's memory file `share=off` (MAP_PRIVATE): QEMU then
counts the RAM as its own, `x-ignore-shared` does not skip it, and a snapshot must stream every touched page
through the migration channel (the field notes: 211-218 ms to save, ~110 ms to restore, growing with what the
guest touched, and scanning all of the guest's memory for zero pages). Instead, a pod that is to be
snapshotted runs with its RAM *shared* on a file of its own in tmpfs (`/dev/shm`, `memory-backend-file,
share=on`). Then a snapshot is: `migrate` with `x-ignore-shared` (QEMU stops the guest as it completes and
writes only the device state), a sparse copy of the RAM file (`SEEK_DATA`/`SEEK_HOLE`, `copy_file_range`: the
pages the guest touched, at memory speed, nothing of the untouched rest), copies of the disks, `cont`. A
restored pod or fork child maps the snapshot's memory file `share=off`, exactly as a clone maps a template:
nothing is copied, its cost does not grow with guest memory, and children share every page none of them wrote.

Why not reflinks: /root/.cache is ext4 and /dev/shm tmpfs, neither can share extents (`cp --reflink` fails;
`copy_file_range` copies), so the RAM copy is a real copy of the touched pages. An XFS or btrfs loop device
could make it O(extents), at the price of guest RAM written back to a block device; not done.

The cost of this choice lies in the start of a snapshottable pod: its RAM must be a file of its own, so a pod
started from a template copies the template's touched pages into it (`start_clone`: ~25 ms for the ~52 MiB
a 256 MiB template has touched, on this 2-core TCG host) instead of mapping them. A pod that maps its RAM
(`memory="mapped"`: a plain template clone, or a fork child) can still be snapshotted: its RAM then goes through
the migration stream (`ram: "stream"` in the meta; the slow path above), and its children load it into a RAM
file of their own.

Quiescing: before the save the guest agent `freeze`s the layer and every volume (sync + FIFREEZE), so the
copies are consistent filesystems on their own (a volume's SQLite file can be read on the host). The freeze
is always undone: the source is thawed after the save or after any failure, and every restored pod is thawed
at its first request, since its RAM holds the guest as it was saved: frozen. Each restored pod is reseeded like
a template clone (fresh randomness, the host's clock, its own hostname). One thing a restored pod keeps is its
source's boot id, if the source had read it (a template clone reads it at its `reseed`): the kernel makes it
once, at its first read, and offers no way to make another. It is the same boot, continued.

Measured (`podbay.bench.snapshot`, TCG, 2 cores, 256 MiB): the save pauses the guest ~35 ms (device state
~5 ms, RAM copy ~25-30 ms for ~53 MiB); the freeze adds ~75 ms (the guest's flushes become the host's fdatasync
of each disk image) and the fsync of a durable save ~50 ms. A restore answers in about what a template clone
does (QEMU's start under TCG dominates), whatever the guest's memory size.

A restored pod's QEMU opens the snapshot's memory file read-write, as a template clone opens its template's
(QEMU 7.2; see podbay.isolation.qemu.template): it never writes it (a private mapping), but an escaped VMM could.

The source pod keeps running whatever happens: on any failure the partial snapshot is removed, the guest is
resumed and thawed, and a podbay error says what went wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from podbay.channel import GuestChannel
from podbay.errors import Conflict, GuestError, InvalidSpec, NotFound, Timeout
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.backend import (
    MEMORY_ROOT,
    RAM_PREFIX,
    QemuBackend,
    _when_listening,
    spawn_qemu,
)
from podbay.isolation.qemu.command import RunFiles
from podbay.isolation.qemu.template import (
    STATE_FD_NAME,
    ClonedSandbox,
    SavedVm,
    Template,
    check_template,
    clone_layer,
    memory_backend,
    placeholder,
    slot_config,
    sparse_copy,
    template_command,
)
from podbay.isolation.supervise import volume_mounts

SNAPSHOT_FORMAT = 1
FREEZE_TIMEOUT_S = 30.0  # the guest thaws by itself after this if the host never sends `thaw`
MemoryMode = Literal["mapped", "owned"]


@dataclass(frozen=True)
class VmImage:
    """What a restored VM must share with the one it was saved from, besides its device layout."""

    kernel: Path
    rootfs: Path
    accelerator: str
    tsc_khz: int | None


@dataclass(frozen=True)
class SnapshotDisk:
    """One volume drive of the saved pod (`vol<index>`): a volume (copied, mounted at `target`) or an unused
    template slot (a placeholder the guest never mounted)."""

    index: int
    size: int
    target: str | None  # None: a placeholder slot

    @property
    def file(self) -> str:
        return f"vol{self.index}.img"


@dataclass(frozen=True)
class Snapshot(SavedVm):
    """A saved pod: its directory and what a restore must match."""

    path: Path
    vm: VmImage
    vcpus: int
    memory_mib: int
    ram: Literal["file", "stream"]  # the RAM is `memory` (mapped by restores), or inside `state`
    layer_size: int | None  # None: the pod had no layer disk
    disks: tuple[SnapshotDisk, ...]
    frozen: tuple[str, ...]  # what the guest had frozen when it was saved: its restores thaw it
    state_bytes: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def volumes(self) -> tuple[SnapshotDisk, ...]:
        return tuple(disk for disk in self.disks if disk.target is not None)

    def to_meta(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "kernel": str(self.vm.kernel),
            "rootfs": str(self.vm.rootfs),
            "accelerator": self.vm.accelerator,
            "tsc_khz": self.vm.tsc_khz,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "ram": self.ram,
            "layer_size": self.layer_size,
            "disks": [{"index": d.index, "size": d.size, "target": d.target} for d in self.disks],
            "frozen": list(self.frozen),
            "state_bytes": self.state_bytes,
            "timings": self.timings,
            "created": time.time(),
        }

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        """Read and check a snapshot directory: every file it needs is there, at the size it was saved with."""
        path = Path(path)
        if not path.is_dir():
            raise NotFound(f"no snapshot at {path}: save one there first (save_snapshot)")
        meta_file = path / "meta.json"
        if not meta_file.exists():
            raise NotFound(
                f"{path} is not a whole snapshot (meta.json is missing: the save never finished); take it again"
            )
        try:
            meta = json.loads(meta_file.read_text())
            snapshot = cls._from_meta(path, meta)
        except (ValueError, KeyError, TypeError) as exc:
            raise GuestError(f"the snapshot {path} has a corrupt meta.json ({exc!r}); take it again") from None
        snapshot.check_files()
        return snapshot

    @classmethod
    def _from_meta(cls, path: Path, meta: dict[str, Any]) -> Snapshot:
        if meta["format"] != SNAPSHOT_FORMAT:
            raise ValueError(f"format {meta['format']!r}, this podbay reads {SNAPSHOT_FORMAT}")
        ram = meta["ram"]
        if ram not in ("file", "stream"):
            raise ValueError(f"ram {ram!r}")
        layer_size = meta["layer_size"]
        return cls(
            path=path,
            vm=VmImage(Path(meta["kernel"]), Path(meta["rootfs"]), str(meta["accelerator"]), meta["tsc_khz"]),
            vcpus=_positive(meta["vcpus"]),
            memory_mib=_positive(meta["memory_mib"]),
            ram=ram,
            layer_size=None if layer_size is None else _positive(layer_size),
            disks=tuple(
                SnapshotDisk(
                    index=int(disk["index"]),
                    size=_positive(disk["size"]),
                    target=None if disk["target"] is None else str(disk["target"]),
                )
                for disk in meta["disks"]
            ),
            frozen=tuple(str(name) for name in meta["frozen"]),
            state_bytes=_positive(meta["state_bytes"]),
            timings={str(k): float(v) for k, v in meta.get("timings", {}).items()},
        )

    def check_files(self) -> None:
        expected: list[tuple[Path, int]] = [(self.state, self.state_bytes)]
        if self.ram == "file":
            expected.append((self.memory, self.memory_mib << 20))
        if self.layer_size is not None:
            expected.append((self.layer, self.layer_size))
        expected += [(self.path / disk.file, disk.size) for disk in self.volumes]
        for file, size in expected:
            try:
                actual = file.stat().st_size
            except FileNotFoundError:
                raise GuestError(
                    f"the snapshot {self.path} is damaged: {file.name} is missing; take it again"
                ) from None
            if actual != size:
                raise GuestError(
                    f"the snapshot {self.path} is damaged: {file.name} has {actual} bytes, not {size}; take it again"
                )


def _positive(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return value


class SnapshotSandbox(ClonedSandbox):
    """A QEMU pod that can be snapshotted: it knows its machine, its disks and where its RAM lives.

    `memory_shared`: its RAM is a file of its own mapped `share=on` (a snapshot copies the file), rather than
    a private mapping of a template's or a snapshot's memory (a snapshot streams the RAM)."""

    def __init__(
        self,
        *args: Any,
        vm: VmImage,
        layout: SandboxConfig,
        memory: Path,
        memory_shared: bool,
        owned_memory_dir: Path | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.vm = vm
        self.layout = layout  # the config QEMU was started with: placeholders in unused volume slots
        self.memory = memory
        self.memory_shared = memory_shared
        self._owned_memory_dir = owned_memory_dir
        self.frozen: tuple[str, ...] = ()  # what its restored guest still has frozen, until `thaw`
        self.ignore_shared = True  # how the state it loads was saved: without its RAM (x-ignore-shared) or with
        self.first_requests: Callable[[], list[Awaitable[Any]]] | None = None
        self.answered_at: float | None = None

    async def _handshake(self) -> None:
        """Load the device state (and the RAM too, if the state carries it) while the agent's answer is awaited:
        ClonedSandbox's handshake, with the capability the state was saved with."""

        async def restore() -> None:
            await _when_listening(self._files.qmp_socket, self._qmp.connect)
            capabilities = [{"capability": "x-ignore-shared", "state": self.ignore_shared}]
            await self._qmp.execute("migrate-set-capabilities", {"capabilities": capabilities})
            await self.pass_state(self._state, os.O_RDONLY)
            await self._qmp.execute("migrate-incoming", {"uri": f"fd:{STATE_FD_NAME}"})

        async def agent() -> None:
            reader, writer = await _when_listening(self._files.agent_socket, asyncio.open_unix_connection)
            self._channel = GuestChannel(reader, writer, explain_close=self._explain_close)
            # The first requests (reseed, thaw) go right behind the probe: the agent serves them as soon as it
            # runs, without a round trip through this process in between.
            first = self.first_requests() if self.first_requests is not None else []
            health = self._channel.request("health", timeout=None)

            async def probe() -> None:
                await health
                self.answered_at = time.perf_counter()

            await asyncio.gather(probe(), *first)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(restore())
                group.create_task(agent())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    def record(self) -> dict[str, Any]:
        """QemuSandbox's record, plus what a snapshot or fork of the re-attached pod needs (reattach.py); its
        layout is the record's "config" (the config QEMU was started with)."""
        return {
            **super().record(),
            "kind": "snapshot",
            "state": str(self._state),
            "vm": {
                "kernel": str(self.vm.kernel),
                "rootfs": str(self.vm.rootfs),
                "accelerator": self.vm.accelerator,
                "tsc_khz": self.vm.tsc_khz,
            },
            "memory": str(self.memory),
            "memory_shared": self.memory_shared,
            "owned_memory_dir": None if self._owned_memory_dir is None else str(self._owned_memory_dir),
            "ignore_shared": self.ignore_shared,
        }

    async def recover_after_failed_save(self) -> None:
        """Whatever a failed save left: cancel the migration, run the guest again."""
        with contextlib.suppress(Exception):
            await self.qmp("migrate_cancel")
        with contextlib.suppress(Exception):
            status = await self.qmp("query-status")
            if not status.get("running"):
                await self.qmp("cont")

    async def destroy(self) -> None:
        try:
            await super().destroy()
        finally:
            if self._owned_memory_dir is not None:
                shutil.rmtree(self._owned_memory_dir, ignore_errors=True)
                self._owned_memory_dir = None


# ---- starting pods that can be snapshotted -------------------------------------------------------------


def owned_memory(
    source: Path | None, memory_mib: int, root: Path = MEMORY_ROOT, pod_id: str = "pod"
) -> tuple[Path, Path]:
    """A RAM file of a pod's own in tmpfs: a sparse copy of `source` (a template's or snapshot's memory), or
    empty (a restore that loads its RAM from the state). Returns (its private directory, the file). The
    directory is named after the pod, so the reaper finds it if the controller dies (`reap_owned_memory`)."""
    directory = Path(tempfile.mkdtemp(prefix=f"{RAM_PREFIX}{pod_id}-", dir=root))
    memory = directory / "memory"
    try:
        if source is not None:
            sparse_copy(source, memory)
        else:
            with open(memory, "xb") as file:
                file.truncate(memory_mib << 20)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory, memory


async def start_clone(
    template: Template,
    config: SandboxConfig,
    *,
    owned: bool = False,
    hostname: str | None = None,
    reseed: bool = True,
    memory_root: Path = MEMORY_ROOT,
) -> SnapshotSandbox:
    """A running clone of `template` for `config`, answering on its channel, reseeded (see template.py's doc).

    `config.layer`: a copy of the template's layer made by `clone_layer` (made here if None). `config.volumes`
    go into the template's volume slots (their `init` mounts come from `guest_mounts`, with sizes). The caller
    owns `config.run_dir`, as with every backend. The clone maps the template's RAM copy-on-write (pages
    shared, nothing copied); a snapshot of it streams its RAM (hundreds of milliseconds). `owned`: its RAM is
    a copy of the template's in a file of its own, mapped `share=on`, so that `save_snapshot` takes
    milliseconds; the copy costs the template's touched pages (not the guest's size) at start, and those pages
    are no longer shared with other clones. `reseed=False` is for tests that show what an unreseeded clone
    would produce."""
    template.shape.matches(config)
    check_template(template)
    started = time.perf_counter()
    if config.layer is None:
        config = replace(config, layer=await clone_layer(template, config.run_dir))
    placeholders = [
        placeholder(config.run_dir / f"slot{index}.img")
        for index in range(len(config.volumes), template.shape.volume_slots)
    ]
    layout = slot_config(config, template.shape.volume_slots, placeholders)
    directory: Path | None = None
    memory = template.memory
    if owned:
        directory, memory = await asyncio.to_thread(
            owned_memory, template.memory, config.memory_mib, memory_root, config.pod_id
        )
    timings = {"disks_and_memory_ms": _ms_since(started)}
    vm = VmImage(template.kernel, template.rootfs, template.accelerator, template.tsc_khz)
    sandbox = await _launch(vm, layout, template.state, memory, shared=owned, owned_memory_dir=directory)
    timings["agent_answers_ms"] = _ms_since(started)
    try:
        sandbox.guest_mounts = [
            {**mount, "size": volume.image.stat().st_size}
            for mount, volume in zip(volume_mounts(config), config.volumes, strict=True)
        ]
        refresh = sandbox.refresh_volumes(config.volumes)
        await (asyncio.gather(refresh, sandbox.reseed(hostname or config.pod_id)) if reseed else refresh)
    except BaseException:
        await sandbox.destroy()
        raise
    timings["ready_ms"] = _ms_since(started)
    sandbox.timings = timings
    return sandbox


async def _launch(
    vm: VmImage,
    layout: SandboxConfig,
    state: Path,
    memory: Path,
    *,
    shared: bool,
    owned_memory_dir: Path | None,
    ignore_shared: bool = True,
    first_requests: Callable[[SnapshotSandbox], list[Awaitable[Any]]] | None = None,
) -> SnapshotSandbox:
    """Start QEMU with `layout`'s devices and RAM in `memory`, load the device state from `state`, and wait
    for the agent (the state was saved running, so the guest runs as soon as it is loaded)."""
    files = RunFiles(layout.run_dir)
    wanted = memory_backend(memory, layout.memory_mib, shared)

    def command(run_as: str | None, console: str) -> list[str]:
        argv = template_command(
            layout, vm.kernel, vm.rootfs, vm.accelerator, run_as, memory=memory, clone=True, tsc_khz=vm.tsc_khz,
            console=console,
        )  # fmt: skip
        argv[argv.index(memory_backend(memory, layout.memory_mib, shared=False)[1])] = wanted[1]
        return argv

    try:
        process, logs, uid = await spawn_qemu(layout, files, command)
    except BaseException:
        if owned_memory_dir is not None:
            shutil.rmtree(owned_memory_dir, ignore_errors=True)
        raise
    described = QemuBackend.describe()
    info = described.model_copy(update={"pid": process.pid, "console_log": str(files.console_log)})
    sandbox = SnapshotSandbox(
        info, files, process, layout, logs, uid,
        state=state, vm=vm, layout=layout, memory=memory, memory_shared=shared,
        owned_memory_dir=owned_memory_dir,
    )  # fmt: skip
    sandbox.ignore_shared = ignore_shared
    if first_requests is not None:
        sandbox.first_requests = lambda: first_requests(sandbox)
    try:
        await sandbox.connect(layout.boot_timeout_s)
    except BaseException:
        await sandbox.destroy()
        raise
    return sandbox


# ---- save ---------------------------------------------------------------------------------------------


async def save_snapshot(
    sandbox: SnapshotSandbox,
    dest: Path,
    *,
    quiesce: bool = True,
    durable: bool = True,
    at_instant: Callable[[], Awaitable[object]] | None = None,
) -> Snapshot:
    """Save the running pod `sandbox` into the new directory `dest`; the pod keeps running.

    `quiesce`: freeze the guest's layer and volumes first (their copies are then consistent filesystems on
    their own). `durable`: fsync every file before meta.json (a whole snapshot survives a host crash); without
    it only meta.json is fsynced, and the data reaches the disk with the page cache's writeback.
    `at_instant`: awaited while the VM is stopped at the saved instant (a server database's branch point).
    Raises Conflict if `dest` exists, GuestError (the pod still running, nothing left at `dest`) otherwise.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise Conflict(f"{dest} already exists: a snapshot goes into a new directory")
    if not sandbox.alive:
        raise GuestError("the pod is not running: only a running pod can be snapshotted")
    if sandbox._paused:
        raise InvalidSpec("sandbox", "the pod is paused", "resume it before taking a snapshot")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    try:
        building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as exc:
        raise GuestError(f"cannot create the snapshot in {dest.parent}: {exc}; the pod keeps running") from None
    frozen: tuple[str, ...] = ()  # frozen in the source now: thawed whatever happens
    saved_frozen: tuple[str, ...] = ()  # frozen in the saved RAM: thawed in every restore
    saved = False
    try:
        if quiesce:
            # The agent's own `timeout` (30 s) thaws the guest if this process dies before its `thaw`.
            header, _ = await sandbox.channel.request("freeze", timeout=FREEZE_TIMEOUT_S)
            frozen = saved_frozen = tuple(header.get("frozen", ()))
            timings["freeze_ms"] = _ms_since(started)
        mark = time.perf_counter()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        await sandbox.migrate_to(building / "state", flags, ignore_shared=sandbox.memory_shared, what="the pod")
        saved = True
        timings["state_ms"] = _ms_since(mark)
        if at_instant is not None:
            mark = time.perf_counter()
            await at_instant()
            timings["at_instant_ms"] = _ms_since(mark)
        mark = time.perf_counter()
        copies: list[Awaitable[int]] = []
        if sandbox.memory_shared:
            copies.append(asyncio.to_thread(sparse_copy, sandbox.memory, building / "memory"))
        layout = sandbox.layout
        if layout.layer is not None:
            copies.append(asyncio.to_thread(sparse_copy, layout.layer, building / "layer.ext4"))
        disks = _disks_of(sandbox)
        copies += [
            asyncio.to_thread(sparse_copy, volume.image, building / disk.file)
            for disk, volume in zip(disks, layout.volumes, strict=True)
            if disk.target is not None
        ]
        copied = await asyncio.gather(*copies)
        timings["copy_ms"] = _ms_since(mark)
        timings["copied_mib"] = sum(copied) / (1 << 20)
        await sandbox.qmp("cont")
        saved = False
        timings["paused_ms"] = _ms_since(mark) + timings["state_ms"]
        if frozen:
            await _thaw(sandbox)
        frozen = ()
        timings["pod_running_ms"] = _ms_since(started)
        snapshot = Snapshot(
            path=dest,
            vm=sandbox.vm,
            vcpus=layout.vcpus,
            memory_mib=layout.memory_mib,
            ram="file" if sandbox.memory_shared else "stream",
            layer_size=layout.layer.stat().st_size if layout.layer is not None else None,
            disks=disks,
            frozen=saved_frozen,
            state_bytes=(building / "state").stat().st_size,
        )
        mark = time.perf_counter()
        await asyncio.to_thread(_write_whole, building, snapshot, durable, timings)
        timings["write_ms"] = _ms_since(mark)
        timings["total_ms"] = _ms_since(started)
        return replace(snapshot, timings=timings)
    except BaseException as exc:
        if saved:
            await sandbox.recover_after_failed_save()
        if frozen:
            with contextlib.suppress(Exception):
                await _thaw(sandbox)
        shutil.rmtree(building, ignore_errors=True)
        if isinstance(exc, OSError):
            raise GuestError(
                f"saving the snapshot to {dest} failed: {exc}; nothing was kept, the pod keeps running"
            ) from None
        if isinstance(exc, GuestError | Timeout):
            raise type(exc)(f"{exc}; nothing was kept at {dest}, the pod keeps running") from None
        raise


def _disks_of(sandbox: SnapshotSandbox) -> tuple[SnapshotDisk, ...]:
    """The pod's volume drives in order: those it mounted (guest_mounts), then template placeholders."""
    mounted = sandbox.guest_mounts
    return tuple(
        SnapshotDisk(
            index=index,
            size=volume.image.stat().st_size,
            target=str(mounted[index]["target"]) if index < len(mounted) else None,
        )
        for index, volume in enumerate(sandbox.layout.volumes)
    )


async def _thaw(sandbox: SnapshotSandbox) -> None:
    await sandbox.channel.request("thaw")
    sandbox.frozen = ()


def _write_whole(building: Path, snapshot: Snapshot, durable: bool, timings: dict[str, float]) -> None:
    """meta.json last (fsynced), then the rename that makes the directory appear at its place at once."""
    if durable:
        for file in building.iterdir():
            _fsync(file)
    meta = building / "meta.json"
    meta.write_text(json.dumps({**snapshot.to_meta(), "timings": timings}, indent=2) + "\n")
    _fsync(meta)
    os.rename(building, snapshot.path)
    _fsync(snapshot.path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- restore and fork ---------------------------------------------------------------------------------


async def start_from_snapshot(
    snapshot: Snapshot | Path,
    config: SandboxConfig,
    *,
    hostname: str | None = None,
    memory: MemoryMode = "mapped",
    memory_root: Path = MEMORY_ROOT,
) -> SnapshotSandbox:
    """A running pod restored from `snapshot` (a Snapshot or its directory), with its own disks, reseeded.

    `config.run_dir`: the caller's, as with every backend. `config.layer`: where the pod's copy of the saved
    layer goes (a new file; `<run_dir>/layer.ext4` if None). `config.volumes`: where the copies of the saved
    volumes go, one per saved volume, in order (new files; their `target` must be the saved one), or none:
    `<run_dir>/vol<i>.img`. The volumes are already mounted in the restored guest: send no `init` mounts.
    `memory="mapped"`: the saved RAM file mapped copy-on-write (nothing copied; pages shared with every other
    restore); `"owned"`: a copy of its own, so that this pod can be snapshotted fast in turn.
    """
    if not isinstance(snapshot, Snapshot):
        snapshot = Snapshot.load(Path(snapshot))
    else:
        snapshot.check_files()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    layout = await asyncio.to_thread(_restore_disks, snapshot, config)
    timings["disks_ms"] = _ms_since(started)
    shared = memory == "owned" or snapshot.ram == "stream"  # a streamed RAM is loaded into a file of its own
    directory: Path | None = None
    ram = snapshot.memory
    if shared:
        source = snapshot.memory if snapshot.ram == "file" else None
        directory, ram = await asyncio.to_thread(owned_memory, source, snapshot.memory_mib, memory_root, config.pod_id)
    timings["memory_ms"] = _ms_since(started) - timings["disks_ms"]
    frozen = snapshot.frozen

    def first(sandbox: SnapshotSandbox) -> list[Awaitable[Any]]:
        """Its own machine (reseed), its disks writable again (thaw): sent behind the first probe."""
        return [sandbox.reseed(hostname or config.pod_id), *([_thaw(sandbox)] if frozen else [])]

    try:
        sandbox = await _launch(
            snapshot.vm, layout, snapshot.state, ram, shared=shared, owned_memory_dir=directory,
            ignore_shared=snapshot.ram == "file", first_requests=first,
        )  # fmt: skip
    except (GuestError, Timeout) as exc:
        raise type(exc)(
            f"restoring the snapshot {snapshot.path} failed (is it damaged? take it again): {exc}"
        ) from None
    timings["ready_ms"] = _ms_since(started)
    timings["agent_answers_ms"] = ((sandbox.answered_at or time.perf_counter()) - started) * 1000
    sandbox.guest_mounts = [
        {"source": mount["source"], "target": disk.target, "fstype": "ext4", "size": disk.size}
        for mount, disk in zip(volume_mounts(layout), snapshot.disks, strict=True)
        if disk.target is not None
    ]
    sandbox.timings = timings
    return sandbox


def _restore_disks(snapshot: Snapshot, config: SandboxConfig) -> SandboxConfig:
    """The restored pod's own copies of the saved disks, and the config with the saved device layout."""
    if (config.vcpus, config.memory_mib) != (snapshot.vcpus, snapshot.memory_mib):
        raise InvalidSpec(
            "memory_mib" if config.memory_mib != snapshot.memory_mib else "vcpus",
            f"the snapshot has {snapshot.vcpus} vCPU and {snapshot.memory_mib} MiB, the pod asks for "
            f"{config.vcpus} and {config.memory_mib}",
            "restore with the snapshot's shape",
        )
    saved = snapshot.volumes
    if config.volumes and len(config.volumes) != len(saved):
        raise InvalidSpec(
            "volumes", f"the snapshot has {len(saved)} volume(s), {len(config.volumes)} given", "pass one per volume"
        )
    for given, disk in zip(config.volumes, saved, strict=False):
        if given.target != disk.target:
            raise InvalidSpec("volumes", f"{given.name} is mounted at {disk.target} in the snapshot", "keep its target")
    volumes = list(config.volumes) or [
        VolumeAttachment(name=f"vol{disk.index}", image=config.run_dir / disk.file, target=str(disk.target))
        for disk in saved
    ]
    layer = None
    made: list[Path] = []
    try:
        if snapshot.layer_size is not None:
            layer = config.layer or config.run_dir / "layer.ext4"
            sparse_copy(snapshot.layer, layer)
            made.append(layer)
        drives: list[VolumeAttachment] = []
        pending = iter(volumes)
        for disk in snapshot.disks:
            if disk.target is None:
                drives.append(
                    VolumeAttachment(
                        name=f"empty-slot-{disk.index}", image=config.run_dir / f"slot{disk.index}.img", target=""
                    )
                )
                with open(drives[-1].image, "xb") as file:
                    file.truncate(disk.size)
            else:
                drives.append(next(pending))
                sparse_copy(snapshot.path / disk.file, drives[-1].image)
            made.append(drives[-1].image)
    except FileExistsError as exc:
        _remove(made)
        raise Conflict(f"{exc.filename} already exists: a restored pod's disks are new files") from None
    except BaseException:
        _remove(made)
        raise
    return replace(config, layer=layer, volumes=tuple(drives))


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass
class Fork:
    """The children of one fork, and what each phase took."""

    children: list[SnapshotSandbox]
    timings: dict[str, float]


async def fork(
    sandbox: SnapshotSandbox,
    configs: Sequence[SandboxConfig],
    *,
    scratch: Path = MEMORY_ROOT,
    memory: MemoryMode = "mapped",
    quiesce: bool = False,
    at_instant: Callable[[], Awaitable[object]] | None = None,
) -> Fork:
    """`len(configs)` running children of the running pod `sandbox`, each with copy-on-write memory (the
    saved RAM mapped privately), its own layer and its own copy of every volume; the parent keeps running.

    A snapshot into a temporary directory under `scratch` (tmpfs: nothing of it need reach a disk), then the
    children start from it concurrently. The directory is removed once they run: each child's mapping keeps
    the RAM file's pages, and the disks are the children's own copies.

    No freeze by default: a child resumes the RAM and the disks of one instant (QEMU drains and flushes the
    disks as the save completes, and the guest's unwritten page cache is in the RAM), exactly as the parent
    goes on from it; nothing reads the disk copies without their RAM. A freeze would cost ~75 ms under TCG
    (the guest's flushes become the host's fdatasync of each disk image)."""
    if not configs:
        raise InvalidSpec("n", "a fork needs at least one child", "pass one config per child")
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="podbay-fork-", dir=scratch))
    try:
        snapshot = await save_snapshot(
            sandbox, work / "snapshot", quiesce=quiesce, durable=False, at_instant=at_instant
        )
        timings = {"snapshot_ms": _ms_since(started), **{f"snapshot_{k}": v for k, v in snapshot.timings.items()}}
        results = await asyncio.gather(
            *(start_from_snapshot(snapshot, config, memory=memory) for config in configs), return_exceptions=True
        )
        children = [child for child in results if isinstance(child, SnapshotSandbox)]
        failed = [error for error in results if isinstance(error, BaseException)]
        if failed:
            await asyncio.gather(*(child.destroy() for child in children), return_exceptions=True)
            raise failed[0]
        timings["children_answer_ms"] = _ms_since(started)
        return Fork(children=children, timings=timings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
