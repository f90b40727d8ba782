"""Warm pools of real QEMU template clones: claimed members are fresh machines, dead ones are never handed out,
and nothing is left behind (the `platform` fixture checks processes, mounts and run directories)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podbay import Platform
from podbay.isolation.supervise import is_gone
from podbay.paths import PodbayPaths

from .conftest import skip_unless_available

pytestmark = pytest.mark.integration
FILL_S = 300
IDENTITY = [
    "sh",
    "-c",
    "hostname; cat /proc/sys/kernel/random/boot_id; python3 -c 'import os; print(os.urandom(16).hex())'",
]


def test_claimed_members_are_fresh_machines_of_their_own(platform: Platform) -> None:
    skip_unless_available(platform, "qemu")
    report = platform.pools.ensure(2, wait=FILL_S)
    members = set(report["idle_member_pids"])
    pods = [platform.create_agent() for _ in range(2)]
    identities = []
    for pod in pods:
        info = pod.info()
        assert info.origin == "pool claim"
        assert info.sandbox is not None and info.sandbox.pid in members
        hostname, boot_id, random = pod.exec(IDENTITY).stdout.split()
        assert hostname == pod.id, "the member was started under the id the pod takes"
        identities.append((boot_id, random))
        assert pod.exec(["sh", "-c", "echo $PODBAY_POD_ID"]).stdout.strip() == pod.id
    assert identities[0][0] != identities[1][0], "each member has its own boot id"
    assert identities[0][1] != identities[1][1], "each claim reseeds the guest's random number generator"
    report = platform.pools.ensure(2, wait=FILL_S)
    assert report["hits"] == 2
    assert members.isdisjoint(report["idle_member_pids"]), "a claimed member is never reused"


def test_a_member_killed_while_waiting_is_replaced_and_never_handed_out(platform: Platform) -> None:
    skip_unless_available(platform, "qemu")
    dead, alive = platform.pools.ensure(2, wait=FILL_S)["idle_member_pids"]
    os.kill(dead, signal.SIGKILL)
    time.sleep(0.5)
    pod = platform.create_agent()
    assert pod.info().origin == "pool claim"
    assert pod.info().sandbox is not None and pod.info().sandbox.pid == alive
    assert pod.exec(["true"]).ok
    assert platform.pools.ensure(2, wait=FILL_S)["dead_replaced"] == 1


def test_a_claimed_member_gets_the_pods_own_volume(platform: Platform) -> None:
    skip_unless_available(platform, "qemu")
    platform.pools.ensure(1, wait=FILL_S)
    pod = platform.create_agent(memory_db=True, volume="customer-42")
    assert pod.info().origin == "pool claim"
    row = "import sqlite3; c = sqlite3.connect('/data/memory.db'); c.execute('create table t(x)'); c.commit()"
    assert pod.exec(["python3", "-c", row]).ok
    assert platform.volumes.info("customer-42").attached, "held while the pod runs (QEMU has its lock)"
    pod.destroy()
    assert not platform.volumes.info("customer-42").attached
    again = platform.create_agent(memory_db=True, volume="customer-42", cold=True)
    tables = (
        "import sqlite3; print(sqlite3.connect('/data/memory.db').execute('select name from sqlite_master').fetchall())"
    )
    assert again.exec(["python3", "-c", tables]).stdout.strip() == "[('t',)]", "the write reached the volume"


def test_a_snapshottable_pod_does_not_take_a_member_and_says_why(platform: Platform) -> None:
    skip_unless_available(platform, "qemu")
    platform.pools.ensure(1, wait=FILL_S)
    pod = platform.create_agent(snapshottable=True)
    info = pod.info()
    assert info.origin == "template clone"
    detail = next(phase.detail for phase in info.trace if phase.name == "template clone")
    assert "pool members are not snapshottable" in detail
    assert platform.pools.report()[0]["idle"] == 1


@pytest.mark.parametrize("backend", ["runc", "gvisor"])
def test_container_backends_pool_pre_started_containers(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    members = set(platform.pools.ensure(1, backend=backend, wait=FILL_S)["idle_member_pids"])
    pod = platform.create_agent(backend=backend, env={"TASK": "pooled"})
    assert pod.info().origin == "pool claim"
    assert pod.info().sandbox is not None and pod.info().sandbox.pid in members
    assert pod.exec(["sh", "-c", "echo $TASK"]).stdout.strip() == "pooled", "the claim injected the pod's env"


CONTROLLER = """
import os, signal, sys
from pathlib import Path
from podbay import Platform
from podbay.paths import PodbayPaths
from podbay.paths import PodbayPaths
platform = Platform(PodbayPaths(cache=Path(sys.argv[1]), state=Path(sys.argv[2])))
pids = platform.pools.ensure(2, wait=300)["idle_member_pids"]
Path(sys.argv[3]).write_text(" ".join(map(str, pids)))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_warm_qemu_pool_of_a_killed_controller_is_reaped_by_the_next_platform(
    vm_paths: PodbayPaths, tmp_path: Path
) -> None:
    with Platform(vm_paths) as probe:
        skip_unless_available(probe, "qemu")
    done = subprocess.run(
        [sys.executable, "-c", CONTROLLER, str(vm_paths.cache), str(vm_paths.state), str(tmp_path / "pids")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=400,
    )
    assert done.returncode == -signal.SIGKILL
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert not any(map(is_gone, pids)), "the orphaned members still run"
    with Platform(vm_paths) as platform:
        platform.create_agent(backend="qemu").destroy()  # a platform reaps before its first pod
    assert all(map(is_gone, pids)), "killed (a zombie waits for whichever init adopted it)"
    # the `vm_paths` fixture then checks that nothing else is left: run dirs, RAM files, processes
