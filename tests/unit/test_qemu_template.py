"""QEMU templates without QEMU: the command lines of a template and its clones, the template key, disks."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest

from podbay.errors import InvalidSpec
from podbay.images import ImageSet
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.qemu.template import (
    PLACEHOLDER_BYTES,
    TemplateShape,
    _fixed_open_mode,
    find_template,
    layout_command,
    placeholder,
    slot_config,
    sparse_copy,
    template_command,
    template_key,
)
from podbay.paths import PodbayPaths


def config(run_dir: Path, volumes: tuple[VolumeAttachment, ...] = (), memory_mib: int = 256) -> SandboxConfig:
    return SandboxConfig(
        pod_id="pod-1", run_dir=run_dir, vcpus=1, memory_mib=memory_mib, layer=run_dir / "layer.ext4", volumes=volumes
    )


def command(run_dir: Path, clone: bool, volumes: tuple[VolumeAttachment, ...] = ()) -> list[str]:
    return template_command(
        config(run_dir, volumes),
        Path("/k/vmlinux"),
        Path("/r/rootfs.ext4"),
        "tcg",
        "1000000:1000000",
        memory=Path("/t/memory"),
        clone=clone,
        tsc_khz=2_000_000,
        console="/proc/self/fd/9",
    )


def option(command: list[str], flag: str) -> list[str]:
    return [value for name, value in itertools.pairwise(command) if name == flag]


def test_the_template_writes_its_ram_to_the_file_and_a_clone_maps_it_privately(tmp_path: Path) -> None:
    template = command(tmp_path / "a", clone=False)
    clone = command(tmp_path / "b", clone=True)
    assert option(template, "-object") == ["memory-backend-file,id=mem,size=256M,mem-path=/t/memory,share=on"]
    assert option(clone, "-object") == ["memory-backend-file,id=mem,size=256M,mem-path=/t/memory,share=off"]
    assert all("discard-data" not in value for value in option(template, "-object"))
    for line in (template, clone):
        assert option(line, "-M")[0].endswith(",memory-backend=mem")
        assert option(line, "-m") == ["256"]
    assert "-incoming" not in template
    assert clone[-2:] == ["-incoming", "defer"]


def test_a_clone_has_the_template_devices_in_the_same_order_with_the_same_ids(tmp_path: Path) -> None:
    volume = VolumeAttachment(name="db", image=tmp_path / "db.ext4", target="/data")
    template = command(tmp_path / "a", clone=False, volumes=(volume,))
    clone = command(tmp_path / "b", clone=True, volumes=(volume,))

    def layout(line: list[str], run_dir: Path) -> list[str]:
        text = [arg.replace(str(run_dir), "RUN").replace("share=off", "share=on") for arg in line]
        return text[:-2] if text[-2:] == ["-incoming", "defer"] else text

    assert layout(template, tmp_path / "a") == layout(clone, tmp_path / "b")
    drives = [value.split(",")[0] for value in option(clone, "-drive")]
    assert drives == ["id=root", "id=layer", "id=vol0"]


def test_writable_drives_keep_their_open_mode_so_a_chrooted_qemu_never_reopens_by_path(tmp_path: Path) -> None:
    drives = option(command(tmp_path, clone=True, volumes=(VolumeAttachment("v", tmp_path / "v", "/v"),)), "-drive")
    root, *writable = drives
    assert "readonly=on" in root.split(",") and "auto-read-only" not in root
    assert writable and all(drive.endswith(",auto-read-only=off") for drive in writable)
    assert _fixed_open_mode("id=x,file=/x,auto-read-only=off") == "id=x,file=/x,auto-read-only=off", "once only"


def test_a_comma_in_the_memory_path_is_escaped(tmp_path: Path) -> None:
    line = template_command(
        config(tmp_path), Path("/k"), Path("/r"), "tcg", None, memory=Path("/t,x/memory"), clone=True
    )
    assert "mem-path=/t,,x/memory," in option(line, "-object")[0]


def test_unused_volume_slots_get_placeholders_in_order(tmp_path: Path) -> None:
    own = VolumeAttachment(name="db", image=tmp_path / "db.ext4", target="/data", lock_fd=7)
    padded = slot_config(config(tmp_path, (own,)), 3, [tmp_path / "slot1.img", tmp_path / "slot2.img"])
    assert [volume.image.name for volume in padded.volumes] == ["db.ext4", "slot1.img", "slot2.img"]
    assert [volume.lock_fd for volume in padded.volumes] == [7, None, None]
    with pytest.raises(InvalidSpec, match="volumes"):
        slot_config(config(tmp_path, (own, own)), 1, [])


def test_a_pod_that_does_not_fit_the_template_is_refused_naming_the_field(tmp_path: Path) -> None:
    shape = TemplateShape(vcpus=1, memory_mib=256, volume_slots=1)
    shape.matches(config(tmp_path))
    with pytest.raises(InvalidSpec, match="memory_mib"):
        shape.matches(config(tmp_path, memory_mib=512))
    two = (VolumeAttachment("a", tmp_path / "a", "/a"), VolumeAttachment("b", tmp_path / "b", "/b"))
    with pytest.raises(InvalidSpec, match="volumes"):
        shape.matches(config(tmp_path, two))
    with pytest.raises(InvalidSpec, match="vcpus"):
        TemplateShape(vcpus=0).check()


@pytest.fixture
def images(tmp_path: Path) -> ImageSet:
    (tmp_path / "vmlinux").write_bytes(b"kernel")
    (tmp_path / "rootfs.ext4").write_bytes(b"rootfs")
    return ImageSet(kernel=tmp_path / "vmlinux", rootfs_image=tmp_path / "rootfs.ext4", rootfs_dir=tmp_path)


def test_the_key_changes_with_everything_a_clone_must_match(images: ImageSet, tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text("v1")
    shape = TemplateShape()
    key = template_key(images, shape, "tcg", [agent])
    assert template_key(images, TemplateShape(), "tcg", [agent]) == key, "stable"
    others = {
        template_key(images, TemplateShape(memory_mib=1024), "tcg", [agent]),
        template_key(images, TemplateShape(vcpus=2), "tcg", [agent]),
        template_key(images, TemplateShape(layer_mib=2048), "tcg", [agent]),
        template_key(images, TemplateShape(volume_slots=2), "tcg", [agent]),
        template_key(images, shape, "kvm", [agent]),
    }
    assert key not in others and len(others) == 5
    agent.write_text("v2")
    assert template_key(images, shape, "tcg", [agent]) != key, "the agent's source"
    agent.write_text("v1")
    os.utime(images.rootfs_image, ns=(1, 1))
    assert template_key(images, shape, "tcg", [agent]) != key, "a rebuilt root image under the same path"


def test_the_layout_names_no_instance_path() -> None:
    line = layout_command(TemplateShape(volume_slots=2), "tcg")
    assert line == layout_command(TemplateShape(volume_slots=2), "tcg")
    assert [value.split(",")[0] for value in option(line, "-drive")] == ["id=root", "id=layer", "id=vol0", "id=vol1"]
    home, temp = str(Path.home()) + "/", "/tmp/"
    assert not any(home in arg or temp in arg for arg in line)


def test_a_sparse_copy_copies_the_data_and_keeps_the_holes(tmp_path: Path) -> None:
    source = tmp_path / "layer.ext4"
    with open(source, "wb") as file:
        file.truncate(64 << 20)
        file.seek(1 << 20)
        file.write(b"a" * 4096)
        file.seek(40 << 20)
        file.write(b"b" * 8192)
    target = tmp_path / "copy.ext4"
    copied = sparse_copy(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert copied < 1 << 20, "only the data extents"
    assert target.stat().st_blocks * 512 < 1 << 20, "holes stay holes"
    with pytest.raises(FileExistsError):
        sparse_copy(source, target)  # never overwrites


def test_a_placeholder_is_a_small_sparse_file(tmp_path: Path) -> None:
    path = placeholder(tmp_path / "slot0.img")
    assert path.stat().st_size == PLACEHOLDER_BYTES and path.stat().st_blocks == 0


def test_a_template_is_found_by_its_key_only_once_its_meta_is_written(images: ImageSet, tmp_path: Path) -> None:
    paths = PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")
    root = tmp_path / "templates"
    shape = TemplateShape(memory_mib=512)
    assert find_template(paths, shape, images=images, root=root) is None
    key = template_key(images, shape, QemuBackend(paths, images).accelerator())
    entry = root / f"template-{key}"
    entry.mkdir(parents=True)
    assert find_template(paths, shape, images=images, root=root) is None, "a directory without meta.json is unfinished"
    meta = {
        "key": key,
        "shape": {"vcpus": 1, "memory_mib": 512, "layer_mib": 1024, "volume_slots": 1},
        "kernel": str(images.kernel),
        "rootfs": str(images.rootfs_image),
        "accelerator": "tcg",
        "tsc_khz": None,
        "build_s": 2.5,
        "saved_at_uptime_s": 3.0,
    }
    (entry / "meta.json").write_text(json.dumps(meta))
    found = find_template(paths, shape, images=images, root=root)
    assert found is not None and found.shape == shape and found.memory == entry / "memory"
    assert find_template(paths, TemplateShape(memory_mib=256), images=images, root=root) is None
