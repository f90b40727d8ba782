"""VolumeStore on real ext4 images (mkfs.ext4, debugfs; no VM): create, lock, export, delete."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podbay import Conflict, GuestError, InvalidSpec, NotFound
from podbay.images.ext4 import make_ext4
from podbay.state.volumes import VolumeStore, anonymous_name


@pytest.fixture
def store(tmp_path: Path) -> VolumeStore:
    return VolumeStore(tmp_path / "volumes")


def test_a_new_volume_holds_an_empty_database_that_exports(store: VolumeStore, tmp_path: Path) -> None:
    path, created = store.ensure("notes", 32)
    assert created and path.exists()
    assert store.ensure("notes", 32) == (path, False)
    exported = store.export("notes", tmp_path / "out" / "memory.db")
    assert sqlite3.connect(exported).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_export_refuses_while_attached_and_names_missing_files(store: VolumeStore, tmp_path: Path) -> None:
    store.ensure("notes", 32)
    store.attach("notes")
    with pytest.raises(Conflict):
        store.export("notes", tmp_path / "x.db")
    with pytest.raises(Conflict):
        VolumeStore(store.root).attach("notes")  # a second holder, as another process would be
    store.detach("notes")
    with pytest.raises(NotFound, match=r"nope\.db"):
        store.export("notes", tmp_path / "x.db", "nope.db")
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("file", ["../etc/passwd", "memory.db /etc/shadow", "a;b", ""])
def test_export_refuses_paths_that_are_not_plain(store: VolumeStore, tmp_path: Path, file: str) -> None:
    store.ensure("notes", 32)
    with pytest.raises(InvalidSpec, match="file"):
        store.export("notes", tmp_path / "x.db", file)


def test_delete_removes_the_image_and_its_records(store: VolumeStore) -> None:
    store.ensure("notes", 32)
    store.mark_guest_written("notes")
    store.delete("notes")
    assert store.list() == [] and list(store.root.iterdir()) == []
    with pytest.raises(NotFound):
        store.delete("notes")


# --- helpers: volumes made from a host directory (what a guest could have left in its volume) ---


def volume_from(store: VolumeStore, name: str, contents: Path, size_mib: int = 64) -> Path:
    """Install an ext4 image made from *contents* as the volume *name* (mke2fs -d keeps sparse files sparse)."""
    store.root.mkdir(parents=True, exist_ok=True)
    image = store.image(name)
    make_ext4(image, size_mib, label=name[:16], journal=True, contents=contents)
    return image


def wal_database(directory: Path, rows: int) -> None:
    """A WAL database whose rows are all still in memory.db-wal: written by a process that died before any
    checkpoint (its connection never closed), as a guest killed mid-work leaves it."""
    directory.mkdir(parents=True, exist_ok=True)
    script = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "assert db.execute('PRAGMA journal_mode=WAL').fetchone() == ('wal',)\n"
        "db.execute('PRAGMA wal_autocheckpoint=0')\n"
        "db.execute('CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)')\n"
        "for i in range(int(sys.argv[2])):\n"
        "    db.execute('INSERT INTO notes (body) VALUES (?)', (f'note {i}',))\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(directory / "memory.db"), str(rows)], check=True)
    (directory / "memory.db-shm").unlink(missing_ok=True)  # the guest's wal-index is never exported


def rows_of(database: Path) -> list[str]:
    return [body for (body,) in sqlite3.connect(database).execute("SELECT body FROM notes ORDER BY id")]


# --- WAL mode, checkpointed exports ---


def test_a_new_database_is_in_wal_mode_by_its_header(store: VolumeStore, tmp_path: Path) -> None:
    store.ensure("notes", 32)
    exported = store.export("notes", tmp_path / "memory.db")
    header = exported.read_bytes()[:100]
    assert header.startswith(b"SQLite format 3\0")
    assert (header[18], header[19]) == (2, 2)  # write and read versions 2: WAL, whoever opens it
    assert sqlite3.connect(exported).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_export_checkpoints_the_write_ahead_log_into_the_file(store: VolumeStore, tmp_path: Path) -> None:
    contents = tmp_path / "contents"
    wal_database(contents, rows=200)
    assert (contents / "memory.db-wal").stat().st_size > 0
    image = volume_from(store, "notes", contents)
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    out = tmp_path / "out"
    exported = store.export("notes", out / "memory.db")
    assert sorted(p.name for p in out.iterdir()) == ["memory.db"]  # one file, no -wal beside it
    assert rows_of(exported) == [f"note {i}" for i in range(200)]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before  # the volume itself is untouched


def test_export_of_another_file_and_refusal_of_what_is_not_a_regular_file(store: VolumeStore, tmp_path: Path) -> None:
    contents = tmp_path / "contents"
    (contents / "memory.db").mkdir(parents=True)  # a directory where the database should be
    (contents / "logs").mkdir()
    (contents / "logs" / "run.txt").write_bytes(b"line\n" * 1000)
    volume_from(store, "odd", contents)
    assert store.export("odd", tmp_path / "run.txt", "logs/run.txt").read_bytes() == b"line\n" * 1000
    with pytest.raises(GuestError, match="not a regular file"):
        store.export("odd", tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()


# --- names reserved for pods' own volumes, and their reaping ---


def test_anonymous_names_are_reserved(store: VolumeStore) -> None:
    assert anonymous_name("pod-0123456789ab") == "pod-0123456789ab-db"
    with pytest.raises(InvalidSpec, match="reserved"):
        VolumeStore.check_user_name("pod-0123456789ab-db")
    with pytest.raises(InvalidSpec, match="volume"):
        store.check_user_name("Bad/Name")
    for fine in ("notes", "pod-db", "pod-0123456789ab-dbx", "pod-0123456789ab"):
        VolumeStore.check_user_name(fine)


def test_reap_anonymous_deletes_only_unheld_volumes_of_dead_pods(store: VolumeStore) -> None:
    dead, held, live = "pod-00000000000a", "pod-00000000000b", "pod-00000000000c"
    for name in (anonymous_name(dead), anonymous_name(held), anonymous_name(live), "notes", "pod-notes-db"):
        store.ensure(name, 16)
    store.mark_guest_written(anonymous_name(dead))
    holder = VolumeStore(store.root)  # another process's store: its VMM still holds the volume
    holder.attach(anonymous_name(held))
    try:
        assert store.reap_anonymous({live}) == [anonymous_name(dead)]
        assert sorted(info.name for info in store.list()) == sorted(
            [anonymous_name(held), anonymous_name(live), "notes", "pod-notes-db"]
        )
        assert not list(store.root.glob(f"{anonymous_name(dead)}.*"))  # its lock and marker went too
    finally:
        holder.detach(anonymous_name(held))
    assert store.reap_anonymous({live}) == [anonymous_name(held)]  # once its holder is gone
    assert store.reap_anonymous(set()) == [anonymous_name(live)]
    assert sorted(info.name for info in store.list()) == ["notes", "pod-notes-db"]


def test_reap_anonymous_removes_what_a_killed_export_left(store: VolumeStore) -> None:
    store.root.mkdir(parents=True)
    abandoned, running = store.root / ".export-abandoned", store.root / ".export-running"
    for directory in (abandoned, running):
        directory.mkdir()
        (directory / "volume.img").write_bytes(b"\0" * 4096)
        os.utime(directory, (time.time() - 3600, time.time() - 3600))
    held = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running export holds its directory
        assert store.reap_anonymous(set()) == []
        assert not abandoned.exists() and running.exists()
    finally:
        os.close(held)
