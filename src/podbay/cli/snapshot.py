"""`podbay snapshot ls | rm | create`: saved pods (`pod.snapshot(name)`), restored with `podbay run --from-snapshot`
(or, on a server, `podbay snapshot create POD NAME` and `podbay restore NAME`). `ls` and `rm` go through the
`Records` seam (cli/records.py): the tenant's own snapshots on a server (PODBAY_SERVER), else this host's."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from podbay.cli import pods
from podbay.cli.common import console, errors
from podbay.cli.inspect import records
from podbay.cli.remote import ServerOption, TokenOption

app = typer.Typer(no_args_is_help=True, help="Snapshots of pods: memory, writable layer and database together.")
app.command("create")(pods.snapshot_create)


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Every snapshot: its shape, its volumes, how its RAM is kept and its size on disk."""
    with records(server, token) as found:
        snapshots = found.snapshots()
    if as_json:
        print(json.dumps([info.model_dump() for info in snapshots], indent=2))
    table = Table("name", "vcpus", "memory MiB", "volumes", "RAM", "on disk MiB")
    for info in snapshots:
        volumes = ", ".join(info.volumes) or "-"
        table.add_row(info.name, str(info.vcpus), str(info.memory_mib), volumes, info.ram, f"{info.disk_mib:.1f}")
    (errors if as_json else console).print(table)


@app.command("rm")
def rm(
    names: list[str] = typer.Argument(..., help="snapshot names"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Remove snapshots (on a server: frees the tenant's snapshot quota). Pods restored from them keep running."""
    with records(server, token) as found:
        for name in names:
            found.delete_snapshot(name)
            console.print(f"removed {name}")
