"""`podbay bench isolation`: the seed's table — every backend measured on this host, beside its claim."""

from __future__ import annotations

from typing import Any

from podbay.bench.create import bench_create
from podbay.sync import Platform

# What the seed claims for each isolation level (cold start; memory where it gives one).
SEED_CLAIMS = {
    "qemu": "microVM: 200-500 ms, ~5 MB",
    "firecracker": "microVM: 200-500 ms, ~5 MB",
    "gvisor": "gVisor: 50-200 ms",
    "runc": "container: 20-100 ms",
    "qemu-q35": "full VM: 2-10 s",
}
SLOW_BACKENDS = {"qemu-q35": 3}  # a full VM under TCG takes tens of seconds a boot: fewer runs


def bench_isolation(platform: Platform, n: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for name, availability in platform.doctor().items():
        row: dict[str, Any] = {"backend": name, "seed_claim": SEED_CLAIMS.get(name, "")}
        if availability.available:
            row.update(bench_create(platform, min(n, SLOW_BACKENDS.get(name, n)), name, cold=True))
        else:
            row.update({"available": False, "reason": availability.reason})
        rows.append(row)
    return {"benchmark": "isolation", "n": n, "rows": rows}


def summary(result: dict[str, Any]) -> str:
    parts = []
    for row in result["rows"]:
        if "create_to_first_exec_ms" in row:
            parts.append(f"{row['backend']} {row['create_to_first_exec_ms']['median']:.0f} ms")
        else:
            parts.append(f"{row['backend']} unavailable")
    return "cold create → first exec medians: " + ", ".join(parts)
