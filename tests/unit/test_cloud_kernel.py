"""The full-VM kernel's pure parts: module load order, the newc archive, cache keys and misses (no download)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from rich.console import Console

import podbay.images.cloud_kernel as cloud_kernel
from podbay.errors import ImageMissing, PodbayError
from podbay.images.cloud_kernel import (
    RECORD,
    NewcArchive,
    Package,
    build_cloud_kernel,
    cloud_kernel_entry,
    find_cloud_kernel,
    load_order,
    module_name,
)

MODULES_DEP = """\
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko \
kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""
BUILTIN = "kernel/fs/ext4/ext4.ko\nkernel/fs/jbd2/jbd2.ko\n"
KERNEL = Package("linux-image-6.1.0-1-cloud-amd64", "6.1.1-1")
BUSYBOX = Package("busybox-static", "1:1.35.0-4")


def test_dependencies_load_first_and_once() -> None:
    order = [Path(path).name for path in load_order(MODULES_DEP, BUILTIN, ["virtio_pci", "virtio_blk"])]
    assert order == ["virtio_pci_modern_dev.ko", "virtio_ring.ko", "virtio.ko", "virtio_pci.ko", "virtio_blk.ko"]


def test_built_in_modules_need_nothing_and_dashes_match_underscores() -> None:
    order = load_order(MODULES_DEP, BUILTIN, ["ext4", "virtio_rng", "overlay"])
    assert [module_name(path) for path in order] == ["virtio_ring", "virtio", "virtio_rng", "overlay"]


def test_a_module_the_kernel_lacks_is_an_error() -> None:
    with pytest.raises(PodbayError, match="no module virtio_gpu"):
        load_order(MODULES_DEP, BUILTIN, ["virtio_gpu"])


def parse_newc(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """(name, mode, content, (rdevmajor, rdevminor)) of every entry, the trailer included."""
    entries, offset = [], 0
    while True:
        assert data[offset : offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        name_start = offset + 110
        name = data[name_start : name_start + fields[11] - 1].decode()
        content_start = name_start + fields[11] + (-(110 + fields[11]) % 4)
        content = data[content_start : content_start + fields[6]]
        entries.append((name, fields[1], content, (fields[9], fields[10])))
        offset = content_start + fields[6] + (-fields[6] % 4)
        if name == "TRAILER!!!":
            assert offset == len(data)
            return entries


def test_the_archive_is_newc_with_fixed_owners_and_padding() -> None:
    archive = NewcArchive()
    archive.directory("bin")
    archive.file("bin/busybox", b"12345", 0o755)
    archive.device("dev/console", major=5, minor=1)
    data = archive.finish()
    assert len(data) % 4 == 0
    entries = parse_newc(data)
    assert [(name, content) for name, _, content, _ in entries] == [
        ("bin", b""),
        ("bin/busybox", b"12345"),
        ("dev/console", b""),
        ("TRAILER!!!", b""),
    ]
    assert stat.S_ISDIR(entries[0][1]) and stat.S_IMODE(entries[1][1]) == 0o755
    assert stat.S_ISCHR(entries[2][1]) and entries[2][3] == (5, 1)


def test_the_key_follows_the_kernel_package_version(tmp_path: Path) -> None:
    newer = Package(KERNEL.name, "6.1.2-1")
    assert cloud_kernel_entry(tmp_path, KERNEL, BUSYBOX).key != cloud_kernel_entry(tmp_path, newer, BUSYBOX).key
    assert cloud_kernel_entry(tmp_path, KERNEL, BUSYBOX).key == cloud_kernel_entry(tmp_path, KERNEL, BUSYBOX).key


def test_finding_uses_the_last_builds_packages_and_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ImageMissing, match="podbay images build"):
        find_cloud_kernel(tmp_path)  # never built
    entry = cloud_kernel_entry(tmp_path, KERNEL, BUSYBOX)
    entry.path.mkdir()
    (tmp_path / RECORD).write_text(f"{KERNEL.pinned}\n{BUSYBOX.pinned}\n")
    assert find_cloud_kernel(tmp_path).initrd == entry.path / "initrd.img"
    (tmp_path / RECORD).write_text(f"{KERNEL.name}=6.1.2-1\n{BUSYBOX.pinned}\n")
    with pytest.raises(ImageMissing):
        find_cloud_kernel(tmp_path)  # the record names packages whose entry is gone


def test_build_reuses_the_entry_and_records_its_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloud_kernel, "resolve_packages", lambda: (KERNEL, BUSYBOX))
    cloud_kernel_entry(tmp_path, KERNEL, BUSYBOX).path.mkdir(parents=True)
    built = build_cloud_kernel(tmp_path, Console(file=io.StringIO()))
    assert find_cloud_kernel(tmp_path) == built
