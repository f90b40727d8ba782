"""`podbay usage --tenant NAME`: a tenant's recorded usage and its cost, read from the registry on the host
(admin-style: no token; whoever can read PODBAY_STATE's server.db). With PODBAY_SERVER (or --server) it asks the
server instead (`GET /usage`), for the tenant of the token, under the server's price table."""

from __future__ import annotations

import datetime
from pathlib import Path

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.cli.remote import ServerOption, TokenOption
from podbay.errors import InvalidSpec, NotFound
from podbay.metering import PriceTable, UsageReport
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from podbay.server.usage import UsageLedger


def usage(
    tenant: str | None = typer.Option(
        None, "--tenant", help="the tenant whose pods to report (with a server: the token's, which it must match)"
    ),
    pod: str | None = typer.Option(None, "--pod", help="only this pod (ended; with a server, running too)"),
    start: float | None = typer.Option(None, "--from", help="epoch seconds: pods that ended at or after"),
    end: float | None = typer.Option(None, "--to", help="epoch seconds: pods that ended before"),
    prices: Path | None = typer.Option(None, "--prices", help="a JSON price table (default: PriceTable's)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Each ended pod's vCPU-seconds, memory MiB-seconds, storage MiB-hours, database size and cost, and the
    sums. Usage is recorded when a pod ends; a running pod's so far is `GET /usage?pod=ID`."""
    if server:
        if prices is not None:
            raise typer.BadParameter(
                "the server prices usage with its own table; leave --prices out", param_hint="--prices"
            )
        with reported_errors():
            report = _from_server(server, token, tenant, pod, start, end)
        _show(report, tenant or "of this token", as_json)
        return
    if tenant is None:
        raise typer.BadParameter(
            "is needed to read the registry on this host (or set PODBAY_SERVER and PODBAY_TOKEN to ask a server)",
            param_hint="--tenant",
        )
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
    _show(report, tenant, as_json)


def _from_server(
    server: str, token: str | None, tenant: str | None, pod: str | None, start: float | None, end: float | None
) -> UsageReport:
    from podbay.sdk import Client

    with Client(server, token) as client:
        report = client.usage(pod, start=start, end=end)
    others = {item.tenant for item in report.pods if item.tenant not in (None, tenant)}
    if tenant is not None and others:
        raise InvalidSpec(
            "tenant",
            f"is {tenant!r}, but the token is tenant {others.pop()!r}'s",
            "leave --tenant out or use its token",
        )
    return report


def _show(report: UsageReport, tenant: str, as_json: bool) -> None:
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
