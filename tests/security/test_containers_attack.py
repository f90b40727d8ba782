"""Attacks on the container backends (runc, gVisor) from inside a pod: a fork bomb that would outlive its pod
(or its controller), floods of the runtime's stderr, a full root disk, peeking at other pods through /sys and
/proc, io_uring, memory exhaustion, and a volume whose lock must last as long as the container.

Each test asserts the outcome on the host: nothing of the pod is left (no process in its cgroup, no cgroup
directory, no runtime state, no mount, no loop device), the host's disk holds what the pod was allowed, the
caller gets an answer in bounded time, and the next pod starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import GuestError, Platform, Timeout
from podbay.bench.leaks import host_leaks
from podbay.isolation.gvisor import GVISOR
from podbay.isolation.oci import RuntimeProfile, mounts_under, runtime_command
from podbay.isolation.runc import RUNC
from podbay.isolation.supervise import LOG_LIMIT
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.state.volumes import VolumeStore
from tests.integration.conftest import skip_unless_available

pytestmark = [pytest.mark.integration, pytest.mark.security]

CONTAINER_BACKENDS = ("runc", "gvisor")
PROFILES: dict[str, RuntimeProfile] = {"runc": RUNC, "gvisor": GVISOR}
# A fork bomb that escapes the agent's kill of the command (its own session) and retries a fork that fails
# instead of giving up: it keeps the pod's pids limit full and every CPU the pod has busy until it is killed.
FORK_BOMB = """setsid python3 -c '
import os
while True:
    try:
        os.fork()
    except OSError:
        pass' > /dev/null 2>&1 < /dev/null & sleep 600"""


# ---- what a pod leaves on the host -----------------------------------------------------------------------


