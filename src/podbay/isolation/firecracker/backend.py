"""Firecracker backend: one Firecracker process per sandbox, configured over its API socket; hardware KVM only.

Firecracker has no software emulation: on a host without hardware virtualization the backend reports itself
unavailable with the reason and refuses to start; the platform never swaps in another backend. The guest agent
is reached through Firecracker's hybrid vsock (a host unix socket plus a `CONNECT <port>` line).
Firecracker runs as the calling user with its default seccomp filters, but without its jailer yet (no chroot,
no privilege drop, no cgroups): the sandbox info says so.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from podbay.channel import GuestChannel
from podbay.errors import BackendUnavailable, GuestError, Timeout
from podbay.images import ImageSet, find_images
from podbay.isolation.base import Availability, SandboxConfig
from podbay.isolation.firecracker.api import FirecrackerApi, FirecrackerApiError, InstanceInfo
from podbay.isolation.firecracker.install import VERSION, find_firecracker
from podbay.isolation.host import hardware_kvm
from podbay.isolation.supervise import (
    ProcessExited,
    disk_device,
    kill_processes_mentioning,
    kill_session,
    layer_disk,
    shut_down_agent,
    tail,
    unless_exited,
    volume_mounts,
)
from podbay.models import SandboxInfo
from podbay.paths import PodbayPaths

T = TypeVar("T")
AGENT_VSOCK_PORT = 1024
GUEST_CID = 3  # 0-2 are reserved (hypervisor, local, host); each VM has its own vsock device, so all can use 3
# As QEMU's, but reboot=k: Firecracker ends when the guest resets through the i8042 keyboard controller.
# root= is given here, as for QEMU, rather than by marking the drive as root (Firecracker would append its own).
KERNEL_CMDLINE = (
    "console=ttyS0 reboot=k panic=-1 quiet loglevel=4 root=/dev/vda ro rootfstype=ext4 init=/sbin/podbay-init"
)
API_READY_TIMEOUT_S = 10.0
RETRY_INTERVAL_S = 0.001
AGENT_RETRY_INTERVAL_S = 0.01
NOTE = (
    "Firecracker microVM with KVM hardware virtualization: a hardware-enforced security boundary. "
    "Firecracker runs with its seccomp filters but without its jailer (no chroot or privilege drop yet)."
)


@dataclass(frozen=True)
class RunFiles:
    """One sandbox's sockets and logs, inside its private run directory (names short: sun_path holds 108 bytes)."""

    run_dir: Path

    @property
    def api_socket(self) -> Path:
        return self.run_dir / "fc.sock"

    @property
    def vsock(self) -> Path:
        return self.run_dir / "v.sock"

    @property
    def log(self) -> Path:
        return self.run_dir / "firecracker.log"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def console_log(self) -> Path:
        """The guest's serial console: Firecracker writes it to its stdout."""
        return self.run_dir / "console.log"

    @property
    def stderr_log(self) -> Path:
        return self.run_dir / "firecracker.stderr"


@dataclass(frozen=True)
class Drive:
    drive_id: str
    path: Path
    read_only: bool


def boot_args(config: SandboxConfig) -> str:
    args = KERNEL_CMDLINE
    if config.layer is not None:
        args += f" podbay.rw={disk_device(1)}"
    return args + f" podbay.transport=vsock:{AGENT_VSOCK_PORT}"


def drives(config: SandboxConfig, rootfs: Path) -> list[Drive]:
    """In guest device order (Firecracker attaches drives in the order they were put): vda, vdb, ..."""
    result = [Drive("rootfs", rootfs, read_only=True)]
    if config.layer is not None:
        result.append(Drive("layer", config.layer, read_only=False))
    result += [Drive(f"vol{index}", volume.image, read_only=False) for index, volume in enumerate(config.volumes)]
    return result


class FirecrackerBackend:
    name = "firecracker"
    mounts_volumes_on_host = False

    def __init__(self, paths: PodbayPaths, images: ImageSet | None = None) -> None:
        self._paths = paths
        self._images = images

    @staticmethod
    def describe() -> SandboxInfo:
        return SandboxInfo(
            backend="firecracker", isolation="microvm", accelerator="kvm", security_boundary=True, note=NOTE
        )

    def availability(self) -> Availability:
        binary, origin = find_firecracker(self._paths)
        if binary is None:
            return Availability(False, _not_installed(origin))
        kvm = hardware_kvm()
        if not kvm.available:
            return Availability(False, f"Firecracker needs hardware KVM: {kvm.reason}")
        return Availability(True, f"{binary} (from {origin}); KVM: {kvm.reason}")

    def images(self) -> ImageSet:
        if self._images is None:
            self._images = find_images(self._paths)
        return self._images

    async def reap(self, run_dir: Path) -> None:
        kill_processes_mentioning(run_dir)  # the VMM is the only process; its files go with the run dir

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path:
        return await layer_disk(run_dir, size_mib)

    async def start(self, config: SandboxConfig) -> FirecrackerSandbox:
        available = self.availability()
        if not available.available:
            raise BackendUnavailable(f"firecracker: {available.reason}")
        images = self.images()
        sandbox = await self.launch(config)
        try:
            await sandbox.boot(images, config.boot_timeout_s)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    async def launch(self, config: SandboxConfig) -> FirecrackerSandbox:
        """A Firecracker process whose API answers, nothing configured yet. Needs no KVM (until InstanceStart)."""
        binary, origin = find_firecracker(self._paths)
        if binary is None:
            raise BackendUnavailable(f"firecracker: {_not_installed(origin)}")
        files = RunFiles(config.run_dir)
        process = await _spawn(binary, files, config.pod_id)
        sandbox = FirecrackerSandbox(files, process, config)
        try:
            await sandbox.wait_for_api(API_READY_TIMEOUT_S)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox


