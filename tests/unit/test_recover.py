"""Recovery after the controller stops (a restart, a kill -9), against the local test double: the pod record,
`AsyncPlatform.recover` (re-adopt, re-arm deadlines, tear down and explain what cannot be), `detach_all`
(serve --keep-pods) and the server's start-up over its registry.

A "dead" controller is simulated in-process: its platform's timers are stopped and its pods' owner files are
rewritten to name a process that is not running; the reattachable test double hands the same sandbox object
to the platform that takes over. The real thing (a killed `podbay serve`, QEMU) is in
tests/integration/test_server_recover.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest

from podbay import AsyncClient, NotFound, PodState
from podbay.isolation.fake import LocalProcessBackend, ReattachableLocalBackend
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform, AsyncPod
from podbay.records import RECORD_FILE, read_record, write_record
from podbay.rundir import OWNER_FILE, read_owner
from podbay.server import create_app
from podbay.server.registry import Registry
from podbay.state.volumes import anonymous_name


def orphan(paths: PodbayPaths) -> None:
    """What a kill -9 of the controller leaves: every run directory names an owner that no longer runs."""
    for run_dir in paths.pods.glob("pod-*"):
        owner = json.loads((run_dir / OWNER_FILE).read_text())
        (run_dir / OWNER_FILE).write_text(json.dumps({**owner, "pid": 1, "identity": "1:0"}))


def expire_record(paths: PodbayPaths, pod_id: str) -> None:
    record = read_record(paths.pods / pod_id)
    assert record is not None
    write_record(paths.pods / pod_id, record.model_copy(update={"deadline": time.time() - 1}))


async def die(platform: AsyncPlatform) -> None:
    """The controller stops without destroying anything (its pods are left running). Its timer is left to sleep
    (it finds no pod): cancelling it here was seen to close the test double's channels in this process."""
    for pod in platform._pods.values():
        pod._stop_death_watch()  # a dead controller watches nothing
    platform._pods.clear()
    if platform._reaper is not None:
        platform._reaper.cancel()
    for name in list(platform.volumes._locks):  # a dead process holds no lock (a VMM holds its own copy)
        platform.volumes.detach(name)


async def kill(pod: AsyncPod) -> None:
    """The pod's sandbox process dies while no controller holds it."""
    process = pod.sandbox._process  # type: ignore[attr-defined]  # the test double's agent process
    process.kill()
    await process.wait()


