"""`podbay bench create`: create → first exec result (template clone by default, `--cold` for a boot), exec
round trip, host memory per pod."""

from __future__ import annotations

import statistics
import time
from typing import Any

from podbay.bench.memory import tree_uss_pss_kib
from podbay.sync import Platform

ROUND_TRIPS = 20


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def bench_create(platform: Platform, n: int, backend: str = "qemu", cold: bool = False) -> dict[str, Any]:
    create_ms: list[float] = []
    round_trip_ms: list[float] = []
    uss_kib: list[int] = []
    pss_kib: list[int] = []
    accelerator = isolation = origin = "?"
    for _ in range(n):
        started = time.perf_counter()
        pod = platform.create_agent(backend=backend, cold=cold)
        try:
            pod.exec(["true"])
            create_ms.append((time.perf_counter() - started) * 1000)
            for _ in range(ROUND_TRIPS):
                t = time.perf_counter()
                pod.exec(["true"])
                round_trip_ms.append((time.perf_counter() - t) * 1000)
            info = pod.info().sandbox
            assert info is not None and info.pid is not None
            accelerator, isolation, origin = info.accelerator, info.isolation, str(pod.info().origin)
            uss, pss = tree_uss_pss_kib(info.pid)
            uss_kib.append(uss)
            pss_kib.append(pss)
        finally:
            pod.destroy()
    return {
        "benchmark": "create",
        "backend": backend,
        "accelerator": accelerator,
        "isolation": isolation,
        "origin": origin,
        "n": n,
        "create_to_first_exec_ms": {
            "median": statistics.median(create_ms),
            "p90": percentile(create_ms, 0.9),
            "min": min(create_ms),
            "max": max(create_ms),
        },
        "exec_round_trip_true_ms": {
            "median": statistics.median(round_trip_ms),
            "p90": percentile(round_trip_ms, 0.9),
        },
        "host_memory_per_pod_mib": {
            "uss_median": statistics.median(uss_kib) / 1024,
            "pss_median": statistics.median(pss_kib) / 1024,
        },
    }


def summary(result: dict[str, Any]) -> str:
    create = result["create_to_first_exec_ms"]
    memory = result["host_memory_per_pod_mib"]
    return (
        f"{result['backend']}/{result['accelerator']} ({result['origin']}): create → first exec median "
        f"{create['median']:.0f} ms (p90 {create['p90']:.0f}) over {result['n']}; exec round trip median "
        f"{result['exec_round_trip_true_ms']['median']:.1f} ms; host memory per pod USS "
        f"{memory['uss_median']:.0f} MiB, PSS {memory['pss_median']:.0f} MiB"
    )
