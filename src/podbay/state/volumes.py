"""Persistent volumes: sparse ext4 images on the host, one per name, attached to one pod at a time.

A volume outlives its pods and is re-attached by name. Its files can be read on the host after the pod is
gone without mounting anything (debugfs reads the image directly), so no root mount is needed to export.

**The image is the guest's.** A guest kernel mounts the volume read-write, so whatever runs in the pod can
craft the filesystem (and the files in it) at will. `export` therefore trusts nothing in it:

- It works on a private, sparse copy (in a 0700 directory under the volumes root); the volume's own image is
  never modified. The copy's ext4 journal is replayed first (``e2fsck -E journal_only -p``), so a volume whose
  VMM was killed exports what the guest had committed, as a remount in a pod would show it.
- Every tool that parses guest-made bytes (e2fsck, debugfs, SQLite) runs as ``nobody`` when podbay is root,
  with no new privileges, a cap on its address space, CPU time and file size, no core dumps and a timeout.
- What debugfs reads streams into a file, never into podbay's memory, and stops at the size of the volume's
  image: no file in a volume can hold more than the volume. A huge sparse file is refused, not expanded.
- The database (`memory.db`, the default) must be SQLite: it is exported with its ``-wal`` (and a hot
  ``-journal``, if any), checkpointed into one file and checked with ``PRAGMA integrity_check`` (with
  ``trusted_schema=OFF`` and SQLite's defensive flag where Python has it) in a separate, unprivileged process.
  A failing check raises GuestError and nothing is written at the destination, which appears only, by rename,
  once everything has passed.

**Durability: the database is in WAL mode.** `ensure` creates ``memory.db`` with ``PRAGMA journal_mode=WAL``,
which SQLite records in the file's header (bytes 18-19 are 2), so every connection to it uses the WAL without
asking. With WAL and ``synchronous=FULL`` (SQLite's default unless the application lowers it) each commit's
WAL frames are fsync'd before the commit returns. In a VM the guest's fsync becomes a virtio-blk flush that
QEMU passes on to the host file (``cache=writeback`` honours flushes), so once a commit is acknowledged it is
in the image on the host, and killing the VMM (``kill -9``: a power loss for the guest) loses no acknowledged
commit; the ext4 journal (replayed at the next mount, or by `export`) makes the filesystem's metadata agree.
With ``synchronous=NORMAL`` the WAL is synced only at checkpoints: commits stay atomic and the database
consistent, but the last acknowledged transactions before a crash may be rolled back. (With the rollback
journal — SQLite's default mode without this header — an acknowledged commit was seen to be lost after a VMM
kill -9; WAL lost none.)

**Anonymous volumes.** A pod that asks for a database but names no volume gets ``pod-<12 hex>-db``: the name is
reserved (`check_user_name` refuses it from users) and `reap_anonymous` deletes those whose pod is gone and
that no process holds.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import os
import pwd
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from podbay.errors import Conflict, GuestError, HostError, InvalidSpec, NotFound, Timeout
from podbay.flock import try_flock
from podbay.images.ext4 import make_ext4
from podbay.models import NAME_PATTERN

SAFE_FILE = re.compile(r"^/?[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
DB_FILE = "memory.db"  # at the root of the volume, which the guest mounts at /data
MOUNT_POINT = "/data"
ANONYMOUS_NAME = re.compile(r"pod-[0-9a-f]{12}-db")  # a pod's own volume: f"{pod_id}-db"
SQLITE_HEADER = b"SQLite format 3\0"

# Limits of each external tool that parses guest-made bytes (e2fsck, debugfs, the SQLite check).
TOOL_MEMORY_BYTES = 256 * 2**20  # address space (RLIMIT_AS): far above what they need, far below the host's
TOOL_TIMEOUT_S = 600.0  # wall clock (the CPU-time limit is the same number of seconds)
TOOL_LOG_BYTES = 1 * 2**20  # what a tool may write to its stderr
_TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_READ_CHUNK = 1 * 2**20
_IMAGE = "volume.img"  # the private copy of the image, in the export's directory
_EXPORT_PREFIX = ".export-"  # the export's private directory, under the volumes' root

# Run by `sys.executable -I` in the private directory: when root, it chroots into it and drops to the uid/gid
# given before it opens anything of the guest's (its modules are loaded by then), then checkpoints the WAL into
# the database and checks it. Exit 3 + one line on stdout: the database is refused.
_SQLITE_CHECK = r"""
import os, sqlite3, sys
uid, gid = int(sys.argv[1]), int(sys.argv[2])
if os.geteuid() == 0:
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    except Exception:
        pass
    os.chroot(".")  # SQLite opens the file by its absolute path, whose parents nobody may not traverse
    os.chdir("/")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid:
        sys.exit("could not drop privileges")

