"""The full VM's QEMU command line: q35 with PCI virtio devices, the microVM's disks, cmdline and privileges."""

from __future__ import annotations

from pathlib import Path

from podbay.images import ImageSet
from podbay.images.cloud_kernel import CloudKernel
from podbay.isolation.base import SandboxConfig, VolumeAttachment
from podbay.isolation.qemu.fullvm import FullVmBackend
from podbay.paths import PodbayPaths


def command(tmp_path: Path, run_as: str | None = "nobody") -> list[str]:
    paths = PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")
    images = ImageSet(kernel=tmp_path / "vmlinux", rootfs_image=tmp_path / "rootfs.ext4", rootfs_dir=tmp_path)
    kernel = CloudKernel(vmlinuz=tmp_path / "vmlinuz", initrd=tmp_path / "initrd.img")
    config = SandboxConfig(
        pod_id="pod-1",
        run_dir=tmp_path / "run",
        vcpus=1,
        memory_mib=256,
        layer=tmp_path / "layer.ext4",
        volumes=(VolumeAttachment("db", tmp_path / "db.ext4", "/data"),),
    )
    return FullVmBackend(paths, images, kernel).command(config, "tcg", run_as, "console.log")


def option(argv: list[str], name: str) -> list[str]:
    return [argv[index + 1] for index, arg in enumerate(argv) if arg == name]


def test_q35_boots_the_cloud_kernel_with_its_initramfs(tmp_path: Path) -> None:
    argv = command(tmp_path)
    assert option(argv, "-M") == ["q35"]
    assert option(argv, "-kernel") == [str(tmp_path / "vmlinuz")]
    assert option(argv, "-initrd") == [str(tmp_path / "initrd.img")]
    (cmdline,) = option(argv, "-append")
    assert "init=/sbin/podbay-init" in cmdline and "podbay.rw=/dev/vdb" in cmdline


def test_every_virtio_device_is_pci_and_disks_keep_their_order(tmp_path: Path) -> None:
    devices = option(command(tmp_path), "-device")
    assert all(not device.startswith("virtio-") or "-pci" in device for device in devices)
    disks = [device for device in devices if device.startswith("virtio-blk-pci")]
    assert disks == ["virtio-blk-pci,drive=root", "virtio-blk-pci,drive=layer", "virtio-blk-pci,drive=vol0"]
    assert "virtio-serial-pci,max_ports=2" in devices and "virtio-rng-pci" in devices
    assert "virtserialport,chardev=agent,name=podbay.agent" in devices


def test_no_network_device(tmp_path: Path) -> None:
    assert not any("net" in device for device in option(command(tmp_path), "-device"))
    assert "-netdev" not in command(tmp_path)


def test_the_least_privilege_options_are_the_microvms(tmp_path: Path) -> None:
    argv = command(tmp_path)
    assert option(argv, "-runas") == ["nobody"] and option(argv, "-chroot") == [str(tmp_path / "run" / "jail")]
    assert option(argv, "-sandbox")[0].startswith("on,obsolete=deny")
