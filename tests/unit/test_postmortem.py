"""Post-mortems and lifecycle events of the embedded platform, over the local test double (no VM)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from podbay.errors import GuestError, NotFound
from podbay.isolation.base import SandboxConfig
from podbay.isolation.fake import LocalProcessBackend, LocalSandbox
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.postmortem import CONSOLE_KEPT, PodEvent, PostMortem, PostMortemStore, kept_argv


def run(paths: PodbayPaths, scenario: Callable[[AsyncPlatform], Awaitable[None]]) -> None:
    async def main() -> None:
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}) as platform:
            await scenario(platform)

    asyncio.run(main())


async def until_gone(platform: AsyncPlatform, pod_id: str) -> PostMortem:
    """The pod's post-mortem, once the platform has torn the pod down by itself and kept it."""
    for _ in range(400):
        if all(info.id != pod_id for info in platform.list()):
            with contextlib.suppress(NotFound):
                return platform.postmortems.load(pod_id)
        await asyncio.sleep(0.025)
    raise AssertionError(f"{pod_id} is still listed, or left no post-mortem")


def test_a_sandbox_that_dies_by_itself_leaves_a_failed_postmortem(paths: PodbayPaths) -> None:
    events: list[PodEvent] = []

    async def scenario(platform: AsyncPlatform) -> None:
        platform.on_pod_event(events.append)
        pod = await platform.create_agent(backend="local", env={"API_KEY": "sekrit-value"})
        result = await pod.exec(["sh", "-c", "echo $API_KEY | tr a-z A-Z; exit 4"])
        assert (result.exit_code, result.stdout) == (4, "SEKRIT-VALUE\n")
        assert pod.sandbox.info.pid is not None
        os.kill(pod.sandbox.info.pid, signal.SIGKILL)  # the "VMM" dies under the pod
        await until_gone(platform, pod.id)
        postmortem = platform.postmortems.load(pod.id)
        assert postmortem.failed
        assert postmortem.reason.startswith("sandbox died: guest channel closed")
        assert postmortem.env_names == ["API_KEY"]
        assert [(record.argv, record.exit_code) for record in postmortem.execs] == [
            (["sh", "-c", "echo $API_KEY | tr a-z A-Z; exit 4"], 4)
        ]
        kinds = [event.kind for event in postmortem.events]
        assert kinds[0] == "created" and kinds[-2:] == ["failed", "ended"], kinds
        assert {"exec_started", "exec_ended"} <= set(kinds)
        written = (platform.postmortems.root / pod.id / "postmortem.json").read_text()
        assert "sekrit-value" not in written and "SEKRIT" not in written, written
        with pytest.raises(NotFound, match="sandbox died"):
            platform.get(pod.id)  # gone, and says why

    run(paths, scenario)
    assert [event.kind for event in events][-1] == "ended"


def test_a_normal_destroy_keeps_a_short_postmortem_that_is_pruned(paths: PodbayPaths) -> None:
    async def scenario(platform: AsyncPlatform) -> None:
        pod = await platform.create_agent(backend="local")
        await pod.pause()
        await pod.resume()
        await pod.set_timeout(3600)
        await pod.destroy()
        store = platform.postmortems
        postmortem = store.load(pod.id)
        assert (postmortem.failed, postmortem.reason) == (False, "destroyed")
        assert postmortem.expires_at - postmortem.ended_at == pytest.approx(store.normal_retention_s)
        kinds = [event.kind for event in postmortem.events]
        assert kinds == ["created", "paused", "resumed", "timeout_set", "ended"]
        assert [phase.name for phase in postmortem.trace][-1] == "destroy"
        assert store.prune(now=postmortem.expires_at - 1) == []
        assert store.prune(now=postmortem.expires_at) == [pod.id]
        with pytest.raises(NotFound):
            store.load(pod.id)

    run(paths, scenario)


def test_a_timeout_is_a_failure(paths: PodbayPaths) -> None:
    async def scenario(platform: AsyncPlatform) -> None:
        pod = await platform.create_agent(backend="local", timeout_s=0.2)
        await until_gone(platform, pod.id)
        postmortem = platform.postmortems.load(pod.id)
        assert postmortem.failed and postmortem.reason == "timeout after 0.2 s"
        assert postmortem.expires_at - postmortem.ended_at == pytest.approx(platform.postmortems.failure_retention_s)

    run(paths, scenario)


