"""`podbay tokens create | revoke | ls`: the service's API tokens, one tenant each, kept hashed in server.db."""

from __future__ import annotations

import datetime
import json

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry

app = typer.Typer(no_args_is_help=True, help="API tokens of `podbay serve` (tenants are made with their first token).")


def _registry() -> Registry:
    return Registry(PodbayPaths.from_env().state / "server.db")


@app.command("create")
def create(tenant: str = typer.Option(..., "--tenant", help="the tenant the token acts for (made if new)")) -> None:
    """Make a token and print it once on stdout: only its hash is kept."""
    with reported_errors():
        token, record = _registry().create_token(tenant)
    errors.print(f"token {record.id} for tenant {record.tenant!r} (shown once; keep it secret):", highlight=False)
    print(token)


@app.command("revoke")
def revoke(token: str = typer.Argument(..., help="the token's id (tok_...) or the token itself")) -> None:
    """Revoke a token: the server refuses it (401) from the next request on."""
    with reported_errors():
        record = _registry().revoke(token)
    console.print(f"revoked {record.id} (tenant {record.tenant!r})", highlight=False)


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout")) -> None:
    """Every token: id, tenant, when made, whether revoked (never the token)."""
    with reported_errors():
        records = _registry().tokens()
    if as_json:
        print(json.dumps([record.__dict__ for record in records], indent=2))
        return
    table = Table("id", "tenant", "created", "revoked")
    for record in records:
        table.add_row(record.id, record.tenant, _when(record.created_at), _when(record.revoked_at) or "-")
    console.print(table)


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp is not None else ""