def runtime_ids(profile: RuntimeProfile) -> list[str]:
    listing = subprocess.run(
        profile.command("list", "--format=json"), capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [container["id"] for container in json.loads(listing or "null") or []]


def cgroups_of(pod_id: str) -> list[Path]:
    """The pod's cgroup directories in every hierarchy (they are named after the pod, under a `podbay`)."""
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        found += [path for path in hierarchy.rglob(pod_id) if path.parent.name == "podbay"]
    return found


def leftovers(paths: PodbayPaths, pod_id: str) -> dict[str, list[str]]:
    """Everything of the pod still on the host (the soak benchmark's check), plus processes in its cgroups."""
    left = host_leaks(paths, {pod_id})
    left["processes in its cgroups"] = [
        pid for path in cgroups_of(pod_id) for pid in (path / "cgroup.procs").read_text().split()
    ]
    return {kind: found for kind, found in left.items() if found}


def kill_cgroup_by_hand(pod_id: str) -> None:
    """The test's own clean-up, independent of podbay's: a fork bomb left running would starve the host."""
    for _ in range(50):
        dirs = cgroups_of(pod_id)
        pids = {int(pid) for path in dirs for pid in (path / "cgroup.procs").read_text().split()}
        if not pids:
            break
        freezer = [path / "freezer.state" for path in dirs if (path / "freezer.state").exists()]
        for state in freezer:
            with contextlib.suppress(OSError):
                state.write_text("FROZEN")
        time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for state in freezer:
            with contextlib.suppress(OSError):
                state.write_text("THAWED")
        time.sleep(0.1)


@pytest.fixture
def pod_ids() -> Iterator[list[str]]:
    """Ids of the pods a test made: whatever podbay leaves of them is killed by hand afterwards."""
    ids: list[str] = []
    yield ids
    for pod_id in ids:
        kill_cgroup_by_hand(pod_id)


def reap(paths: PodbayPaths) -> list[str]:
    """What a new controller does first: reap the pods of dead controllers."""

    async def reaping() -> list[str]:
        return await AsyncPlatform(paths).reap_orphans()

    return asyncio.run(reaping())


# ---- a fork bomb ------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_a_fork_bomb_dies_with_its_pod_and_its_volume_goes_to_the_next(
    platform: Platform, vm_paths: PodbayPaths, backend: str, pod_ids: list[str]
) -> None:
    skip_unless_available(platform, backend)
    # Memory enough that the bomb fills the pids limit rather than the memory limit (which would end it).
    pod = platform.create_agent(backend=backend, memory_db=True, volume="bombed", memory_mib=3072, vcpus=2)
    pod_ids.append(pod.id)
    assert pod.exec(["sh", "-c", "echo kept > /data/kept.txt && sync"]).exit_code == 0
    started = time.monotonic()
    try:
        result = pod.exec(["sh", "-c", FORK_BOMB], timeout=5)
        assert result.timed_out
    except Timeout:
        pass  # the agent was starved: the host's own deadline answered
    except GuestError as exc:  # gVisor: the sentry cannot make threads at the pids limit, and its sandbox ends
        assert "limit of" in str(exc) or "out of memory" in str(exc), exc
    assert time.monotonic() - started < 60
    time.sleep(3)  # let the bomb fill the pids limit
    for pids in cgroups_of(pod.id):  # runc (gVisor's sandbox has ended: its cgroups are gone)
        if (pids / "pids.max").exists():
            assert int((pids / "pids.max").read_text()) <= 1024, "a fork bomb may fill the host's process table"
            assert int((pids / "pids.current").read_text()) <= 1024
    started = time.monotonic()
    pod.destroy()
    took = time.monotonic() - started
    assert leftovers(vm_paths, pod.id) == {}
    assert took < 30, f"destroy took {took:.1f} s"
    assert not platform.volumes.info("bombed").attached

    after = platform.create_agent(backend=backend, memory_db=True, volume="bombed")
    pod_ids.append(after.id)
    assert after.exec(["cat", "/data/kept.txt"]).stdout == "kept\n"
    after.destroy()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_a_container_that_cannot_be_shown_gone_keeps_its_mounts_and_volume(
    platform: Platform, vm_paths: PodbayPaths, backend: str, pod_ids: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: if the kill does not work (here: it is switched off), destroy says so, and nothing that
    the container may still write is released; destroying again, once the kill works, releases it all."""
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, memory_db=True, volume="survivor")
    pod_ids.append(pod.id)
    volume_mount = vm_paths.pods / pod.id / "volumes" / "survivor"

    async def no_kill(*_: object, **__: object) -> dict[Path, set[int]]:
        return {}

    async def only_list(profile: RuntimeProfile, *arguments: str) -> str:
        if arguments[0] != "list":
            raise GuestError("switched off")
        return await runtime_command(profile, *arguments)

    monkeypatch.setattr("podbay.isolation.oci.kill_cgroups", no_kill)
    monkeypatch.setattr("podbay.isolation.oci.runtime_command", only_list)
    monkeypatch.setattr("podbay.isolation.oci.shut_down_agent", no_kill)
    monkeypatch.setattr("podbay.isolation.oci.EXIT_WAIT_S", 0.5)
    with pytest.raises(GuestError, match="could not be shown to be gone"):
        pod.destroy()
    assert platform.volumes.info("survivor").attached, "the volume of a container that may still run was released"
    assert volume_mount in mounts_under(vm_paths.state), "the volume's mount must stay while the container may"
    with pytest.raises(OSError, match="Read-only"):
        (volume_mount / "written-by-the-host").write_text("x")
    assert (volume_mount / "memory.db").exists(), "nothing on the host deleted the volume's files"

    monkeypatch.undo()
    pod.destroy()
    assert leftovers(vm_paths, pod.id) == {}
    assert not platform.volumes.info("survivor").attached


CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from podbay import Platform
    from podbay.paths import PodbayPaths

    cache, state, backend, attack = sys.argv[1:5]
    platform = Platform(PodbayPaths(cache=Path(cache), state=Path(state)))
    pod = platform.create_agent(backend=backend, memory_db=True, volume="orphaned")
    pod.exec(["sh", "-c", "echo from-the-orphan > /data/orphan.txt && sync"])
    if attack == "bomb":  # the controller is killed at once: a bomb can kill gVisor's sandbox, and a live
        pod.start_process(["sh", "-c", sys.argv[5]])  # controller's death watch would then clean up by itself
    else:
        pod.pause()  # frozen: it cannot even notice that its controller is gone
    print(pod.id, flush=True)
    time.sleep(600)
    """
)


