"""`podbay bench reliability`: what a crash costs and what a flood costs.

- rows lost under kill -9: a pod commits one row per transaction and prints each count once committed; the
  VMM (or the runtime) is killed mid-stream; the volume is exported afterwards (journal replayed) and every
  acknowledged row must be there. Repeated `rounds` times; the goal is 0 lost.
- host memory during an output flood: the controller's peak RSS growth while a pod writes `flood_mib` MiB to
  stdout (the host keeps 16 MiB of it; callbacks see it all).
"""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from podbay.errors import PodbayError
from podbay.paths import PodbayPaths
from podbay.sync import Platform

COMMIT_LOOP = """
import os, sqlite3
db = sqlite3.connect(os.environ["PODBAY_DB_PATH"], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS rows (n INTEGER)")
n = db.execute("SELECT COUNT(*) FROM rows").fetchone()[0]
while True:
    db.execute("INSERT INTO rows VALUES (?)", (n,))
    n += 1
    print(n, flush=True)
"""
KILL_AFTER = 30  # acknowledged commits before the kill


def _crash_round(platform: Platform, backend: str, volume: str, export_to: Path) -> dict[str, int]:
    pod = platform.create_agent(backend=backend, memory_db=True, volume=volume)
    acknowledged = [0]

    def count(chunk: bytes) -> None:
        numbers = chunk.split()
        if numbers:
            acknowledged[0] = int(numbers[-1])

    process = pod.start_process(["python3", "-c", COMMIT_LOOP], on_stdout=count)
    start = acknowledged[0]
    deadline = time.monotonic() + 120
    while acknowledged[0] < start + KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.02)
    sandbox = pod.info().sandbox
    assert sandbox is not None and sandbox.pid is not None
    os.kill(sandbox.pid, signal.SIGKILL)
    seen = acknowledged[0]
    try:
        process.wait()
    except PodbayError:
        pass  # the channel closed with the sandbox: expected
    pod.destroy()
    exported = platform.volumes.export(volume, export_to)
    (rows,) = sqlite3.connect(exported).execute("SELECT COUNT(*) FROM rows").fetchone()
    return {"acknowledged": seen, "found": int(rows), "lost": max(0, seen - int(rows))}


def _flood(platform: Platform, backend: str, flood_mib: int) -> dict[str, float]:
    pod = platform.create_agent(backend=backend)
    try:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        result = pod.exec(["sh", "-c", f"head -c {flood_mib}M /dev/zero | tr '\\0' x"], timeout=1800)
        elapsed = time.perf_counter() - started
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    finally:
        pod.destroy()
    return {
        "flood_mib": flood_mib,
        "kept_mib": len(result.stdout) / 2**20,
        "controller_peak_rss_growth_mib": grown,
        "throughput_mib_s": flood_mib / elapsed,
    }


def bench_reliability(backend: str, rounds: int, flood_mib: int, cache: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="podbay-reliability-") as scratch:
        paths = PodbayPaths(cache=cache, state=Path(scratch) / "state")
        with Platform(paths) as platform:
            crashes = [
                _crash_round(platform, backend, "ledger", Path(scratch) / f"ledger-{index}.db")
                for index in range(rounds)
            ]
            flood = _flood(platform, backend, flood_mib)
    return {
        "benchmark": "reliability",
        "backend": backend,
        "kill9_rounds": crashes,
        "rows_lost_under_kill9": sum(round_["lost"] for round_ in crashes),
        "output_flood": flood,
    }


def summary(result: dict[str, Any]) -> str:
    flood = result["output_flood"]
    acknowledged = sum(round_["acknowledged"] for round_ in result["kill9_rounds"])
    return (
        f"{result['backend']}: {result['rows_lost_under_kill9']} of {acknowledged} acknowledged rows lost over "
        f"{len(result['kill9_rounds'])} kill -9 rounds; a {flood['flood_mib']} MiB output flood grew the "
        f"controller by {flood['controller_peak_rss_growth_mib']:.0f} MiB ({flood['throughput_mib_s']:.0f} MiB/s)"
    )
