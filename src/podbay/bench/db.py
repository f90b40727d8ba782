"""`podbay bench db`: what a pod's server database costs.

- provisioning a branch from a Postgres template of ~1 MB and ~100 MB (the template's own size is reported);
- the tunnel against a direct host connection, measured in one run: round trip of `SELECT 1` on one open
  connection (guest → agent → channel → host → server, against psycopg on the host straight to the server's
  socket) and the throughput of one large value (`SELECT repeat('x', 32 MiB)`: one message, which libpq
  reads in C, so the guest's Python does not limit it as a row-by-row COPY would under TCG); the channel's
  own round trip (a `health` request, the smallest the agent answers) is measured beside them, since the goal
  is "tunnel ≤ 2 x direct + the channel's round trip";
- the time `create_agent(db="postgres")` adds to `create_agent()` on the fast path (create → first exec).
"""

from __future__ import annotations

import inspect
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, cast

import psycopg

from podbay.bench.create import percentile
from podbay.bench.memory import tree_uss_pss_kib
from podbay.state.postgres import PostgresProvider
from podbay.state.redis import RedisProvider
from podbay.state.servers import DatabaseGrant
from podbay.sync import Platform

TEMPLATE_MB = (1, 100)
ROW_BYTES = 1024  # each seeded row's payload: a template of N MB has about N * 1024 rows
ROUND_TRIPS = 200
BULK_BYTES = 32 << 20  # one value of 32 MiB: one DataRow, read by libpq in C (no Python work per row)


