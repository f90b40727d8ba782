"""Firecracker under its jailer: the chroot, the pod's own uid, cgroups and namespaces, and undoing all of it.

How one VMM is started (see :func:`jailer_command`)::

    unshare --pid --net --ipc --fork --kill-child -- \\
        jailer --id <pod> --exec-file <firecracker> --uid <U> --gid <U> --chroot-base-dir <run_dir>/j \\
               --cgroup-version <1|2> --parent-cgroup podbay --cgroup <memory limit> --cgroup pids.max=64 \\
               -- --api-sock /fc.sock --log-path /firecracker.log ...

- **uid.** U is allocated per pod (podbay.isolation.uids) and released at destroy. The jailer chowns the chroot
  and its device nodes to U and drops to U:U (no supplementary groups, no capabilities) before it execs
  Firecracker.
- **chroot.** The jailer copies Firecracker into ``<run_dir>/j/<firecracker>/<pod>/root``, enters a new mount
  namespace, pivot_roots there and makes ``/dev/kvm`` (and ``/dev/net/tun``, ``/dev/urandom``,
  ``/dev/userfaultfd``) inside. Firecracker sees only that directory, so everything it opens is put there
  first (:func:`prepare`); the chroot lives in the run directory and goes with it.
- **cgroups.** A memory limit (guest memory + :data:`MEMORY_OVERHEAD_MIB`) and a pids limit, in
  ``<hierarchy>/podbay/<pod>``: cgroup v2 when its unified hierarchy offers both controllers, else v1 (hybrid
  hosts), else Firecracker is unavailable (:func:`detect_cgroups`). Removed at destroy.
- **namespaces.** ``unshare`` gives the VMM a new pid namespace (Firecracker is its pid 1: it sees and signals
  no other process), an empty network namespace (no interface but a down loopback; no abstract unix sockets of
  the host) and its own IPC namespace. It is used rather than the jailer's ``--new-pid-ns``, with which the
  jailer forks Firecracker and exits at once: podbay could no longer wait for the VMM's exit, kill it with its
  process group, or keep the uid and volume locks alive through it. ``unshare`` stays Firecracker's parent for
  its whole life and holds those lock descriptors (the jailer closes every inherited descriptor before it execs
  Firecracker).

What goes into the chroot, and why that way (:func:`place`):

- **The shared kernel and root image** are hard links (one inode, nothing copied); across filesystems, where a
  hard link cannot be made, read-only bind mounts. Both stay owned by the user running podbay; the VMM reads
  them as "other" (they must be world-readable, as the image cache makes them), and cannot write them.
- **The pod's layer** is the pod's alone: chowned to U (mode 0600), then hard-linked in.
- **Volumes** outlive the pod and are handed from pod to pod, so their owner and mode are left alone: each
  gets one POSIX ACL entry ``user:U:rw-`` while the pod holds it (acl.py), taken away at destroy, and is
  hard-linked (read-write bind-mounted across filesystems) into the chroot. A copy would lose the guest's writes;
  a chown would leave the volume owned by a uid that the next pod's VMM may get.
- **Sockets and logs**: Firecracker makes its API socket and the hybrid-vsock socket in its root; the host
  reaches them through the chroot (``/proc/self/fd/<chroot fd>/<name>``: a unix socket path holds 108 bytes,
  and the chroot's own path can be longer). The log and metrics files are made here, owned by U.
- **Lock-down** (:func:`lock_down`): the jailer leaves the chroot's root owned by U, which lets Firecracker make
  its sockets there. Right before InstanceStart, once everything is open or made, the root is given to root
  (0711): a guest that took over its VMM cannot then swap any name the host uses in there for a symlink.

If the controller dies, ``<run_dir>/jail.json`` tells the reaper (:func:`reap`) which cgroups and ACL entries
were the pod's: it kills what runs in them, removes the cgroups, revokes the entries and unmounts the binds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import signal
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from podbay.errors import BackendUnavailable, GuestError, HostError, PodbayError
from podbay.isolation.firecracker import acl
from podbay.isolation.firecracker.install import find_jailer
from podbay.isolation.oci import mounts_under
from podbay.isolation.supervise import kill_processes_mentioning
from podbay.paths import PodbayPaths

log = logging.getLogger(__name__)

JAIL_DIR = "j"  # the jailer's --chroot-base-dir, under the run directory (short: socket paths are bounded)
RECORD = "jail.json"
PARENT_CGROUP = "podbay"
CONTROLLERS = ("memory", "pids")
MEMORY_OVERHEAD_MIB = 128  # Firecracker itself, its buffers and KVM's own allocations, beyond guest memory
PIDS_MAX = 64  # Firecracker needs its main thread, its API thread and one per vCPU
NAMESPACES = ("--pid", "--net", "--ipc")
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.01
# What Firecracker finds in its root.
API_SOCKET = "fc.sock"
VSOCK = "v.sock"
LOG = "firecracker.log"
METRICS = "metrics.json"
KERNEL = "vmlinux"

Access = Literal["read", "own", "grant"]


def inside(name: str) -> Path:
    """A file of the chroot as the jailed Firecracker names it."""
    return Path("/") / name


# ---- what the host offers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cgroups:
    version: int  # the jailer's --cgroup-version
    roots: tuple[Path, ...]  # the hierarchies that hold the pod's cgroup: v1, one per controller mount; v2, one

    def settings(self, memory_mib: int) -> list[str]:
        memory = (memory_mib + MEMORY_OVERHEAD_MIB) * 2**20
        limit = "memory.limit_in_bytes" if self.version == 1 else "memory.max"
        return [f"{limit}={memory}", f"pids.max={PIDS_MAX}"]

    def dirs(self, jail_id: str) -> tuple[Path, ...]:
        return tuple(root / PARENT_CGROUP / jail_id for root in self.roots)


def detect_cgroups(mounts: str, controllers: Callable[[Path], set[str]]) -> Cgroups | str:
    """The cgroup setup the jailer can use (from /proc/mounts), or why there is none.

    The jailer takes the first cgroup2 mount for v2, and for v1 the first mount that names each controller:
    so does this. `controllers(path)` lists what a cgroup2 hierarchy offers (its cgroup.controllers).
    """
    unified: Path | None = None
    v1: dict[str, Path] = {}
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        directory, fstype, options = Path(fields[1]), fields[2], fields[3].split(",")
        if fstype == "cgroup2" and unified is None:
            unified = directory
        elif fstype == "cgroup":
            for controller in CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, directory)
    if unified is not None and set(CONTROLLERS) <= controllers(unified):
        return Cgroups(2, (unified,))
    if set(CONTROLLERS) <= v1.keys():
        return Cgroups(1, tuple(dict.fromkeys(v1[controller] for controller in CONTROLLERS)))
    wanted = " and ".join(CONTROLLERS)
    return f"no cgroup hierarchy offers the {wanted} controllers (v2: {unified or 'not mounted'}; v1: {sorted(v1)})"


def host_cgroups() -> Cgroups | str:
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError as exc:
        return f"cannot read /proc/mounts: {exc}"
    return detect_cgroups(mounts, _unified_controllers)


def _unified_controllers(root: Path) -> set[str]:
    try:
        return set((root / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


@dataclass(frozen=True)
class Tools:
    firecracker: Path  # resolved: the jailer names the chroot after the file it copies
    jailer: Path
    unshare: Path
    cgroups: Cgroups


def jail_tools(paths: PodbayPaths, firecracker: Path) -> Tools | str:
    """Everything Firecracker's jail needs on this host, or why it cannot be built here."""
    firecracker = firecracker.resolve()
    if "firecracker" not in firecracker.name:
        return f"the jailer runs only a binary whose name contains 'firecracker', not {firecracker.name!r}"
    jailer, origin = find_jailer(paths, firecracker)
    if jailer is None:
        return origin
    if os.geteuid() != 0:
        return "the jailer needs root (it chroots, makes /dev/kvm in the chroot and drops to the pod's own uid)"
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare (util-linux), which gives Firecracker its own pid, network and IPC namespaces, is not on PATH"
    cgroups = host_cgroups()
    if isinstance(cgroups, str):
        return cgroups
    return Tools(firecracker, jailer, Path(unshare), cgroups)


