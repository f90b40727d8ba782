"""What runc and gVisor share: the OCI bundle of a pod, its host-side mounts, and the runtime driven over stdio.

A pod's bundle lives in its run directory:

    <run_dir>/config.json           the OCI runtime spec (pure: `bundle_config`)
    <run_dir>/layer.ext4            the pod's writable layer: a sparse ext4 image of disk_mib (prepare_layer)
    <run_dir>/layer/{upper,work}    that image, loop-mounted: the overlay's upper and work directories
    <run_dir>/rootfs                overlayfs: the shared read-only rootfs tree under the pod's layer
    <run_dir>/volumes/<name>        each volume's ext4 image, loop-mounted, bind-mounted at its target
    <run_dir>/cgroups.json          where the runtime puts the container's cgroups (written before it starts)
    <run_dir>/runtime.stderr        the runtime's stderr (and the agent's), drained through a pipe, size-capped

The container's first process is the guest agent on stdio: the runtime runs in the foreground without a
terminal, so it hands our pipes straight to the agent and they are the guest channel. Everything mounted on
the host sits under the run directory, so teardown finds what to unmount in /proc/self/mountinfo even when
start failed half-way.

Stopping a container does not trust the pod to cooperate, nor the runtime to be quick: the container's cgroup
is frozen, every process in it is killed, and only once the cgroup is shown empty, the runtime's state gone
and no process of the pod left is anything unmounted. If that cannot be shown, teardown raises and leaves the
mounts (and the volumes' locks) in place, so no other pod can get a volume this one may still write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import platform
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podbay.channel import GuestChannel
from podbay.errors import BackendUnavailable, GuestError, ImageMissing, Timeout
from podbay.images.rootfs import rootfs_entry
from podbay.isolation.base import Availability, Capabilities, SandboxConfig
from podbay.isolation.supervise import (
    BoundedLog,
    ProcessExited,
    command_lines_mentioning,
    is_gone,
    layer_disk,
    shut_down_agent,
    tail,
    unless_exited,
)
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
    # The host's block devices: every loop device names its backing file (loop/backing_file), i.e. the other
    # pods' layers and volumes, and their I/O counters show what other pods do.
    "/proc/partitions",
    "/proc/diskstats",
    "/sys/block",
    "/sys/class/block",
    "/sys/dev/block",
    "/sys/devices/virtual/block",
    "/sys/class/bdi",
    "/sys/devices/virtual/bdi",
    # One directory per mounted ext4 device (and its journal): the other pods' layers and volumes.
    "/sys/fs/ext4",
    "/proc/fs/ext4",
    "/proc/fs/jbd2",
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
# io_uring: a large, often-patched kernel surface that also bypasses the syscall filter once a ring exists.
# ENOSYS, as on a kernel built without it, so programs fall back to plain system calls.
IO_URING_SYSCALLS = ["io_uring_setup", "io_uring_enter", "io_uring_register"]
CLONE_NEWUSER = 0x10000000
EPERM = 1
ENOSYS = 38
# A 32-bit ABI must not be a way around the filter.
SECCOMP_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
PIDS_LIMIT = 1024  # processes and threads per pod: a fork bomb stops there
CPU_PERIOD_US = 100_000
# In-memory mounts (their pages are charged to the pod's memory cgroup anyway): explicit sizes, so one of them
# cannot take all of the pod's memory unnoticed.
SHM_MAX_MIB = 64  # /dev/shm: at most this, never more than the pod's memory
RUN_MIB = 16  # /run: the agent's state (the injected context is at most 256 KiB)
TMP_SHARE = 2  # /tmp: up to 1/TMP_SHARE of the pod's memory
STOP_TIMEOUT_S = 10.0  # for one runtime command (pause, delete, list)
SHUTDOWN_TIMEOUT_S = 3.0  # for the agent to end its commands before the container is killed
EXIT_GRACE_S = 2.0
KILL_TIMEOUT_S = 15.0  # for every process of the pod's cgroup to be gone
FREEZE_WAIT_S = 1.0  # for a freeze to take hold before the kill goes ahead anyway
EXIT_WAIT_S = 5.0  # for the runtime process once its container is dead
VERIFY_WAIT_S = 3.0  # for killed helpers, cgroup directories and loop devices to disappear
EXPLAIN_WAIT_S = 1.5  # for the runtime to exit after the channel closed, before saying why it did
POLL_S = 0.02
CGROUP_PARENT = "podbay"
# The volume locks' keeper: a tiny process that only holds the descriptors, started before anything is mounted
# and ended after everything is unmounted, so a volume is held exactly while the host may still have it mounted
# (even if the controller dies: it runs in a session of its own). Its command line names the run directory, so
# leaks show up like any other process of the pod.
KEEPER_MARK = "podbay-volume-locks"
KEEPER_CODE = "import signal\nwhile True:\n    signal.pause()"


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
    def cgroups_file(self) -> Path:
        return self.run_dir / "cgroups.json"


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
            # Relative: nested under the control plane's own cgroup (see cgroup_dirs).
            "cgroupsPath": f"{CGROUP_PARENT}/{config.pod_id}",
            "resources": _resources(config),
            # A namespace of each kind that isolates (no "path": nothing is shared with the host); the fresh
            # network namespace holds only lo, the cgroup namespace hides every other pod's cgroup.
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


def tmpfs_sizes_mib(memory_mib: int) -> dict[str, int]:
    """The size of each in-memory mount of a pod with `memory_mib` of memory."""
    return {
        "/dev/shm": min(memory_mib, SHM_MAX_MIB),
        "/tmp": max(memory_mib // TMP_SHARE, 1),
        "/run": min(memory_mib, RUN_MIB),
    }


def _mounts(config: SandboxConfig) -> list[dict[str, Any]]:
    hardened = ["nosuid", "noexec", "nodev"]
    size = {target: f"size={mib << 10}k" for target, mib in tmpfs_sizes_mib(config.memory_mib).items()}
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]},
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": [*hardened, "mode=1777", size["/dev/shm"]],
        },
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": hardened},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*hardened, "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": [*hardened, "ro"]},
        # As in the microVM: scratch space and the agent's state (injected context) live in memory only.
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", size["/tmp"]],
        },
        {
            "destination": "/run",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755", size["/run"]],
        },
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
            {"names": IO_URING_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ],
    }


def _masked_arg(flag: int) -> dict[str, Any]:
    return {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}


# ---- host-side mounts ------------------------------------------------------------------------------------


async def mount_bundle(config: SandboxConfig, lower: Path) -> BundlePaths:
    """Mount the pod's root and volumes under its run directory and write config.json."""
    paths = BundlePaths(config.run_dir)
    if config.layer is not None:
        # The layer image is loop-mounted by the host's kernel. That is safe although the pod writes into it:
        # the pod only ever writes files through the overlay; the filesystem's metadata is written by the host's
        # own ext4 code alone (the image itself is never visible inside the pod), so it is never crafted.
        paths.layer.mkdir(mode=0o700)
        await _mount(["-o", "loop,noatime,nosuid,nodev", str(config.layer), str(paths.layer)])
        for part in ("upper", "work"):
            (paths.layer / part).mkdir(mode=0o755)
        paths.rootfs.mkdir(mode=0o755)
        layer = f"lowerdir={lower},upperdir={paths.layer / 'upper'},workdir={paths.layer / 'work'}"
        await _mount(["-t", "overlay", "-o", layer, "overlay", str(paths.rootfs)])
    for volume in config.volumes:
        target = paths.volumes / volume.name
        target.mkdir(parents=True, mode=0o755)
        await _mount(["-o", "loop,noatime", str(volume.image), str(target)])
    paths.config_file.write_text(json.dumps(bundle_config(config, lower), indent=1))
    return paths


