"""`python -m podbay.bench.postgres`: a pod's Postgres database, measured below the platform (podbay.state.postgres).

A private managed server in a temporary directory; per template size (about 1 and 100 MiB of table data over
the ~7.5 MiB an empty database has), `runs` times each: provision from the template (role + CREATE DATABASE ...
TEMPLATE + owners + rights), fork it to one child while no session is open (CREATE DATABASE ... TEMPLATE) and
while one is (exported snapshot, pg_dump | pg_restore), save it to a directory, load that into a new pod, and
release each. `python -m podbay.bench.postgres [RUNS] [file_copy]`. Prints JSON, then a one-line summary of the medians.
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

from podbay.state.pg_server import PostgresServer
from podbay.state.postgres import CopyStrategy, PostgresProvider

ROWS_PER_MIB = 7_500  # rows of (int, 100 characters): about 136 bytes each on disk
SIZES_MIB = (1, 100)


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
    dump = workdir / f"seed-{size}.sql"
    dump.write_text(
        "CREATE TABLE rows (id int PRIMARY KEY, pad text);\n"
        "INSERT INTO rows SELECT g, repeat(md5(g::text), 3) || 'xxxx'"
        f" FROM generate_series(1, {size * ROWS_PER_MIB}) g;\n"
    )
    started = time.perf_counter()
    template = await provider.templates.create(f"bench{size}", dump)
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


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    strategy: CopyStrategy = "file_copy" if sys.argv[2:] == ["file_copy"] else "wal_log"
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
