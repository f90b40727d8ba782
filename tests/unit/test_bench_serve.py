"""`podbay bench serve`'s harness without a server: claims shared by concurrent clients, and the summary."""

from __future__ import annotations

import asyncio

import pytest

from podbay.bench import serve
from podbay.errors import InvalidSpec
from podbay.paths import PodbayPaths


def test_clients_share_the_claims_and_run_at_once() -> None:
    running = 0
    most = 0

    async def claim() -> tuple[float, str]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0)
        running -= 1
        return 1.0, "pool claim"

    samples = asyncio.run(serve._concurrently(4, 10, claim))
    assert len(samples) == 10
    assert most == 4


def test_the_summary_names_each_level_and_the_ratio() -> None:
    stats = {"n": 2, "p50": 20.0, "p99": 30.0, "max": 30.0, "origins": {"pool claim": 2}}
    result = {
        "backend": "qemu",
        "pool_size": 4,
        "served_ms": {"1": stats},
        "embedded_ms": {"1": {**stats, "p50": 10.0}},
        "overhead_p50_ratio": {"1": 2.0},
    }
    assert "1 client: served p50 20.0 / p99 30.0 ms, embedded p50 10.0 ms (x2.00)" in serve.summary(result)


def test_bad_levels_are_refused_by_name(paths: PodbayPaths) -> None:
    with pytest.raises(InvalidSpec) as bad:
        serve.bench_serve(paths, (0,), 1, 1)
    assert bad.value.field == "concurrency"