def refuse(problem):
    print(problem)
    sys.exit(3)

with open("memory.db", "rb") as db:
    header = db.read(16)
if header != b"SQLite format 3\0":
    refuse("it does not begin with the SQLite header")
try:
    con = sqlite3.connect("file:memory.db?mode=rw", uri=True, isolation_level=None)
    if hasattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE"):
        con.setconfig(sqlite3.SQLITE_DBCONFIG_DEFENSIVE, True)
    con.execute("PRAGMA trusted_schema=OFF")
    con.execute("PRAGMA cell_size_check=ON")
    con.execute("PRAGMA mmap_size=0")
    busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        refuse("its write-ahead log could not be checkpointed")
    problems = [row[0] for row in con.execute("PRAGMA integrity_check(5)")]
    con.close()
except sqlite3.Error as exc:
    refuse(f"SQLite says: {exc}")
if problems != ["ok"]:
    refuse("PRAGMA integrity_check says: " + "; ".join(str(p) for p in problems)[:500])
"""


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: Path
    size_mib: int
    used_kib: int  # host blocks actually allocated (the image is sparse)
    attached: bool


def anonymous_name(pod_id: str) -> str:
    """The volume of a pod that asks for a database without naming a volume (it lives and dies with the pod)."""
    return f"{pod_id}-db"


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, int] = {}

    def image(self, name: str) -> Path:
        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidSpec(
                "volume",
                f"{name!r} is not a valid volume name",
                "use 1-63 characters: lower-case letters, digits, '.', '_' or '-'",
            )
        return self.root / f"{name}.ext4"

    @staticmethod
    def check_user_name(name: str) -> None:
        """Refuse a name a user may not give a volume: an invalid one, or one reserved for a pod's own volume."""
        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidSpec(
                "volume",
                f"{name!r} is not a valid volume name",
                "use 1-63 characters: lower-case letters, digits, '.', '_' or '-'",
            )
        if ANONYMOUS_NAME.fullmatch(name):
            raise InvalidSpec(
                "volume",
                f"{name!r} is reserved: names like pod-<12 hex digits>-db belong to pods' own volumes",
                "choose another name, or give none to get a volume that lives and dies with the pod",
            )

    def ensure(self, name: str, size_mib: int) -> tuple[Path, bool]:
        """The volume's image, created with an empty SQLite database if new. Returns (path, created).

        The database is created in WAL mode, which the file's header keeps (see the module's docstring).
        """
        path = self.image(name)
        if path.exists():
            return path, False
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=f".{name}.") as scratch:
            contents = Path(scratch) / "contents"
            contents.mkdir()
            db = sqlite3.connect(contents / DB_FILE)
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
            finally:
                db.close()  # the last connection: checkpoints and removes -wal and -shm
            if mode != ("wal",):
                raise HostError(f"SQLite did not put the new database of volume {name!r} in WAL mode: {mode}")
            partial = Path(scratch) / "image.ext4"
            make_ext4(partial, size_mib, label=name[:16], journal=True, contents=contents)
            os.replace(partial, path)  # a half-made volume never appears under its name
        return path, True

    def attach(self, name: str) -> None:
        """Take the volume for one pod; a second pod (in any process) gets Conflict until it is detached."""
        fd = self._try_lock(name)
        if fd is None:
            raise Conflict(f"volume {name!r} is attached to another pod; destroy that pod first")
        self._locks[name] = fd

    def lock_fd(self, name: str) -> int | None:
        """The descriptor holding this process's lock on the volume (see VolumeAttachment.lock_fd)."""
        return self._locks.get(name)

    def detach(self, name: str) -> None:
        fd = self._locks.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def mark_guest_written(self, name: str) -> None:
        """Record that a guest kernel mounts this volume read-write (its filesystem is no longer trusted)."""
        self._marker(name).touch()

    def guest_written(self, name: str) -> bool:
        return self._marker(name).exists()

    def _marker(self, name: str) -> Path:
        return self.image(name).with_suffix(".guest-written")

    def list(self) -> list[VolumeInfo]:
        if not self.root.exists():
            return []
        return [self.info(path.stem) for path in sorted(self.root.glob("*.ext4"))]

    def info(self, name: str) -> VolumeInfo:
        path = self._existing(name)
        st = path.stat()
        return VolumeInfo(
            name=name,
            path=path,
            size_mib=st.st_size >> 20,
            used_kib=st.st_blocks // 2,
            attached=self._is_locked(name),
        )

    def delete(self, name: str) -> None:
        self._existing(name)
        if name in self._locks:
            raise Conflict(f"volume {name!r} is attached to a pod; destroy that pod first")
        fd = self._try_lock(name)  # held while the files go, so no pod can attach half-way
        if fd is None:
            raise Conflict(f"volume {name!r} is attached to a pod; destroy that pod first")
        try:
            self._remove_files(name)
        finally:
            os.close(fd)

    def reap_anonymous(self, live_pod_ids: set[str]) -> builtins.list[str]:
        """Delete the pods' own volumes (``pod-<12 hex>-db``) whose pod is not live and that no process holds.

        For a controller that died before destroying its pods: a volume still held (its VMM or runtime still
        runs with the lock) is kept, and so is every named volume. Returns the names deleted. It also removes
        what an export killed half-way left (its private copy of a volume), once no export holds it.
        """
        if not self.root.exists():
            return []
        for leftover in self.root.glob(f"{_EXPORT_PREFIX}*"):
            _remove_if_abandoned(leftover)
        deleted: builtins.list[str] = []
        for path in sorted(self.root.glob("pod-*-db.ext4")):
            name = path.name.removesuffix(".ext4")
            if not ANONYMOUS_NAME.fullmatch(name) or name.removesuffix("-db") in live_pod_ids:
                continue
            if name in self._locks:
                continue
            fd = self._try_lock(name)
            if fd is None:
                continue  # some process still holds it
            try:
                self._remove_files(name)
            finally:
                os.close(fd)
            deleted.append(name)
        return deleted

    def export(self, name: str, destination: Path, file: str = DB_FILE) -> Path:
        """Copy one file out of the volume image to the host (the database by default), without mounting it.

        The image is the guest's to craft: see the module's docstring for what is checked, and how. Raises
        NotFound (no such volume or file), Conflict (a pod holds the volume), GuestError (the file or the
        filesystem is refused), Timeout (a tool ran too long); the destination is written only on success.
        """
        if not SAFE_FILE.match(file) or ".." in file.split("/"):
            raise InvalidSpec("file", f"{file!r} is not a plain path inside the volume", "use e.g. memory.db")
        inner = "/" + file.strip("/")
        path = self._existing(name)
        try:
            self._export(name, path, inner, destination)
        except OSError as exc:  # the host's side: no space for the private copy, a permission...
            raise HostError(f"cannot export {file!r} from volume {name!r}: {exc}") from None
        return destination

    def _export(self, name: str, path: Path, inner: str, destination: Path) -> None:
        is_db = inner == f"/{DB_FILE}"
        with (
            tempfile.TemporaryDirectory(dir=self.root, prefix=_EXPORT_PREFIX, ignore_cleanup_errors=True) as private,
            _Workdir(Path(private)) as work,
        ):
            # The copy is taken under the volume's lock, so no pod can attach (and write) while it is made.
            lock = None if name in self._locks else self._try_lock(name)
            if lock is None:
                raise Conflict(f"volume {name!r} is attached to a running pod; export it after the pod is gone")
            try:
                image_size = path.stat().st_size
                with open(path, "rb") as source:
                    _sparse_copy(source.fileno(), work.create(_IMAGE), image_size)
            finally:
                os.close(lock)
            work.replay_journal(image_size, name)
            main = work.extract(inner, DB_FILE if is_db else "file", image_size, name)
            if main is None:
                shown = inner.lstrip("/")
                raise NotFound(f"cannot export {shown!r} from volume {name!r}: there is no such file in it")
            if is_db:
                for companion in ("-wal", "-journal"):
                    work.extract(inner + companion, DB_FILE + companion, image_size, name)
                work.check_database(image_size, name)
            _publish(main, destination)

    def _existing(self, name: str) -> Path:
        path = self.image(name)
        if not path.exists():
            raise NotFound(f"no volume named {name!r}; it is created by the first pod that asks for it")
        return path

    def _try_lock(self, name: str) -> int | None:
        """A descriptor holding the volume's flock, or None when another holder has it."""
        self.root.mkdir(parents=True, exist_ok=True)
        return try_flock(self.image(name).with_suffix(".lock"))

    def _remove_files(self, name: str) -> None:
        self.image(name).unlink()
        self.image(name).with_suffix(".lock").unlink(missing_ok=True)
        self._marker(name).unlink(missing_ok=True)

    def _is_locked(self, name: str) -> bool:
        if name in self._locks:
            return True
        if not self.image(name).with_suffix(".lock").exists():
            return False
        fd = self._try_lock(name)
        if fd is None:
            return True
        os.close(fd)
        return False


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) of `nobody` when podbay runs as root (the tools drop to it), else None (they run as we do)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


