"""What runc and gVisor share: the OCI bundle of a pod, its host-side mounts, and the runtime driven over stdio.

A pod's bundle lives in its run directory:

    <run_dir>/config.json           the OCI runtime spec (pure: `bundle_config`)
    <run_dir>/layer/{upper,work}    the pod's writable layer (made by prepare_layer)
    <run_dir>/rootfs                overlayfs: the shared read-only rootfs tree under the pod's layer
    <run_dir>/volumes/<name>        each volume's ext4 image, loop-mounted, bind-mounted at its target

The container's first process is the guest agent on stdio: the runtime runs in the foreground without a
terminal, so it hands our pipes straight to the agent and they are the guest channel. Everything mounted on
the host sits under the run directory, so teardown finds what to unmount in /proc/self/mountinfo even when
start failed half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podbay.channel import GuestChannel
from podbay.errors import BackendUnavailable, GuestError, ImageMissing, Timeout
from podbay.images.rootfs import rootfs_entry
from podbay.isolation.base import Availability, SandboxConfig
from podbay.isolation.supervise import ProcessExited, kill_processes_mentioning, shut_down_agent, tail, unless_exited
from podbay.models import SandboxInfo
from podbay.paths import PodbayPaths

AGENT_ARGS = ["/usr/bin/python3", "-I", "-S", "/usr/lib/podbay/agent.py", "--transport=stdio"]
WORKDIR = "/work"
HOSTNAME = "pod"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The OCI/runc default set: enough for an unprivileged-looking root, nothing that reaches the host.
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Kernel interfaces behind many container escapes that an agent's code has no use for. gVisor applies its
# own filters to the sentry and ignores these (unless --oci-seccomp); for runc they narrow the shared kernel.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "delete_module", "finit_module", "init_module", "kexec_file_load", "kexec_load",
    "keyctl", "lookup_dcookie", "mount", "name_to_handle_at", "open_by_handle_at", "perf_event_open",
    "pivot_root", "quotactl", "reboot", "request_key", "setns", "swapoff", "swapon", "syslog", "umount2",
    "unshare", "userfaultfd",
]  # fmt: skip
CLONE_NEWUSER = 0x10000000
EPERM = 1
ENOSYS = 38
# A 32-bit ABI must not be a way around the filter.
SECCOMP_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
PIDS_LIMIT = 4096
CPU_PERIOD_US = 100_000
STOP_TIMEOUT_S = 10.0
EXIT_GRACE_S = 2.0


@dataclass(frozen=True)
class BundlePaths:
    """Where one pod's bundle, layer, mounts and logs live (all inside its private run directory)."""

    run_dir: Path

    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.json"

    @property
    def rootfs(self) -> Path:
        return self.run_dir / "rootfs"

    @property
    def layer(self) -> Path:
        return self.run_dir / "layer"

    @property
    def volumes(self) -> Path:
        return self.run_dir / "volumes"

    @property
    def stderr_log(self) -> Path:
        return self.run_dir / "runtime.stderr"

    @property
    def runtime_log(self) -> Path:
        return self.run_dir / "runtime.log"


# ---- the bundle (pure) -----------------------------------------------------------------------------------


def bundle_config(config: SandboxConfig, lower: Path, machine: str | None = None) -> dict[str, Any]:
    """The OCI runtime spec of one pod: the agent on stdio over the pod's root, with its volumes at their targets.

    Without a writable layer the shared tree itself is the root, read-only.
    """
    paths = BundlePaths(config.run_dir)
    writable = config.layer is not None
    return {
        "ociVersion": "1.0.2",
        "process": _process(),
        "root": {"path": str(paths.rootfs if writable else lower), "readonly": not writable},
        "hostname": HOSTNAME,
        "mounts": _mounts(config),
        "linux": {
            "cgroupsPath": f"podbay/{config.pod_id}",  # relative: nested under the control plane's own cgroup
            "resources": _resources(config),
            # A namespace of each kind that isolates (no "path": nothing is shared with the host); the fresh
            # network namespace holds only lo.
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount", "cgroup")],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": _seccomp(machine or platform.machine()),
        },
    }


def _process() -> dict[str, Any]:
    return {
        "terminal": False,  # the runtime then passes our pipes through: they are the agent's channel
        "user": {"uid": 0, "gid": 0},
        "args": AGENT_ARGS,
        "env": [f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8"],
        "cwd": WORKDIR,
        "capabilities": {kind: CAPABILITIES for kind in ("bounding", "effective", "permitted", "ambient")},
        "noNewPrivileges": True,
    }


def _mounts(config: SandboxConfig) -> list[dict[str, Any]]:
    hardened = ["nosuid", "noexec", "nodev"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": [*hardened, "mode=1777"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": hardened},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*hardened, "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": [*hardened, "ro"]},
        # As in the microVM: scratch space and the agent's state (injected context) live in memory only.
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755"]},
    ]
    volumes = BundlePaths(config.run_dir).volumes
    for volume in config.volumes:
        mounts.append(
            {
                "destination": volume.target,
                "type": "bind",
                "source": str(volumes / volume.name),
                "options": ["bind", "rw", "nosuid", "nodev"],
            }
        )
    return mounts


