"""`podbay volume list | export | delete`: persistent volumes and the databases on them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from podbay.cli.common import console, reported_errors
from podbay.paths import PodbayPaths
from podbay.state.volumes import DB_FILE, VolumeStore

app = typer.Typer(no_args_is_help=True, help="Persistent volumes (each holds a pod's SQLite database).")


def _store() -> VolumeStore:
    return VolumeStore(PodbayPaths.from_env().volumes)


@app.command("list")
def list_volumes() -> None:
    """List volumes with their size and whether a pod holds them."""
    table = Table("name", "size MiB", "used KiB", "attached", "image")
    for info in _store().list():
        table.add_row(
            info.name,
            str(info.size_mib),
            str(info.used_kib),
            "yes" if info.attached else "no",
            str(info.path),
        )
    console.print(table)


@app.command("export")
def export(
    name: str,
    output: Path | None = typer.Option(None, "--output", "-o", help=f"where to write (default ./NAME-{DB_FILE})"),
    file: str = typer.Option(DB_FILE, "--file", help="which file of the volume to export"),
) -> None:
    """Copy the volume's database (or another file) out to the host; the volume must not be attached.

    The volume's filesystem is the guest's: podbay reads a private copy (its journal replayed, the volume left
    untouched), refuses a file bigger than the volume, and checks the database (its write-ahead log
    checkpointed in, PRAGMA integrity_check) before anything is written at the destination.
    """
    with reported_errors():
        path = _store().export(name, output or Path(f"{name}-{file.strip('/').replace('/', '_')}"), file)
        size = path.stat().st_size
    checked = ", checked by SQLite" if file.strip("/") == DB_FILE else ""
    console.print(
        f"exported {file} of volume {name} to {path} ({size} bytes{checked})", highlight=False, soft_wrap=True
    )


@app.command("delete")
def delete(name: str) -> None:
    """Delete a volume and its data for good."""
    with reported_errors():
        _store().delete(name)
    console.print(f"deleted volume {name}")
