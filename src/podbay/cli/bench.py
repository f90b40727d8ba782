"""`podbay bench create | isolation | soak | reliability | clone | pool | run | snapshot | fork | density | serve
| db`:
`--json` prints one JSON document on stdout; the human summary goes to stderr."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from podbay.bench import clone as clone_bench
from podbay.bench import create as create_bench
from podbay.bench import db as db_bench
from podbay.bench import density as density_bench
from podbay.bench import isolation as isolation_bench
from podbay.bench import pool as pool_bench
from podbay.bench import reliability as reliability_bench
from podbay.bench import run as run_bench
from podbay.bench import serve as serve_bench
from podbay.bench import snapshot as snapshot_bench
from podbay.bench import soak as soak_bench
from podbay.cli.common import errors, reported_errors
from podbay.errors import InvalidSpec
from podbay.paths import PodbayPaths
from podbay.sync import Platform

app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON plus a one-line summary).")


@app.command("create")
def create(
    n: int = typer.Option(10, "--n", min=1, help="pods to create, one after another"),
    backend: str = typer.Option("qemu", "--backend"),
    cold: bool = typer.Option(False, "--cold", help="boot every pod (no template clone, no pool)"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Create → first exec result (median, p90), exec round trip, host memory per pod (USS/PSS)."""
    with reported_errors(), Platform() as platform:
        result = create_bench.bench_create(platform, n, backend, cold=cold)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(create_bench.summary(result), highlight=False)


