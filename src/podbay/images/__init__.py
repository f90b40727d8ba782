"""Guest images: the kernel and root filesystem every sandbox boots, built once and cached by content hash.

find_images(paths)    the cached ImageSet, fast; ImageMissing if a part is not built yet
build_images(paths)   build what is missing (kernel ~4 min, rootfs ~30 s, full-VM kernel ~5 s), then return
                      the ImageSet (the full VM finds its kernel with cloud_kernel.find_cloud_kernel)
prune_images(paths)   delete cached images the current recipes no longer use
make_ext4(path, ...)  an empty sparse ext4 disk (pod layers, volumes)
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from podbay.errors import ImageMissing
from podbay.images.cloud_kernel import build_cloud_kernel, find_cloud_kernel
from podbay.images.ext4 import make_ext4
from podbay.images.kernel import build_kernel, kernel_entry
from podbay.images.rootfs import base_entry, build_rootfs, rootfs_entry
from podbay.paths import PodbayPaths

__all__ = ["ImageSet", "build_images", "find_images", "make_ext4", "prune_images"]
# Cache entries that a recipe or guest-file change leaves behind (build trees and sources are kept: they make
# the next kernel build incremental).
PRUNABLE = re.compile(r"^(kernel|rootfs-base|rootfs|cloud-kernel)-[0-9a-f]{16}$")


@dataclass(frozen=True)
class ImageSet:
    kernel: Path
    """Uncompressed ``vmlinux`` ELF with a PVH entry: ``qemu-system-x86_64 -M microvm -kernel`` boots it."""
    rootfs_image: Path
    """Read-only ext4 image of the root filesystem (the VM's ``/dev/vda``, mounted ``ro``)."""
    rootfs_dir: Path
    """The same tree as a directory (the OCI bundle root of runc and gVisor); never write into it."""


def find_images(paths: PodbayPaths) -> ImageSet:
    """Return the images matching the current recipes and guest files, without building anything."""
    kernel = kernel_entry(paths.images)
    rootfs = rootfs_entry(paths.images)
    missing = [name for name, entry in (("kernel", kernel), ("rootfs", rootfs)) if not entry.exists()]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ImageMissing(
            f"the guest {' and '.join(missing)} for the current recipes {verb} not built in {paths.images}:"
            " run `podbay images build`"
        )
    return _image_set(kernel.path, rootfs.path)


def build_images(
    paths: PodbayPaths, console: Console | None = None, force: bool = False, full_vm: bool = True
) -> ImageSet:
    """Build what is missing (everything with ``force``), reusing cached parts; return the images.

    With ``full_vm`` the full-VM backend's kernel and initramfs are prepared too (a download, seconds).
    """
    console = console or Console(stderr=True)
    kernel = build_kernel(paths.images, console, force).parent
    rootfs = build_rootfs(paths.images, console, force).path
    if full_vm:
        build_cloud_kernel(paths.images, console, force)
    images = _image_set(kernel, rootfs)
    console.print(f"[bold]images ready[/]: kernel {images.kernel}, rootfs {images.rootfs_image}")
    return images


def prune_images(paths: PodbayPaths) -> tuple[list[Path], list[Path]]:
    """Delete the cached images the current recipes no longer use: (removed, kept because still mounted).

    Refuses (ImageMissing) until the current images are built, so a prune never leaves nothing to boot.
    An old rootfs tree that a running container still has as its overlay's lower layer is kept.
    """
    images = find_images(paths)
    current = {images.kernel.parent, images.rootfs_image.parent, base_entry(paths.images).path}
    current.add(find_cloud_kernel(paths.images).vmlinuz.parent)
    mounts = Path("/proc/self/mountinfo").read_text()
    removed, in_use = [], []
    for entry in sorted(paths.images.iterdir()):
        if entry in current or not entry.is_dir() or not PRUNABLE.match(entry.name):
            continue
        if str(entry) in mounts:
            in_use.append(entry)
            continue
        shutil.rmtree(entry)
        removed.append(entry)
    return removed, in_use


def _image_set(kernel_dir: Path, rootfs_dir: Path) -> ImageSet:
    return ImageSet(
        kernel=kernel_dir / "vmlinux", rootfs_image=rootfs_dir / "rootfs.ext4", rootfs_dir=rootfs_dir / "tree"
    )
