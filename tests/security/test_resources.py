"""Resource attacks from inside a pod: floods of output and console, a full disk, memory exhaustion, a fork
bomb. The host keeps bounded memory and disk, the caller gets an answer in bounded time, and the next pod
starts. (Container-specific attacks — cgroups, layers, the runtime's stderr — are in test_containers_attack.)"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from podbay import Platform, Timeout
from podbay.channel import OUTPUT_LIMIT
from podbay.paths import PodbayPaths
from tests.integration.conftest import ALL_BACKENDS, assert_nothing_left, skip_unless_available

pytestmark = [pytest.mark.integration, pytest.mark.security]
VM_BACKENDS = ("qemu", "qemu-q35", "firecracker")


def disk_usage(root: Path) -> int:
    """Bytes the host allocated under `root` on its own filesystem (as `du -x`: mounts under it, such as a
    container's root overlay, are not counted; sparse files count what they hold)."""
    device, total, pending = root.stat().st_dev, 0, [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != device:
                    continue
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
    return total


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_an_output_flood_is_bounded_on_the_host(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = pod.exec(["sh", "-c", "head -c 48M /dev/zero | tr '\\0' x"], timeout=240)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.exit_code == 0
    assert result.truncated
    assert len(result.stdout) == OUTPUT_LIMIT
    assert grown_mib < 200, f"the host process grew by {grown_mib:.0f} MiB for a 48 MiB flood"
    assert pod.exec(["echo", "still here"]).stdout == "still here\n"
    pod.destroy()


@pytest.mark.parametrize("backend", VM_BACKENDS)
def test_the_console_log_is_bounded(
    platform: Platform, vm_paths: PodbayPaths, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    skip_unless_available(platform, backend)
    limit = 64 << 10
    monkeypatch.setattr("podbay.isolation.supervise.LOG_LIMIT", limit)
    pod = platform.create_agent(backend=backend)
    run_dir = vm_paths.pods / pod.id
    flood = "i=0; while [ $i -lt 40 ]; do head -c 16384 /dev/zero | tr '\\0' c > /dev/console; i=$((i+1)); done"
    assert pod.exec(["sh", "-c", flood], timeout=240).exit_code == 0
    time.sleep(0.5)  # the drain runs on the platform's loop
    logs = sorted(run_dir.glob("console.log*"))
    sizes = {log.name: log.stat().st_size for log in logs}
    assert "console.log.1" in sizes, f"640 KiB went to the console; the log was never rotated: {sizes}"
    assert all(size <= limit for size in sizes.values()), sizes
    assert pod.exec(["true"]).exit_code == 0
    pod.destroy()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_full_disk_stays_inside_the_pod(platform: Platform, vm_paths: PodbayPaths, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, disk_mib=64)
    assert disk_usage(vm_paths.pods / pod.id) >> 20 <= 8, "an empty layer takes next to nothing (it is sparse)"
    result = pod.exec(["sh", "-c", "dd if=/dev/zero of=/work/fill bs=1M count=200 2>&1; sync"], timeout=240)
    assert "No space left on device" in result.stdout, result.stdout
    used_mib = disk_usage(vm_paths.pods / pod.id) >> 20
    assert used_mib <= 72, f"the pod's run directory holds {used_mib} MiB with disk_mib=64"
    assert pod.exec(["rm", "/work/fill"]).exit_code == 0
    assert pod.exec(["echo", "ok"]).stdout == "ok\n"
    pod.destroy()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_memory_exhaustion_is_the_pods_problem(platform: Platform, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend, memory_mib=128)
    hog = "b = []\nwhile True: b.append(bytearray(1 << 20))"
    try:
        result = pod.exec(["python3", "-c", hog], timeout=120)
        assert result.exit_code != 0
    except Exception as exc:  # a sandbox that dies whole must say why
        assert "memory" in str(exc).lower(), f"the error does not say the pod ran out of memory: {exc}"
    pod.destroy()
    platform.create_agent(backend=backend).destroy()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_fork_bomb_is_ended_by_destroy(platform: Platform, vm_paths: PodbayPaths, backend: str) -> None:
    skip_unless_available(platform, backend)
    pod = platform.create_agent(backend=backend)
    started = time.monotonic()
    try:
        pod.exec(["sh", "-c", "bomb() { bomb | bomb & }; bomb"], timeout=5)
    except Timeout:
        pass  # the agent was starved: the host's own deadline answered
    assert time.monotonic() - started < 60
    pod.destroy()
    assert_nothing_left(vm_paths)
    next_pod = platform.create_agent(backend=backend)
    assert next_pod.exec(["echo", "next"]).stdout == "next\n"
    next_pod.destroy()
