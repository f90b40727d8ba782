"""A pod's own volume given to an already running template clone (podbay.isolation.qemu.attach), with real VMs.

The template is built with command.py's own layout (a named format node on each drive: the swap is a
`blockdev-reopen`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from podbay.bench.leaks import processes_mentioning
from podbay.errors import Conflict, InvalidSpec
from podbay.flock import try_flock
from podbay.images import make_ext4
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.attach import attach_volumes, free_slots
from podbay.isolation.qemu.snapshot import start_clone
from podbay.isolation.qemu.template import ClonedSandbox, Template

pytestmark = pytest.mark.integration
WRITE_ROW = (
    "import sqlite3; db = sqlite3.connect('/data/memory.db'); "
    "db.execute('create table notes (text)'); db.execute(\"insert into notes values ('from the guest')\"); "
    "db.commit(); db.close()"
)


def config(state: Path, name: str) -> SandboxConfig:
    run_dir = state / name
    run_dir.mkdir(parents=True)
    return SandboxConfig(pod_id=name, run_dir=run_dir, vcpus=1, memory_mib=256, layer=None)


def holders(path: Path) -> list[int]:
    """Processes with a descriptor open on `path` (a volume passed by descriptor is on no command line)."""
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(link) == str(path) for link in fd_dir.iterdir()):
                found.append(int(fd_dir.parent.name))
        except OSError:
            continue  # gone meanwhile
    return found


def qemu_files(sandbox: ClonedSandbox) -> set[str]:
    links = set()
    for link in Path(f"/proc/{sandbox.info.pid}/fd").iterdir():
        try:
            links.add(os.readlink(link))
        except OSError:
            continue
    return links


def read_rows(image: Path, work: Path) -> list[tuple[str]]:
    """The `notes` rows of /memory.db in an ext4 image, read on the host (debugfs: nothing mounted)."""
    copy = work / "memory.db"
    subprocess.run(["debugfs", "-R", f"dump /memory.db {copy}", str(image)], check=True, capture_output=True)
    db = sqlite3.connect(copy)
    try:
        return db.execute("select text from notes").fetchall()
    finally:
        db.close()


async def run(sandbox: ClonedSandbox, argv: list[str]) -> str:
    result = await (await sandbox.channel.start_process(argv)).wait()
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def test_a_running_clone_gets_its_volume_and_qemu_holds_its_lock(template: Template, tmp_path: Path) -> None:
    state = tmp_path / "pods"
    image = tmp_path / "volume.ext4"
    make_ext4(image, 64, "podbay-volume")  # larger than the placeholder: the guest must see 64 MiB
    lock_file = image.with_suffix(".lock")

    async def scenario() -> None:
        clone = await start_clone(template, config(state, "pod-aaaaaaaaaaaa"))
        lock_fd = try_flock(lock_file)
        assert lock_fd is not None
        try:
            assert clone.guest_mounts == []
            volume = VolumeAttachment(name="mine", image=image, target="/data", lock_fd=lock_fd)
            mounts = await attach_volumes(clone, [volume])
            assert mounts == [{"source": "/dev/vdc", "target": "/data", "fstype": "ext4", "size": 64 << 20}]
            assert clone.guest_mounts == mounts
            # The placeholder is released; QEMU has the volume open (by descriptor: it cannot open paths).
            files = qemu_files(clone)
            assert str(image) in files and not any(name.endswith("slot0.img") for name in files)
            await clone.channel.request("init", mounts=mounts, clock=time.time())
            assert " /data ext4 " in await run(clone, ["cat", "/proc/mounts"])
            await run(clone, ["python3", "-c", WRITE_ROW])
            # No slot is left for a second volume: refused without touching QEMU's disks.
            with pytest.raises(InvalidSpec, match="volumes"):
                await attach_volumes(clone, [VolumeAttachment(name="more", image=image, target="/more")])
            # The controller lets go of everything (as if it died): QEMU still holds the volume's lock.
            os.close(lock_fd)
            lock_fd = -1
            await clone._qmp.disconnect()
            assert try_flock(lock_file) is None, "QEMU must hold the volume's lock"
            assert await run(clone, ["python3", "-c", "import os; print(os.listdir('/data'))"])
            await clone.channel.request("shutdown")  # unmounts: what the guest wrote is on the host's disk
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)
            await clone.destroy()

    asyncio.run(scenario())
    assert read_rows(image, tmp_path) == [("from the guest",)]
    released = try_flock(lock_file)
    assert released is not None, "the lock goes with QEMU"
    os.close(released)
    assert processes_mentioning(state) == [] and holders(image) == []
    shutil.rmtree(state)


def test_a_volume_another_clone_holds_is_refused(template: Template, tmp_path: Path) -> None:
    state = tmp_path / "pods"
    image = tmp_path / "volume.ext4"
    make_ext4(image, 32, "podbay-volume")

    async def scenario() -> None:
        clones: list[ClonedSandbox] = []
        try:
            for name in ("pod-bbbbbbbbbbbb", "pod-cccccccccccc"):
                clones.append(await start_clone(template, config(state, name)))
            first, second = clones
            # No flock passed: QEMU's own image lock is what stops the second VMM.
            await attach_volumes(first, [VolumeAttachment(name="shared", image=image, target="/data")])
            with pytest.raises(Conflict, match="'shared' is in use by another VM"):
                await attach_volumes(second, [VolumeAttachment(name="shared", image=image, target="/data")])
            # The refused clone keeps its placeholder and works; the first keeps the volume.
            assert [(slot.drive, slot.node) for slot in await free_slots(second)] == [("vol0", "vol0-format")]
            assert await free_slots(first) == []
            assert holders(image) == [first.info.pid]
            assert await run(second, ["true"]) == ""
            await first.channel.request("init", mounts=first.guest_mounts, clock=time.time())
            assert " /data ext4 " in await run(first, ["cat", "/proc/mounts"])
        finally:
            for clone in clones:
                await clone.destroy()

    asyncio.run(scenario())
    assert processes_mentioning(state) == [] and holders(image) == []
    shutil.rmtree(state)
