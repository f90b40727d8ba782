"""The per-sandbox uid allocator: locks in a private directory, real processes (and, as root, real uids)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podbay.errors import QuotaExceeded
from podbay.isolation.uids import COUNT, FIRST_UID, UidLease, allocate_uid, ids_in_use

# The top of the reserved range, where this host's pods are least likely to run while the tests do.
FIRST = FIRST_UID + COUNT - 16
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def leases() -> Iterator[list[UidLease]]:
    taken: list[UidLease] = []
    yield taken
    for lease in taken:
        lease.release()


def allocate(lock_dir: Path, leases: list[UidLease], count: int = 8) -> UidLease:
    lease = allocate_uid(lock_dir, first=FIRST, count=count)
    leases.append(lease)
    return lease


def running(command: list[str], **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, **options)


def test_two_allocations_differ_and_gid_is_uid(tmp_path: Path, leases: list[UidLease]) -> None:
    first, second = allocate(tmp_path, leases), allocate(tmp_path, leases)
    assert first.uid != second.uid
    assert FIRST <= first.uid < FIRST + 8 and FIRST <= second.uid < FIRST + 8
    assert (first.gid, second.gid) == (first.uid, second.uid)
    assert first.lock_path == tmp_path / f"{first.uid}.lock"
    assert not os.get_inheritable(first.fd), "the lock reaches only the children it is passed to"


def test_a_uid_locked_by_another_process_is_skipped(tmp_path: Path, leases: list[UidLease]) -> None:
    holder = running([sys.executable, "-c", HOLD_LOCK, str(tmp_path / f"{FIRST}.lock")])
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert allocate(tmp_path, leases).uid == FIRST + 1
    finally:
        holder.kill()
        holder.wait()
    assert allocate(tmp_path, leases).uid == FIRST, "the holder's death freed it"


def test_release_frees_the_uid_and_is_idempotent(tmp_path: Path, leases: list[UidLease]) -> None:
    lease = allocate_uid(tmp_path, first=FIRST, count=8)
    assert lease.uid == FIRST
    lease.release()
    lease.release()
    assert allocate(tmp_path, leases).uid == FIRST


def test_a_child_given_the_descriptor_keeps_the_uid_after_the_parent_releases(tmp_path: Path) -> None:
    lease = allocate_uid(tmp_path, first=FIRST, count=1)
    child = running(["sleep", "60"], pass_fds=[lease.fd])
    try:
        lease.release()  # as a controller that dies while its VMM lives
        with pytest.raises(QuotaExceeded, match=rf"no free uid in {FIRST}\.\.{FIRST}: each is locked in {tmp_path}"):
            allocate_uid(tmp_path, first=FIRST, count=1)
    finally:
        child.kill()
        child.wait()
    allocate_uid(tmp_path, first=FIRST, count=1).release()


@pytest.mark.skipif(os.geteuid() != 0, reason="running a process under another uid needs root")
def test_a_uid_that_a_process_runs_as_is_skipped_even_unlocked(tmp_path: Path, leases: list[UidLease]) -> None:
    process = running(["sleep", "60"], user=FIRST, group=FIRST, extra_groups=[])
    try:
        assert FIRST in ids_in_use()
        assert allocate(tmp_path, leases).uid == FIRST + 1
    finally:
        process.kill()
        process.wait()
    assert FIRST not in ids_in_use()
    assert allocate(tmp_path, leases).uid == FIRST, "not left locked by the refused attempt"


def test_accounts_of_the_host_are_never_allocated(tmp_path: Path) -> None:
    with pytest.raises(QuotaExceeded):
        allocate_uid(tmp_path, first=0, count=1)  # root


def test_the_lock_directory_is_made_private(tmp_path: Path, leases: list[UidLease]) -> None:
    lock_dir = tmp_path / "run" / "uids"
    allocate(lock_dir, leases)
    assert lock_dir.stat().st_mode & 0o777 == 0o700
