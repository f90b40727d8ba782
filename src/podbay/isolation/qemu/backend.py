"""QEMU microvm backend: one QEMU process per sandbox, KVM where the host has it, TCG otherwise.

Under TCG the guest is isolated functionally, but QEMU does not treat TCG as a security boundary: the
sandbox info and `podbay doctor` say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ConnectError, QMPClient, QMPError

from podbay.channel import GuestChannel
from podbay.errors import BackendUnavailable, Conflict, PodbayError
from podbay.images import ImageSet, find_images
from podbay.isolation.base import Availability, Capabilities, SandboxConfig, VolumeAttachment
from podbay.isolation.host import hardware_kvm, host_tsc_khz
from podbay.isolation.qemu.command import QEMU_BINARY, RunFiles, build_command
from podbay.isolation.supervise import (
    BoundedLog,
    VmmProcess,
    kill_processes_mentioning,
    kill_session,
    layer_disk,
    process_identity,
    tail,
)
from podbay.isolation.uids import UidLease, allocate_uid
from podbay.isolation.vm import VmSandbox
from podbay.models import SandboxInfo
from podbay.paths import PodbayPaths

TCG_NOTE = (
    "QEMU TCG (software emulation): no hardware virtualization on this host. The guest is isolated "
    "functionally, but QEMU does not treat TCG as a security boundary."
)
KVM_NOTE = "QEMU with KVM hardware virtualization: a hardware-enforced security boundary."
T = TypeVar("T")
MEMORY_ROOT = Path("/dev/shm")  # a pod's own RAM file (snapshot.py): tmpfs costs what anonymous memory costs
RAM_PREFIX = "podbay-ram-"  # + the pod's id: the reaper finds a dead controller's RAM files by it


class QemuBackend:
    """The microVM; a subclass changes the machine by overriding `name`, `isolation` and `command`."""

    name = "qemu"
    mounts_volumes_on_host = False
    isolation = "microvm"
    capabilities = Capabilities(template_clone=True, attach_after_start=True, snapshot=True, fork=True, reattach=True)

    def __init__(self, paths: PodbayPaths, images: ImageSet | None = None) -> None:
        self._paths = paths
        self._images = images

    def availability(self) -> Availability:
        if shutil.which(QEMU_BINARY) is None:
            return Availability(False, f"{QEMU_BINARY} is not installed (Debian package qemu-system-x86)")
        kvm = hardware_kvm()
        if kvm.available:
            return Availability(True, "KVM: " + kvm.reason)
        return Availability(True, f"runs under TCG: {kvm.reason}")

    @classmethod
    def describe(cls) -> SandboxInfo:
        """Host facts only (the accelerator): clones and restores describe themselves with it too."""
        accelerator = cls.accelerator()
        return SandboxInfo(
            backend=cls.name,
            isolation=cls.isolation,
            accelerator=accelerator,
            security_boundary=accelerator == "kvm",
            note=KVM_NOTE if accelerator == "kvm" else TCG_NOTE,
        )

    @staticmethod
    def accelerator() -> str:
        return "kvm" if hardware_kvm().available else "tcg"

    def images(self) -> ImageSet:
        if self._images is None:
            self._images = find_images(self._paths)
        return self._images

    def command(self, config: SandboxConfig, accelerator: str, run_as: str | None, console: str) -> list[str]:
        images = self.images()
        tsc_khz = host_tsc_khz() if accelerator == "tcg" else None
        return build_command(
            config, images.kernel, images.rootfs_image, accelerator, run_as, tsc_khz=tsc_khz, console=console
        )

    async def reap(self, run_dir: Path) -> None:
        kill_processes_mentioning(run_dir)  # the VMM is the only process; its files go with the run dir
        reap_owned_memory(run_dir.name)

    async def reattach(self, run_dir: Path, record: dict[str, Any], *, paused: bool) -> QemuSandbox:
        """Take over a running QEMU that an earlier controller started (see podbay.isolation.qemu.reattach)."""
        from podbay.isolation.qemu.reattach import reattach  # it builds every QEMU sandbox class, clones included

        return await reattach(run_dir, record, paused=paused)

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path:
        return await layer_disk(run_dir, size_mib)

    async def start(self, config: SandboxConfig) -> QemuSandbox:
        available = self.availability()
        if not available.available:
            raise BackendUnavailable(f"{self.name}: {available.reason}")
        accelerator = self.accelerator()
        files = RunFiles(config.run_dir)
        process, logs, uid = await spawn_qemu(
            config, files, lambda run_as, console: self.command(config, accelerator, run_as, console=console)
        )
        info = self.describe().model_copy(update={"pid": process.pid, "console_log": str(files.console_log)})
        sandbox = QemuSandbox(info, files, process, config, logs, uid)
        try:
            await sandbox.connect(config.boot_timeout_s)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox


def reap_owned_memory(pod_id: str, root: Path = MEMORY_ROOT) -> None:
    """Remove the RAM files of a pod whose controller died (its QEMU is gone: nothing maps them any more)."""
    for directory in root.glob(f"{RAM_PREFIX}{pod_id}-*"):
        shutil.rmtree(directory, ignore_errors=True)


async def spawn_qemu(
    config: SandboxConfig, files: RunFiles, command_for: Callable[[str | None, str], list[str]]
) -> tuple[asyncio.subprocess.Process, tuple[BoundedLog, ...], UidLease | None]:
    """Start QEMU with least privilege: `command_for(run_as, console)` gives its command line.

    As root, QEMU drops to a uid of its own (no other process runs as it, so a VMM escape reaches no other
    pod's VMM) and chroots into an empty directory; as another user it already runs unprivileged. Both logs
    are pipes drained into size-capped files: the guest drives the console (and can make QEMU complain on
    stderr), so neither may grow without bound on the host's disk.
    """
    uid = allocate_uid() if os.geteuid() == 0 else None
    logs: tuple[BoundedLog, ...] = ()
    try:
        run_as = None
        if uid is not None:
            run_as = f"{uid.uid}:{uid.gid}"
            files.jail.mkdir(mode=0o755, exist_ok=True)
        logs = (BoundedLog(files.console_log), BoundedLog(files.stderr_log))
        console, stderr = logs
        process = await asyncio.create_subprocess_exec(
            *command_for(run_as, f"/proc/self/fd/{console.write_fd}"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr.write_fd,
            stderr=stderr.write_fd,
            # The volumes' locks and the uid's go with QEMU: held while it runs, even if this process dies.
            pass_fds=[console.write_fd, *_held_locks(config, uid)],
            start_new_session=True,
        )
    except BaseException:
        for log in logs:
            log.close()
        if uid is not None:
            uid.release()
        raise
    for log in logs:
        log.child_started()
    return process, logs, uid


class QemuSandbox(VmSandbox):
    vmm = "QEMU"

    def __init__(
        self,
        info: SandboxInfo,
        files: RunFiles,
        process: VmmProcess,
        config: SandboxConfig,
        logs: tuple[BoundedLog, ...] = (),
        uid: UidLease | None = None,
    ) -> None:
        super().__init__(info, process, config)
        self._config = config
        self._files = files
        self._logs = logs
        self._uid = uid
        self._qmp = QMPClient(f"podbay-{config.pod_id}")
        self._identity: str | None = None  # QEMU's pid + start time, read once, at the first record()

    async def connect(self, timeout: float) -> None:
        """Wait until the agent answers; fail early, with QEMU's own words, if QEMU dies first."""
        await self.until_answer(self._handshake(), timeout, "the guest agent to answer")

    async def reconnect(self, timeout: float, *, paused: bool) -> None:
        """Re-attach to a QEMU that an earlier controller started: QMP and the agent's socket are QEMU's servers,
        and the agent re-opens its port when its host goes, so a new connection reaches the same guest. Checks
        that the agent answers (a stopped guest runs for that), then leaves the guest paused if `paused`."""
        await self.until_answer(self._reconnect(paused), timeout, "the guest agent to answer a new controller")

    async def _reconnect(self, paused: bool) -> None:
        await _when_listening(self._files.qmp_socket, self._qmp.connect)
        status = await self._qmp.execute("query-status")
        reader, writer = await asyncio.open_unix_connection(str(self._files.agent_socket))
        self._channel = GuestChannel(reader, writer, explain_close=self._explain_close)
        if not (isinstance(status, dict) and status.get("running")):
            await self._qmp.execute("cont")  # paused, or stopped by a save its controller never finished
        await self._channel.request("health", timeout=None)
        if paused:
            await self.pause()

    def record(self) -> dict[str, Any]:
        """How a later process re-attaches (podbay.isolation.qemu.reattach): QEMU's identity, its start config
        and what describes the sandbox. Paths and sizes only; nothing of the pod's environment."""
        pid = self._process.pid
        if self._identity is None:
            self._identity = process_identity(pid)
        return {
            "kind": "qemu",
            "pid": pid,
            "identity": self._identity,
            "config": config_record(self._config),
            "info": self.info.model_dump(mode="json"),
        }

    def exited_error(self, status: int, what: str) -> PodbayError:
        stderr = tail(self._files.stderr_log)
        if "Failed to get" in stderr and "lock" in stderr:  # another QEMU holds one of the disk images
            return Conflict(
                f"a disk of this pod is in use by another VM (QEMU: {stderr.splitlines()[-1]}); "
                "destroy the pod that holds its volume first"
            )
        return super().exited_error(status, what)

    def wrapped_errors(self) -> tuple[type[BaseException], ...]:
        return (QMPError,)

    async def _handshake(self) -> None:
        reader, writer = await _when_listening(self._files.agent_socket, asyncio.open_unix_connection)
        self._channel = GuestChannel(reader, writer, explain_close=self._explain_close)
        # QMP comes up while the guest boots; the health request waits in the socket until the agent reads.
        await asyncio.gather(
            _when_listening(self._files.qmp_socket, self._qmp.connect), self._channel.request("health", timeout=None)
        )

    async def _explain_close(self) -> str:
        """Why the agent's channel closed: QEMU's exit (the guest powered off, panicked or was killed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._process.wait()), 1.0)
        state = "is still running" if self._process.returncode is None else f"exited ({self._process.returncode})"
        return f"QEMU {state}.\n{self.diagnostics()}"

    def diagnostics(self) -> str:
        return (
            f"QEMU stderr: {tail(self._files.stderr_log) or '(empty)'}\n"
            f"console log ({self._files.console_log}):\n{tail(self._files.console_log) or '(empty)'}"
        )

    async def _pause_vcpus(self) -> None:
        await self._qmp.execute("stop")

    async def _resume_vcpus(self) -> None:
        await self._qmp.execute("cont")

    async def _stop_vmm(self) -> None:
        await kill_session(self._process)

    async def _disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await self._qmp.disconnect()

    async def _release(self) -> None:
        for log in self._logs:
            log.close()
        if self._uid is not None:
            self._uid.release()  # QEMU is gone: nothing runs as the uid any more

    async def _let_go(self) -> None:
        # QEMU ignores SIGPIPE: once nobody drains its console and stderr pipes, what it writes there is lost,
        # and it runs on. Its own copy of the uid lock keeps the uid its own while it lives.
        await self._release()


def config_record(config: SandboxConfig) -> dict[str, Any]:
    """A SandboxConfig as JSON, without its lock descriptors (they belong to one process)."""
    return {
        "pod_id": config.pod_id,
        "run_dir": str(config.run_dir),
        "vcpus": config.vcpus,
        "memory_mib": config.memory_mib,
        "layer": None if config.layer is None else str(config.layer),
        "volumes": [
            {"name": volume.name, "image": str(volume.image), "target": volume.target} for volume in config.volumes
        ],
        "boot_timeout_s": config.boot_timeout_s,
    }


def config_from_record(record: dict[str, Any]) -> SandboxConfig:
    """The inverse of config_record (KeyError, TypeError or ValueError for a malformed one)."""
    volumes = tuple(
        VolumeAttachment(name=str(volume["name"]), image=Path(volume["image"]), target=str(volume["target"]))
        for volume in record["volumes"]
    )
    layer = record["layer"]
    return SandboxConfig(
        pod_id=str(record["pod_id"]),
        run_dir=Path(record["run_dir"]),
        vcpus=int(record["vcpus"]),
        memory_mib=int(record["memory_mib"]),
        layer=None if layer is None else Path(layer),
        volumes=volumes,
        boot_timeout_s=float(record["boot_timeout_s"]),
    )


def _held_locks(config: SandboxConfig, uid: UidLease | None) -> list[int]:
    """Lock descriptors the VMM inherits, so what they hold is held exactly as long as the VMM lives."""
    fds = [volume.lock_fd for volume in config.volumes if volume.lock_fd is not None]
    return fds + ([uid.fd] if uid is not None else [])


async def _when_listening(path: Path, connect: Callable[[str], Awaitable[T]], interval: float = 0.002) -> T:
    """Connect to a socket QEMU serves, once it listens.

    The file appears at bind(), a moment before listen(): a connect in between is refused (seen under load
    on 2 cores), so wait for the file, then retry a refusal.
    """
    while True:
        if path.exists():
            try:
                return await connect(str(path))
            except (ConnectionRefusedError, ConnectError) as error:
                if isinstance(error, ConnectError) and not isinstance(error.exc, ConnectionRefusedError):
                    raise  # qemu.qmp wraps the OSError; anything but a refusal is a real failure
        await asyncio.sleep(interval)
