"""Per-sandbox host uids: each VMM runs under a uid (and a gid of the same number) that no other process uses.

A VMM escape then reaches nothing of another pod's: not its processes (no signals, no ptrace, no /proc), not its
files. The uids come from a reserved range (:data:`FIRST_UID` ... ``FIRST_UID + COUNT - 1``) that no account of
the host uses. One is taken with :func:`allocate_uid` and held by a ``flock`` on ``<lock_dir>/<uid>.lock``: the
allocation is unique across every process on the host that allocates from the same directory (by default
:data:`LOCK_DIR`, host-wide, on a tmpfs: a reboot ends every VMM and every lock together).

The lease's descriptor is meant to be passed to the process that keeps running as the uid (``pass_fds``), so the
uid stays reserved while that process lives, even if the controller dies. Since a process may also outlive every
holder of the lock (the lock's last holder killed, the VMM not), a uid is skipped while any process runs as it
(any of its real, effective, saved or filesystem uids or gids, read from ``/proc/*/status``), and while an
account of the host has it.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from podbay.errors import QuotaExceeded
from podbay.flock import try_flock

FIRST_UID = 1_000_000
COUNT = 65_536
LOCK_DIR = Path("/run/podbay/uids")


@dataclass
class UidLease:
    """A uid (and the gid of the same number) reserved for one sandbox until :meth:`release`."""

    uid: int
    gid: int
    fd: int  # holds the flock; inheritable only where passed explicitly (pass_fds)
    lock_path: Path
    released: bool = field(default=False, compare=False)

    def release(self) -> None:
        """Give the uid back; safe to call twice. Call it once nothing runs as the uid any more."""
        if self.released:
            return
        self.released = True
        os.close(self.fd)  # the lock goes with the last descriptor of this open file (a child may hold one too)


def allocate_uid(lock_dir: Path = LOCK_DIR, first: int = FIRST_UID, count: int = COUNT) -> UidLease:
    """Reserve the lowest uid of ``[first, first + count)`` that is neither locked, nor in use, nor an account."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    busy: set[int] = set()  # from the latest scan of /proc
    for uid in range(first, first + count):
        if uid in busy or _is_account(uid):
            continue
        lease = _try_lock(lock_dir, uid)
        if lease is None:
            continue
        # Scanned once the lock is held: a process that runs as the uid without the lock (all its holders dead)
        # cannot be missed, and no process of ours can start as the uid from now on.
        busy = ids_in_use()
        if uid in busy:
            lease.release()
            continue
        return lease
    raise QuotaExceeded(
        f"no free uid in {first}..{first + count - 1}: each is locked in {lock_dir} or used by a running process"
    )


def ids_in_use() -> set[int]:
    """Every uid and gid (real, effective, saved, filesystem) of every process on the host, zombies included."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile
        for line in status.splitlines():
            if line.startswith(("Uid:", "Gid:")):
                found.update(int(value) for value in line.split()[1:])
    return found


def _is_account(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
        except KeyError:
            continue
        return True
    return False


def _try_lock(lock_dir: Path, uid: int) -> UidLease | None:
    path = lock_dir / f"{uid}.lock"
    fd = try_flock(path)
    return UidLease(uid=uid, gid=uid, fd=fd, lock_path=path) if fd is not None else None
