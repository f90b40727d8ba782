"""`podbay doctor`: every backend on this host — available or not and why, with which accelerator.

With `--json` the report is one JSON document on stdout and the tables go to stderr, so
`podbay doctor --json | jq` works.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from podbay.cli.common import console, errors
from podbay.errors import DatabaseUnavailable, ImageMissing
from podbay.images import find_images
from podbay.isolation.host import hardware_kvm
from podbay.isolation.registry import default_backends
from podbay.paths import PodbayPaths

DEFAULT_BACKEND = "qemu"


def doctor(as_json: bool = typer.Option(False, "--json", help="print the report as JSON on stdout")) -> None:
    """Report the backends, the accelerator and the images; exit 1 if the default backend cannot start a pod."""
    report = _report(PodbayPaths.from_env())
    _show(report, errors if as_json else console)
    if as_json:
        print(json.dumps(report, indent=2))
    if not report["ready"]:
        raise typer.Exit(1)


def _report(paths: PodbayPaths) -> dict[str, Any]:
    kvm = hardware_kvm()
    backends = []
    for name, backend in default_backends(paths).items():
        availability, info = backend.availability(), backend.describe()
        backends.append(
            {
                "name": name,
                "available": availability.available,
                "reason": availability.reason,
                "isolation": info.isolation,
                "accelerator": info.accelerator,
                "security_boundary": info.security_boundary,
                "note": info.note,
                "capabilities": backend.capabilities.as_dict(),
            }
        )
    try:
        found = find_images(paths)
        images: dict[str, str | None] = {"kernel": str(found.kernel), "rootfs": str(found.rootfs_image), "error": None}
    except ImageMissing as exc:
        images = {"kernel": None, "rootfs": None, "error": str(exc)}
    default_ready = any(row["name"] == DEFAULT_BACKEND and row["available"] for row in backends)
    return {
        "hardware_kvm": {"available": kvm.available, "reason": kvm.reason},
        "qemu": _qemu_version(),
        "backends": backends,
        "images": images,
        "databases": _databases(),
        "state": str(paths.state),
        "cache": str(paths.cache),
        "ready": default_ready and images["error"] is None,
    }


def _databases() -> dict[str, dict[str, Any]]:
    """Whether each server database could serve a pod here (found, not started: doctor starts nothing)."""
    from podbay.state.pg_server import find_bindir  # psycopg only where Postgres is asked about

    try:
        postgres = {"available": True, "reason": f"PostgreSQL binaries in {find_bindir()}"}
    except DatabaseUnavailable as exc:
        postgres = {"available": False, "reason": str(exc)}
    if os.environ.get("PODBAY_POSTGRES_URL"):
        postgres = {"available": True, "reason": "an external server (PODBAY_POSTGRES_URL)"}
    redis = shutil.which("redis-server")
    return {
        "postgres": postgres,
        "redis": {
            "available": redis is not None,
            "reason": f"{redis}, an instance per pod" if redis else "redis-server is not installed: run scripts/setup",
        },
    }


def _show(report: dict[str, Any], out: Console) -> None:
    kvm = report["hardware_kvm"]
    out.print(f"[bold]hardware KVM:[/] {'yes' if kvm['available'] else 'no'} — {kvm['reason']}")
    out.print(f"[bold]qemu:[/] {report['qemu']}")
    table = Table("backend", "available", "isolation", "accelerator", "security boundary", "can")
    for row in report["backends"]:
        table.add_row(
            row["name"],
            _yes(row["available"]),
            row["isolation"],
            row["accelerator"],
            _yes(row["security_boundary"]),
            ", ".join(name.replace("_", " ") for name, able in row["capabilities"].items() if able) or "-",
        )
    out.print(table)
    for row in report["backends"]:  # below the table, whole: a cell this long would be cut to fit a terminal
        detail = row["reason"] if not row["available"] else f"{row['reason']}. {row['note']}"
        out.print(f"[bold]{row['name']}:[/] {detail}", highlight=False)
    images = report["images"]
    if images["error"] is None:
        out.print(f"[bold]images:[/] kernel {images['kernel']}\n        rootfs {images['rootfs']}")
    else:
        out.print(f"[bold]images:[/] [red]{images['error']}[/]")
    for kind, row in report["databases"].items():
        out.print(f"[bold]{kind} (db={kind!r}):[/] {_yes(row['available'])} — {row['reason']}", highlight=False)
    out.print(f"[bold]state:[/] {report['state']}   [bold]cache:[/] {report['cache']}")


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _qemu_version() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "not installed"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0] if output else "unknown"
