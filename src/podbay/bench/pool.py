"""`podbay bench pool`: pool claim → first exec result over many claims while the pool refills, hit rate,
refill rate, and the host memory an idle member costs. On a private state root; the image cache is shared."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from podbay.bench.create import percentile
from podbay.bench.memory import tree_uss_pss_kib
from podbay.paths import PodbayPaths
from podbay.sync import Platform

FILL_TIMEOUT_S = 600.0


def bench_pool(
    paths: PodbayPaths, claims: int, size: int, backend: str = "qemu", volume: bool = False
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="podbay-bench-pool-") as state,
        Platform(PodbayPaths(cache=paths.cache, state=Path(state))) as platform,
    ):
        filled = time.perf_counter()
        platform.pools.ensure(size, backend=backend, wait=FILL_TIMEOUT_S)
        fill_s = time.perf_counter() - filled
        idle = platform.pools.report()[0]["idle_member_pids"]
        idle_uss = [tree_uss_pss_kib(pid)[0] / 1024 for pid in idle]
        by_origin: dict[str, list[float]] = {}
        for _ in range(claims):
            started = time.perf_counter()
            pod = platform.create_agent(backend=backend, memory_db=volume)
            try:
                pod.exec(["true"])
                elapsed = (time.perf_counter() - started) * 1000
                by_origin.setdefault(str(pod.info().origin), []).append(elapsed)
            finally:
                pod.destroy()
        report = platform.pools.report()[0]
    every = [ms for values in by_origin.values() for ms in values]
    return {
        "benchmark": "pool",
        "backend": backend,
        "size": size,
        "claims": claims,
        "with_volume": volume,
        "fill_s": fill_s,
        "create_to_first_exec_ms": {origin: _stats(values) for origin, values in by_origin.items()},
        "all_ms": _stats(every),
        "hit_rate": report["hit_rate"],
        "refill_per_s": report["refill_per_s"],
        "member_start_ms": report["member_start_ms"],
        "dead_replaced": report["dead_replaced"],
        "idle_member_uss_mib": {"median": statistics.median(idle_uss), "max": max(idle_uss)} if idle_uss else None,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 0.99),
        "min": min(values),
        "max": max(values),
    }


def summary(result: dict[str, Any]) -> str:
    hits = result["create_to_first_exec_ms"].get("pool claim")
    hit_part = f"claim → first exec p50 {hits['p50']:.1f} ms, p99 {hits['p99']:.1f} ms" if hits else "no pool hits"
    rate = result["hit_rate"] or 0.0
    return (
        f"{result['backend']} pool of {result['size']}{' (with a volume)' if result['with_volume'] else ''}: "
        f"{hit_part}; hit rate {rate:.0%} over {result['claims']} claims; "
        f"refill {result['refill_per_s'] or 0:.1f}/s; all creates p50 {result['all_ms']['p50']:.1f} ms"
    )