class _Workdir:
    """The export's private directory (0700; owned by `nobody` when the tools run as it).

    Files are created here by podbay (O_EXCL, no symlinks followed) before the tool that fills them runs, and
    are read back only through the descriptors kept from then: nothing a tool may have put here is opened by
    path.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_as = _unprivileged()
        self.fds: dict[str, int] = {}
        self._dir = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fcntl.flock(self._dir, fcntl.LOCK_EX)  # in use: reap_anonymous leaves it alone
        os.fchmod(self._dir, 0o700)
        if self.run_as is not None:
            os.fchown(self._dir, *self.run_as)

    def __enter__(self) -> _Workdir:
        return self

    def __exit__(self, *_: object) -> None:
        for fd in [*self.fds.values(), self._dir]:
            os.close(fd)
        self.fds.clear()

    def create(self, name: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=self._dir)
        self.fds[name] = fd
        if self.run_as is not None:
            os.fchown(fd, *self.run_as)
        return fd

    def run(
        self, argv: list[str], what: str, stdout: int | None, file_limit: int, drop: bool = True
    ) -> tuple[int, str]:
        """Run a tool over the guest's bytes, in this directory, confined: (exit status, its stderr's start).

        *stdout* None: into the log with stderr. *drop* False: the command drops privileges itself.
        """
        confined = [
            _tool("prlimit"),
            f"--as={TOOL_MEMORY_BYTES}",
            f"--cpu={int(TOOL_TIMEOUT_S)}",
            f"--fsize={file_limit}",
            "--core=0",
        ]
        if self.run_as is not None and drop:
            uid, gid = self.run_as
            confined += [_tool("setpriv"), f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs"]
        env = {"PATH": _TOOL_PATH, "LC_ALL": "C", "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}
        with tempfile.TemporaryFile(dir=self.path) as log:
            try:
                result = subprocess.run(
                    [*confined, *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log if stdout is None else stdout,
                    stderr=log,
                    cwd=self.path,
                    env=env,
                    timeout=TOOL_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise Timeout(f"{what} ran for more than {TOOL_TIMEOUT_S:.0f} s; nothing was exported") from None
            log.seek(0)
            errors = log.read(TOOL_LOG_BYTES).decode(errors="replace")
        return result.returncode, errors

    def replay_journal(self, image_size: int, volume: str) -> None:
        """Replay the copy's ext4 journal, as a mount would (the guest may have been killed mid-write)."""
        status, output = self.run(
            [_tool("e2fsck"), "-E", "journal_only", "-p", _IMAGE],
            "e2fsck (replaying the volume's journal)",
            None,
            image_size,
        )
        if status not in (0, 1, 2):  # 0: nothing to do, 1: replayed, 2: replayed ("reboot": a mounted root)
            raise GuestError(
                f"cannot replay the journal of volume {volume!r} (e2fsck exit status {status}): "
                f"{_last_line(output)}; its filesystem is damaged, nothing was exported"
            )

    def extract(self, inner: str, as_name: str, image_size: int, volume: str) -> int | None:
        """Copy the regular file *inner* of the (replayed) image here as *as_name*: its descriptor, or None when
        the volume has no such file. Refused when it would hold more bytes than the whole volume."""
        shown = inner.lstrip("/")
        size = self._regular_file_size(inner, volume)
        if size is None:
            return None
        crafted = "the guest crafted its filesystem: nothing was exported"
        refused = f"cannot export {shown!r} from volume {volume!r}"
        if size >= image_size:
            raise GuestError(
                f"{refused}: its inode claims {size} bytes, more than the whole volume ({image_size}); {crafted}"
            )
        out = self.create(as_name)
        # debugfs writes into the file, and RLIMIT_FSIZE stops it (SIGXFSZ) at the volume's size.
        status, errors = self.run(
            [_tool("debugfs"), "-c", "-R", f"cat {inner}", _IMAGE], f"debugfs (reading {inner})", out, image_size
        )
        written = os.fstat(out).st_size
        if status == -signal.SIGXFSZ or written >= image_size:
            raise GuestError(
                f"{refused}: it reads as more bytes than the whole volume ({image_size}), debugfs stopped; {crafted}"
            )
        problems = _problems(errors)
        if status != 0 or problems or written != size:
            reason = problems[-1] if problems else f"debugfs exit status {status}, {written} of {size} bytes read"
            raise GuestError(f"{refused}: {reason}; nothing was exported")
        return out

    def _regular_file_size(self, inner: str, volume: str) -> int | None:
        """The size *inner*'s inode claims, or None when there is no such file (GuestError if not regular)."""
        shown = inner.lstrip("/")
        with tempfile.TemporaryFile(dir=self.path) as stat:
            # Only the first lines matter: a heavily fragmented file's list of extents is cut off at 64 KiB.
            status, errors = self.run(
                [_tool("debugfs"), "-c", "-R", f"stat {inner}", _IMAGE],
                f"debugfs (looking up {inner})",
                stat.fileno(),
                64 * 2**10,
            )
            stat.seek(0)
            head = stat.read(4096).decode(errors="replace")
        problems = _problems(errors)
        if any("File not found" in line for line in problems):
            return None
        kind = re.search(r"Type:\s+(\S+)", head)
        size = re.search(r"Group:\s+\d+\s+(?:Project:\s+\d+\s+)?Size:\s+(\d+)", head)
        if kind is None or size is None:
            reason = problems[-1] if problems else f"debugfs exit status {status}, no inode read"
            raise GuestError(f"cannot export {shown!r} from volume {volume!r}: {reason}; nothing was exported")
        if kind.group(1) != "regular":
            raise GuestError(
                f"cannot export {shown!r} from volume {volume!r}: it is a {kind.group(1)}, not a regular file; "
                "nothing was exported"
            )
        return int(size.group(1))

    def check_database(self, image_size: int, volume: str) -> None:
        """Checkpoint the WAL into the exported database and check it, in an unprivileged SQLite process."""
        uid, gid = self.run_as if self.run_as is not None else (os.getuid(), os.getgid())
        refused = f"{DB_FILE} of volume {volume!r} is not a sound SQLite database"
        if not any(self._size(name) for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-journal")):
            return  # an empty file is SQLite's empty database (volumes made before WAL, never written)
        if os.pread(self.fds[DB_FILE], len(SQLITE_HEADER), 0) != SQLITE_HEADER:
            raise GuestError(f"{refused}: it does not begin with the SQLite header; nothing was exported")
        with tempfile.TemporaryFile(dir=self.path) as said:
            status, errors = self.run(
                [sys.executable, "-I", "-c", _SQLITE_CHECK, str(uid), str(gid)],
                "the SQLite check",
                said.fileno(),
                2 * image_size,  # the database grows by what the WAL held
                drop=False,  # Python starts as podbay's user (to read its own files), then drops to nobody
            )
            said.seek(0)
            verdict = said.read(1000).decode(errors="replace").strip()
        if status == 3:
            raise GuestError(f"{refused}: {verdict}; nothing was exported")
        if status != 0:
            raise GuestError(
                f"{refused}: the check failed (exit status {status}): {_last_line(errors)}; nothing was exported"
            )
        if os.pread(self.fds[DB_FILE], len(SQLITE_HEADER), 0) != SQLITE_HEADER:  # read again, by podbay itself
            raise GuestError(f"{refused}: it does not begin with the SQLite header; nothing was exported")

    def _size(self, name: str) -> int:
        return os.fstat(self.fds[name]).st_size if name in self.fds else 0


def _remove_if_abandoned(directory: Path) -> None:
    """Remove an export's private directory that no export holds (flock) and that is not brand new."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if time.time() - os.fstat(fd).st_mtime < 60:
            return  # its export may not have locked it yet
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(directory, ignore_errors=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_TOOL_PATH}")
    if found is None:
        package = "e2fsprogs" if name in ("e2fsck", "debugfs") else "util-linux"
        raise HostError(f"{name} is not installed; install {package} to export volumes")
    return found


def _problems(stderr: str) -> list[str]:
    """debugfs exits 0 whatever happens; its errors are the stderr lines with a colon (the banner has none)."""
    return [line.strip() for line in stderr.splitlines() if ":" in line]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _sparse_copy(source: int, target: int, size: int) -> None:
    """Copy *size* bytes, only the data regions (SEEK_DATA/SEEK_HOLE): holes stay holes and are never read."""
    os.ftruncate(target, size)
    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                break
            raise
        end = min(os.lseek(source, start, os.SEEK_HOLE), size)
        _copy_range(source, target, start, end - start)
        offset = end


def _copy_range(source: int, target: int, offset: int, count: int) -> None:
    """Copy bytes [offset, offset+count) at the same offset, in the kernel where it can (a bounded buffer else)."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(source, target, count - done, offset + done, offset + done)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            chunk = os.pread(source, min(_READ_CHUNK, count - done), offset + done)
            n = os.pwrite(target, chunk, offset + done) if chunk else 0
        if n == 0:  # the source is shorter than it was
            return
        done += n


def _publish(source: int, destination: Path) -> None:
    """Write *source*'s bytes at *destination*: into a new file beside it, renamed only once complete."""
    partial = destination.parent / f".{destination.name}.{secrets.token_hex(4)}.partial"
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        target = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            size = os.fstat(source).st_size
            _copy_range(source, target, 0, size)
            if os.fstat(target).st_size != size:
                raise HostError(f"cannot write {destination}: the copy came out short")
            os.fsync(target)
        finally:
            os.close(target)
        os.replace(partial, destination)
    except OSError as exc:
        raise HostError(f"cannot write {destination}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()  # left only if something failed
