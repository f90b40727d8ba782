"""Fault injection: the controller or the VMM dies, the agent stops answering. Whatever happens, no
acknowledged database write is lost, the caller gets a clear error in bounded time, nothing of the pod is
left once it is destroyed or reaped, and its volume is never shown free while something may still write it."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from podbay import Conflict, GuestError, Platform, Timeout
from podbay.bench.reliability import COMMIT_LOOP
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.paths import PodbayPaths
from podbay.state.volumes import VolumeStore
from tests.integration.conftest import ALL_BACKENDS, assert_nothing_left, skip_unless_available

pytestmark = [pytest.mark.integration, pytest.mark.security]
VM_BACKENDS = ("qemu", "qemu-q35", "firecracker")

CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from podbay import Platform
    from podbay.paths import PodbayPaths

    cache, state, backend = sys.argv[1:4]
    with Platform(PodbayPaths(cache=Path(cache), state=Path(state))) as platform:
        pod = platform.create_agent(backend=backend, memory_db=True, volume="held")
        platform.create_agent(backend=backend, memory_db=True)  # an anonymous database volume
        pod.exec(["sh", "-c", "sleep 1000 > /dev/null 2>&1 &"])  # a detached process of the pod's own
        print("ready", flush=True)
        # Short sleeps: a signal that lands between Python's check for signals and the start of a long
        # sleep(2) is only acted on when that sleep ends (CPython's own race, not podbay's).
        for _ in range(3000):
            time.sleep(0.2)
    """
)


def start_controller(paths: PodbayPaths, backend: str) -> subprocess.Popen[str]:
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(paths.cache), str(paths.state), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert controller.stdout is not None
    line = controller.stdout.readline()
    if line.strip() != "ready":
        controller.kill()
        pytest.fail(f"the controller did not start a pod: {line!r} {controller.communicate()[1][-3000:]}")
    return controller


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_controller_stopped_by_a_signal_destroys_its_pods(
    platform: Platform, vm_paths: PodbayPaths, backend: str, signum: int
) -> None:
    skip_unless_available(platform, backend)
    controller = start_controller(vm_paths, backend)
    controller.send_signal(signum)
    assert controller.wait(timeout=60) == 128 + signum
    assert_nothing_left(vm_paths)
    volumes = VolumeStore(vm_paths.volumes)
    assert not volumes.info("held").attached
    assert [volume.name for volume in volumes.list()] == ["held"]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_killed_controllers_volume_stays_held_until_its_pod_is_reaped(
    platform: Platform, vm_paths: PodbayPaths, backend: str, tmp_path: Path
) -> None:
    skip_unless_available(platform, backend)
    controller = start_controller(vm_paths, backend)
    controller.kill()
    controller.wait(timeout=30)
    volumes = VolumeStore(vm_paths.volumes)
    assert volumes.info("held").attached, "the orphaned sandbox still has the volume: it must show as held"
    with pytest.raises(Conflict):
        volumes.export("held", tmp_path / "early.db")
    with pytest.raises(Conflict):
        volumes.delete("held")

    with Platform(vm_paths) as next_platform:
        assert len(next_platform._loop.run(next_platform._platform.reap_orphans())) == 2
    assert_nothing_left(vm_paths)
    assert not volumes.info("held").attached
    assert [volume.name for volume in volumes.list()] == ["held"], "the anonymous volume went with its pod"


@pytest.mark.parametrize("backend", VM_BACKENDS)
def test_no_acknowledged_commit_is_lost_when_the_vmm_is_killed(
    platform: Platform, backend: str, tmp_path: Path
) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, memory_db=True, volume="ledger")
    acknowledged = [0]

    def count(chunk: bytes) -> None:
        numbers = chunk.split()
        if numbers:
            acknowledged[0] = int(numbers[-1])

    process = pod.start_process(["python3", "-c", COMMIT_LOOP], on_stdout=count)
    deadline = time.monotonic() + 60
    while acknowledged[0] < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert acknowledged[0] >= 30, "the guest did not commit"
    vmm = pod.info().sandbox.pid  # type: ignore[union-attr]
    assert vmm is not None
    os.kill(vmm, signal.SIGKILL)  # the guest loses power mid-write
    seen = acknowledged[0]
    with pytest.raises(GuestError):
        process.wait()
    pod.destroy()

    exported = platform.volumes.export("ledger", tmp_path / "ledger.db")
    (rows,) = sqlite3.connect(exported).execute("SELECT COUNT(*) FROM rows").fetchone()
    assert rows >= seen, f"{seen} commits were acknowledged, the export holds {rows}"
    again = platform.create_agent(backend=backend, memory_db=True, volume="ledger")
    counted = again.exec(["python3", "-c", COUNT]).stdout
    again.destroy()
    assert int(counted) >= seen


COUNT = (
    "import os, sqlite3; "
    "print(sqlite3.connect(os.environ['PODBAY_DB_PATH']).execute('SELECT COUNT(*) FROM rows').fetchone()[0])"
)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_stopped_agent_cannot_hold_the_caller(
    platform: Platform, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_unless_available(platform, backend)
    monkeypatch.setattr("podbay.channel.START_TIMEOUT_S", 3.0)
    pod = platform.create_agent(backend=backend)
    running = pod.start_process(["sleep", "600"], timeout=2)
    platform._loop.run(pod._pod.sandbox.pause())  # the agent stops, and the pod does not know it
    started = time.monotonic()
    with pytest.raises(Timeout, match="stopped or starved"):
        running.wait()
    assert time.monotonic() - started < 15
    with pytest.raises(Timeout, match="did not start"):
        pod.exec(["true"])
    platform._loop.run(pod._pod.sandbox.resume())
    assert pod.exec(["echo", "back"]).stdout == "back\n"
    pod.destroy()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_destroy_ends_a_paused_pod_and_detached_processes(
    platform: Platform, vm_paths: PodbayPaths, backend: str
) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, memory_db=True)
    pod.exec(["sh", "-c", "setsid sleep 1000 > /dev/null 2>&1 < /dev/null &"])
    pod.pause()
    pod.destroy()
    assert_nothing_left(vm_paths)
    assert platform.volumes.list() == []


@pytest.mark.parametrize("backend", ["qemu", "qemu-q35"])
def test_a_vm_that_cannot_lock_a_disk_another_vm_holds_gets_conflict(
    platform: Platform, vm_paths: PodbayPaths, backend: str
) -> None:
    """Past podbay's own lock (as a second state root, or a bug, would be): QEMU's image lock refuses the
    disk, and the caller hears Conflict, not QEMU's words as a GuestError."""
    skip_unless_available(platform, backend)
    holder = platform.create_agent(backend=backend, memory_db=True, volume="contended")
    intruder_dir = vm_paths.pods / "pod-00000000c0de"
    intruder_dir.mkdir(mode=0o700)
    try:
        image = platform.volumes.image("contended")
        config = SandboxConfig(
            pod_id="pod-00000000c0de",
            run_dir=intruder_dir,
            vcpus=1,
            memory_mib=256,
            layer=None,
            volumes=(VolumeAttachment(name="contended", image=image, target="/data"),),
        )
        with pytest.raises(Conflict, match="in use by another VM"):
            platform._loop.run(platform._platform.backends[backend].start(config))
    finally:
        shutil.rmtree(intruder_dir, ignore_errors=True)
        holder.destroy()
