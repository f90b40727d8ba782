"""Host-side hardening without a VM: strict input, the host's own exec deadline, bounded logs, fail-closed
teardown, run directories never removed across a mount point."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import AsyncPlatform, GuestError, InvalidSpec, Platform, Pod, PodState, Timeout
from podbay.channel import check_timeout
from podbay.isolation.base import SandboxConfig
from podbay.isolation.fake import LocalProcessBackend, LocalSandbox
from podbay.isolation.supervise import BoundedLog
from podbay.models import PodSpec
from podbay.paths import PodbayPaths
from podbay.rundir import remove_run_dir


@pytest.fixture
def pod(paths: PodbayPaths) -> Iterator[Pod]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        yield platform.create_agent(backend="local")


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, 0, -1, "5", True])
def test_a_timeout_must_be_finite_seconds_above_zero(timeout: object) -> None:
    with pytest.raises(InvalidSpec, match="timeout"):
        check_timeout(timeout)  # type: ignore[arg-type]


def test_exec_refuses_a_bad_timeout_before_the_guest_sees_it(pod: Pod) -> None:
    for timeout in (math.nan, 0):
        with pytest.raises(InvalidSpec, match="timeout"):
            pod.exec(["true"], timeout=timeout)
    assert pod.exec(["echo", "fine"], timeout=5).stdout == "fine\n"


def test_context_is_strict_json_of_bounded_depth() -> None:
    deep: dict[str, object] = {}
    level = deep
    for _ in range(100):
        level["x"] = {}
        level = level["x"]  # type: ignore[assignment]
    for bad in ({"x": math.nan}, {"x": math.inf}, deep):
        with pytest.raises(InvalidSpec, match="context"):
            PodSpec.parse(context=bad)
    assert PodSpec.parse(context={"x": [1, {"y": None}]}).context == {"x": [1, {"y": None}]}


def test_a_stopped_agent_meets_the_hosts_own_deadline(pod: Pod) -> None:
    process = pod.start_process(["sleep", "60"], timeout=0.5)
    pod._pod.sandbox._process.send_signal(19)  # type: ignore[attr-defined]  # SIGSTOP: the agent never reports
    started = time.monotonic()
    with pytest.raises(Timeout, match="stopped or starved"):
        process.wait()
    assert 4 < time.monotonic() - started < 15
    pod._pod.sandbox._process.send_signal(18)  # type: ignore[attr-defined]  # SIGCONT
    assert pod.exec(["echo", "back"]).stdout == "back\n"


def test_an_oversized_file_write_is_invalid_spec_not_a_frame_error(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podbay.platform.MAX_PAYLOAD", 1024)
    with pytest.raises(InvalidSpec, match="data"):
        pod.files.write("/tmp/x", b"y" * 2048)


def test_a_wrong_pod_state_is_a_conflict(pod: Pod) -> None:
    from podbay import Conflict

    with pytest.raises(Conflict):
        pod.resume()


def test_a_bounded_log_rotates_and_never_grows_past_its_limit(tmp_path: Path) -> None:
    async def flood() -> None:
        log = BoundedLog(tmp_path / "console.log", limit=4096)
        writer = subprocess.Popen(
            ["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a; printf END"], stdout=log.write_fd
        )
        log.child_started()
        while writer.poll() is None or not log.drained:
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(flood(), 30))
    current, rotated = tmp_path / "console.log", tmp_path / "console.log.1"
    assert current.stat().st_size <= 4096 and rotated.stat().st_size <= 4096
    assert current.read_bytes().endswith(b"END"), "the latest output is always in the log"
    assert current.read_bytes().startswith(b"[podbay: log rotated"), "the log says that it was rotated"


class UndyingSandbox(LocalSandbox):
    """A sandbox whose destroy cannot prove it is gone."""

    async def destroy(self) -> None:
        raise GuestError("something of the sandbox survived")


class UndyingBackend(LocalProcessBackend):
    async def start(self, config: SandboxConfig) -> LocalSandbox:
        sandbox = await super().start(config)
        sandbox.__class__ = UndyingSandbox
        return sandbox


def test_a_sandbox_that_will_not_die_keeps_its_volume_held(paths: PodbayPaths) -> None:
    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": UndyingBackend()}) as platform:
            pod = await platform.create_agent(backend="local", memory_db=True, volume="kept")
            with pytest.raises(GuestError, match="survived"):
                await pod.destroy()
            assert pod.info().state is PodState.FAILED
            assert platform.volumes.info("kept").attached, "the volume must not go to another pod"
            assert (paths.pods / pod.id).exists(), "the run directory stays for the reaper"
            pod.sandbox.__class__ = LocalSandbox  # now it can die: destroy again retries and succeeds
            await pod.destroy()
            assert pod.info().state is PodState.DESTROYED
            assert not platform.volumes.info("kept").attached

    asyncio.run(scenario())


@pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0", reason="root")
def test_a_run_directory_is_never_removed_across_a_mount_point(tmp_path: Path) -> None:
    run_dir = tmp_path / "pod-000000000000"
    volume = run_dir / "volumes" / "data"
    volume.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume)], check=True)
    try:
        (volume / "memory.db").write_text("precious")
        with pytest.raises(GuestError, match="mounts"):
            remove_run_dir(run_dir)
        assert (volume / "memory.db").read_text() == "precious"
    finally:
        subprocess.run(["umount", str(volume)], check=True)
    remove_run_dir(run_dir)
    assert not run_dir.exists()


def test_a_long_lived_platform_keeps_reaping(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podbay.platform.REAP_INTERVAL_S", 0.2)

    async def scenario() -> None:
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}) as platform:
            pod = await platform.create_agent(backend="local")  # the first create starts the reaper
            dead = subprocess.Popen(["true"])
            dead.wait()
            orphan = paths.pods / "pod-0123456789ab"
            orphan.mkdir()
            (orphan / "owner.json").write_text(json.dumps({"pid": dead.pid, "identity": "gone", "backend": "local"}))
            platform.volumes.ensure("pod-0123456789ab-db", 16)  # its anonymous database volume
            await asyncio.sleep(1.0)
            assert not orphan.exists(), "a later round reaped the orphan without any create"
            assert platform.volumes.list() == []
            assert (paths.pods / pod.id).exists(), "a live pod is never reaped"
            await pod.destroy()

    asyncio.run(scenario())