async def unmount_all(root: Path) -> None:
    """Unmount everything mounted at or below `root`, the latest mount first (the root overlay before the layer
    it writes to).

    A mount that will not go (still busy) is detached lazily, so that removing the run directory afterwards
    can never reach into a volume and delete the data on it.
    """
    for target in reversed(mounts_under(root)):
        if await _run("umount", str(target)) != 0:
            await _run("umount", "--lazy", str(target))


async def protect_mounts(run_dir: Path) -> None:
    """Make the host's view of every mount under the run directory read-only, and leave them mounted.

    For a pod that could not be shown to be gone: its volumes stay mounted (and held), but nothing on the host
    can delete through them any more. The pod's own mounts are separate (bind) mounts and stay writable.
    """
    for target in mounts_under(run_dir):
        await _run("mount", "-o", "remount,bind,ro", str(target))


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root`, as /proc/self/mountinfo lists them (in the order they were mounted)."""
    return [target for target, _ in _mount_sources(root)]


def _mount_sources(root: Path) -> list[tuple[Path, str]]:
    """(mount point, source) of the mounts at or below `root`."""
    root = root.resolve()
    found = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            target = Path(_unescape(fields[4]))
            if target == root or root in target.parents:
                source = fields[fields.index("-") + 2] if "-" in fields else ""
                found.append((target, _unescape(source)))
    return found


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as three-digit octal escapes.
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="surrogateescape")


def loop_backing_file(device: str) -> str | None:
    """The file behind a loop device (/dev/loop3), or None once it is detached."""
    name = Path(device).name
    if not name.startswith("loop"):
        return None
    try:
        return Path(f"/sys/block/{name}/loop/backing_file").read_text().strip() or None
    except OSError:
        return None


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


# ---- cgroups: where a container's are, and how all of it is killed ---------------------------------------


def cgroup_dirs(pod_id: str) -> list[Path]:
    """Where a runtime started by this process puts the cgroups of the container `pod_id`, in every hierarchy.

    runc and runsc nest the relative cgroupsPath `podbay/<pod_id>` under the cgroup of the process that runs
    them, per hierarchy (a controller in a user session or a service is not in the root cgroup). Not all of
    these need exist: runsc, for one, leaves the v2 tree of a hybrid host alone.
    """
    return nested_cgroups(
        Path("/proc/self/cgroup").read_text(),
        Path("/proc/self/mountinfo").read_text(),
        f"{CGROUP_PARENT}/{pod_id}",
    )


def nested_cgroups(own_cgroups: str, mountinfo: str, relative: str) -> list[Path]:
    """The directories of cgroup `relative`, nested under the cgroups in `own_cgroups` (/proc/PID/cgroup), in
    each hierarchy mounted as `mountinfo` (/proc/self/mountinfo) lists: v1 controllers and the v2 tree."""
    own: dict[frozenset[str], str] = {}  # controllers (none: the v2 tree) -> this process's cgroup there
    for line in own_cgroups.splitlines():
        number, controllers, path = line.split(":", 2)
        own[frozenset(controllers.split(",")) if number != "0" else frozenset()] = path
    found: dict[frozenset[str], Path] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        fstype, options = fields[separator + 1], set(fields[separator + 3].split(","))
        key: frozenset[str] | None
        if fstype == "cgroup2":
            key = frozenset()
        elif fstype == "cgroup":
            key = next((controllers for controllers in own if controllers and controllers <= options), None)
        else:
            continue
        if key is None or key not in own or key in found:
            continue
        mount_root, mount_point = _unescape(fields[3]), Path(_unescape(fields[4]))
        path = own[key]
        if mount_root != "/" and path != mount_root and not path.startswith(mount_root.rstrip("/") + "/"):
            continue  # this process's cgroup is outside what this mount shows
        inside = path[len(mount_root) :] if mount_root != "/" else path
        found[key] = mount_point / inside.strip("/") / relative
    return list(found.values())


def cgroup_pids(directory: Path) -> set[int]:
    """The processes in one cgroup (none if it is gone)."""
    try:
        return {int(pid) for pid in (directory / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _frozen(directory: Path) -> bool:
    try:
        if (directory / "freezer.state").exists():
            return (directory / "freezer.state").read_text().strip() == "FROZEN"
        return "frozen 1" in (directory / "cgroup.events").read_text().splitlines()
    except OSError:
        return True  # gone: nothing left in it to freeze


async def _until(done: Callable[[], bool], timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def _set_frozen(dirs: Sequence[Path], frozen: bool) -> None:
    """Freeze (or thaw) the cgroups with the v1 freezer where there is one, else with v2's cgroup.freeze."""
    freezable = []
    for directory in dirs:
        if (directory / "freezer.state").exists():
            _write(directory / "freezer.state", "FROZEN" if frozen else "THAWED")
            freezable.append(directory)
    if not freezable:
        for directory in dirs:
            if _write(directory / "cgroup.freeze", "1" if frozen else "0"):
                freezable.append(directory)
    if frozen:
        await _until(lambda: all(_frozen(directory) for directory in freezable), FREEZE_WAIT_S)


async def kill_cgroups(dirs: Sequence[Path], timeout: float = KILL_TIMEOUT_S) -> dict[Path, set[int]]:
    """SIGKILL every process in the cgroups `dirs` and wait until they are empty; returns what is left.

    A fork bomb cannot outrun it: the cgroup is frozen first (no process runs, so none forks), every process
    in it gets SIGKILL (with v2's cgroup.kill too, where there is one), and the thaw lets them all die at once.
    The pod's own CPU load does not matter: frozen processes take no CPU.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = {directory: pids for directory in dirs if (pids := cgroup_pids(directory))}
        if not left or loop.time() >= deadline:
            return left
        live = list(left)
        await _set_frozen(live, True)
        for directory in live:
            if (directory / "cgroup.kill").exists():
                _write(directory / "cgroup.kill", "1")
        for pid in {pid for directory in live for pid in cgroup_pids(directory)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await _set_frozen(live, False)
        await _until(lambda: not any(map(cgroup_pids, dirs)), max(0.0, min(1.0, deadline - loop.time())))


def remove_cgroup(directory: Path) -> None:
    """rmdir the cgroup and any child cgroups, deepest first (a cgroup is removed by rmdir, files and all)."""
    if not directory.is_dir():
        return
    for parent, children, _ in os.walk(directory, topdown=False):
        for child in children:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(parent, child))
    with contextlib.suppress(OSError):
        os.rmdir(directory)


OUT_OF_MEMORY = "out of memory"
OUT_OF_PIDS = "out of processes"
# What the kernel logs when it hits a pod's limit; the line names the pod's cgroup.
KERNEL_LOG_SIGNS = {OUT_OF_MEMORY: b"oom-kill:", OUT_OF_PIDS: b"fork rejected by pids controller"}


def limits_hit(dirs: Iterable[Path]) -> set[str]:
    """Which of the pod's limits its cgroups count as hit: an OOM kill (v1 memory.oom_control, v2
    memory.events), a fork refused by the pids limit (pids.events)."""
    hit = set()
    for directory in dirs:
        for name, counter, limit in (
            ("memory.oom_control", "oom_kill", OUT_OF_MEMORY),
            ("memory.events", "oom_kill", OUT_OF_MEMORY),
            ("pids.events", "max", OUT_OF_PIDS),
        ):
            try:
                lines = (directory / name).read_text().splitlines()
            except OSError:
                continue
            if any(line.split()[1:2] != ["0"] for line in lines if line.split()[:1] == [counter]):
                hit.add(limit)
    return hit


def limits_in_kernel_log(pod_id: str, records: int = 100_000) -> set[str]:
    """Which of the pod's limits the kernel log says it hit (an OOM kill, a refused fork in its cgroup).

    This outlives the cgroup, which the runtime removes as soon as the container is gone.
    """
    needle = f"/{CGROUP_PARENT}/{pod_id}".encode()
    hit: set[str] = set()
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return hit
    try:
        for _ in range(records):
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break  # the end of the log
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten while we read: go on with the next record
                    continue
                break
            if needle in record:
                hit.update(limit for limit, sign in KERNEL_LOG_SIGNS.items() if sign in record)
    finally:
        os.close(fd)
    return hit


def processes_mentioning(path: Path, keeper: bool = False) -> list[int]:
    """Processes whose command line names `path` (a run directory): runtimes, sandboxes, gofers; with
    `keeper`, only the volume locks' keeper, else everything but it."""
    return [
        pid
        for pid, cmdline in command_lines_mentioning(path).items()
        if (KEEPER_MARK.encode() in cmdline.split(b"\0")) == keeper
    ]


async def kill_processes(pids_of: Callable[[], list[int]], timeout: float = VERIFY_WAIT_S) -> list[int]:
    """SIGKILL what `pids_of` names until it names nothing and each process it named is gone for good (see
    supervise.is_gone: a volume lock is released only then); returns what is still there after `timeout`."""
    targets: set[int] = set()

    def kill_all() -> bool:
        targets.update(pids_of())
        targets.difference_update([pid for pid in targets if is_gone(pid)])
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return not targets

    await _until(kill_all, timeout)
    return sorted(targets)


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


async def runtime_command(profile: RuntimeProfile, *arguments: str) -> str:
    """Run one runtime command to completion; its output, or GuestError / Timeout."""
    process = await asyncio.create_subprocess_exec(
        *profile.command(*arguments),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        output, errors = await asyncio.wait_for(process.communicate(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise Timeout(f"{profile.binary} {' '.join(arguments)} did not finish in {STOP_TIMEOUT_S} s") from None
    if process.returncode != 0:
        raise GuestError(
            f"{profile.binary} {' '.join(arguments)} failed (exit status {process.returncode}): "
            f"{(errors or output).decode(errors='replace').strip()}"
        )
    return output.decode(errors="replace")


async def runtime_knows(profile: RuntimeProfile, container_id: str) -> bool:
    """Whether the runtime still has state for the container (raises if it cannot say). `state` of one
    container, not `list`: a listing fails when another container is deleted while it runs."""
    try:
        await runtime_command(profile, "state", container_id)
    except GuestError as exc:
        if "does not exist" in str(exc):
            return False
        raise
    return True


def recorded_cgroups(run_dir: Path) -> list[Path]:
    """The container's cgroup directories as recorded at start, plus where this process would put them."""
    dirs: list[Path] = []
    with contextlib.suppress(OSError, ValueError, TypeError):
        dirs += [Path(path) for path in json.loads(BundlePaths(run_dir).cgroups_file.read_text())]
    with contextlib.suppress(OSError, ValueError):
        dirs += [path for path in cgroup_dirs(run_dir.name) if path not in dirs]
    return dirs


async def stop_container(
    profile: RuntimeProfile, run_dir: Path, process: asyncio.subprocess.Process | None = None
) -> list[str]:
    """Kill everything of the container in `run_dir` (its id is the run directory's name) and make the runtime
    forget it; returns what could not be shown gone (empty: nothing of it runs).

    The order is what makes it hold under a fork bomb and with a dead controller: the cgroup is killed (frozen
    first), the runtime process ends with its container, the runtime deletes its state, the cgroup directories
    go; then each of these is checked.
    """
    container_id = run_dir.name
    cgroups = recorded_cgroups(run_dir)
    if not any(directory.is_dir() for directory in cgroups):  # never started, or runs without cgroups
        with contextlib.suppress(GuestError, Timeout):
            await runtime_command(profile, "kill", container_id, "KILL")
    await kill_cgroups([directory for directory in cgroups if directory.is_dir()])
    if process is not None and process.returncode is None:
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), EXIT_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), EXIT_WAIT_S)
    # `run` deletes the container when it ends; this catches a runtime that was killed (or died with its
    # controller), and makes it clean up what it made (runsc's gofer, its state files).
    with contextlib.suppress(GuestError, Timeout):
        await runtime_command(profile, "delete", "--force", container_id)
    left = await kill_processes(lambda: processes_mentioning(run_dir))

    def cgroups_removed() -> bool:
        for directory in cgroups:
            remove_cgroup(directory)
        return not any(directory.exists() for directory in cgroups)

    await _until(cgroups_removed, VERIFY_WAIT_S)
    problems = [
        f"its cgroup {directory} is still there (processes: {sorted(cgroup_pids(directory)) or 'none'})"
        for directory in cgroups
        if directory.exists()
    ]
    if left:
        problems.append(f"processes {left} of it still run")
    try:
        if await runtime_knows(profile, container_id):
            problems.append(f"{profile.binary} still has state for container {container_id}")
    except (GuestError, Timeout, ValueError) as exc:
        problems.append(f"cannot ask {profile.binary} whether container {container_id} is gone: {exc}")
    return problems


async def release_container_mounts(run_dir: Path) -> list[str]:
    """Unmount the pod's layer, root and volumes, check their loop devices are gone, then end the keeper of
    the volumes' locks; returns what could not be released. The run directory stays: its maker removes it."""
    loops = {source: loop_backing_file(source) for _, source in _mount_sources(run_dir) if source.startswith("/dev/")}
    await unmount_all(run_dir)
    problems = [f"{target} is still mounted" for target in mounts_under(run_dir)]

    def attached() -> list[str]:
        return [device for device, backing in loops.items() if backing and loop_backing_file(device) == backing]

    await _until(lambda: not attached(), VERIFY_WAIT_S)
    problems += [f"loop device {device} ({loops[device]}) is still attached" for device in attached()]
    if problems:
        return problems
    if left := await kill_processes(lambda: processes_mentioning(run_dir, keeper=True)):
        return [f"the keeper of its volume locks ({left}) does not end"]
    return []


def _not_stopped(container_id: str, run_dir: Path, problems: list[str]) -> GuestError:
    return GuestError(
        f"the container of pod {container_id} could not be shown to be gone: {'; '.join(problems)}. Its mounts "
        f"stay under {run_dir} (read-only on the host) and its volumes stay attached; destroy() again, or the "
        "reaper, retries."
    )


class ContainerBackend:
    """A backend over one OCI runtime; RuncBackend and GvisorBackend only choose the profile."""

    mounts_volumes_on_host = True  # loop-mounted by the host kernel, then bind-mounted into the container
    # Pools of pre-started containers; a volume is mounted when the container is made, so a claim with a
    # volume falls back to a cold start. runsc checkpoint/restore is not wired yet.
    capabilities = Capabilities()

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
        """Stop what a dead controller's pod left running, as destroy does; raises GuestError (and leaves the
        mounts and the volumes' locks in place) if anything of it may still run."""
        problems = await stop_container(self._profile, run_dir)
        if problems:
            await protect_mounts(run_dir)
            raise _not_stopped(run_dir.name, run_dir, problems)
        if problems := await release_container_mounts(run_dir):
            raise _not_stopped(run_dir.name, run_dir, problems)

    async def prepare_layer(self, run_dir: Path, size_mib: int) -> Path:
        """A sparse ext4 image of `size_mib` (mounted at start): what the pod writes to its root is capped there,
        and the host's disk holds only what the pod wrote."""
        return await layer_disk(run_dir, size_mib)

    async def start(self, config: SandboxConfig) -> ContainerSandbox:
        available = self.availability()
        if not available.available:
            raise BackendUnavailable(f"{self.name}: {available.reason}")
        lower = self.rootfs_dir()
        sandbox: ContainerSandbox | None = None
        keeper: asyncio.subprocess.Process | None = None
        try:
            keeper = await _keep_locks(config)
            paths = await mount_bundle(config, lower)
            cgroups = cgroup_dirs(config.pod_id)
            paths.cgroups_file.write_text(json.dumps([str(path) for path in cgroups]))
            log = BoundedLog(paths.stderr_log)
            try:
                process = await self._launch(config, paths, log.write_fd)
            except BaseException:
                log.close()
                raise
            log.child_started()
            sandbox = ContainerSandbox(self._profile, paths, config, process, log, cgroups, keeper)
            await sandbox.connect(config.boot_timeout_s)
        except BaseException as exc:
            try:
                if sandbox is not None:
                    await sandbox.destroy()
                else:
                    await self.reap(config.run_dir)
            except GuestError as cleanup:
                exc.add_note(f"and stopping what had started failed too: {cleanup}")
            raise
        return sandbox

    async def _launch(self, config: SandboxConfig, paths: BundlePaths, stderr: int) -> asyncio.subprocess.Process:
        # No log file: the runtime logs to its stderr (runc by default, runsc by --log-fd=2), which is a pipe
        # drained into a size-capped file, as is the agent's own stderr (the pod can write there).
        command = self._profile.command("run", f"--bundle={config.run_dir}", config.pod_id)
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,  # a Ctrl-C aimed at the control plane is not forwarded into pods
        )


async def _keep_locks(config: SandboxConfig) -> asyncio.subprocess.Process | None:
    """Hand the volumes' lock descriptors to a keeper process of their own (see KEEPER_MARK). Not to the
    runtime: its descriptors pass through the container's set-up, and a pod that reached one could unlock."""
    fds = [volume.lock_fd for volume in config.volumes if volume.lock_fd is not None]
    if not fds:
        return None
    return await asyncio.create_subprocess_exec(
        sys.executable or "python3",
        "-I",
        "-S",
        "-c",
        KEEPER_CODE,
        KEEPER_MARK,
        str(config.run_dir),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        pass_fds=fds,
        start_new_session=True,
    )


class ContainerSandbox:
    def __init__(
        self,
        profile: RuntimeProfile,
        paths: BundlePaths,
        config: SandboxConfig,
        process: asyncio.subprocess.Process,
        log: BoundedLog,
        cgroups: list[Path],
        keeper: asyncio.subprocess.Process | None = None,
    ) -> None:
        assert process.stdin is not None and process.stdout is not None  # both were asked for as pipes
        self._profile = profile
        self._paths = paths
        self._id = config.pod_id
        self._memory_mib = config.memory_mib
        self._process = process
        self._log = log
        self._cgroups = cgroups
        self._keeper = keeper
        self._paused = False
        self._destroyed = False
        self._destroying = asyncio.Lock()
        self.channel = GuestChannel(process.stdout, process.stdin, explain_close=self._explain_close)
        self.guest_mounts: list[dict[str, Any]] = []  # the runtime bind-mounts volumes before the agent starts
        self.info = profile.describe().model_copy(update={"pid": process.pid, "console_log": str(paths.stderr_log)})

    @property
    def alive(self) -> bool:
        return self._process.returncode is None and not self._destroyed

    async def connect(self, timeout: float) -> None:
        """Wait until the agent answers; fail early, with the runtime's own words, if the runtime exits first."""
        try:
            await unless_exited(self._process, self.channel.request("health", timeout=None), timeout, EXIT_GRACE_S)
        except ProcessExited as exited:
            raise GuestError(
                f"{self._profile.binary} exited with status {exited.status} before the agent answered."
                f"\n{await self._diagnostics()}"
            ) from None
        except Timeout:
            raise Timeout(f"the guest agent did not answer within {timeout} s.\n{self.diagnostics()}") from None
        except GuestError as exc:
            raise GuestError(f"{exc}\n{self.diagnostics()}") from None

    def diagnostics(self) -> str:
        return f"{self._profile.binary} stderr: {tail(self._paths.stderr_log) or '(empty)'}"

    async def _diagnostics(self) -> str:
        """diagnostics(), once what the runtime wrote before it exited has been drained into the log."""
        await _until(lambda: self._log.drained, 0.5)  # EOF: every writer of the pipe is gone
        return self.diagnostics()

    async def _explain_close(self) -> str:
        """Why the channel closed: a limit the pod hit, the runtime's exit status, the runtime's last words."""
        hit = limits_hit(self._cgroups)  # first: the runtime removes the cgroup once the container is gone
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._process.wait()), EXPLAIN_WAIT_S)
        hit |= await asyncio.to_thread(limits_in_kernel_log, self._id)
        lines = []
        if OUT_OF_MEMORY in hit:
            lines.append(
                f"the sandbox ran out of memory (limit {self._memory_mib} MiB): the kernel's out-of-memory killer "
                "ended processes of the pod; give it more memory_mib"
            )
        if OUT_OF_PIDS in hit:
            lines.append(f"the sandbox reached its limit of {PIDS_LIMIT} processes and threads (a fork bomb?)")
        status = self._process.returncode
        lines.append(f"{self._profile.binary} " + ("is still running" if status is None else f"exited ({status})"))
        lines.append(await self._diagnostics())
        return "\n".join(lines)

    async def pause(self) -> None:
        await runtime_command(self._profile, "pause", self._id)
        self._paused = True

    async def resume(self) -> None:
        await runtime_command(self._profile, "resume", self._id)
        self._paused = False

    async def destroy(self) -> None:
        """Kill the container and release its mounts; raises GuestError (keeping the mounts, and so the volumes,
        held) if anything of it may still run. Calling it again retries."""
        async with self._destroying:
            if self._destroyed:
                return
            if self._process.returncode is None:
                await shut_down_agent(self.channel, self.resume if self._paused else None, SHUTDOWN_TIMEOUT_S)
            problems = await stop_container(self._profile, self._paths.run_dir, self._process)
            await self.channel.close()
            if problems:
                await protect_mounts(self._paths.run_dir)
                raise _not_stopped(self._id, self._paths.run_dir, problems)
            self._log.close()
            if problems := await release_container_mounts(self._paths.run_dir):
                raise _not_stopped(self._id, self._paths.run_dir, problems)
            if self._keeper is not None:
                await self._keeper.wait()  # killed above; reap it
            self._destroyed = True
