"""The full-VM backend: QEMU's standard PC machine (q35) with SeaBIOS, PCI and ACPI, booting Debian's stock
cloud kernel — the "Full VM (QEMU)" row of the comparison, as users know it.

Everything but the machine, the bus and the kernel is the microVM's: the same root filesystem and agent, the
disks in the same order, the virtio-serial channel, QMP, the least-privilege options and the teardown. The
kernel needs an initramfs (its virtio drivers are modules); see :mod:`podbay.images.cloud_kernel`.
"""

from __future__ import annotations

from podbay.images import ImageSet
from podbay.images.cloud_kernel import CloudKernel, find_cloud_kernel
from podbay.isolation.base import Capabilities, SandboxConfig
from podbay.isolation.host import host_tsc_khz
from podbay.isolation.qemu.backend import QemuBackend
from podbay.isolation.qemu.command import Machine, build_command
from podbay.paths import PodbayPaths

# The stock machine with its firmware (SeaBIOS, q35's default) and ACPI, nothing tuned away, so the row
# measures what a full VM costs; only -nodefaults drops the default VGA, NIC and drives, as on the microVM.
# The virtio devices are PCI functions on the root bus, in slots QEMU gives in command-line order; the guest
# probes them in slot order, so the disks stay vda (root), vdb (layer), vdc... (volumes) — checked in tests.
Q35 = Machine(options="q35", virtio_bus="pci")


class FullVmBackend(QemuBackend):
    name = "qemu-q35"
    isolation = "full VM (q35, SeaBIOS, PCI, ACPI)"
    # Templates, clones and what builds on them (attach after start, snapshots, fork) are the microVM's.
    capabilities = Capabilities()

    def __init__(self, paths: PodbayPaths, images: ImageSet | None = None, kernel: CloudKernel | None = None) -> None:
        super().__init__(paths, images)
        self._kernel = kernel

    def cloud_kernel(self) -> CloudKernel:
        if self._kernel is None:
            self._kernel = find_cloud_kernel(self._paths.images)
        return self._kernel

    def command(self, config: SandboxConfig, accelerator: str, run_as: str | None, console: str) -> list[str]:
        kernel = self.cloud_kernel()
        rootfs = self.images().rootfs_image
        tsc_khz = host_tsc_khz() if accelerator == "tcg" else None
        return build_command(
            config,
            kernel.vmlinuz,
            rootfs,
            accelerator,
            run_as,
            machine=Q35,
            initrd=kernel.initrd,
            tsc_khz=tsc_khz,
            console=console,
        )
