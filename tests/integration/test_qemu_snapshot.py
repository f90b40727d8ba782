"""Snapshot, restore and fork of QEMU pods with real VMs: one template (in a private directory), source pods
cloned from it with RAM files of their own, snapshots and children under tmp_path.

What a pod had (a file on its layer, a row in its SQLite volume, a value in its tmpfs) must be in every pod
restored from it; nothing a restored pod or a fork child does may reach the snapshot, the parent or a sibling;
a damaged snapshot is refused with a clear error; a failed save leaves the source running and nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay.bench.leaks import processes_mentioning
from podbay.errors import Conflict, GuestError, NotFound
from podbay.images import make_ext4
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.snapshot import (
    Snapshot,
    SnapshotSandbox,
    fork,
    save_snapshot,
    start_clone,
    start_from_snapshot,
)
from podbay.isolation.qemu.template import Template

pytestmark = pytest.mark.integration
MIB = 256
INSERT = (
    "import sqlite3, sys; c = sqlite3.connect('/data/db'); c.execute('insert into t values (?)', (sys.argv[1],)); "
    "c.commit()"
)
SELECT = "import sqlite3; print(sorted(r[0] for r in sqlite3.connect('/data/db').execute('select x from t')))"


@pytest.fixture
def ram_root() -> Iterator[Path]:
    """A private directory in tmpfs for the pods' RAM files: every one must be gone after the test."""
    root = Path(tempfile.mkdtemp(prefix="podbay-test-ram-", dir="/dev/shm"))
    yield root
    left = list(root.iterdir())
    shutil.rmtree(root)
    assert left == [], "every pod's RAM file is removed with the pod"


def config(state: Path, name: str, volumes: tuple[VolumeAttachment, ...] = ()) -> SandboxConfig:
    run_dir = state / name
    run_dir.mkdir(parents=True)
    return SandboxConfig(pod_id=name, run_dir=run_dir, vcpus=1, memory_mib=MIB, layer=None, volumes=volumes)


async def run(sandbox: SnapshotSandbox, argv: list[str]) -> str:
    result = await (await sandbox.channel.start_process(argv, timeout=60)).wait()
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


async def source_pod(template: Template, state: Path, ram_root: Path, volume_image: Path) -> SnapshotSandbox:
    """A pod with a SQLite volume at /data holding one committed row ("before")."""
    make_ext4(volume_image, 64, "podbay-volume")
    volume = VolumeAttachment(name="db", image=volume_image, target="/data")
    pod = await start_clone(template, config(state, "pod-source", (volume,)), owned=True, memory_root=ram_root)
    try:
        await pod.channel.request("init", env={}, mounts=pod.guest_mounts, clock=time.time())
        await run(pod, ["python3", "-c", "import sqlite3; sqlite3.connect('/data/db').execute('create table t(x)')"])
        await run(pod, ["python3", "-c", INSERT, "before"])
    except BaseException:
        await pod.destroy()
        raise
    return pod


