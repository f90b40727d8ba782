"""`podbay snapshot ls | rm | create`: saved pods (`pod.snapshot(name)`), restored with `podbay run --from-snapshot`
(or, on a server, `podbay snapshot create POD NAME` and `podbay restore NAME`)."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from podbay.cli import pods
from podbay.cli.common import console, errors, reported_errors
from podbay.paths import PodbayPaths
from podbay.snapshots import SnapshotStore

app = typer.Typer(no_args_is_help=True, help="Snapshots of pods: memory, writable layer and database together.")
app.command("create")(pods.snapshot_create)


def _store() -> SnapshotStore:
    return SnapshotStore(PodbayPaths.from_env().state / "snapshots")


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout")) -> None:
    """Every snapshot: its shape, its volumes, how its RAM is kept and its size on disk."""
    with reported_errors():
        snapshots = _store().list()
    if as_json:
        print(json.dumps([info.model_dump() for info in snapshots], indent=2))
    table = Table("name", "vcpus", "memory MiB", "volumes", "RAM", "on disk MiB")
    for info in snapshots:
        volumes = ", ".join(info.volumes) or "-"
        table.add_row(info.name, str(info.vcpus), str(info.memory_mib), volumes, info.ram, f"{info.disk_mib:.1f}")
    (errors if as_json else console).print(table)


@app.command("rm")
def rm(names: list[str] = typer.Argument(..., help="snapshot names")) -> None:
    """Remove snapshots. Pods restored from them keep running."""
    store = _store()
    with reported_errors():
        for name in names:
            store.remove(name)
            console.print(f"removed {name}")
