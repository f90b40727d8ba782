"""`podbay tokens create | revoke | ls`: the service's API tokens, kept hashed in server.db: a tenant's token acts
for its tenant; an admin token (`--admin`) acts for no tenant, only on the /admin routes."""

from __future__ import annotations

import datetime
import json

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.errors import InvalidSpec
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry

app = typer.Typer(
    no_args_is_help=True,
    help="API tokens of `podbay serve` (tenants are made with their first token; --admin tokens manage them).",
)


def _registry() -> Registry:
    return Registry(PodbayPaths.from_env().state / "server.db")


@app.command("create")
def create(
    tenant: str | None = typer.Option(None, "--tenant", help="the tenant the token acts for (made if new)"),
    admin: bool = typer.Option(False, "--admin", help="an admin token: /admin routes only, for no tenant"),
) -> None:
    """Make a token and print it once on stdout: only its hash is kept."""
    with reported_errors():
        if admin == (tenant is not None):
            raise InvalidSpec("tenant", "give exactly one of --tenant NAME and --admin", "pass one of them")
        token, record = _registry().create_admin_token() if tenant is None else _registry().create_token(tenant)
    whose = "admin token" if record.tenant is None else f"token for tenant {record.tenant!r}"
    errors.print(f"{whose} {record.id} (shown once; keep it secret):", highlight=False)
    print(token)


@app.command("revoke")
def revoke(token: str = typer.Argument(..., help="the token's id (tok_...) or the token itself")) -> None:
    """Revoke a token: the server refuses it (401) from the next request on."""
    with reported_errors():
        record = _registry().revoke(token)
    console.print(f"revoked {record.id} ({_whose(record.tenant)})", highlight=False)


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout")) -> None:
    """Every token: id, tenant (or admin), when made, whether revoked (never the token)."""
    with reported_errors():
        records = _registry().tokens()
    if as_json:
        print(json.dumps([record.__dict__ for record in records], indent=2))
        return
    table = Table("id", "tenant", "created", "revoked")
    for record in records:
        table.add_row(record.id, _whose(record.tenant), _when(record.created_at), _when(record.revoked_at) or "-")
    console.print(table)


def _whose(tenant: str | None) -> str:
    return "admin" if tenant is None else f"tenant {tenant!r}"


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp is not None else ""
