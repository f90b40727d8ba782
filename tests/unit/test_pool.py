"""Warm pools and the sandbox factory's choice, on the test double (the agent as a host process).

The real thing (QEMU template clones as members) is in tests/integration/test_pool.py.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import AsyncPools, InvalidSpec, Phase, Platform
from podbay.isolation.fake import LocalProcessBackend
from podbay.isolation.supervise import is_gone
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform


@pytest.fixture
def paths(tmp_path: Path) -> PodbayPaths:
    return PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")


@pytest.fixture
def platform(paths: PodbayPaths) -> Iterator[Platform]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        yield platform


def sandbox_phase(trace: list[Phase], name: str) -> str:
    return next(phase.detail for phase in trace if phase.name == name)


def test_a_pod_claims_a_pool_member_and_the_pool_refills(platform: Platform) -> None:
    report = platform.pools.ensure(2, backend="local", wait=30)
    assert report["idle"] == 2
    members = set(report["idle_member_pids"])
    pod = platform.create_agent(backend="local")
    info = pod.info()
    assert info.origin == "pool claim"
    assert info.sandbox is not None and info.sandbox.pid in members, "the pod runs in a pre-started member"
    assert "1 of 2 left idle" in sandbox_phase(info.trace, "pool claim")
    assert pod.exec(["sh", "-c", "echo $PODBAY_POD_ID"]).stdout.strip() == pod.id, "the claim injected the pod's env"
    report = platform.pools.ensure(2, backend="local", wait=30)
    assert report["idle"] == 2 and report["hits"] == 1 and report["claims"] == 1
    assert info.sandbox.pid not in report["idle_member_pids"], "a claimed member is never reused"


def test_a_member_that_died_while_waiting_is_replaced_never_handed_out(platform: Platform, paths: PodbayPaths) -> None:
    report = platform.pools.ensure(2, backend="local", wait=30)
    dead, alive = report["idle_member_pids"]
    os.kill(dead, signal.SIGKILL)
    time.sleep(0.2)
    pod = platform.create_agent(backend="local")
    assert pod.info().origin == "pool claim"
    assert pod.info().sandbox is not None and pod.info().sandbox.pid == alive
    assert pod.exec(["true"]).ok
    report = platform.pools.ensure(2, backend="local", wait=30)
    assert report["dead_replaced"] == 1
    assert dead not in report["idle_member_pids"]


def test_an_empty_pool_falls_back_and_the_trace_says_why(platform: Platform) -> None:
    platform.pools.ensure(0, backend="local")
    pod = platform.create_agent(backend="local")
    assert pod.info().origin == "cold boot"
    assert "empty" not in sandbox_phase(pod.info().trace, "cold boot")  # size 0: there is no pool to be empty
    cold = platform.create_agent(backend="local", cold=True)
    assert "a cold boot was asked for" in sandbox_phase(cold.info().trace, "cold boot")


def test_cold_skips_a_full_pool(platform: Platform) -> None:
    platform.pools.ensure(1, backend="local", wait=30)
    pod = platform.create_agent(backend="local", cold=True)
    assert pod.info().origin == "cold boot"
    assert platform.pools.report()[0]["idle"] == 1


# What a pod assigns to its sandbox: given at claim, never to a pool.
POD_FIELDS = ("memory_db", "volume", "volume_mib", "env", "context", "cold")


@pytest.mark.parametrize("field", POD_FIELDS)
def test_a_pods_own_fields_are_not_a_pools(platform: Platform, field: str) -> None:
    """ensure() takes only a shape's fields: a pod's own are not among its parameters (mypy refuses them)."""
    assert field not in inspect.signature(platform.pools.ensure).parameters
    assert field not in inspect.signature(AsyncPools.ensure).parameters


@pytest.mark.parametrize("size", [-1, 257, 1.5, True, "2"])
def test_a_bad_size_is_refused(platform: Platform, size: object) -> None:
    with pytest.raises(InvalidSpec) as caught:
        platform.pools.ensure(size, backend="local")  # type: ignore[arg-type]
    assert caught.value.field == "size"


def test_a_pool_that_cannot_fit_in_host_memory_is_refused_with_the_arithmetic(platform: Platform) -> None:
    with pytest.raises(InvalidSpec, match=r"200 members x \(16384 MiB guest memory \+ 64 MiB overhead\) = ") as caught:
        platform.pools.ensure(200, backend="local", memory_mib=16384)
    assert caught.value.field == "size" and "use size ≤" in caught.value.fix
    assert platform.pools.report() == [], "nothing was started"


def test_closing_the_platform_destroys_idle_members(paths: PodbayPaths) -> None:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        pids = platform.pools.ensure(2, backend="local", wait=30)["idle_member_pids"]
    assert list(paths.pods.iterdir()) == []
    assert all(map(is_gone, pids))


CONTROLLER = """
import os, signal, sys
from pathlib import Path
from podbay import Platform
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
paths = PodbayPaths(cache=Path(sys.argv[1]), state=Path(sys.argv[2]))
platform = Platform(paths, backends={"local": LocalProcessBackend()})
pids = platform.pools.ensure(2, backend="local", wait=30)["idle_member_pids"]
Path(sys.argv[3]).write_text(" ".join(map(str, pids)))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_warm_pool_of_a_killed_controller_is_reaped_by_the_next_platform(paths: PodbayPaths, tmp_path: Path) -> None:
    # Not through a pipe: the orphaned members would hold it open.
    done = subprocess.run(
        [sys.executable, "-c", CONTROLLER, str(paths.cache), str(paths.state), str(tmp_path / "pids")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2 and len(list(paths.pods.iterdir())) == 2

    async def reap() -> list[str]:
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}) as platform:
            return await platform.reap_orphans()

    assert len(asyncio.run(reap())) == 2
    assert list(paths.pods.iterdir()) == []
    assert all(map(is_gone, pids)), "the orphaned members' agents were killed"


def test_a_claimed_member_is_destroyed_when_the_pod_fails_to_be_made(platform: Platform, paths: PodbayPaths) -> None:
    pid = platform.pools.ensure(1, backend="local", wait=30)["idle_member_pids"][0]

    async def broken(pod_id: str, spec: object) -> None:
        raise OSError(28, "No space left on device")

    platform._platform._provision = broken  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        platform.create_agent(backend="local")
    assert is_gone(pid), "the member it had claimed is gone with the failed pod"
    assert platform.pools.ensure(0, backend="local")["hits"] == 1  # size 0: the refilled member goes too
    deadline = time.monotonic() + 10
    while list(paths.pods.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(paths.pods.iterdir()) == [], "and so is its run directory"
