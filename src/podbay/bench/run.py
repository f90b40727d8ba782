"""`podbay bench run`: `podbay run -- true` timed as a whole process, start-up and teardown included — what a
user waits for at the shell."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from podbay.bench.create import percentile
from podbay.errors import GuestError

COMMAND_TIMEOUT_S = 300.0


def podbay_command() -> list[str]:
    """This installation's `podbay` (the console script beside this Python), as a user would run it."""
    script = Path(sys.executable).parent / "podbay"
    return [str(script)] if script.exists() else [sys.executable, "-m", "podbay.cli"]


def bench_run(n: int, argv: list[str], cold: bool = False) -> dict[str, Any]:
    command = [*podbay_command(), "run", *(["--cold"] if cold else []), "--", *argv]
    wall_ms: list[float] = []
    for index in range(n + 1):  # the first run is a warm-up (page cache, a template built on first use)
        started = time.perf_counter()
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT_S)
        elapsed = (time.perf_counter() - started) * 1000
        if done.returncode != 0:
            raise GuestError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if index > 0:
            wall_ms.append(elapsed)
    return {
        "benchmark": "run",
        "command": command,
        "n": n,
        "wall_ms": {
            "median": statistics.median(wall_ms),
            "p90": percentile(wall_ms, 0.9),
            "min": min(wall_ms),
            "max": max(wall_ms),
        },
    }


def summary(result: dict[str, Any]) -> str:
    wall = result["wall_ms"]
    return (
        f"`{' '.join(result['command'][-4:])}` as a whole command: median {wall['median']:.0f} ms "
        f"(p90 {wall['p90']:.0f}, min {wall['min']:.0f}, max {wall['max']:.0f}) over {result['n']} runs"
    )
