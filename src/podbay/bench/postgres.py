"""`python -m podbay.bench.postgres`: a pod's Postgres database, measured below the platform (podbay.state.postgres).

A private managed server in a temporary directory; per template size (about 1 and 100 MB of table data, made by
`podbay bench db`'s seed dump, over what an empty database has), `runs` times each: provision from the template
(role + CREATE DATABASE ... TEMPLATE + owners + rights), fork it to one child while no session is open (CREATE
DATABASE ... TEMPLATE) and while one is (exported snapshot, pg_dump | pg_restore), save it to a directory, load
that into a new pod, and release each. `python -m podbay.bench.postgres [RUNS] [wal_log|file_copy]` (3 runs,
wal_log by default). Prints JSON, then a one-line summary of the medians.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

from podbay.bench.db import seed_dump
from podbay.state.pg_server import PostgresServer
from podbay.state.postgres import CopyStrategy, PostgresProvider

SIZES_MIB = (1, 100)
USAGE = "usage: python -m podbay.bench.postgres [RUNS] [wal_log|file_copy]"


def bench_postgres(
    runs: int = 3, sizes_mib: tuple[int, ...] = SIZES_MIB, strategy: CopyStrategy = "wal_log"
) -> dict[str, Any]:
    return asyncio.run(_bench(runs, sizes_mib, strategy))


async def _bench(runs: int, sizes_mib: tuple[int, ...], strategy: CopyStrategy) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="podbay-bench-pg-"))
    workdir.chmod(0o755)
    provider = PostgresProvider(PostgresServer.managed(workdir / "postgres"), copy_strategy=strategy)
    results: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await provider.start()
        results["server_start_ms"] = _ms(started)
        for size in sizes_mib:
            results[f"{size}_mib"] = await _one_size(provider, workdir, size, runs)
    finally:
        await provider.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


async def _one_size(provider: PostgresProvider, workdir: Path, size: int, runs: int) -> dict[str, Any]:
    dump = seed_dump(workdir, size)
    started = time.perf_counter()
    template = await provider.templates.create(f"bench{size}", dump)
    dump.unlink()
    out: dict[str, Any] = {"template_bytes": template.size_bytes, "template_create_ms": _ms(started)}
    phases: dict[str, list[float]] = {}
    for i in range(runs):
        for phase, ms in (await _one_run(provider, workdir, f"{size}x{i}", f"bench{size}")).items():
            phases.setdefault(phase, []).append(ms)
    out.update({f"{phase}_ms_median": round(statistics.median(v), 1) for phase, v in phases.items()})
    out["runs"] = {phase: [round(v, 1) for v in values] for phase, values in phases.items()}
    await provider.templates.remove(f"bench{size}")
    return out


async def _one_run(provider: PostgresProvider, workdir: Path, tag: str, template: str) -> dict[str, float]:
    times: dict[str, float] = {}

    async def timed(phase: str, step: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        result = await step()
        times[phase] = _ms(started)
        return result

    grant = await timed("provision", lambda: provider.provision(f"pod-p{tag}", template, False))
    branching = await timed("branch_idle", lambda: provider.branch(grant, [f"pod-i{tag}"]))
    [idle_child] = await timed("branch_idle_finish", branching.finish)
    conninfo = provider.server.conninfo(grant.name) | {"user": grant.role, "password": grant.secret}
    async with await psycopg.AsyncConnection.connect(**conninfo):
        branching = await timed("branch_busy", lambda: provider.branch(grant, [f"pod-b{tag}"]))
        [busy_child] = await timed("branch_busy_finish", branching.finish)
    dest = workdir / f"snap-{tag}"
    saving = await timed("save", lambda: provider.save(grant, dest))
    await timed("save_finish", saving.finish)
    loaded = await timed("load", lambda: provider.load(dest, f"pod-l{tag}", False))
    for child in (idle_child, busy_child, loaded):
        await provider.release(child)
    await timed("release", lambda: provider.release(grant))
    shutil.rmtree(dest, ignore_errors=True)
    return times


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _args(argv: list[str]) -> tuple[int, CopyStrategy]:
    """RUNS (a positive integer, 3 by default) and the copy strategy (wal_log by default); SystemExit with the
    usage for anything else."""
    if len(argv) > 2 or (argv and not argv[0].isdigit()) or (argv and int(argv[0]) < 1):
        raise SystemExit(USAGE)
    runs = int(argv[0]) if argv else 3
    strategy: CopyStrategy
    if argv[1:] in ([], ["wal_log"]):
        strategy = "wal_log"
    elif argv[1:] == ["file_copy"]:
        strategy = "file_copy"
    else:
        raise SystemExit(USAGE)
    return runs, strategy


def main() -> None:
    runs, strategy = _args(sys.argv[1:])
    results = bench_postgres(runs, strategy=strategy)
    print(json.dumps(results, indent=2))
    summary = ", ".join(
        f"{size}: provision {r['provision_ms_median']} ms, fork idle {r['branch_idle_ms_median']} ms, "
        f"fork busy {r['branch_busy_finish_ms_median']} ms, load {r['load_ms_median']} ms"
        for size, r in results.items()
        if isinstance(r, dict)
    )
    print(f"postgres, CREATE DATABASE ... STRATEGY {strategy} (median of {runs}): {summary}")


if __name__ == "__main__":
    main()