def _not_installed(origin: str) -> str:
    return f"{origin}; run scripts/setup to install Firecracker v{VERSION}"


async def _spawn(binary: Path, files: RunFiles, pod_id: str) -> asyncio.subprocess.Process:
    # Firecracker exits at once if its log file does not exist yet; the metrics file must exist too.
    for path in (files.log, files.metrics):
        path.touch(mode=0o600)
    # The logger is set here rather than with PUT /logger: that reopens the file from its start, over the
    # lines Firecracker logged while starting.
    command = [str(binary), "--api-sock", str(files.api_socket), "--id", pod_id]
    command += ["--log-path", str(files.log), "--level", "Info", "--show-level"]
    with open(files.console_log, "wb") as console, open(files.stderr_log, "wb") as stderr:
        return await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=console, stderr=stderr, start_new_session=True
        )


class FirecrackerSandbox:
    def __init__(self, files: RunFiles, process: asyncio.subprocess.Process, config: SandboxConfig) -> None:
        self.info = FirecrackerBackend.describe().model_copy(
            update={"pid": process.pid, "console_log": str(files.console_log)}
        )
        self.files = files
        self.api = FirecrackerApi(files.api_socket)
        self._process = process
        self._config = config
        self._channel: GuestChannel | None = None
        self._paused = False
        self._destroyed = False
        self.guest_mounts: list[dict[str, Any]] = volume_mounts(config)

    @property
    def channel(self) -> GuestChannel:
        if self._channel is None:
            raise GuestError("the sandbox is not connected")
        return self._channel

    # ---- start -----------------------------------------------------------------------------------------

    async def wait_for_api(self, timeout: float) -> InstanceInfo:
        return await self._until_exit(self._probe_api(), timeout, "its API socket to answer")

    async def _probe_api(self) -> InstanceInfo:
        while True:
            try:
                return await self.api.describe_instance()
            except FirecrackerApiError:
                raise
            except GuestError:  # no socket yet, or not listening yet
                await asyncio.sleep(RETRY_INTERVAL_S)

    async def configure(self, images: ImageSet) -> None:
        """Everything Firecracker needs before InstanceStart (the logger was set on its command line)."""
        await self.api.put_metrics(self.files.metrics)
        await self.api.put_machine_config(self._config.vcpus, self._config.memory_mib)
        await self.api.put_boot_source(images.kernel, boot_args(self._config))
        for drive in drives(self._config, images.rootfs_image):
            await self.api.put_drive(drive.drive_id, drive.path, is_root_device=False, is_read_only=drive.read_only)
        await self.api.put_vsock(GUEST_CID, self.files.vsock)

    async def boot(self, images: ImageSet, timeout: float) -> None:
        await self._until_exit(self._boot(images), timeout, "the guest agent to answer")

    async def _boot(self, images: ImageSet) -> None:
        await self.configure(images)
        await self.api.start_instance()
        reader, writer = await _open_agent_stream(self.files.vsock, AGENT_VSOCK_PORT)
        channel = GuestChannel(reader, writer)
        try:
            await channel.request("health", timeout=None)
        except BaseException:
            await channel.close()
            raise
        self._channel = channel  # only an agent that answered is asked to shut down at destroy

    async def _until_exit(self, work: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run `work`; fail early, with Firecracker's own words, if Firecracker exits first."""
        try:
            # No grace: an API error is Firecracker's own answer, not a symptom of its exit.
            return await unless_exited(self._process, work, timeout, grace=0)
        except ProcessExited as exited:
            raise GuestError(
                f"Firecracker exited with status {exited.status} while waiting for {what}.\n{self.diagnostics()}"
            ) from None
        except Timeout:
            raise Timeout(f"waited {timeout} s for {what}; Firecracker still runs.\n{self.diagnostics()}") from None
        except FirecrackerApiError:
            raise  # Firecracker's fault message says it all
        except GuestError as exc:
            raise GuestError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        return "\n".join(
            f"{label} ({path}):\n{tail(path) or '(empty)'}"
            for label, path in (
                ("Firecracker log", self.files.log),
                ("Firecracker stderr", self.files.stderr_log),
                ("console", self.files.console_log),
            )
        )

    # ---- running ---------------------------------------------------------------------------------------

    async def pause(self) -> None:
        await self.api.pause()
        self._paused = True

    async def resume(self) -> None:
        await self.api.resume()
        self._paused = False

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._channel is not None and self._process.returncode is None:
            await shut_down_agent(self._channel, self.resume if self._paused else None)
        await kill_session(self._process)
        if self._channel is not None:
            await self._channel.close()
        await self.api.close()
        shutil.rmtree(self.files.run_dir, ignore_errors=True)


async def _open_agent_stream(vsock: Path, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Hybrid vsock: connect to Firecracker's socket and ask for the guest port; Firecracker answers `OK <n>`.

    Until the agent listens, Firecracker hangs up instead: try again.
    """
    while True:
        stream = await _connect_vsock_port(vsock, port)
        if stream is not None:
            return stream
        await asyncio.sleep(AGENT_RETRY_INTERVAL_S)


async def _connect_vsock_port(vsock: Path, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.open_unix_connection(str(vsock))
    except OSError:
        return None
    connected = False
    try:
        writer.write(f"CONNECT {port}\n".encode())
        connected = (await reader.readline()).startswith(b"OK ")
    except OSError:
        pass
    finally:
        if not connected:
            writer.close()
    return (reader, writer) if connected else None