def _resources(config: SandboxConfig) -> dict[str, Any]:
    return {
        "devices": [{"allow": False, "access": "rwm"}],  # the runtime adds back null, zero, random, tty...
        "memory": {"limit": config.memory_mib << 20},
        "cpu": {"quota": config.vcpus * CPU_PERIOD_US, "period": CPU_PERIOD_US},
        "pids": {"limit": PIDS_LIMIT},
    }


def _seccomp(machine: str) -> dict[str, Any]:
    deny = {"action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": SECCOMP_ARCHITECTURES.get(machine, []),
        "syscalls": [
            {"names": DENIED_SYSCALLS, **deny},
            # New user namespaces would hand the agent's code a root with every capability over fresh ones.
            {"names": ["clone"], **deny, "args": [_masked_arg(CLONE_NEWUSER)]},
            # clone3 passes its flags in memory, out of seccomp's sight: ENOSYS makes libc fall back to clone.
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ],
    }


def _masked_arg(flag: int) -> dict[str, Any]:
    return {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}


# ---- host-side mounts ------------------------------------------------------------------------------------


def make_layer(run_dir: Path) -> Path:
    """The pod's writable layer: overlayfs upper and work directories, on the host's disk."""
    layer = BundlePaths(run_dir).layer
    for part in ("upper", "work"):
        (layer / part).mkdir(parents=True, mode=0o755)
    return layer


async def mount_bundle(config: SandboxConfig, lower: Path) -> BundlePaths:
    """Mount the pod's root and volumes under its run directory and write config.json."""
    paths = BundlePaths(config.run_dir)
    if config.layer is not None:
        paths.rootfs.mkdir(mode=0o755)
        layer = f"lowerdir={lower},upperdir={config.layer / 'upper'},workdir={config.layer / 'work'}"
        await _mount(["-t", "overlay", "-o", layer, "overlay", str(paths.rootfs)])
    for volume in config.volumes:
        target = paths.volumes / volume.name
        target.mkdir(parents=True, mode=0o755)
        await _mount(["-o", "loop,noatime", str(volume.image), str(target)])
    paths.config_file.write_text(json.dumps(bundle_config(config, lower), indent=1))
    return paths


async def unmount_all(root: Path) -> None:
    """Unmount everything mounted at or below `root`, deepest first.

    A mount that will not go (still busy) is detached lazily, so that removing the run directory afterwards
    can never reach into a volume and delete the data on it.
    """
    for target in sorted(mounts_under(root), key=lambda path: len(path.parts), reverse=True):
        if await _run("umount", str(target)) != 0:
            await _run("umount", "--lazy", str(target))


