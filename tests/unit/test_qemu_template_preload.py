"""A template's preloaded file, without QEMU: what it is keyed by, what is refused, where the guest finds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podbay.errors import InvalidSpec
from podbay.images import ImageSet
from podbay.isolation.qemu.template import PRELOAD_DIR, Preload, TemplateShape, template_key


@pytest.fixture
def images(tmp_path: Path) -> ImageSet:
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    (tmp_path / "rootfs.ext4").write_bytes(b"rootfs")
    return ImageSet(kernel=tmp_path / "vmlinux", rootfs_image=tmp_path / "rootfs.ext4", rootfs_dir=tmp_path)


def test_the_file_is_keyed_by_identity_and_a_plain_template_keeps_its_key(images: ImageSet, tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text("v1")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 4096)
    shape = TemplateShape()
    plain = template_key(images, shape, "tcg", [agent])
    assert template_key(images, shape, "tcg", [agent], preload=None) == plain
    carrying = template_key(images, shape, "tcg", [agent], preload=weights)
    assert carrying != plain
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert template_key(images, shape, "tcg", [agent], preload=weights) != carrying, "a rewritten file"
    other = tmp_path / "other.bin"
    other.write_bytes(b"w" * 4096)
    assert template_key(images, shape, "tcg", [agent], preload=other) not in (plain, carrying), "another file"


def test_the_guest_finds_the_file_under_its_name(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 100)
    preload = Preload.of(weights, TemplateShape(memory_mib=256))
    assert preload.size == 100 and preload.source == weights.resolve()
    assert preload.guest_path == f"{PRELOAD_DIR}/model.safetensors"


def test_what_cannot_be_preloaded_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="preload"):
        Preload.of(tmp_path / "missing.bin", TemplateShape())
    with pytest.raises(InvalidSpec, match="preload"):
        Preload.of(tmp_path, TemplateShape())
    big = tmp_path / "big.bin"
    with open(big, "wb") as file:
        file.truncate(200 << 20)  # sparse: a 200 MiB file does not fit a 256 MiB guest with 128 MiB to spare
    with pytest.raises(InvalidSpec, match="memory_mib of at least 329"):
        Preload.of(big, TemplateShape(memory_mib=256))
    assert Preload.of(big, TemplateShape(memory_mib=329)).size == 200 << 20