def test_the_record_follows_the_pod(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": ReattachableLocalBackend()}) as platform:
            pod = await platform.create_agent(backend="local", timeout_s=600, memory_db=True, env={"A": "1"})
            path = paths.pods / pod.id / RECORD_FILE
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, "only the controller's user reads it"
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            record = read_record(path.parent)
            assert record is not None
            info = pod.info()
            assert (record.pod_id, record.backend, record.state, record.spec) == (pod.id, "local", "running", pod.spec)
            assert record.deadline == pytest.approx(info.expires_at)
            assert record.created_at == pytest.approx(info.created_at)
            assert record.volume is not None and record.volume.name == anonymous_name(pod.id)
            assert record.volume.ephemeral and record.sandbox == {"pid": info.sandbox.pid if info.sandbox else 0}

            await pod.set_timeout(3600)
            later = read_record(path.parent)
            assert later is not None and later.deadline is not None and record.deadline is not None
            assert later.deadline > record.deadline + 2000
            await pod.pause()
            paused = read_record(path.parent)
            assert paused is not None and paused.state is PodState.PAUSED
            await pod.resume()
            resumed = read_record(path.parent)
            assert resumed is not None and resumed.state is PodState.RUNNING

    asyncio.run(scenario())


def test_a_new_platform_re_adopts_what_it_can_and_explains_the_rest(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend})
        kept = await first.create_agent(backend="local", timeout_s=3600, memory_db=True)
        work = (await kept.exec(["pwd"])).stdout.strip()
        await kept.files.write(f"{work}/note.txt", "still here")
        died = await first.create_agent(backend="local", memory_db=True)
        expired = await first.create_agent(backend="local", timeout_s=3600)
        before = kept.info()
        await die(first)
        orphan(paths)
        await kill(died)
        expire_record(paths, expired.id)  # its deadline passed while nobody held it

        async with AsyncPlatform(paths, backends={"local": backend}) as second:
            ids = [kept.id, died.id, expired.id, "pod-000000000000"]
            recovery = await second.recover(ids)
            assert [pod.id for pod in recovery.adopted] == [kept.id], recovery.lost
            assert set(recovery.lost) == {died.id, expired.id, "pod-000000000000"}
            assert "could not be re-attached" in recovery.lost[died.id] and "gone" in recovery.lost[died.id]
            assert recovery.lost[expired.id].startswith("timeout after 3600 s")
            assert "run directory is gone" in recovery.lost["pod-000000000000"]
            for gone in (died, expired):
                assert not (paths.pods / gone.id).exists(), "what could not be re-adopted is torn down"
            assert not paths.volumes.joinpath(f"{anonymous_name(died.id)}.ext4").exists()

            pod = second.get(kept.id)
            assert await pod.files.read(f"{work}/note.txt") == b"still here"
            assert (await pod.exec(["echo", "ok"])).stdout == "ok\n"
            info = pod.info()
            assert info.created_at == pytest.approx(before.created_at)
            assert info.expires_at == pytest.approx(before.expires_at)
            assert info.volume == before.volume and info.db_url == before.db_url
            assert [phase.name for phase in info.trace][-1] == "recover"
            assert pod.usage().started_at == pytest.approx(kept.usage().started_at)
            owner = read_owner(paths.pods / kept.id)
            assert owner is not None and owner["pid"] == os.getpid(), "the run directory is this process's now"
            with pytest.raises(NotFound, match=r"timeout after 3600 s"):
                second.get(expired.id)
        assert list(paths.pods.iterdir()) == [], "the second platform's close destroys what it adopted"
        assert not list(paths.volumes.glob("*.ext4"))

    asyncio.run(scenario())


def test_a_paused_pod_is_re_adopted_paused(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend})
        pod = await first.create_agent(backend="local")
        await pod.pause()
        await die(first)
        orphan(paths)
        async with AsyncPlatform(paths, backends={"local": backend}) as second:
            (again,) = (await second.recover([pod.id])).adopted
            assert again.info().state is PodState.PAUSED
            await again.resume()
            assert (await again.exec(["true"])).exit_code == 0
            assert again.usage().paused_s > 0

    asyncio.run(scenario())


def test_a_re_adopted_deadline_is_still_enforced(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend})
        pod = await first.create_agent(backend="local", timeout_s=2)
        await die(first)
        orphan(paths)
        async with AsyncPlatform(paths, backends={"local": backend}) as second:
            (adopted,) = (await second.recover()).adopted
            deadline = time.monotonic() + 30
            while adopted.info().state is not PodState.DESTROYED and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert adopted.info().ended_reason == "timeout after 2 s"
            assert not (paths.pods / pod.id).exists()

    asyncio.run(scenario())


def test_a_backend_that_cannot_re_attach_loses_its_pods_with_the_reason(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": LocalProcessBackend()})
        pod = await first.create_agent(backend="local")
        pid = pod.info().sandbox.pid if pod.info().sandbox else None
        await die(first)
        orphan(paths)
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}) as second:
            recovery = await second.recover([pod.id])
            assert recovery.adopted == []
            assert "local sandbox cannot outlive the process that ran it" in recovery.lost[pod.id]
        assert not (paths.pods / pod.id).exists()
        assert pid is not None and _zombie(pid), "its agent is gone"

    asyncio.run(scenario())


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_recover_without_ids_leaves_live_owners_and_pool_members_alone(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": backend}) as owner:
            pod = await owner.create_agent(backend="local")
            async with AsyncPlatform(paths, backends={"local": backend}) as other:
                assert (await other.recover()).adopted == [], "a live owner's pods are its own"
                recovery = await other.recover([pod.id])
                assert recovery.lost == {pod.id: "another running process controls it"}
            assert (await pod.exec(["true"])).exit_code == 0

    asyncio.run(scenario())


def test_detach_all_hands_the_pods_to_the_next_process(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend, "plain": LocalProcessBackend()})
        kept = await first.create_agent(backend="local", timeout_s=3600)
        plain = await first.create_agent(backend="plain")
        assert await first.detach_all() == [kept.id]
        await first.close()  # destroys what could not be handed over
        assert kept.info().state is PodState.RUNNING and plain.info().state is PodState.DESTROYED
        orphan(paths)  # the process exits
        async with AsyncPlatform(paths, backends={"local": backend}) as second:
            (adopted,) = (await second.recover()).adopted
            assert adopted.id == kept.id and (await adopted.exec(["echo", "hi"])).stdout == "hi\n"
            assert adopted.info().expires_at == pytest.approx(kept.info().expires_at)

    asyncio.run(scenario())