def measure(conninfo: str, rounds: int, size: int) -> dict[str, Any]:
    """The client's work: `rounds` `SELECT 1` on one connection, then one value of `size` bytes. Run on the
    host (direct) as it is, and in the guest (through the tunnel) from its source (GUEST_CLIENT)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchall()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchall()
            times.append((time.perf_counter() - started) * 1e6)
        started = time.perf_counter()
        row = conn.execute("SELECT repeat('x', %s)", (size,)).fetchone()
        value = row[0] if row else ""
        return {"round_trip_us": times, "bulk_bytes": len(value), "bulk_s": time.perf_counter() - started}


GUEST_CLIENT = (
    "import json, os, sys, time\nimport psycopg\nfrom typing import Any\n\n"
    + inspect.getsource(measure)
    + '\nprint(json.dumps(measure(os.environ["PODBAY_DB_URL"], int(sys.argv[1]), int(sys.argv[2]))))\n'
)


def bench_db(platform: Platform, n: int) -> dict[str, Any]:
    databases = platform._platform.databases
    templates = databases.postgres_templates()
    made: list[str] = []
    try:
        provisioning = {}
        for megabytes in TEMPLATE_MB:
            name = f"bench-{megabytes}mb-{secrets.token_hex(3)}"
            with tempfile.TemporaryDirectory(prefix="podbay-bench-db-") as scratch:
                info = platform._loop.run(templates.create(name, seed_dump(Path(scratch), megabytes)))
            made.append(name)
            provisioning[f"{megabytes}mb"] = {"template_bytes": info.size_bytes, **_provision_ms(platform, name, n)}
        tunnel = _tunnel(platform, made[0])
        create = _create_overhead(platform, n)
        redis = _redis(platform, n)
    finally:
        for name in made:
            platform._loop.run(templates.remove(name))
    return {
        "benchmark": "db",
        "n": n,
        "provision_ms": provisioning,
        "tunnel": tunnel,
        "create": create,
        "redis": redis,
    }


def seed_dump(scratch: Path, megabytes: int) -> Path:
    """A small SQL file that makes a table of about `megabytes` MB when loaded."""
    rows = megabytes * (1 << 20) // ROW_BYTES
    dump = scratch / "seed.sql"
    dump.write_text(
        "CREATE TABLE items (id integer PRIMARY KEY, payload text NOT NULL);\n"
        f"INSERT INTO items SELECT g, repeat(md5(g::text), {ROW_BYTES // 32}) FROM generate_series(1, {rows}) g;\n"
    )
    return dump


def _provision_ms(platform: Platform, template: str, n: int) -> dict[str, Any]:
    """A pod's branch made by copying the template (CREATE DATABASE), and by claiming a spare made ahead
    (pg_spares: a rename; the spare's own copy is made in the background, untimed here)."""
    server = cast(PostgresProvider, platform._platform.databases.provider("postgres")).server
    ways = {"copy": PostgresProvider(server, spares=0), "spare": PostgresProvider(server, spares=1)}
    times: dict[str, list[float]] = {way: [] for way in ways}
    for index in range(n):
        for way, provider in ways.items():
            platform._loop.run(provider.spares.settled())  # a spare is ready (the copy provider makes none)
            pod_id = f"pod-bench{secrets.token_hex(4)}{index}"
            started = time.perf_counter()
            grant = platform._loop.run(provider.provision(pod_id, template, False))
            times[way].append((time.perf_counter() - started) * 1000)
            platform._loop.run(provider.release(grant))
    for provider in ways.values():
        platform._loop.run(provider.close())
    return {way: _stats(values) for way, values in times.items()}


def _tunnel(platform: Platform, template: str) -> dict[str, Any]:
    with platform.create_agent(db="postgres", db_template=template) as pod:
        channel = pod._pod.sandbox.channel
        channel_us = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            platform._loop.run(channel.request("health"))
            channel_us.append((time.perf_counter() - started) * 1e6)
        result = pod.exec(["python3", "-c", GUEST_CLIENT, str(ROUND_TRIPS), str(BULK_BYTES)], timeout=600)
        if result.exit_code != 0:
            raise RuntimeError(f"the guest's client failed: {result.stderr[-500:]}")
        guest = json.loads(result.stdout)
        grant = pod._pod._grant
        assert grant is not None
        direct = _direct(platform, grant)
    tunnel_rt = statistics.median(guest["round_trip_us"])
    direct_rt = statistics.median(direct["round_trip_us"])
    channel_rt = statistics.median(channel_us)
    tunnel_mib_s = guest["bulk_bytes"] / guest["bulk_s"] / (1 << 20)
    direct_mib_s = direct["bulk_bytes"] / direct["bulk_s"] / (1 << 20)
    return {
        "round_trip_us": {
            "tunnel_median": tunnel_rt,
            "tunnel_p90": percentile(guest["round_trip_us"], 0.9),
            "direct_median": direct_rt,
            "channel_health_median": channel_rt,
            "ratio_tunnel_to_direct": tunnel_rt / direct_rt,
            "goal_us": 2 * direct_rt + channel_rt,
            "goal_met": tunnel_rt <= 2 * direct_rt + channel_rt,
        },
        "bulk_mib_s": {
            "tunnel": tunnel_mib_s,
            "direct": direct_mib_s,
            "ratio_tunnel_to_direct": tunnel_mib_s / direct_mib_s,
            "bytes": guest["bulk_bytes"],
        },
    }


def _direct(platform: Platform, grant: DatabaseGrant) -> dict[str, Any]:
    """The same client work on the host, straight to the server's socket with the pod's own login."""
    provider = cast(PostgresProvider, platform._platform.databases.provider("postgres"))
    return measure(provider.direct_conninfo(grant), ROUND_TRIPS, BULK_BYTES)


def _create_overhead(platform: Platform, n: int) -> dict[str, Any]:
    """create → first exec with and without a database, alternating so drift hits both alike."""
    plain: list[float] = []
    with_db: list[float] = []
    listener: list[float] = []  # the pod's "tunnel" phase: register the service, the agent's listen
    ways: tuple[tuple[list[float], Literal["postgres"] | None], ...] = ((plain, None), (with_db, "postgres"))
    for _ in range(n):
        for sink, db in ways:
            started = time.perf_counter()
            pod = platform.create_agent(db=db)
            try:
                pod.exec(["true"])
                sink.append((time.perf_counter() - started) * 1000)
                listener += [phase.duration_ms for phase in pod.info().trace if phase.name == "tunnel"]
            finally:
                pod.destroy()
    extra = statistics.median(with_db) / statistics.median(plain) - 1
    return {
        "plain_ms": _stats(plain),
        "with_postgres_ms": _stats(with_db),
        "tunnel_phase_ms": _stats(listener),
        "extra_fraction": extra,
        "goal_fraction": 0.10,
        "goal_met": extra <= 0.10,
    }


def _redis(platform: Platform, n: int) -> dict[str, Any]:
    """A pod's Redis: provisioning (the instance started and answering) and its idle memory (USS)."""
    provider = cast(RedisProvider, platform._platform.databases.provider("redis"))
    platform._loop.run(provider.start())
    times: list[float] = []
    uss_mib: list[float] = []
    for index in range(n):
        pod_id = f"pod-bench{secrets.token_hex(4)}{index}"
        started = time.perf_counter()
        grant = platform._loop.run(provider.provision(pod_id, None, False))
        times.append((time.perf_counter() - started) * 1000)
        try:
            pid = provider.pid_of(pod_id)
            if pid is not None:
                uss_mib.append(tree_uss_pss_kib(pid)[0] / 1024)
        finally:
            platform._loop.run(provider.release(grant))
    return {"provision_ms": _stats(times), "idle_uss_mib": _stats(uss_mib)}


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summary(result: dict[str, Any]) -> str:
    provision = ", ".join(
        f"{size} template copy {row['copy']['median']:.0f} ms, spare {row['spare']['median']:.0f} ms"
        for size, row in result["provision_ms"].items()
    )
    rt, bulk, create = result["tunnel"]["round_trip_us"], result["tunnel"]["bulk_mib_s"], result["create"]
    redis = result["redis"]
    return (
        f"provision: {provision}; SELECT 1 round trip: tunnel {rt['tunnel_median']:.0f} µs, direct "
        f"{rt['direct_median']:.0f} µs, channel {rt['channel_health_median']:.0f} µs (goal "
        f"{'met' if rt['goal_met'] else 'not met'}); 32 MiB value: tunnel {bulk['tunnel']:.0f} MiB/s vs direct "
        f"{bulk['direct']:.0f} MiB/s; create with postgres +{create['extra_fraction'] * 100:.0f} % "
        f"({create['with_postgres_ms']['median']:.0f} vs {create['plain_ms']['median']:.0f} ms, tunnel phase "
        f"{create['tunnel_phase_ms']['median']:.0f} ms); redis: provision {redis['provision_ms']['median']:.0f} ms, "
        f"idle USS {redis['idle_uss_mib']['median']:.1f} MiB"
    )
