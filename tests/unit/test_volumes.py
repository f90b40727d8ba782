"""VolumeStore on real ext4 images (mkfs.ext4, debugfs; no VM): create, lock, export, delete."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from podbay import Conflict, InvalidSpec, NotFound
from podbay.state.volumes import VolumeStore


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