def test_a_killed_command_fails_the_pod_and_keep_on_failure_says_why_there_is_no_snapshot(
    paths: PodbayPaths,
) -> None:
    async def scenario(platform: AsyncPlatform) -> None:
        pod = await platform.create_agent(backend="local", keep_on_failure=True)
        result = await pod.exec(["sh", "-c", "kill -9 $$"])  # what the guest's OOM killer does to a command
        assert result.signal == signal.SIGKILL
        await pod.destroy()
        postmortem = platform.postmortems.load(pod.id)
        assert postmortem.failed and "a command failed: sh -c kill -9 $$ (killed by signal 9)" in postmortem.reason
        assert postmortem.snapshot is None
        assert postmortem.snapshot_note is not None and "snapshot" in postmortem.snapshot_note
        assert "local" in postmortem.snapshot_note  # the backend that cannot

    run(paths, scenario)


def test_the_store_refuses_odd_ids_and_bounds_what_it_keeps(paths: PodbayPaths) -> None:
    store = PostMortemStore(paths.state / "postmortems")
    for bad in ("../etc", "pod-x", "", "pod-0123456789ab/../x"):
        with pytest.raises(NotFound):
            store.load(bad)
    postmortem = PostMortem(
        pod_id="pod-0123456789ab", failed=True, reason="r", spec={}, backend="local",
        created_at=1.0, ended_at=2.0, expires_at=3.0,
    )  # fmt: skip
    store.write(postmortem, b"x" * (CONSOLE_KEPT + 10) + b"END")
    assert store.console("pod-0123456789ab").endswith(b"END")
    assert len(store.console("pod-0123456789ab")) == CONSOLE_KEPT
    assert [found.pod_id for found in store.list()] == ["pod-0123456789ab"]
    assert kept_argv(["a" * 1000] + ["b"] * 100)[0].endswith("…")
    assert kept_argv(["b"] * 100)[-1] == "… 68 more arguments"


def test_retention_comes_from_the_environment(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODBAY_POSTMORTEM_RETENTION_S", "60")
    assert PostMortemStore(paths.state).failure_retention_s == 60
    monkeypatch.setenv("PODBAY_POSTMORTEM_RETENTION_S", "soon")
    with pytest.raises(Exception, match="PODBAY_POSTMORTEM_RETENTION_S"):
        PostMortemStore(paths.state)


class StuckSandboxBackend(LocalProcessBackend):
    """The test double, whose sandboxes fail their first teardown (something of them "may still run")."""

    async def start(self, config: SandboxConfig) -> LocalSandbox:
        sandbox = await super().start(config)
        destroy = sandbox.destroy
        attempts = []

        async def fails_once() -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise GuestError("the sandbox's process would not die")
            await destroy()

        sandbox.destroy = fails_once  # type: ignore[method-assign]
        return sandbox


def test_a_failed_destroy_is_a_failure_kept_until_the_retry_succeeds(paths: PodbayPaths) -> None:
    async def main() -> None:
        async with AsyncPlatform(paths, backends={"local": StuckSandboxBackend()}) as platform:
            pod = await platform.create_agent(backend="local")
            with pytest.raises(GuestError):
                await pod.destroy()
            first = platform.postmortems.load(pod.id)
            assert first.failed and "destroying it (destroyed) failed" in first.reason
            assert first.events[-1].kind == "failed"  # not ended: it is FAILED, and held
            await pod.destroy()  # the retry tears it down; the post-mortem still says it failed, and why
            second = platform.postmortems.load(pod.id)
            assert second.failed and second.reason == first.reason and second.ended_at >= first.ended_at
            assert [event.kind for event in second.events][-2:] == ["failed", "ended"]

    asyncio.run(main())


CONTROLLER = """
import asyncio, os, signal
from podbay.isolation.fake import LocalProcessBackend
from podbay.platform import AsyncPlatform

async def main():
    platform = AsyncPlatform(backends={"local": LocalProcessBackend()})
    pod = await platform.create_agent(backend="local", env={"TOKEN": "sekrit"})
    await pod.exec(["true"])
    print(pod.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the controller dies with its pod alive

asyncio.run(main())
"""


def test_a_pod_whose_controlling_process_died_gets_its_postmortem_from_the_reaper(paths: PodbayPaths) -> None:
    env = {**os.environ, "PODBAY_STATE": str(paths.state), "PODBAY_CACHE": str(paths.cache)}
    died = subprocess.run([sys.executable, "-c", CONTROLLER], env=env, capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL, died.stderr
    pod_id = died.stdout.strip()

    async def main() -> None:
        platform = AsyncPlatform(paths, backends={"local": LocalProcessBackend()})
        assert await platform.reap_orphans() == [pod_id]
        postmortem = platform.postmortems.load(pod_id)
        assert postmortem.failed and "controlling process" in postmortem.reason and "ended without" in postmortem.reason
        assert [event.kind for event in postmortem.events] == ["created"]  # what its record holds
        assert postmortem.env_names == ["TOKEN"] and "sekrit" not in postmortem.model_dump_json()
        await platform.close()

    asyncio.run(main())
