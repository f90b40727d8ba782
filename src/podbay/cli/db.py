"""`podbay db ls | export | rm` and `podbay db templates create | ls | rm`: pods' server databases (Postgres,
Redis: `podbay create --server-db postgres`) and the Postgres templates they branch from.

Like `podbay logs` (cli/records.py), each command is written once over a seam that two things satisfy (mypy
checks both at `open_databases` / `open_templates`): with PODBAY_SERVER (or `--server`) the server's `Client`,
where a tenant's token sees its own pods' databases and the templates need an admin token; without it,
`LocalDatabases`, every database of this host's servers (the operator's view, PODBAY_STATE / PODBAY_DB_DIR).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.table import Table

from podbay.cli.common import console, reported_errors
from podbay.cli.remote import ServerOption, TokenOption
from podbay.errors import NotFound
from podbay.paths import PodbayPaths
from podbay.state.databases import ServerDatabases
from podbay.state.servers import DATABASE_KINDS, DUMP_SUFFIXES, DatabaseInfo, DatabaseProvider, TemplateInfo
from podbay.sync import _Loop

app = typer.Typer(no_args_is_help=True, help="Pods' server databases (Postgres, Redis): ls, export, rm, templates.")
templates_app = typer.Typer(no_args_is_help=True, help="Postgres templates pods branch from: create, ls, rm.")
app.add_typer(templates_app, name="templates")


class Databases(Protocol):
    """Where the databases are listed, dumped and dropped: a server (the tenant's own) or this host."""

    def databases(self) -> builtins.list[DatabaseInfo]: ...

    def export_database(self, pod_id: str, dest: str | os.PathLike[str]) -> int: ...

    def drop_database(self, pod_id: str) -> DatabaseInfo: ...

    def close(self) -> None: ...


class Templates(Protocol):
    def db_templates(self) -> builtins.list[TemplateInfo]: ...

    def create_db_template(self, name: str, dump: str | os.PathLike[str]) -> TemplateInfo: ...

    def delete_db_template(self, name: str) -> None: ...


class LocalDatabases:
    """This host's server databases, through a ServerDatabases of PODBAY_STATE (its own event loop)."""

    def __init__(self, paths: PodbayPaths | None = None, providers: dict[str, DatabaseProvider] | None = None) -> None:
        self.paths = paths or PodbayPaths.from_env()
        self._databases = ServerDatabases(self.paths, providers)
        self._loop = _Loop()

    def databases(self) -> builtins.list[DatabaseInfo]:
        return self._loop.run(self._databases.inventory())

    def export_database(self, pod_id: str, dest: str | os.PathLike[str]) -> int:
        self._loop.run(self._databases.export(pod_id, Path(dest)))
        return Path(dest).stat().st_size

    def drop_database(self, pod_id: str) -> DatabaseInfo:
        return self._loop.run(self._databases.drop(pod_id, ()))  # a live pod of this state is in the ledger

    def db_templates(self) -> builtins.list[TemplateInfo]:
        return self._loop.run(self._databases.postgres_templates().list())

    def create_db_template(self, name: str, dump: str | os.PathLike[str]) -> TemplateInfo:
        return self._loop.run(self._databases.postgres_templates().create(name, Path(dump)))

    def delete_db_template(self, name: str) -> None:
        self._loop.run(self._databases.postgres_templates().remove(name))

    def close(self) -> None:
        self._loop.stop()


class _ServerTemplates:
    """The server's admin routes for templates, closable like the other hosts."""

    def __init__(self, server: str, token: str | None) -> None:
        from podbay.sdk import Client

        self._client = Client(server, token)
        self._admin: Templates = self._client.admin

    def db_templates(self) -> builtins.list[TemplateInfo]:
        return self._admin.db_templates()

    def create_db_template(self, name: str, dump: str | os.PathLike[str]) -> TemplateInfo:
        return self._admin.create_db_template(name, dump)

    def delete_db_template(self, name: str) -> None:
        self._admin.delete_db_template(name)

    def close(self) -> None:
        self._client.close()


def open_databases(server: str | None, token: str | None) -> Databases:
    """The server's client if a server is named, else this host's databases (the caller closes either)."""
    if server:
        from podbay.sdk import Client

        client: Databases = Client(server, token)
        return client
    local: Databases = LocalDatabases()
    return local


class ClosableTemplates(Templates, Protocol):
    def close(self) -> None: ...


def open_templates(server: str | None, token: str | None) -> ClosableTemplates:
    """The server's admin routes (an admin token) if a server is named, else this host's Postgres."""
    if server:
        return _ServerTemplates(server, token)
    local: ClosableTemplates = LocalDatabases()
    return local


@contextlib.contextmanager
def _databases(server: str | None, token: str | None) -> Iterator[Databases]:
    with reported_errors():
        host = open_databases(server, token)
        try:
            yield host
        finally:
            host.close()


@contextlib.contextmanager
def _templates(server: str | None, token: str | None) -> Iterator[Templates]:
    with reported_errors():
        host = open_templates(server, token)
        try:
            yield host
        finally:
            host.close()


@app.command("start")
def start() -> None:
    """Start this host's database servers now (podbay's own Postgres cluster; a check that Redis instances can
    start), rather than on the first pod that asks. scripts/setup and CI run it."""
    with reported_errors():
        databases = ServerDatabases(PodbayPaths.from_env())
        for kind in DATABASE_KINDS:
            provider = databases.provider(kind)
            asyncio.run(provider.start())
            console.print(f"{kind}: ready ({_where(provider)})")


@app.command("stop")
def stop() -> None:
    """Stop podbay's own Postgres cluster (its pods' connections end; data stays). Redis instances live and
    end with their pods."""
    with reported_errors():
        from podbay.state.postgres import PostgresProvider  # psycopg only where Postgres is used

        provider = PostgresProvider.from_paths(PodbayPaths.from_env())
        asyncio.run(provider.stop())
        console.print(f"postgres: stopped ({provider.server.where})")


def _where(provider: DatabaseProvider) -> str:
    server = getattr(provider, "server", None)
    if server is not None:
        return str(server.where)
    return f"an instance per pod under {PodbayPaths.from_env().databases / provider.kind}"


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The server databases: of live pods, and those kept after their pod ended (`--db-retain`)."""
    with _databases(server, token) as host:
        found = host.databases()
    if as_json:
        print(json.dumps([asdict(info) for info in found], indent=2))
        return
    table = Table("pod", "provider", "name", "retained", "size", "template")
    for info in found:
        retained = "yes" if info.retained else "no"
        table.add_row(info.pod_id, info.provider, info.name, retained, size(info.size_bytes), info.template or "-")
    console.print(table)


@app.command("export")
def export(
    pod_id: str = typer.Argument(..., help="the pod whose database to dump (live or ended with --db-retain)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="the file (default: POD.sql or POD.rdb)"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Dump a pod's database to a file: Postgres as SQL, Redis as an RDB file."""
    with _databases(server, token) as host:
        dest = output or Path(pod_id + DUMP_SUFFIXES[found(host, pod_id).provider])
        written = host.export_database(pod_id, dest)
    console.print(f"wrote {size(written)} to {dest}", highlight=False)


@app.command("rm")
def rm(
    pod_id: str = typer.Argument(..., help="the ended pod whose retained database to remove"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a database kept after its pod ended, for good (a live pod's goes with the pod)."""
    with _databases(server, token) as host:
        host.drop_database(pod_id)
    console.print(f"removed the database of {pod_id}", highlight=False)


@templates_app.command("create")
def templates_create(
    name: str = typer.Argument(..., help="the template's name (pods use it with --db-template NAME)"),
    dump: Path = typer.Option(..., "--from-dump", exists=True, dir_okay=False, help="a plain SQL dump (pg_dump)"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """A Postgres template from a dump: schema and seed data every pod branched from it starts with."""
    with _templates(server, token) as host:
        info = host.create_db_template(name, dump)
    console.print(f"created template {info.name} ({size(info.size_bytes)})", highlight=False)


@templates_app.command("ls")
def templates_ls(
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The Postgres templates."""
    with _templates(server, token) as host:
        found = host.db_templates()
    if as_json:
        print(json.dumps([asdict(info) for info in found], indent=2))
        return
    table = Table("name", "size")
    for info in found:
        table.add_row(info.name, size(info.size_bytes))
    console.print(table)


@templates_app.command("rm")
def templates_rm(
    name: str = typer.Argument(..., help="the template"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Remove a template (pods branched from it keep their copies)."""
    with _templates(server, token) as host:
        host.delete_db_template(name)
    console.print(f"removed template {name}", highlight=False)


def found(host: Databases, pod_id: str) -> DatabaseInfo:
    for info in host.databases():
        if info.pod_id == pod_id:
            return info
    raise NotFound(f"no database of pod {pod_id!r}; `podbay db ls` lists them", pod_id=pod_id)


def size(count: int) -> str:
    """Bytes in the largest unit that keeps a number >= 1: 512 B, 1.5 KiB, 7.2 MiB."""
    value, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def checked_kind(kind: str | None) -> str | None:
    """`--server-db`'s value, checked: one of DATABASE_KINDS."""
    if kind is not None and kind not in DATABASE_KINDS:
        raise typer.BadParameter(f"{kind!r} is not one of: {', '.join(DATABASE_KINDS)}", param_hint="--server-db")
    return kind


# The pod-making commands' options (`podbay create`, `podbay run`). `--db` stays SQLite's (memory_db) where it
# was: a server database is `--server-db postgres|redis`.
ServerDbOption = Annotated[
    str | None,
    typer.Option("--server-db", help="a private server database for the pod: postgres or redis", callback=checked_kind),
]
DbTemplateOption = Annotated[
    str | None, typer.Option("--db-template", help="postgres: branch it from this template (`podbay db templates`)")
]
DbRetainOption = Annotated[
    bool, typer.Option("--db-retain", help="keep its data after the pod ends (`podbay db export | rm`)")
]
