"""`podbay quotas set | show`: each tenant's limits on `podbay serve` (kept in server.db, read on every request)."""

from __future__ import annotations

import dataclasses
import json

import typer
from rich.table import Table

from podbay.cli.common import console, reported_errors
from podbay.errors import InvalidSpec
from podbay.paths import PodbayPaths
from podbay.server.registry import Quota, Registry

app = typer.Typer(no_args_is_help=True, help="Quotas per tenant of `podbay serve` (unlimited unless set).")

UNLIMITED = ("unlimited", "none")
LIMIT_HELP = "a whole number >= 0, or 'unlimited'; left as it is if not given"


def _registry() -> Registry:
    return Registry(PodbayPaths.from_env().state / "server.db")


def _limit(kind: str, value: str) -> int | None:
    if value.strip().lower() in UNLIMITED:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise InvalidSpec(kind, f"{value!r} is not a limit", "use a whole number >= 0, or 'unlimited'")
    return limit


@app.command("set")
def set_(
    tenant: str = typer.Option(..., "--tenant", help="the tenant (made with its first token)"),
    pods: str | None = typer.Option(None, "--pods", help=f"most pods alive at once: {LIMIT_HELP}"),
    memory_mib: str | None = typer.Option(
        None, "--memory-mib", help=f"most guest memory (MiB) of its pods alive at once: {LIMIT_HELP}"
    ),
    snapshots: str | None = typer.Option(None, "--snapshots", help=f"most snapshots kept: {LIMIT_HELP}"),
    volumes: str | None = typer.Option(None, "--volumes", help=f"most named volumes kept: {LIMIT_HELP}"),
    volume_mib: str | None = typer.Option(
        None, "--volume-mib", help=f"most MiB of named volumes (the sum of their sizes): {LIMIT_HELP}"
    ),
) -> None:
    """Set some of a tenant's quotas; the server enforces them from its next request on."""
    given = {
        "pods": pods,
        "memory_mib": memory_mib,
        "snapshots": snapshots,
        "volumes": volumes,
        "volume_mib": volume_mib,
    }
    with reported_errors():
        limits = {kind: _limit(kind, value) for kind, value in given.items() if value is not None}
        if not limits:
            raise InvalidSpec(
                "quotas", "none given", "pass --pods, --memory-mib, --snapshots, --volumes and/or --volume-mib"
            )
        quota = _registry().set_quota(tenant, limits)
    _print(quota, as_json=False)


@app.command("show")
def show(
    tenant: str = typer.Option(..., "--tenant", help="the tenant"),
    as_json: bool = typer.Option(False, "--json", help="print the quotas as JSON on stdout (null: unlimited)"),
) -> None:
    """A tenant's quotas."""
    with reported_errors():
        registry = _registry()
        registry.require_tenant(tenant)
        quota = registry.quota(tenant)
    _print(quota, as_json=as_json)


def _print(quota: Quota, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(dataclasses.asdict(quota), indent=2))
        return
    table = Table("tenant", "pods", "memory (MiB)", "snapshots", "volumes", "volumes (MiB)")
    table.add_row(quota.tenant, *(_shown(value) for value in quota.limits().values()))
    console.print(table)


def _shown(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
