"""Pod timeouts (`timeout_s`, `pod.set_timeout`) against the local test double: one platform timer destroys
each pod at its deadline. Margins are generous (a 0.5 s timeout is checked seconds later, by polling)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from podbay import Conflict, GuestError, InvalidSpec, NotFound, Platform, Pod, PodSpec, PodState
from podbay.isolation.base import SandboxConfig
from podbay.isolation.fake import LocalProcessBackend, LocalSandbox
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform

DAY_S = 24 * 3600


@pytest.fixture
def platform(paths: PodbayPaths) -> Iterator[Platform]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        yield platform


def wait_until(condition: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gone(pod: Pod) -> bool:
    return pod.info().state is PodState.DESTROYED


def process_gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "zombie" in status.read_text().lower()


def test_a_pod_is_destroyed_when_its_timeout_expires(platform: Platform, paths: PodbayPaths) -> None:
    pod = platform.create_agent(backend="local", timeout_s=0.5)
    info = pod.info()
    assert info.spec.timeout_s == 0.5
    assert info.expires_at is not None and info.created_at < info.expires_at < time.time() + 0.5
    assert info.sandbox is not None and info.sandbox.pid is not None
    time.sleep(3)
    info = pod.info()
    assert info.state is PodState.DESTROYED
    assert info.ended_reason == "timeout after 0.5 s"
    assert info.expires_at is None
    assert process_gone(info.sandbox.pid if info.sandbox and info.sandbox.pid else 0)
    assert not (paths.pods / pod.id).exists(), "the run directory is removed"
    assert platform.list() == []
    with pytest.raises(NotFound, match=r"timeout after 0\.5 s") as missing:
        platform.get(pod.id)
    assert missing.value.pod_id == pod.id


def test_a_pod_without_timeout_has_none(platform: Platform) -> None:
    pod = platform.create_agent(backend="local")
    assert pod.info().expires_at is None and pod.info().ended_reason is None
    pod.destroy()
    assert pod.info().ended_reason == "destroyed"


def test_set_timeout_extends(platform: Platform, paths: PodbayPaths) -> None:
    pod = platform.create_agent(backend="local", timeout_s=1)
    pod.set_timeout(5)
    expires_at = pod.info().expires_at
    assert expires_at is not None and expires_at > time.time() + 3
    time.sleep(2.5)  # well past the original deadline
    assert pod.info().state is PodState.RUNNING
    assert pod.exec(["true"]).ok
    assert wait_until(lambda: gone(pod), within=20), "destroyed at the new deadline"
    assert pod.info().ended_reason == "timeout after 5 s"
    assert not (paths.pods / pod.id).exists()


def test_set_timeout_shortens_and_gives_a_timeout_to_a_pod_without_one(platform: Platform, paths: PodbayPaths) -> None:
    long = platform.create_agent(backend="local", timeout_s=DAY_S)
    untimed = platform.create_agent(backend="local")
    long.set_timeout(0.5)
    untimed.set_timeout(0.5)
    assert wait_until(lambda: gone(long) and gone(untimed), within=10)
    assert long.info().ended_reason == untimed.info().ended_reason == "timeout after 0.5 s"


def test_a_paused_pod_expires_too(platform: Platform, paths: PodbayPaths) -> None:
    pod = platform.create_agent(backend="local", timeout_s=0.5)
    pod.pause()
    assert wait_until(lambda: gone(pod), within=10)
    assert not (paths.pods / pod.id).exists()


@pytest.mark.parametrize("bad", [0, -1, 30 * DAY_S + 1, float("nan"), float("inf"), "soon", [1]])
def test_bad_timeouts_are_refused(platform: Platform, bad: object) -> None:
    with pytest.raises(InvalidSpec) as refused:
        PodSpec(timeout_s=bad)  # type: ignore[arg-type]
    assert refused.value.field == "timeout_s" and "30 days" in refused.value.fix
    with pytest.raises(InvalidSpec, match="timeout_s"):
        platform.create_agent(backend="local", timeout_s=bad)  # type: ignore[arg-type]
    pod = platform.create_agent(backend="local")
    with pytest.raises(InvalidSpec, match="timeout_s") as refused:
        pod.set_timeout(bad)  # type: ignore[arg-type]
    assert refused.value.pod_id == pod.id
    assert pod.info().expires_at is None


def test_the_limits_themselves_are_accepted(platform: Platform) -> None:
    assert PodSpec(timeout_s=30 * DAY_S).timeout_s == 30 * DAY_S
    pod = platform.create_agent(backend="local", timeout_s=30 * DAY_S)
    pod.set_timeout(30 * DAY_S)
    with pytest.raises(InvalidSpec, match="timeout_s"):
        pod.set_timeout(True)  # type: ignore[arg-type]


def test_set_timeout_is_refused_on_a_destroyed_pod(platform: Platform, paths: PodbayPaths) -> None:
    pod = platform.create_agent(backend="local")
    pod.destroy()
    with pytest.raises(Conflict, match="destroyed") as refused:
        pod.set_timeout(60)
    assert refused.value.pod_id == pod.id
    expired = platform.create_agent(backend="local", timeout_s=0.5)
    assert wait_until(lambda: gone(expired), within=10)
    with pytest.raises(Conflict):
        expired.set_timeout(60)


def test_one_timer_serves_every_pod_and_close_cancels_it(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        platform = AsyncPlatform(paths, backends={"local": LocalProcessBackend()})
        pods = [await platform.create_agent(backend="local") for _ in range(5)]
        before = len(asyncio.all_tasks())
        for n, pod in enumerate(pods):
            await pod.set_timeout(DAY_S + n)
        assert len(asyncio.all_tasks()) == before + 1, "one timer task, not one per pod"
        timer = platform._timer
        assert timer is not None and not timer.done()
        await platform.close()
        assert timer.cancelled()
        for pod in pods:
            assert pod.info().state is PodState.DESTROYED
            assert pod.info().ended_reason == "the platform closed"
        assert list(paths.pods.iterdir()) == []

    asyncio.run(scenario())


def test_close_waits_for_an_expiry_under_way(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": SlowToDieBackend()}) as platform:
            pod = await platform.create_agent(backend="local", timeout_s=0.2)
            for _ in range(200):  # until the timer has started destroying it
                if platform._expiring:
                    break
                await asyncio.sleep(0.05)
            assert platform._expiring
        assert pod.info().state is PodState.DESTROYED
        assert pod.info().ended_reason == "timeout after 0.2 s"
        assert list(paths.pods.iterdir()) == []

    asyncio.run(scenario())


def test_an_expiry_that_fails_leaves_the_pod_failed_and_held(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": UndyingBackend()}) as platform:
            pod = await platform.create_agent(backend="local", memory_db=True, volume="kept", timeout_s=0.5)
            for _ in range(200):
                if pod.info().state is PodState.FAILED:
                    break
                await asyncio.sleep(0.05)
            info = pod.info()
            assert info.state is PodState.FAILED
            assert info.error is not None and "timeout after 0.5 s" in info.error and "survived" in info.error
            assert platform.get(pod.id) is pod, "still this platform's: close() tries again"
            assert platform.volumes.info("kept").attached, "fail-closed: the volume stays held"
            assert (paths.pods / pod.id).exists(), "the run directory stays for the reaper"
            with pytest.raises(Conflict):
                await pod.set_timeout(60)
            pod.sandbox.__class__ = LocalSandbox  # now it can die: the platform's close destroys it
        assert pod.info().state is PodState.DESTROYED
        assert not (paths.pods / pod.id).exists()

    asyncio.run(scenario())


class UndyingSandbox(LocalSandbox):
    async def destroy(self) -> None:
        raise GuestError("something of the sandbox survived")


class UndyingBackend(LocalProcessBackend):
    async def start(self, config: SandboxConfig) -> LocalSandbox:
        sandbox = await super().start(config)
        sandbox.__class__ = UndyingSandbox
        return sandbox


class SlowToDieSandbox(LocalSandbox):
    async def destroy(self) -> None:
        await asyncio.sleep(1.0)
        await super().destroy()


class SlowToDieBackend(LocalProcessBackend):
    async def start(self, config: SandboxConfig) -> LocalSandbox:
        sandbox = await super().start(config)
        sandbox.__class__ = SlowToDieSandbox
        return sandbox
