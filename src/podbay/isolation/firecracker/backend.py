"""Firecracker backend: one jailed Firecracker process per sandbox, configured over its API socket; KVM only.

Firecracker has no software emulation: on a host without hardware virtualization the backend reports itself
unavailable with the reason and refuses to start; the platform never swaps in another backend. The guest agent
is reached through Firecracker's hybrid vsock (a host unix socket plus a `CONNECT <port>` line).

Firecracker runs only under its jailer (jail.py), wherever it runs at all: in a chroot inside the pod's run
directory, as a uid of its own allocated for the pod (podbay.isolation.uids) and released at destroy, in cgroups
that bound its memory and tasks, in new pid, network and IPC namespaces, with its default seccomp filters. A host
that cannot give it all of that (no jailer of the same release, not root, no usable cgroups) reports Firecracker
unavailable with the reason. Everything up to the API (`launch`: the jail, the jailer, the API socket answering)
needs no KVM, and is tested on any Linux host; booting needs hardware KVM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from podbay.channel import GuestChannel
from podbay.errors import BackendUnavailable, GuestError
from podbay.images import ImageSet, find_images
from podbay.isolation.base import Availability, Capabilities, SandboxConfig
from podbay.isolation.firecracker import jail as jails
from podbay.isolation.firecracker.api import FirecrackerApi, FirecrackerApiError, InstanceInfo
from podbay.isolation.firecracker.install import VERSION, find_firecracker
from podbay.isolation.firecracker.jail import API_SOCKET, KERNEL, LOG, METRICS, VSOCK, Jail, Tools, inside
from podbay.isolation.host import hardware_kvm
from podbay.isolation.supervise import (
    disk_device,
    kill_session,
    layer_disk,
    tail,
)
from podbay.isolation.uids import UidLease, allocate_uid
from podbay.isolation.vm import VmSandbox
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
    "Firecracker runs under its jailer: chrooted, as {who}, in cgroups (memory, pids), "
    "in new pid, network and IPC namespaces, with its seccomp filters."
)


def note(uid: int | None = None) -> str:
    return NOTE.format(who="a uid of its own" if uid is None else f"uid {uid} (its own, gid {uid})")


@dataclass(frozen=True)
class RunFiles:
    """One sandbox's files as the host names them: its console and stderr in the run directory, the rest in the
    chroot (see jail.py)."""

    run_dir: Path
    chroot: Path

    @property
    def api_socket(self) -> Path:
        return self.chroot / API_SOCKET

    @property
    def vsock(self) -> Path:
        return self.chroot / VSOCK

    @property
    def log(self) -> Path:
        return self.chroot / LOG

    @property
    def metrics(self) -> Path:
        return self.chroot / METRICS

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
    source: Path  # on the host
    name: str  # in the chroot
    read_only: bool

    @property
    def path(self) -> Path:
        """As the jailed Firecracker opens it."""
        return inside(self.name)


def boot_args(config: SandboxConfig) -> str:
    args = KERNEL_CMDLINE
    if config.layer is not None:
        args += f" podbay.rw={disk_device(1)}"
    return args + f" podbay.transport=vsock:{AGENT_VSOCK_PORT}"


def drives(config: SandboxConfig, rootfs: Path) -> list[Drive]:
    """In guest device order (Firecracker attaches drives in the order they were put): vda, vdb, ..."""
    result = [Drive("rootfs", rootfs, "rootfs.ext4", read_only=True)]
    if config.layer is not None:
        result.append(Drive("layer", config.layer, "layer.ext4", read_only=False))
    for index, volume in enumerate(config.volumes):
        result.append(Drive(f"vol{index}", volume.image, f"vol{index}.ext4", read_only=False))
    return result


def jail_files(config: SandboxConfig, images: ImageSet) -> list[tuple[Path, str, jails.Access]]:
    """What goes into the chroot, and how: shared images read-only, the layer owned, volumes by an ACL entry."""
    files: list[tuple[Path, str, jails.Access]] = [(images.kernel, KERNEL, "read")]
    for drive in drives(config, images.rootfs_image):
        access: jails.Access = "read" if drive.read_only else "own" if drive.drive_id == "layer" else "grant"
        files.append((drive.source, drive.name, access))
    return files


class FirecrackerBackend:
    name = "firecracker"
    mounts_volumes_on_host = False
    # Firecracker's snapshot API would give clones and snapshots, but needs hardware KVM to be tested: not
    # claimed until it is.
    capabilities = Capabilities()

    def __init__(self, paths: PodbayPaths, images: ImageSet | None = None) -> None:
        self._paths = paths
        self._images = images

    @staticmethod
    def describe() -> SandboxInfo:
        return SandboxInfo(
            backend="firecracker", isolation="microvm", accelerator="kvm", security_boundary=True, note=note()
        )

    def availability(self) -> Availability:
        binary, origin = find_firecracker(self._paths)
        if binary is None:
            return Availability(False, _not_installed(origin))
        kvm = hardware_kvm()
        if not kvm.available:
            return Availability(False, f"Firecracker needs hardware KVM: {kvm.reason}")
        tools = jails.jail_tools(self._paths, binary)
        if isinstance(tools, str):
            return Availability(False, _no_jail(tools))
        jailed = f"under {tools.jailer} (cgroup v{tools.cgroups.version})"
        return Availability(True, f"{binary} (from {origin}) {jailed}; KVM: {kvm.reason}")

    def images(self) -> ImageSet:
        if self._images is None:
            self._images = find_images(self._paths)
        return self._images

    async def reap(self, run_dir: Path) -> None:
        await jails.reap(run_dir)  # the VMM, its wrappers, cgroups, ACL entries and binds; files go with the run dir

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path:
        return await layer_disk(run_dir, size_mib)

    async def start(self, config: SandboxConfig) -> FirecrackerSandbox:
        available = self.availability()
        if not available.available:
            raise BackendUnavailable(f"firecracker: {available.reason}")
        sandbox = await self.launch(config, self.images())
        try:
            await sandbox.boot(config.boot_timeout_s)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    async def launch(self, config: SandboxConfig, images: ImageSet | None = None) -> FirecrackerSandbox:
        """A jailed Firecracker whose API answers, its files in its chroot, nothing configured yet.

        Needs no KVM (until InstanceStart): this is the whole start-up path that runs on any Linux host.
        """
        binary, origin = find_firecracker(self._paths)
        if binary is None:
            raise BackendUnavailable(f"firecracker: {_not_installed(origin)}")
        tools = jails.jail_tools(self._paths, binary)
        if isinstance(tools, str):
            raise BackendUnavailable(f"firecracker: {_no_jail(tools)}")
        jails.check_run_dir(config.run_dir)
        images = self.images() if images is None else images
        lease = allocate_uid()
        grants = tuple(name for _, name, access in jail_files(config, images) if access == "grant")
        jail = Jail(
            run_dir=config.run_dir,
            jail_id=config.pod_id,
            exec_name=tools.firecracker.name,
            uid=lease.uid,
            gid=lease.gid,
            cgroup_dirs=tools.cgroups.dirs(config.pod_id),
            grants=grants,
        )
        root: int | None = None
        try:
            jails.prepare(jail, jail_files(config, images))
            # The host reaches the sockets through a descriptor of the chroot: its path may not fit a sun_path.
            root = os.open(jail.chroot, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            process = await _spawn(tools, jail, config, lease)
        except BaseException:
            if root is not None:
                os.close(root)
            jails.undo(jail)  # nothing runs yet: undo what was placed, then give the uid back
            lease.release()
            raise
        sandbox = FirecrackerSandbox(jail, lease, process, config, drives(config, images.rootfs_image), root)
        try:
            await sandbox.wait_for_api(API_READY_TIMEOUT_S)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox


def _not_installed(origin: str) -> str:
    return f"{origin}; run scripts/setup to install Firecracker v{VERSION}"


def _no_jail(reason: str) -> str:
    return f"Firecracker runs only under its jailer, which cannot run here: {reason}"


async def _spawn(tools: Tools, jail: Jail, config: SandboxConfig, lease: UidLease) -> asyncio.subprocess.Process:
    # The logger is set here rather than with PUT /logger: that reopens the file from its start, over the
    # lines Firecracker logged while starting. The jailer adds --id.
    firecracker_args = ["--api-sock", str(inside(API_SOCKET)), "--log-path", str(inside(LOG))]
    firecracker_args += ["--level", "Info", "--show-level"]
    command = jails.jailer_command(tools, jail, config.memory_mib, firecracker_args)
    # The uid's and the volumes' locks go to unshare, which lives exactly as long as the VMM: they stay held
    # if the controller dies. The jailer closes them before it execs Firecracker: the guest never reaches them.
    locks = [lease.fd, *(volume.lock_fd for volume in config.volumes if volume.lock_fd is not None)]
    files = RunFiles(config.run_dir, jail.chroot)
    with open(files.console_log, "wb") as console, open(files.stderr_log, "wb") as stderr:
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=console,
            stderr=stderr,
            start_new_session=True,
            pass_fds=locks,
        )


class FirecrackerSandbox(VmSandbox):
    vmm = "Firecracker (or its jailer)"
    exit_grace_s = 0.0  # an API error is Firecracker's own answer, not a symptom of its exit

    def __init__(
        self,
        jail: Jail,
        lease: UidLease,
        process: asyncio.subprocess.Process,
        config: SandboxConfig,
        drives: list[Drive],
        root: int,
    ) -> None:
        self.jail = jail
        self.files = RunFiles(config.run_dir, jail.chroot)
        info = FirecrackerBackend.describe().model_copy(
            update={"pid": process.pid, "console_log": str(self.files.console_log), "note": note(jail.uid)}
        )
        super().__init__(info, process, config)
        self._root = root  # an O_PATH descriptor of the chroot, closed at destroy
        self.api = FirecrackerApi(self.reach(API_SOCKET))
        self._lease = lease
        self._config = config
        self._drives = drives

    def reach(self, name: str) -> Path:
        """A short host path to a file of the chroot (valid while the sandbox lives)."""
        return Path(f"/proc/self/fd/{self._root}/{name}")

    @property
    def vmm_pid(self) -> int | None:
        """Firecracker's own pid (the process under unshare and the jailer), once it runs in its cgroups."""
        pids = jails.cgroup_pids(self.jail.cgroup_dirs)
        return min(pids) if pids else None

    # ---- start -----------------------------------------------------------------------------------------

    async def wait_for_api(self, timeout: float) -> InstanceInfo:
        info = await self.until_answer(self._probe_api(), timeout, "its API socket to answer")
        self.info = self.info.model_copy(update={"pid": self.vmm_pid or self._process.pid})
        return info

    async def _probe_api(self) -> InstanceInfo:
        while True:
            try:
                return await self.api.describe_instance()
            except FirecrackerApiError:
                raise
            except GuestError:  # no socket yet, or not listening yet
                await asyncio.sleep(RETRY_INTERVAL_S)

    async def configure(self) -> None:
        """Everything Firecracker needs before InstanceStart (the logger was set on its command line), named as
        the jailed Firecracker sees its chroot."""
        await self.api.put_metrics(inside(METRICS))
        await self.api.put_machine_config(self._config.vcpus, self._config.memory_mib)
        await self.api.put_boot_source(inside(KERNEL), boot_args(self._config))
        for drive in self._drives:
            await self.api.put_drive(drive.drive_id, drive.path, is_root_device=False, is_read_only=drive.read_only)
        await self.api.put_vsock(GUEST_CID, inside(VSOCK))

    async def boot(self, timeout: float) -> None:
        await self.until_answer(self._boot(), timeout, "the guest agent to answer")

    async def _boot(self) -> None:
        await self.configure()
        jails.lock_down(self.jail)  # before any guest code runs
        await self.api.start_instance()
        reader, writer = await _open_agent_stream(self.reach(VSOCK), AGENT_VSOCK_PORT)
        channel = GuestChannel(reader, writer)
        try:
            await channel.request("health", timeout=None)
        except BaseException:
            await channel.close()
            raise
        self._channel = channel  # only an agent that answered is asked to shut down at destroy

    def passthrough_errors(self) -> tuple[type[BaseException], ...]:
        return (FirecrackerApiError,)  # Firecracker's fault message says it all

    def diagnostics(self) -> str:
        return "\n".join(
            f"{label} ({path}):\n{tail(path) or '(empty)'}"
            for label, path in (
                ("Firecracker log", self.files.log),
                ("jailer and Firecracker stderr", self.files.stderr_log),
                ("console", self.files.console_log),
            )
        )

    # ---- running ---------------------------------------------------------------------------------------

    async def _pause_vcpus(self) -> None:
        await self.api.pause()

    async def _resume_vcpus(self) -> None:
        await self.api.resume()

    async def _disconnect(self) -> None:
        await self.api.close()
        os.close(self._root)

    async def _release(self) -> None:
        """Undo the jail: cgroups were removed by _stop_vmm; now the ACL entries, binds and chroot (never the run
        directory, which is its maker's), and last the uid. Fails closed: if something may still run in the pod's
        cgroups, _stop_vmm raised, and the uid stays reserved and the jail stays for the reaper."""
        jails.undo(self.jail)
        self._lease.release()

    async def _stop_vmm(self) -> None:
        # Kill Firecracker first, the init of its pid namespace: unshare, its parent, reaps it and exits.
        # Killed first, unshare would leave it to the host's init to reap.
        if jails.cgroup_pids(self.jail.cgroup_dirs):
            jails.kill_jailed(self.jail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), jails.STOP_TIMEOUT_S)
        await kill_session(self._process)  # unshare and the jailer, if it never got as far as its cgroups
        await jails.remove_cgroups(self.jail)


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
