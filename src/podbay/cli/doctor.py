"""`podbay doctor`: every backend on this host — available or not and why, with which accelerator."""

from __future__ import annotations

import shutil
import subprocess

import typer
from rich.table import Table

from podbay.cli.common import console
from podbay.errors import ImageMissing
from podbay.images import find_images
from podbay.isolation.host import hardware_kvm
from podbay.isolation.registry import default_backends
from podbay.paths import PodbayPaths

DEFAULT_BACKEND = "qemu"


def doctor() -> None:
    """Report the backends, the accelerator and the images; exit 1 if the default backend cannot start a pod."""
    paths = PodbayPaths.from_env()
    kvm = hardware_kvm()
    console.print(f"[bold]hardware KVM:[/] {'yes' if kvm.available else 'no'} — {kvm.reason}")
    console.print(f"[bold]qemu:[/] {_qemu_version()}")
    table = Table("backend", "available", "isolation", "accelerator", "security boundary", "reason / note")
    backends = default_backends(paths)
    for name, backend in backends.items():
        availability, info = backend.availability(), backend.describe()
        detail = availability.reason if not availability.available else f"{availability.reason}. {info.note}"
        table.add_row(
            name, _yes(availability.available), info.isolation, info.accelerator, _yes(info.security_boundary), detail
        )
    console.print(table)
    images_ok = True
    try:
        images = find_images(paths)
        console.print(f"[bold]images:[/] kernel {images.kernel}\n        rootfs {images.rootfs_image}")
    except ImageMissing as exc:
        images_ok = False
        console.print(f"[bold]images:[/] [red]{exc}[/]")
    console.print(f"[bold]state:[/] {paths.state}   [bold]cache:[/] {paths.cache}")
    if not (backends[DEFAULT_BACKEND].availability().available and images_ok):
        raise typer.Exit(1)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _qemu_version() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "not installed"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0] if output else "unknown"
