"""`podbay usage --tenant NAME`: a tenant's recorded usage and its cost, read from the registry on the host
(admin-style: no token; whoever can read PODBAY_STATE's server.db)."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.errors import NotFound
from podbay.metering import PriceTable, UsageReport
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from podbay.server.usage import UsageLedger


def usage(
    tenant: str = typer.Option(..., "--tenant", help="the tenant whose pods to report"),
    pod: str | None = typer.Option(None, "--pod", help="only this pod (ended)"),
    start: float | None = typer.Option(None, "--from", help="epoch seconds: pods that ended at or after"),
    end: float | None = typer.Option(None, "--to", help="epoch seconds: pods that ended before"),
    prices: Path | None = typer.Option(None, "--prices", help="a JSON price table (default: PriceTable's)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
) -> None:
    """Each ended pod's vCPU-seconds, memory MiB-seconds, storage MiB-hours, database size and cost, and the
    sums. Usage is recorded when a pod ends; a running pod's so far is `GET /usage?pod=ID`."""
    try:
        table = PriceTable.load(prices) if prices is not None else PriceTable()
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{prices}: {exc}", param_hint="--prices") from None
    with reported_errors():
        ledger = UsageLedger(Registry(PodbayPaths.from_env().state / "server.db"))
        if pod is not None:
            found = ledger.of_pod(tenant, pod)
            if found is None:
                raise NotFound(f"no recorded usage of pod {pod!r} for tenant {tenant!r}")
            report = UsageReport.of([found], table)
        else:
            report = UsageReport.of(ledger.of_tenant(tenant, start, end), table, start, end)
    if as_json:
        print(report.model_dump_json(indent=2))
        return
    money = report.prices.currency
    grid = Table("pod", "ended", "alive s", "vCPU-s", "MiB-s", "MiB-h", "db bytes", f"cost ({money})")
    for item, cost in zip(report.pods, report.costs, strict=True):
        grid.add_row(
            item.pod_id,
            _when(item.ended_at),
            f"{item.alive_s:.1f}",
            f"{item.vcpu_seconds:.1f}",
            f"{item.memory_mib_seconds:.0f}",
            f"{item.storage_mib_hours:.3f}",
            str(item.database_bytes),
            f"{cost.total:.6f}",
        )
    totals = report.totals
    grid.add_row(
        f"total ({totals.pods} pods)",
        "",
        "",
        f"{totals.vcpu_seconds:.1f}",
        f"{totals.memory_mib_seconds:.0f}",
        f"{totals.storage_mib_hours:.3f}",
        str(totals.database_bytes),
        f"{report.cost.total:.6f}",
    )
    console.print(grid)
    if not report.pods:
        errors.print(f"no recorded usage for tenant {tenant!r}", highlight=False)


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp is not None else "running"