def digest(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def guest_file(image: Path, path: str) -> bytes:
    """A file of an ext4 image, read on the host without mounting it."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True, check=True)
    return done.stdout


def test_a_restored_pod_has_what_the_pod_had_and_never_writes_the_snapshot(
    template: Template, tmp_path: Path, ram_root: Path
) -> None:
    state = tmp_path / "pods"
    dest = tmp_path / "snapshot"

    async def scenario() -> None:
        pod = await source_pod(template, state, ram_root, tmp_path / "volume.ext4")
        restored: SnapshotSandbox | None = None
        try:
            # Not synced: only the freeze before the save puts these on the disks the snapshot copies.
            await run(pod, ["sh", "-c", "echo layer-data > /work/note; echo volume-data > /data/note"])
            await run(pod, ["sh", "-c", "echo ram-data > /dev/shm/note"])
            snapshot = await save_snapshot(pod, dest)
            assert snapshot.ram == "file" and set(snapshot.frozen) == {"layer", "/data"}
            # The source runs on, thawed (a write to its volume would block while frozen).
            await run(pod, ["sh", "-c", "echo after > /data/after && sync"])
            before = digest(dest)
            restored = await start_from_snapshot(dest, config(state, "pod-restored"), memory_root=ram_root)
            assert await run(restored, ["cat", "/work/note", "/data/note", "/dev/shm/note"]) == (
                "layer-data\nvolume-data\nram-data"
            )
            assert await run(restored, ["python3", "-c", SELECT]) == "['before']"
            assert await run(restored, ["hostname"]) == "pod-restored"
            assert await run(restored, ["ls", "/data"]) == "db\nlost+found\nnote", "the source's later write"
            # The restored pod writes everywhere; the snapshot stays as it was.
            await run(restored, ["python3", "-c", INSERT, "restored"])
            await run(restored, ["sh", "-c", "echo changed > /work/note; echo changed > /dev/shm/note; sync"])
            assert await run(restored, ["python3", "-c", SELECT]) == "['before', 'restored']"
            assert digest(dest) == before
        finally:
            for sandbox in (restored, pod):
                if sandbox is not None:
                    await sandbox.destroy()

    asyncio.run(scenario())
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["ram"] == "file" and meta["memory_mib"] == MIB
    # The frozen copy is a consistent filesystem on its own: the host reads the database and the unsynced note.
    volume = dest / "vol0.img"
    assert guest_file(volume, "/note") == b"volume-data\n"
    database = tmp_path / "copy.db"
    database.write_bytes(guest_file(volume, "/db"))
    assert sqlite3.connect(database).execute("select x from t").fetchall() == [("before",)]
    assert processes_mentioning(tmp_path) == []
    assert not list(tmp_path.glob(".snapshot.partial-*"))


def test_fork_children_are_copies_that_diverge(template: Template, tmp_path: Path, ram_root: Path) -> None:
    state = tmp_path / "pods"

    async def scenario() -> None:
        parent = await source_pod(template, state, ram_root, tmp_path / "volume.ext4")
        children: list[SnapshotSandbox] = []
        try:
            await run(parent, ["sh", "-c", "echo parent > /dev/shm/who; echo parent > /work/who"])
            forked = await fork(parent, [config(state, f"pod-child-{i}") for i in range(2)], scratch=ram_root)
            children = forked.children
            first, second = children
            everyone = (parent, first, second)
            for pod in everyone:
                assert await run(pod, ["cat", "/dev/shm/who", "/work/who"]) == "parent\nparent"
                assert await run(pod, ["python3", "-c", SELECT]) == "['before']"
            # The first child writes its memory (tmpfs), its layer and its database.
            await run(first, ["sh", "-c", "echo first > /dev/shm/who; echo first > /work/who; sync"])
            await run(first, ["python3", "-c", INSERT, "first"])
            assert await run(first, ["cat", "/dev/shm/who", "/work/who"]) == "first\nfirst"
            assert await run(first, ["python3", "-c", SELECT]) == "['before', 'first']"
            for pod in (parent, second):
                assert await run(pod, ["cat", "/dev/shm/who", "/work/who"]) == "parent\nparent"
                assert await run(pod, ["python3", "-c", SELECT]) == "['before']"
            # Each child is its own machine: its own name and randomness. (Not its own boot id: the parent's
            # kernel made it at its first read, and a running kernel never makes another; see the module doc.)
            assert [await run(pod, ["hostname"]) for pod in children] == ["pod-child-0", "pod-child-1"]
            draws = {await run(pod, ["python3", "-c", "import os; print(os.urandom(16).hex())"]) for pod in everyone}
            assert len(draws) == 3
        finally:
            for pod in [*children, parent]:
                await pod.destroy()

    asyncio.run(scenario())
    assert processes_mentioning(tmp_path) == []
    assert list(ram_root.iterdir()) == [], "the fork's scratch snapshot is gone"


def test_damaged_snapshots_are_refused_with_what_is_wrong(template: Template, tmp_path: Path, ram_root: Path) -> None:
    state = tmp_path / "pods"
    good = tmp_path / "good"

    async def save() -> None:
        pod = await source_pod(template, state, ram_root, tmp_path / "volume.ext4")
        try:
            await save_snapshot(pod, good, quiesce=False, durable=False)
            with pytest.raises(Conflict, match="already exists"):
                await save_snapshot(pod, good)
        finally:
            await pod.destroy()

    asyncio.run(save())

    def damaged(name: str, damage: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(good, copy)
        if damage == "no-meta":
            (copy / "meta.json").unlink()
        elif damage == "bad-meta":
            (copy / "meta.json").write_text("{not json")
        elif damage == "no-state":
            (copy / "state").unlink()
        elif damage == "short-memory":
            os.truncate(copy / "memory", 4096)
        elif damage == "garbage-state":
            size = (copy / "state").stat().st_size
            (copy / "state").write_bytes(b"\xa5" * size)
        return copy

    def restore(path: Path, name: str) -> None:
        asyncio.run(start_from_snapshot(path, config(state, name), memory_root=ram_root))

    # The good one restores in a process of its own, after the source's podbay process and QEMU are gone; that
    # pod owns a copy of its RAM, so it is snapshotted fast in turn (its RAM a file, not streamed).
    script = f"""
import asyncio, sys
from pathlib import Path
from podbay.isolation.base import SandboxConfig
from podbay.isolation.qemu.snapshot import save_snapshot, start_from_snapshot

async def main():
    run_dir = Path({str(state / "pod-fresh-process")!r})
    run_dir.mkdir()
    config = SandboxConfig(pod_id="pod-fresh", run_dir=run_dir, vcpus=1, memory_mib={MIB}, layer=None)
    pod = await start_from_snapshot(Path({str(good)!r}), config, memory="owned", memory_root=Path({str(ram_root)!r}))
    try:
        result = await (await pod.channel.start_process(["python3", "-c", {SELECT!r}])).wait()
        again = await save_snapshot(pod, Path({str(tmp_path / "again")!r}), durable=False)
        print(result.stdout.strip(), again.ram)
    finally:
        await pod.destroy()

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['before']", "file"]

    with pytest.raises(NotFound, match="no snapshot"):
        restore(tmp_path / "missing", "pod-r1")
    with pytest.raises(NotFound, match=r"meta.json is missing"):
        restore(damaged("partial", "no-meta"), "pod-r2")
    with pytest.raises(GuestError, match=r"corrupt meta.json"):
        restore(damaged("bad-meta", "bad-meta"), "pod-r3")
    with pytest.raises(GuestError, match="state is missing"):
        restore(damaged("no-state", "no-state"), "pod-r4")
    with pytest.raises(GuestError, match="memory has 4096 bytes"):
        restore(damaged("short-memory", "short-memory"), "pod-r5")
    with pytest.raises(GuestError, match=r"restoring the snapshot .* failed"):
        restore(damaged("garbage-state", "garbage-state"), "pod-r6")
    assert processes_mentioning(tmp_path) == []


def test_a_failed_save_leaves_the_pod_running_and_nothing_behind(
    template: Template, tmp_path: Path, ram_root: Path
) -> None:
    state = tmp_path / "pods"
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tiny", str(full)], check=True)
    try:

        async def scenario() -> None:
            pod = await source_pod(template, state, ram_root, tmp_path / "volume.ext4")
            try:
                with pytest.raises(GuestError, match=r"No space left.*the pod keeps running"):
                    await save_snapshot(pod, full / "snapshot")
                assert list(full.iterdir()) == [], "no partial snapshot"
                # Running, resumed and thawed: it writes its volume and answers.
                await run(pod, ["python3", "-c", INSERT, "after"])
                await pod.channel.request("file_write", b"x", path="/work/after")
                assert await run(pod, ["python3", "-c", SELECT]) == "['after', 'before']"
                # And a later save to a good place works.
                snapshot = await save_snapshot(pod, tmp_path / "later", durable=False)
                Snapshot.load(snapshot.path)
            finally:
                await pod.destroy()

        asyncio.run(scenario())
    finally:
        subprocess.run(["umount", str(full)], check=True)
    assert processes_mentioning(tmp_path) == []


def test_a_pod_that_maps_its_memory_is_snapshotted_through_the_stream(
    template: Template, tmp_path: Path, ram_root: Path
) -> None:
    """A fork child maps its RAM (copy-on-write): its own snapshot carries the RAM in the device state."""
    state = tmp_path / "pods"

    async def scenario() -> None:
        parent = await source_pod(template, state, ram_root, tmp_path / "volume.ext4")
        pods = [parent]
        try:
            child = (await fork(parent, [config(state, "pod-child")], scratch=ram_root)).children[0]
            pods.append(child)
            assert not child.memory_shared
            await run(child, ["sh", "-c", "echo child > /dev/shm/who"])
            snapshot = await save_snapshot(child, tmp_path / "of-child", durable=False)
            assert snapshot.ram == "stream" and not snapshot.memory.exists()
            grandchild = await start_from_snapshot(snapshot, config(state, "pod-grandchild"), memory_root=ram_root)
            pods.append(grandchild)
            assert grandchild.memory_shared, "a streamed RAM is loaded into a file of the pod's own"
            assert await run(grandchild, ["cat", "/dev/shm/who"]) == "child"
            assert await run(grandchild, ["python3", "-c", SELECT]) == "['before']"
        finally:
            for pod in reversed(pods):
                await pod.destroy()

    asyncio.run(scenario())
    assert processes_mentioning(tmp_path) == []