async def release_run_dir(run_dir: Path) -> None:
    """Unmount everything under the run directory, then remove it (never while it still reaches a volume)."""
    await unmount_all(run_dir)
    if not mounts_under(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, as /proc/self/mountinfo lists them."""
    root = root.resolve()
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = Path(_unescape(line.split()[4]))
            if target == root or root in target.parents:
                found.append(target)
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


async def _mount(arguments: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        "mount", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        detail = output.decode(errors="replace").strip()
        raise BackendUnavailable(f"cannot prepare the pod's mounts: mount {' '.join(arguments)} failed: {detail}")


async def _run(*argv: str) -> int:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await process.wait()


# ---- the runtime and its sandboxes -----------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeProfile:
    """What differs between OCI runtimes: the binary, its flags, and the isolation it gives."""

    backend: str  # the backend's name, as PodSpec.backend chooses it
    binary: str
    package: str  # the Debian package that installs it, for the message when it is missing
    state_root: Path  # per host, so pods of different platforms never collide (the container id is the pod id)
    flags: tuple[str, ...]
    isolation: str
    accelerator: str
    security_boundary: bool
    note: str

    def describe(self) -> SandboxInfo:
        return SandboxInfo(
            backend=self.backend,
            isolation=self.isolation,
            accelerator=self.accelerator,
            security_boundary=self.security_boundary,
            note=self.note,
        )

    def command(self, *arguments: str) -> list[str]:
        return [self.binary, f"--root={self.state_root}", *self.flags, *arguments]


class ContainerBackend:
    """A backend over one OCI runtime; RuncBackend and GvisorBackend only choose the profile."""

    mounts_volumes_on_host = True  # loop-mounted by the host kernel, then bind-mounted into the container

    def __init__(self, paths: PodbayPaths, profile: RuntimeProfile, rootfs_dir: Path | None = None) -> None:
        self.name = profile.backend
        self._paths = paths
        self._profile = profile
        self._rootfs_dir = rootfs_dir

    def describe(self) -> SandboxInfo:
        return self._profile.describe()

    def availability(self) -> Availability:
        binary = shutil.which(self._profile.binary)
        if binary is None:
            return Availability(
                False, f"{self._profile.binary} is not installed (Debian package {self._profile.package})"
            )
        if os.geteuid() != 0:
            return Availability(
                False, "needs root: the pod's root (overlayfs) and volumes (loop devices) are mounted on the host"
            )
        return Availability(True, f"{self._profile.isolation} with {binary}, as root")

    def rootfs_dir(self) -> Path:
        """The shared rootfs tree; containers need no kernel, so only the rootfs has to be built."""
        if self._rootfs_dir is None:
            entry = rootfs_entry(self._paths.images)
            if not entry.exists():
                raise ImageMissing(f"the guest rootfs is not built in {self._paths.images}: run `podbay images build`")
            self._rootfs_dir = entry.path / "tree"
        return self._rootfs_dir

    async def reap(self, run_dir: Path) -> None:
        """The runtime forgets the container (killing it), then its helpers die and its mounts go."""
        await _run(*self._profile.command("delete", "--force", run_dir.name))  # the container id is the pod id
        kill_processes_mentioning(run_dir)
        await release_run_dir(run_dir)

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path:
        # Directories on the host's disk: size_mib is not enforced (no quota on the upper directory).
        return make_layer(run_dir)

    async def start(self, config: SandboxConfig) -> ContainerSandbox:
        available = self.availability()
        if not available.available:
            raise BackendUnavailable(f"{self.name}: {available.reason}")
        lower = self.rootfs_dir()
        sandbox: ContainerSandbox | None = None
        try:
            paths = await mount_bundle(config, lower)
            sandbox = ContainerSandbox(self._profile, paths, config.pod_id, await self._launch(config, paths))
            await sandbox.connect(config.boot_timeout_s)
        except BaseException:
            if sandbox is not None:
                await sandbox.destroy()
            else:
                await release_run_dir(config.run_dir)
            raise
        return sandbox

    async def _launch(self, config: SandboxConfig, paths: BundlePaths) -> asyncio.subprocess.Process:
        command = self._profile.command(
            f"--log={paths.runtime_log}",  # never stdout: that is the agent's channel
            "run",
            f"--bundle={config.run_dir}",
            config.pod_id,
        )
        with open(paths.stderr_log, "ab") as stderr:
            return await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C aimed at the control plane is not forwarded into pods
            )


class ContainerSandbox:
    def __init__(
        self, profile: RuntimeProfile, paths: BundlePaths, container_id: str, process: asyncio.subprocess.Process
    ) -> None:
        assert process.stdin is not None and process.stdout is not None  # both were asked for as pipes
        self._profile = profile
        self._paths = paths
        self._id = container_id
        self._process = process
        self._paused = False
        self._destroyed = False
        self.channel = GuestChannel(process.stdout, process.stdin)
        self.guest_mounts: list[dict[str, Any]] = []  # the runtime bind-mounts volumes before the agent starts
        self.info = profile.describe().model_copy(update={"pid": process.pid, "console_log": str(paths.stderr_log)})

    async def connect(self, timeout: float) -> None:
        """Wait until the agent answers; fail early, with the runtime's own words, if the runtime exits first."""
        try:
            await unless_exited(self._process, self.channel.request("health", timeout=None), timeout, EXIT_GRACE_S)
        except ProcessExited as exited:
            raise GuestError(
                f"{self._profile.binary} exited with status {exited.status} before the agent answered."
                f"\n{self.diagnostics()}"
            ) from None
        except Timeout:
            raise Timeout(f"the guest agent did not answer within {timeout} s.\n{self.diagnostics()}") from None
        except GuestError as exc:
            raise GuestError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        stderr = tail(self._paths.stderr_log) or "(empty)"
        log = tail(self._paths.runtime_log)
        return f"{self._profile.binary} stderr: {stderr}" + (f"\n{self._paths.runtime_log}: {log}" if log else "")

    async def pause(self) -> None:
        await self._runtime("pause", self._id)
        self._paused = True

    async def resume(self) -> None:
        await self._runtime("resume", self._id)
        self._paused = False

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        try:
            if self._process.returncode is None:
                await shut_down_agent(self.channel, self.resume if self._paused else None, STOP_TIMEOUT_S)
            await self._stop_container()
            await self.channel.close()
        finally:
            await release_run_dir(self._paths.run_dir)

    async def _stop_container(self) -> None:
        with contextlib.suppress(GuestError, Timeout):  # the container may have ended with its agent already
            await self._runtime("kill", self._id, "KILL")
        try:
            await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        # `run` deletes the container when it ends; this catches the case where the runtime itself was killed.
        with contextlib.suppress(GuestError, Timeout):
            await self._runtime("delete", "--force", self._id)

    async def _runtime(self, *arguments: str) -> None:
        process = await asyncio.create_subprocess_exec(
            *self._profile.command(*arguments),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            command = f"{self._profile.binary} {arguments[0]} {self._id}"
            raise Timeout(f"{command} did not finish in {STOP_TIMEOUT_S} s") from None
        if process.returncode != 0:
            raise GuestError(
                f"{self._profile.binary} {' '.join(arguments)} failed (exit status {process.returncode}): "
                f"{output.decode(errors='replace').strip()}"
            )
