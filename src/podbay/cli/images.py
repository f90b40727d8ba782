"""`podbay images build`: build (or reuse from the cache) the guest kernel and root filesystem."""

from __future__ import annotations

import typer

from podbay.cli.common import console, reported_errors
from podbay.images import build_images, prune_images
from podbay.paths import PodbayPaths

app = typer.Typer(no_args_is_help=True, help="Guest images: kernel and root filesystem.")


@app.command("build")
def build(force: bool = typer.Option(False, "--force", help="rebuild even if cached")) -> None:
    """Build the kernel and rootfs; cached by the hash of their inputs, so a second run is instant."""
    with reported_errors():
        images = build_images(PodbayPaths.from_env(), console=console, force=force)
    console.print(f"kernel  {images.kernel}\nrootfs  {images.rootfs_image}")


@app.command("prune")
def prune() -> None:
    """Delete cached images that the current recipes no longer use (old kernels and root filesystems)."""
    with reported_errors():
        removed, in_use = prune_images(PodbayPaths.from_env())
    for path in removed:
        console.print(f"removed {path}")
    for path in in_use:
        console.print(f"kept {path}: a running pod still uses it")
    console.print(f"{len(removed)} removed, {len(in_use)} kept in use")
