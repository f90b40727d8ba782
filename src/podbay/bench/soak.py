"""`podbay bench soak`: many create → exec → destroy cycles, `concurrency` at a time, then count what leaked.

Runs against a private, fresh state root (the image cache is the user's), so every process, mount, loop
device, cgroup, runtime entry, run directory or anonymous volume found afterwards is a leak of these pods.
Every fifth pod has an anonymous database volume, so volume attach and release are soaked too.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from podbay.bench.create import percentile
from podbay.bench.leaks import host_leaks
from podbay.errors import GuestError
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.rundir import remove_run_dir

WITH_DATABASE_EVERY = 5
POD_ID = re.compile(r"pod-[0-9a-f]{12}")


async def _cycle(platform: AsyncPlatform, backend: str, index: int) -> tuple[str, float]:
    """One pod's life; returns its id and how long it took."""
    started = time.perf_counter()
    # Generous boot timeout: with many pods booting at once on few cores, a boot waits for CPU, not for a fault.
    database = index % WITH_DATABASE_EVERY == 0
    pod = await platform.create_agent(backend=backend, memory_db=database, boot_timeout_s=600)
    try:
        result = await pod.exec(["echo", str(index)], timeout=60)
        if result.stdout != f"{index}\n":
            raise GuestError(f"pod {pod.id} answered {result.stdout!r} to echo {index}")
    finally:
        await pod.destroy()
    return pod.id, (time.perf_counter() - started) * 1000


async def soak(backend: str, cycles: int, concurrency: int, cache: Path) -> dict[str, Any]:
    paths = PodbayPaths(cache=cache, state=Path(tempfile.mkdtemp(prefix="podbay-soak-")))
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    pod_ids: set[str] = set()
    cycle_ms: list[float] = []
    fds_before = len(os.listdir("/proc/self/fd"))
    started = time.perf_counter()
    async with AsyncPlatform(paths) as platform:

        async def guarded(index: int) -> None:
            async with gate:
                try:
                    pod_id, elapsed = await _cycle(platform, backend, index)
                except Exception as exc:  # anything outside PodbayError is a finding too
                    failures.append(f"cycle {index}: {type(exc).__name__}: {exc}"[:500])
                    return
                pod_ids.add(pod_id)
                cycle_ms.append(elapsed)

        await asyncio.gather(*(guarded(index) for index in range(cycles)))
    elapsed_s = time.perf_counter() - started
    leaks = host_leaks(paths, pod_ids)
    fds_after = len(os.listdir("/proc/self/fd"))
    kept = any(leaks.values())
    if not kept:
        remove_run_dir(paths.state)  # never across a mount point: what leaked stays for a look (and the reaper)
    return {
        "benchmark": "soak",
        "backend": backend,
        "cycles": cycles,
        "concurrency": concurrency,
        "failed": len(failures),
        "failures": failures[:10],
        "failure_kinds": dict(Counter(_kind(failure) for failure in failures).most_common()),
        "elapsed_s": elapsed_s,
        "pods_per_s": cycles / elapsed_s,  # sustained create → exec → destroy at this concurrency
        "cycle_ms": {
            "median": statistics.median(cycle_ms) if cycle_ms else None,
            "p90": percentile(cycle_ms, 0.9) if cycle_ms else None,
        },
        "leaks": {kind: len(found) for kind, found in leaks.items()},
        "leaked": {kind: found[:5] for kind, found in leaks.items() if found},
        "controller_fds_leaked": fds_after - fds_before,
        "controller_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_kept": str(paths.state) if kept else None,
    }


def _kind(failure: str) -> str:
    """A failure without its cycle number and pod ids: its first line and its last (a console's last words)."""
    lines = failure.split(": ", 1)[-1].splitlines() or [""]
    return POD_ID.sub("pod-…", " | ".join(dict.fromkeys([lines[0], lines[-1]])))[:240]


def summary(result: dict[str, Any]) -> str:
    leaked = sum(result["leaks"].values()) + max(result["controller_fds_leaked"], 0)
    return (
        f"{result['backend']}: {result['cycles']} create/exec/destroy cycles, {result['concurrency']} at a time, "
        f"in {result['elapsed_s']:.0f} s ({result['pods_per_s']:.1f} pods/s); {result['failed']} failed; "
        f"{leaked} leaked "
        f"({', '.join(f'{k} {v}' for k, v in result['leaks'].items())}, fds {result['controller_fds_leaked']}); "
        f"controller peak RSS {result['controller_peak_rss_mib']:.0f} MiB"
    )
