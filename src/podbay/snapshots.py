"""Named snapshots of pods, kept under `<state>/snapshots/NAME/` (user state: they outlive every process).

The files are the QEMU mechanism's (`isolation/qemu/snapshot.py`: RAM, device state, layer and volume copies,
`meta.json` written last); this module names, lists and removes them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from podbay.errors import InvalidSpec, NotFound
from podbay.isolation.qemu.snapshot import Snapshot
from podbay.models import NAME_PATTERN, SnapshotInfo

NAME = re.compile(NAME_PATTERN)


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidSpec(
                "name",
                f"{name!r} is not a snapshot name",
                "use 1-63 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        return self.root / name

    def list(self) -> list[SnapshotInfo]:
        if not self.root.exists():
            return []
        return [describe(path.name, Snapshot.load(path)) for path in sorted(self.root.iterdir()) if _whole(path)]

    def remove(self, name: str) -> None:
        path = self.path(name)
        if not path.exists():
            raise NotFound(f"no snapshot {name!r}; `podbay snapshot ls` lists them")
        shutil.rmtree(path)  # restored pods keep working: they map or copied what they need


def load_snapshot(store: SnapshotStore, name: str) -> Snapshot:
    """The saved files of snapshot `name` (QEMU's mechanism: internal, restore() takes them)."""
    path = store.path(name)
    if not path.exists():
        known = ", ".join(info.name for info in store.list()) or "none yet"
        raise NotFound(f"no snapshot {name!r} (snapshots: {known}); take one with pod.snapshot({name!r})")
    return Snapshot.load(path)


def describe(name: str, snapshot: Snapshot) -> SnapshotInfo:
    meta = snapshot.to_meta()
    disk = sum(part.stat().st_blocks * 512 for part in snapshot.path.iterdir() if part.is_file())
    return SnapshotInfo(
        name=name,
        path=str(snapshot.path),
        created_at=snapshot.meta.stat().st_mtime,
        vcpus=snapshot.vcpus,
        memory_mib=snapshot.memory_mib,
        volumes=[str(disk.target) for disk in snapshot.volumes],
        ram=str(meta["ram"]),
        disk_mib=disk / (1 << 20),
        timings=snapshot.timings,
    )


def _whole(path: Path) -> bool:
    """A finished snapshot: not a save in progress (those are hidden `.NAME.partial-*` directories)."""
    return path.is_dir() and not path.name.startswith(".") and (path / "meta.json").exists()
