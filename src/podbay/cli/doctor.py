"""`podbay doctor`: what can run on this host, with which accelerator, and why not."""

from __future__ import annotations

import shutil
import subprocess

import typer
from rich.table import Table

from podbay.cli.common import console
from podbay.errors import ImageMissing
from podbay.images import find_images
from podbay.isolation.host import hardware_kvm
from podbay.isolation.qemu.backend import KVM_NOTE, TCG_NOTE, QemuBackend
from podbay.paths import PodbayPaths


def doctor() -> None:
    """Report the backends, the accelerator and the images; exit 1 if no pod can start."""
    paths = PodbayPaths.from_env()
    kvm = hardware_kvm()
    console.print(f"[bold]hardware KVM:[/] {'yes' if kvm.available else 'no'} — {kvm.reason}")
    table = Table("backend", "available", "accelerator", "reason")
    qemu = QemuBackend(paths)
    availability = qemu.availability()
    table.add_row(
        "qemu (microvm)",
        _yes(availability.available),
        qemu.accelerator() if availability.available else "-",
        availability.reason,
    )
    console.print(table)
    if availability.available:
        console.print(f"[bold]qemu:[/] {_qemu_version()}")
        console.print(KVM_NOTE if kvm.available else f"[yellow]{TCG_NOTE}[/]")
    images_ok = True
    try:
        images = find_images(paths)
        console.print(f"[bold]images:[/] kernel {images.kernel}\n        rootfs {images.rootfs_image}")
    except ImageMissing as exc:
        images_ok = False
        console.print(f"[bold]images:[/] [red]{exc}[/]")
    console.print(f"[bold]state:[/] {paths.state}   [bold]cache:[/] {paths.cache}")
    if not (availability.available and images_ok):
        raise typer.Exit(1)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _qemu_version() -> str:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return "not installed"
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return output.splitlines()[0] if output else "unknown"
