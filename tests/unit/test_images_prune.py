"""`podbay images prune`: old entries go; the current ones, build trees and anything still mounted stay."""

from __future__ import annotations

from pathlib import Path

import pytest

import podbay.images as images
from podbay.images.cache import CacheEntry
from podbay.images.cloud_kernel import CloudKernel
from podbay.paths import PodbayPaths

CURRENT, OLD = "a" * 16, "b" * 16
KINDS = ("kernel", "rootfs", "rootfs-base", "cloud-kernel")
KEPT_TREES = ("kernel-build-6.1.192-3", "linux-source-6.1.192-3", "logs")


@pytest.fixture
def cache(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache holding a current and an old entry of every kind, with the current recipes pointing at CURRENT."""
    root = paths.images
    for name in [f"{kind}-{key}" for kind in KINDS for key in (CURRENT, OLD)] + list(KEPT_TREES):
        (root / name).mkdir(parents=True)
    current = images.ImageSet(
        kernel=root / f"kernel-{CURRENT}/vmlinux",
        rootfs_image=root / f"rootfs-{CURRENT}/rootfs.ext4",
        rootfs_dir=root / f"rootfs-{CURRENT}/tree",
    )
    cloud = CloudKernel(vmlinuz=root / f"cloud-kernel-{CURRENT}/vmlinuz", initrd=root / f"cloud-kernel-{CURRENT}/i")
    monkeypatch.setattr(images, "find_images", lambda _: current)
    monkeypatch.setattr(images, "base_entry", lambda _: CacheEntry(root, "rootfs-base", CURRENT))
    monkeypatch.setattr(images, "find_cloud_kernel", lambda _: cloud)
    return root


def test_prune_removes_only_what_the_current_recipes_do_not_use(paths: PodbayPaths, cache: Path) -> None:
    removed, in_use = images.prune_images(paths)
    assert sorted(path.name for path in removed) == sorted(f"{kind}-{OLD}" for kind in KINDS)
    assert in_use == []
    expected = sorted([f"{kind}-{CURRENT}" for kind in KINDS] + list(KEPT_TREES))
    assert sorted(path.name for path in cache.iterdir()) == expected


def test_an_old_tree_still_mounted_is_kept(paths: PodbayPaths, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mountinfo = f"36 25 0:32 / /run/pod/rootfs rw - overlay overlay rw,lowerdir={cache}/rootfs-{OLD}/tree\n"
    real_read_text = Path.read_text
    monkeypatch.setattr(
        Path,
        "read_text",
        lambda self, *a, **k: mountinfo if str(self) == "/proc/self/mountinfo" else real_read_text(self, *a, **k),
    )
    removed, in_use = images.prune_images(paths)
    assert [path.name for path in in_use] == [f"rootfs-{OLD}"]
    assert (cache / f"rootfs-{OLD}").exists() and not (cache / f"kernel-{OLD}").exists()
    assert len(removed) == len(KINDS) - 1


def test_prune_refuses_before_the_current_images_exist(paths: PodbayPaths) -> None:
    (paths.images / f"kernel-{OLD}").mkdir(parents=True)
    with pytest.raises(images.ImageMissing):
        images.prune_images(paths)
    assert (paths.images / f"kernel-{OLD}").exists()