def orphan_a_pod(paths: PodbayPaths, backend: str, attack: str) -> str:
    """Start a pod in a controller of its own, then SIGKILL the controller; returns the orphan's id."""
    controller = subprocess.Popen(
        [sys.executable, "-c", CONTROLLER, str(paths.cache), str(paths.state), backend, attack, FORK_BOMB],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert controller.stdout is not None
    pod_id = controller.stdout.readline().strip()
    controller.kill()
    _, errors = controller.communicate(timeout=30)
    assert pod_id.startswith("pod-"), f"the controller did not start a pod: {errors[-3000:]}"
    return pod_id


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_a_dead_controllers_fork_bomb_is_reaped(
    platform: Platform, vm_paths: PodbayPaths, backend: str, pod_ids: list[str]
) -> None:
    skip_unless_available(platform, backend)
    pod_id = orphan_a_pod(vm_paths, backend, "bomb")
    pod_ids.append(pod_id)
    time.sleep(2)  # the orphan's bomb spreads with nobody watching
    assert reap(vm_paths) == [pod_id]
    assert leftovers(vm_paths, pod_id) == {}
    assert not VolumeStore(vm_paths.volumes).info("orphaned").attached
    with platform.create_agent(backend=backend) as pod:
        assert pod.exec(["echo", "next"]).stdout == "next\n"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_the_volume_stays_locked_while_an_orphaned_container_lives(
    platform: Platform, vm_paths: PodbayPaths, backend: str, pod_ids: list[str]
) -> None:
    skip_unless_available(platform, backend)
    pod_id = orphan_a_pod(vm_paths, backend, "pause")
    pod_ids.append(pod_id)
    assert pod_id in runtime_ids(PROFILES[backend]), "the orphaned container should still be there"
    assert VolumeStore(vm_paths.volumes).info("orphaned").attached, "a volume an orphan has mounted was released"
    assert reap(vm_paths) == [pod_id]
    assert leftovers(vm_paths, pod_id) == {}
    assert not VolumeStore(vm_paths.volumes).info("orphaned").attached
    with platform.create_agent(backend=backend, memory_db=True, volume="orphaned") as pod:
        assert pod.exec(["cat", "/data/orphan.txt"]).stdout == "from-the-orphan\n"


@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_no_lock_descriptor_reaches_the_container(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    with platform.create_agent(backend=backend, memory_db=True, volume="locked") as pod:
        probe = "import os; print([os.readlink(f'/proc/1/fd/{fd}') for fd in os.listdir('/proc/1/fd')])"
        targets = pod.exec(["python3", "-c", probe]).stdout
        assert ".lock" not in targets and "volumes" not in targets, targets


# ---- floods and a full disk -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_the_runtime_stderr_cannot_fill_the_host_disk(platform: Platform, vm_paths: PodbayPaths, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend)
    run_dir = vm_paths.pods / pod.id
    assert pod.exec(["sh", "-c", "head -c 300M /dev/zero > /proc/1/fd/2"], timeout=240).exit_code == 0
    assert pod.exec(["sh", "-c", "yes > /proc/1/fd/2"], timeout=5).timed_out
    time.sleep(0.5)  # the drain runs on the platform's loop
    sizes = {log.name: log.stat().st_size for log in run_dir.glob("runtime.*")}
    assert "runtime.stderr.1" in sizes, f"300 MiB went to stderr; the log was never rotated: {sizes}"
    assert all(size <= LOG_LIMIT for size in sizes.values()), sizes
    assert sum(sizes.values()) <= 2 * LOG_LIMIT, sizes
    assert pod.exec(["echo", "still here"]).stdout == "still here\n"
    pod.destroy()


@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_in_memory_mounts_have_sizes(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    with platform.create_agent(backend=backend, memory_mib=128) as pod:
        probe = "import os; print({p: os.statvfs(p).f_blocks * os.statvfs(p).f_frsize >> 20 for p in %r})"
        sizes = pod.exec(["python3", "-c", probe % ["/tmp", "/run", "/dev/shm"]]).stdout
        assert sizes.strip() == "{'/tmp': 64, '/run': 16, '/dev/shm': 64}", sizes


def test_io_uring_is_refused_by_runc(platform: Platform) -> None:
    # Not under gVisor: its sentry implements io_uring itself, so the pod never reaches the host's. (runsc's
    # --oci-seccomp would apply the same deny-list inside the sandbox, but this runsc's filter then refuses
    # the agent's posix_spawn.)
    skip_unless_available(platform, "runc")
    probe = (
        "import ctypes, errno; libc = ctypes.CDLL(None, use_errno=True); params = ctypes.create_string_buffer(120);"
        "fd = libc.syscall(425, 4, params); print(fd, errno.errorcode.get(ctypes.get_errno()))"
    )
    with platform.create_agent(backend="runc") as pod:
        fd, error = pod.exec(["python3", "-c", probe]).stdout.split()
        assert fd == "-1" and error in ("ENOSYS", "EPERM"), (fd, error)


# ---- memory ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", CONTAINER_BACKENDS)
def test_memory_exhaustion_is_reported_as_such(
    platform: Platform, vm_paths: PodbayPaths, backend: str, pod_ids: list[str]
) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, memory_mib=128)
    pod_ids.append(pod.id)
    hog = "b = [bytearray(1 << 20) for _ in range(10**6)]"
    try:
        result = pod.exec(["python3", "-c", hog], timeout=120)
        assert result.signal == signal.SIGKILL, result  # the OOM killer took the command, the agent survived
    except GuestError as exc:  # the whole sandbox went (gVisor's sentry holds all of the pod's memory)
        assert "ran out of memory (limit 128 MiB)" in str(exc), exc
    pod.destroy()
    assert leftovers(vm_paths, pod.id) == {}
    with platform.create_agent(backend=backend) as after:
        assert after.exec(["echo", "next"]).stdout == "next\n"