@app.command("db")
def db(
    n: int = typer.Option(5, "--n", min=1, help="provisions per template size, and pods with and without a database"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Server databases: branch provisioning from a 1 MB and a 100 MB Postgres template, the tunnel's round
    trip and throughput against a direct host connection, and what db="postgres" adds to a pod's creation."""
    with reported_errors(), Platform() as platform:
        result = db_bench.bench_db(platform, n)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(db_bench.summary(result), highlight=False)


@app.command("isolation")
def isolation(
    n: int = typer.Option(5, "--n", min=1, help="pods per backend (a full VM gets at most 3)"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Every backend on this host: create → first exec, exec round trip, idle memory, beside the seed's claim."""
    with reported_errors(), Platform() as platform:
        result = isolation_bench.bench_isolation(platform, n)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(_table(result["rows"]))
    errors.print(isolation_bench.summary(result), highlight=False)


@app.command("soak")
def soak(
    backend: str = typer.Option("runc", "--backend"),
    cycles: int = typer.Option(1000, "--cycles", min=1, help="pods to create, exec in and destroy"),
    concurrency: int = typer.Option(20, "--concurrency", min=1, help="pods alive at once"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Create/exec/destroy cycles, many at once, on a private state root; then count every leak."""
    with reported_errors():
        result = asyncio.run(soak_bench.soak(backend, cycles, concurrency, PodbayPaths.from_env().cache))
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(soak_bench.summary(result), highlight=False)


@app.command("reliability")
def reliability(
    backend: str = typer.Option("qemu", "--backend"),
    rounds: int = typer.Option(5, "--rounds", min=1, help="kill -9 rounds, each mid-way through a commit stream"),
    flood_mib: int = typer.Option(256, "--flood-mib", min=1, help="MiB of output for the flood"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Rows lost when the sandbox is killed mid-write (goal 0); controller memory during an output flood."""
    with reported_errors():
        result = reliability_bench.bench_reliability(backend, rounds, flood_mib, PodbayPaths.from_env().cache)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(reliability_bench.summary(result), highlight=False)


@app.command("clone")
def clone(
    n: int = typer.Option(10, "--n", min=1, help="clones to start, one after another, per template"),
    runs: int = typer.Option(1, "--runs", min=1, help="repeat everything (template builds included); report medians"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """QEMU template clones: template build, clone → agent answers / first exec, idle USS/PSS, 256 vs 1024 MiB."""
    with reported_errors():
        result = clone_bench.bench_clone(PodbayPaths.from_env(), n, runs)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(clone_bench.summary(result), highlight=False)


@app.command("pool")
def pool(
    claims: int = typer.Option(200, "--claims", min=1, help="pods to create (each claims a member), one by one"),
    size: int = typer.Option(8, "--size", min=1, help="the pool's target size"),
    backend: str = typer.Option("qemu", "--backend"),
    volume: bool = typer.Option(False, "--volume", help="each pod also gets its own SQLite volume"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Warm pool: claim → first exec p50/p99 while the pool refills, hit rate, refill rate, idle member USS."""
    with reported_errors():
        result = pool_bench.bench_pool(PodbayPaths.from_env(), claims, size, backend, volume)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(pool_bench.summary(result), highlight=False)


@app.command("serve")
def serve(
    concurrency: str = typer.Option("1,10,50", "--concurrency", help="comma-separated counts of concurrent clients"),
    claims: int = typer.Option(20, "--claims", min=1, help="claims per level (at least one per client)"),
    size: int = typer.Option(10, "--size", min=1, help="the warm pool's size, refilled before each level"),
    backend: str = typer.Option("qemu", "--backend"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Pool claim → first exec through a real server's REST API (p50/p99 per concurrency level), and the
    service's overhead over the same measurement on an embedded platform."""
    try:
        levels = tuple(int(part) for part in concurrency.split(","))
    except ValueError:
        raise typer.BadParameter(f"{concurrency!r} is not counts such as 1,10,50", param_hint="--concurrency") from None
    with reported_errors():
        result = serve_bench.bench_serve(PodbayPaths.from_env(), levels, claims, size, backend)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(serve_bench.summary(result), highlight=False)


@app.command("run")
def run(
    n: int = typer.Option(10, "--n", min=1, help="runs to time, after one warm-up run"),
    cold: bool = typer.Option(False, "--cold", help="boot each pod instead of cloning the template"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """`podbay run -- true`, the whole command as a user waits for it: median, p90, min and max wall time."""
    with reported_errors():
        result = run_bench.bench_run(n, ["true"], cold=cold)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(run_bench.summary(result), highlight=False)


@app.command("snapshot")
def snapshot(
    n: int = typer.Option(5, "--n", min=1, help="snapshots (and restores) per run, per guest size"),
    runs: int = typer.Option(3, "--runs", min=1, help="repeat everything; report the median of the runs"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """QEMU snapshots: save (with and without the freeze and fsync) and restore → agent ready, 256 and 1024 MiB."""
    with reported_errors():
        result = snapshot_bench.bench_snapshot(PodbayPaths.from_env(), n, runs)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(snapshot_bench.summary(result), highlight=False)


@app.command("fork")
def fork(
    n: int = typer.Option(5, "--n", min=1, help="forks per run, per guest size"),
    runs: int = typer.Option(3, "--runs", min=1, help="repeat everything; report the median of the runs"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """QEMU fork of a running pod with a SQLite volume → the child answers; several children at once."""
    with reported_errors():
        result = snapshot_bench.bench_fork(PodbayPaths.from_env(), n, runs)
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(snapshot_bench.summary(result), highlight=False)


@app.command("density")
def density(
    counts: str = typer.Option("1,10,50", "--counts", help="idle pods to measure at, comma-separated, ascending"),
    runs: int = typer.Option(3, "--runs", min=1, help="repeat everything; report the median of the runs"),
    memory_mib: int = typer.Option(256, "--memory", help="guest memory in MiB"),
    window_s: float = typer.Option(10.0, "--window", min=1.0, help="seconds of idle CPU measured at each count"),
    preload: Path | None = typer.Option(None, "--preload", help="a host file every pod's template carries"),
    no_read: bool = typer.Option(False, "--no-read", help="with --preload: pods hold the file but do not read it"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON result"),
) -> None:
    """Idle QEMU clones: USS/PSS and host memory per pod, host CPU per idle pod, at 1, 10 and 50 pods."""
    with reported_errors():
        try:
            steps = tuple(int(count) for count in counts.split(","))
        except ValueError:
            raise InvalidSpec("--counts", f"{counts!r} is not a list of integers", "pass e.g. 1,10,50") from None
        result = density_bench.bench_density(
            PodbayPaths.from_env(),
            steps,
            runs=runs,
            memory_mib=memory_mib,
            window_s=window_s,
            preload=preload,
            read_preload=not no_read,
        )
    if as_json:
        print(json.dumps(result, indent=2))
    errors.print(density_bench.summary(result), highlight=False)


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        "backend",
        "isolation",
        "accel",
        "create→exec median / p90 ms",
        "exec rtt ms",
        "idle USS / PSS MiB",
        "seed claims",
    )
    for row in rows:
        if "create_to_first_exec_ms" not in row:
            table.add_row(row["backend"], "-", "-", f"unavailable: {row['reason']}", "-", "-", row["seed_claim"])
            continue
        create, memory = row["create_to_first_exec_ms"], row["host_memory_per_pod_mib"]
        table.add_row(
            row["backend"],
            row["isolation"],
            row["accelerator"],
            f"{create['median']:.0f} / {create['p90']:.0f}",
            f"{row['exec_round_trip_true_ms']['median']:.1f}",
            f"{memory['uss_median']:.1f} / {memory['pss_median']:.1f}",
            row["seed_claim"],
        )
    return table
