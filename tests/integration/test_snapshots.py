"""Snapshots, restore and fork through the platform, with real QEMU pods and their SQLite volumes.

The mechanism (save, restore, fork, damaged snapshots, a failed save) is tested in test_qemu_snapshot.py;
here: what a user sees — pod.snapshot(), platform.restore() from another process, pod.fork(), the errors —
and that nothing is left behind (the `platform` fixture checks processes, mounts, run dirs and RAM files).
"""

from __future__ import annotations

import subprocess

import pytest

from podbay import Conflict, InvalidSpec, NotFound, Platform, Unsupported
from podbay.paths import PodbayPaths

from .conftest import cli_env, skip_unless_available

pytestmark = pytest.mark.integration
WRITE_ROW = "import sqlite3, sys; c = sqlite3.connect('/data/memory.db'); c.execute('create table if not exists t(x)')"
WRITE_ROW += "; c.execute('insert into t values (?)', (sys.argv[1],)); c.commit()"
READ_ROWS = "import sqlite3; print(sorted(r[0] for r in sqlite3.connect('/data/memory.db').execute('select x from t')))"
# What a pod holds in memory (a tmpfs file), on its writable layer, and in its database.
SHOW = f'cat /tmp/mem /root/disk; python3 -c "{READ_ROWS}"'


@pytest.fixture
def qemu(platform: Platform) -> Platform:
    skip_unless_available(platform, "qemu")
    return platform


def write_everywhere(pod: object, value: str) -> None:
    assert hasattr(pod, "exec")
    command = f'echo {value} > /tmp/mem; echo {value} > /root/disk; python3 -c "{WRITE_ROW}" {value}'
    assert pod.exec(["sh", "-c", command]).ok


@pytest.mark.parametrize("snapshottable", [True, False])  # RAM of its own (copied), or mapped (streamed)
def test_a_snapshot_restores_in_another_process_with_memory_layer_and_database(
    qemu: Platform, vm_paths: PodbayPaths, snapshottable: bool
) -> None:
    pod = qemu.create_agent(memory_db=True, volume="customer-42", snapshottable=snapshottable)
    write_everywhere(pod, "before")
    info = pod.snapshot("before-refund")
    assert info.ram == ("file" if snapshottable else "stream") and info.volumes == ["/data"]
    write_everywhere(pod, "after")  # the source goes on; the snapshot keeps its instant
    assert pod.exec(["true"]).ok
    for _ in range(2):  # a restored pod's writes never reach the snapshot
        done = subprocess.run(
            [
                ".venv/bin/podbay",
                "run",
                "--from-snapshot",
                "before-refund",
                "--",
                "sh",
                "-c",
                SHOW + "; echo x > /tmp/mem",
            ],
            env=cli_env(vm_paths),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == ["before", "before", "['before']"]
    assert [snapshot.name for snapshot in qemu.snapshots.list()] == ["before-refund"]
    qemu.snapshots.remove("before-refund")


def test_fork_children_are_copies_that_never_see_each_other(qemu: Platform) -> None:
    parent = qemu.create_agent(memory_db=True, snapshottable=True)
    write_everywhere(parent, "parent")
    children = parent.fork(2)
    assert [child.info().origin for child in children] == ["fork", "fork"]
    assert len({parent.id, *(child.id for child in children)}) == 3
    write_everywhere(children[0], "child0")
    shown = {pod.id: pod.exec(["sh", "-c", SHOW]).stdout.splitlines() for pod in (parent, *children)}
    assert shown[children[0].id] == ["child0", "child0", "['child0', 'parent']"]
    assert shown[parent.id] == ["parent", "parent", "['parent']"], "a child's writes never reach its parent"
    assert shown[children[1].id] == ["parent", "parent", "['parent']"], "nor its siblings"
    for child in children:
        hostname, pod_id = child.exec(["sh", "-c", "hostname; echo $PODBAY_POD_ID"]).stdout.split()
        assert hostname == pod_id == child.id


def test_snapshot_and_fork_refuse_what_they_cannot_do(qemu: Platform) -> None:
    with pytest.raises(NotFound, match="no snapshot 'nope'"):
        qemu.restore("nope")
    with pytest.raises(InvalidSpec) as caught:
        qemu.restore("../etc")
    assert caught.value.field == "name"
    cold = qemu.create_agent(cold=True)
    with pytest.raises(Unsupported, match="qemu cannot snapshot a pod that was booted cold"):
        cold.snapshot("s")
    pod = qemu.create_agent()
    for n in (0, 17, True):
        with pytest.raises(InvalidSpec):
            pod.fork(n)
    pod.snapshot("taken")
    with pytest.raises(Conflict, match="a snapshot named 'taken' exists"):
        pod.snapshot("taken")
    pod.pause()
    with pytest.raises(Conflict, match="paused"):
        pod.fork(1)
    pod.resume()
    pod.destroy()
    with pytest.raises(Conflict, match="destroyed"):
        pod.fork(1)
    qemu.snapshots.remove("taken")


def test_a_container_backend_says_it_cannot_snapshot(platform: Platform) -> None:
    skip_unless_available(platform, "runc")
    pod = platform.create_agent(backend="runc")
    with pytest.raises(Unsupported, match=r"^runc cannot snapshot a pod; use a qemu pod"):
        pod.snapshot("s")
    with pytest.raises(Unsupported, match=r"^runc cannot fork a pod"):
        pod.fork(1)
