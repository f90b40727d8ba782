"""`podbay templates build | ls | rm`: the saved, booted guests that QEMU pods are cloned from.

A template is built on first use anyway (by `podbay run` or `create_agent`); `build` does it ahead of time,
with progress, so the first pod of a shape is as fast as the rest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.errors import NotFound
from podbay.images.cache import kind_lock
from podbay.isolation.qemu.template import KIND, Template, TemplateShape, build_template, find_template, templates_root
from podbay.paths import PodbayPaths

app = typer.Typer(no_args_is_help=True, help="QEMU templates: booted guests saved once, cloned per pod.")


@app.command("build")
def build(
    memory_mib: int = typer.Option(256, "--memory", help="guest memory in MiB (a pod must ask for the same)"),
    vcpus: int = typer.Option(1, "--vcpus"),
    disk_mib: int = typer.Option(1024, "--disk", help="the writable layer's size in MiB (PodSpec.disk_mib)"),
    preload: Path | None = typer.Option(
        None, "--preload", help="a host file the template carries (pods then pass preload=the same path)"
    ),
    force: bool = typer.Option(False, "--force", help="rebuild even if cached"),
) -> None:
    """Build the template of a pod shape (cached by everything a clone must match)."""
    shape = TemplateShape(vcpus=vcpus, memory_mib=memory_mib, layer_mib=disk_mib, volume_slots=1)
    with reported_errors():
        shape.check()
        paths = PodbayPaths.from_env()
        template = asyncio.run(build_template(paths, shape, console=errors, force=force, preload=preload))
    console.print(f"{template.key}  {template.path}")


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout")) -> None:
    """Every cached template: its key, shape, size on disk, and whether today's images still use it."""
    paths = PodbayPaths.from_env()
    rows = [_describe(path, paths) for path in _template_dirs(paths)]
    if as_json:
        print(json.dumps(rows, indent=2))
    table = Table("key", "vcpus", "memory MiB", "layer MiB", "preload", "on disk MiB", "built in s", "current")
    for row in rows:
        shape = row["shape"]
        table.add_row(
            row["key"],
            str(shape["vcpus"]),
            str(shape["memory_mib"]),
            str(shape["layer_mib"]),
            row["preload"] or "-",
            f"{row['disk_mib']:.1f}",
            f"{row['build_s']:.1f}",
            "yes" if row["current"] else "no (older images)",
        )
    (errors if as_json else console).print(table)


@app.command("rm")
def rm(
    keys: list[str] = typer.Argument(None, help="template keys (see `podbay templates ls`)"),
    stale: bool = typer.Option(False, "--stale", help="remove every template today's images no longer use"),
) -> None:
    """Remove templates. Running clones keep working (they hold the memory file open); new pods rebuild."""
    paths = PodbayPaths.from_env()
    root = templates_root(paths)
    with reported_errors():
        if not keys and not stale:
            raise typer.BadParameter("name at least one template key, or pass --stale", param_hint="KEYS")
        known = {Template.load(path).key: path for path in _template_dirs(paths)}
        missing = [key for key in keys or [] if key not in known]
        if missing:
            raise NotFound(f"no template {', '.join(missing)}; `podbay templates ls` lists them")
        doomed = [known[key] for key in keys or []]
        doomed += [path for path in known.values() if stale and not _describe(path, paths)["current"]]
        with kind_lock(root, KIND, errors):  # not while a build of the same kind publishes
            for path in dict.fromkeys(doomed):
                shutil.rmtree(path)
                console.print(f"removed {path.name}")


def _template_dirs(paths: PodbayPaths) -> list[Path]:
    root = templates_root(paths)
    return sorted(path for path in root.glob(f"{KIND}-*") if (path / "meta.json").exists()) if root.exists() else []


def _describe(path: Path, paths: PodbayPaths) -> dict[str, Any]:
    template = Template.load(path)
    try:
        carried = template.preload.source if template.preload is not None else None
        current = find_template(paths, template.shape, preload=carried)
    except NotFound:  # the images are not built: nothing is current
        current = None
    disk = sum(part.stat().st_blocks * 512 for part in path.iterdir() if part.is_file())
    return {
        "key": template.key,
        "path": str(path),
        "shape": {
            "vcpus": template.shape.vcpus,
            "memory_mib": template.shape.memory_mib,
            "layer_mib": template.shape.layer_mib,
            "volume_slots": template.shape.volume_slots,
        },
        "preload": None if template.preload is None else str(template.preload.source),
        "disk_mib": disk / (1 << 20),
        "build_s": template.build_s,
        "current": current is not None and current.path == path,
    }