def check_run_dir(run_dir: Path) -> None:
    """The chroot lives in the run directory: its filesystem must allow device nodes and executables."""
    flags = os.statvfs(run_dir).f_flag
    for flag, option, why in (
        (os.ST_NODEV, "nodev", "the /dev/kvm that the jailer makes in the chroot would not open"),
        (os.ST_NOEXEC, "noexec", "the jailer could not run its copy of Firecracker"),
    ):
        if flags & flag:
            raise BackendUnavailable(f"firecracker: {run_dir} is on a {option} mount: {why}; move PODBAY_STATE")


# ---- one pod's jail --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Jail:
    run_dir: Path
    jail_id: str  # the pod id: Firecracker's instance id, the chroot's and the cgroups' name
    exec_name: str  # the Firecracker binary's file name: the jailer's directory under the base
    uid: int
    gid: int
    cgroup_dirs: tuple[Path, ...]
    grants: tuple[str, ...] = ()  # files of the chroot whose ACL names `uid` (volumes)

    @property
    def base(self) -> Path:
        return self.run_dir / JAIL_DIR

    @property
    def chroot(self) -> Path:
        return self.base / self.exec_name / self.jail_id / "root"

    def host(self, name: str) -> Path:
        """A file of the chroot as the host names it."""
        return self.chroot / name

    def save(self) -> None:
        record = {
            "jail_id": self.jail_id,
            "exec_name": self.exec_name,
            "uid": self.uid,
            "gid": self.gid,
            "cgroup_dirs": [str(path) for path in self.cgroup_dirs],
            "grants": list(self.grants),
        }
        (self.run_dir / RECORD).write_text(json.dumps(record))

    @classmethod
    def load(cls, run_dir: Path) -> Jail | None:
        """The jail recorded in `run_dir`, or None; a record that names anything but its own pod is ignored."""
        try:
            record = json.loads((run_dir / RECORD).read_text())
            jail = cls(
                run_dir=run_dir,
                jail_id=str(record["jail_id"]),
                exec_name=str(record["exec_name"]),
                uid=int(record["uid"]),
                gid=int(record["gid"]),
                cgroup_dirs=tuple(Path(path) for path in record["cgroup_dirs"]),
                grants=tuple(str(name) for name in record["grants"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        names = [jail.jail_id, jail.exec_name, *jail.grants]
        if any(not name or "/" in name or name in (".", "..") for name in names):
            return None
        if any(path.name != jail.jail_id or path.parent.name != PARENT_CGROUP for path in jail.cgroup_dirs):
            return None
        return jail


def jailer_command(tools: Tools, jail: Jail, memory_mib: int, firecracker_args: Iterable[str]) -> list[str]:
    command = [str(tools.unshare), *NAMESPACES, "--fork", "--kill-child", "--", str(tools.jailer)]
    command += ["--id", jail.jail_id, "--exec-file", str(tools.firecracker)]
    command += ["--uid", str(jail.uid), "--gid", str(jail.gid), "--chroot-base-dir", str(jail.base)]
    command += ["--cgroup-version", str(tools.cgroups.version), "--parent-cgroup", PARENT_CGROUP]
    for setting in tools.cgroups.settings(memory_mib):
        command += ["--cgroup", setting]
    return [*command, "--", *firecracker_args]


def prepare(jail: Jail, files: Iterable[tuple[Path, str, Access]]) -> None:
    """Make the chroot (the jailer keeps what it finds) with Firecracker's log and metrics files and `files`
    (source on the host, name in the chroot, access) in it. The record comes first, so a reaper can undo it."""
    jail.chroot.mkdir(mode=0o700, parents=True)
    jail.save()
    for name in (LOG, METRICS):  # Firecracker exits at once if its log file does not exist yet
        fd = os.open(jail.host(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchown(fd, jail.uid, jail.gid)
        finally:
            os.close(fd)
    for source, name, access in files:
        place(jail, source, name, access)


def place(jail: Jail, source: Path, name: str, access: Access) -> None:
    """Put `source` into the chroot as `name`, for the jailed VMM to read ("read": a shared image), to own
    ("own": a file of this pod only) or to read and write by an ACL entry ("grant": a shared volume)."""
    target = jail.host(name)
    if access == "read":
        mode = source.stat().st_mode
        if not mode & stat.S_IROTH:
            raise HostError(
                f"{source} is not world-readable (mode {stat.S_IMODE(mode):04o}), so the jailed Firecracker "
                f"(uid {jail.uid}) cannot read it; make it readable: chmod o+r {source}"
            )
    elif access == "own":
        os.chown(source, jail.uid, jail.gid)
        source.chmod(0o600)
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _bind(source, target, read_only=access == "read")
    if access == "grant":
        acl.grant(target, jail.uid)  # through the chroot's name: the very inode Firecracker opens


def lock_down(jail: Jail) -> None:
    """Before the guest runs (InstanceStart): give the chroot's root to root (mode 0711).

    Until then the VMM is trusted (no guest code has run); from then on a guest that took over its VMM must not
    be able to swap a name the host reaches in the chroot (the sockets it connects to, the log it reads, the
    volume whose ACL it edits at destroy) for a symlink to a host file. Everything Firecracker opens or makes
    there is open or made by then; it keeps reading and writing the files it owns (its log, the layer).
    """
    os.chown(jail.chroot, 0, 0)
    jail.chroot.chmod(0o711)


# ---- stopping and undoing ---------------------------------------------------------------------------------


def cgroup_pids(dirs: Iterable[Path]) -> set[int]:
    pids: set[int] = set()
    for directory in dirs:
        with contextlib.suppress(OSError):
            pids.update(int(pid) for pid in (directory / "cgroup.procs").read_text().split())
    return pids


def kill_jailed(jail: Jail) -> None:
    """SIGKILL whatever runs in the pod's cgroups: Firecracker, the init of its pid namespace, and so all of it."""
    for pid in cgroup_pids(jail.cgroup_dirs):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def remove_cgroups(jail: Jail, timeout: float = STOP_TIMEOUT_S) -> None:
    """Wait until the pod's cgroups are empty, then remove them; GuestError if something still runs in them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = [directory for directory in jail.cgroup_dirs if not _rmdir(directory)]
        if not left:
            return
        if loop.time() > deadline:
            pids = sorted(cgroup_pids(left))
            raise GuestError(f"Firecracker's cgroups {[str(path) for path in left]} still hold processes {pids}")
        kill_jailed(jail)
        await asyncio.sleep(POLL_INTERVAL_S)


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return False
        raise
    return True


def dismantle(jail: Jail) -> None:
    """Once nothing runs in the jail: take back the ACL entries, then unmount the binds under the run directory."""
    for name in jail.grants:
        target = jail.host(name)
        try:
            if not stat.S_ISREG(target.lstat().st_mode):
                continue  # not what was placed: never follow a name the VMM could have made
        except FileNotFoundError:
            continue  # never placed
        try:
            acl.revoke(target, jail.uid)
        except (OSError, PodbayError) as exc:  # the VMM is gone: a stale entry names a uid that opens nothing
            log.warning("could not revoke uid %d's ACL entry on %s: %s", jail.uid, target, exc)
    unmount_all(jail.run_dir)


def undo(jail: Jail) -> None:
    """Undo a jail once nothing runs in it (after destroy, or a start that failed before the jailer ran): its
    ACL entries, binds, chroot and record; the run directory itself is its maker's."""
    dismantle(jail)
    if not mounts_under(jail.run_dir):
        shutil.rmtree(jail.base, ignore_errors=True)
        (jail.run_dir / RECORD).unlink(missing_ok=True)


async def reap(run_dir: Path) -> None:
    """After the controller died: kill the pod's VMM (by its cgroups) and the wrappers around it (by their
    command lines, which name the run directory), then undo the jail as destroy would have."""
    jail = Jail.load(run_dir)
    if jail is not None:
        kill_jailed(jail)
    kill_processes_mentioning(run_dir)  # unshare and the jailer; Firecracker's own command line names only "/"
    if jail is not None:
        await remove_cgroups(jail)
        dismantle(jail)
    else:
        unmount_all(run_dir)


# ---- bind mounts (only where a hard link cannot be made) ------------------------------------------------

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _bind(source: Path, target: Path, read_only: bool) -> None:
    target.touch(mode=0o600, exist_ok=False)
    _mount(source, target, MS_BIND)
    if read_only:
        _mount(source, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _mount(source: Path, target: Path, flags: int) -> None:
    if _libc.mount(bytes(source), bytes(target), None, flags, None) != 0:
        number = ctypes.get_errno()
        raise HostError(f"cannot bind-mount {source} on {target}: {os.strerror(number)}")


def unmount_all(root: Path) -> None:
    """Unmount every mount at or under `root`, deepest first (lazily if busy); PodbayError if one stays."""
    for target in sorted(mounts_under(root), key=lambda path: len(path.parts), reverse=True):
        if _libc.umount2(bytes(target), 0) != 0 and _libc.umount2(bytes(target), MNT_DETACH) != 0:
            raise HostError(f"cannot unmount {target}: {os.strerror(ctypes.get_errno())}")