def test_a_restarted_server_serves_its_tenants_re_adopted_pods(paths: PodbayPaths) -> None:
    registry = Registry(paths.state / "server.db")
    token, _ = registry.create_token("acme")
    other_token, _ = registry.create_token("globex")
    backend = ReattachableLocalBackend()
    backends = {"local": backend, "plain": LocalProcessBackend()}

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends=backends)
        async with first:  # the first server's pods, as its registry knows them
            kept = await first.create_agent(backend="local")
            died = await first.create_agent(backend="local")
            plain = await first.create_agent(backend="plain")
            for pod in (kept, died, plain):
                registry.add_pod(pod.id, "acme")
            await die(first)
        orphan(paths)
        await kill(died)

        app = create_app(platform=AsyncPlatform(paths, backends=backends), keep_pods=True)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncClient("http://podbay", token, transport=transport) as client:
                assert [info.id for info in await client.list()] == [kept.id]
                pod = await client.get(kept.id)
                assert (await pod.exec(["echo", "back"])).stdout == "back\n"
                with pytest.raises(NotFound, match=r"its agent .* is gone"):
                    await client.get(died.id)
                with pytest.raises(NotFound, match="plain sandbox cannot outlive"):
                    await client.get(plain.id)
            async with AsyncClient("http://podbay", other_token, transport=transport) as stranger:
                with pytest.raises(NotFound) as missing:
                    await stranger.get(kept.id)
                assert "ended" not in str(missing.value), "another tenant learns nothing of it"
        assert registry.all_live_pods() == [kept.id], "--keep-pods: the pod stays the tenant's across the stop"

        orphan(paths)
        app = create_app(platform=AsyncPlatform(paths, backends=backends))
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), AsyncClient("http://podbay", token, transport=transport) as client:
            assert [info.id for info in await client.list()] == [kept.id]
        assert registry.all_live_pods() == [], "without --keep-pods the shutdown destroys it"
        assert list(paths.pods.iterdir()) == []

    asyncio.run(scenario())
    registry.close()


def test_a_re_adopted_pod_is_watched_and_a_lost_one_leaves_a_postmortem(paths: PodbayPaths) -> None:
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend})
        watched = await first.create_agent(backend="local")
        lost = await first.create_agent(backend="local")
        await die(first)
        orphan(paths)
        await kill(lost)
        async with AsyncPlatform(paths, backends={"local": backend}) as second:
            recovery = await second.recover([watched.id, lost.id])
            assert [pod.id for pod in recovery.adopted] == [watched.id]
            kept = second.postmortems.load(lost.id)
            assert kept.failed and "could not be re-adopted" in kept.reason, kept.reason
            (adopted,) = recovery.adopted
            assert [event.kind for event in adopted.history.events][-1] == "recovered"
            await kill(adopted)  # dies under its new controller: noticed without a request
            deadline = time.monotonic() + 30
            while adopted.info().state is not PodState.DESTROYED and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert (adopted.info().ended_reason or "").startswith("sandbox died")
            assert second.postmortems.load(watched.id).failed

    asyncio.run(scenario())
