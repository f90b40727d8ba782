"""The full VM (q35, SeaBIOS, PCI, ACPI, Debian's stock cloud kernel) runs pods like the microVM does.

One boot (some seconds under TCG) to look at the machine from inside; exec, files, volumes and the rest run
for this backend too in test_pod_exec.py and test_pod_lifecycle.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from podbay import Platform, Pod

pytestmark = pytest.mark.integration

BACKEND = "qemu-q35"
VIRTIO_VENDOR = "0x1af4"


@pytest.fixture(scope="module")
def full_vm(shared_platform: Platform) -> Iterator[Pod]:
    pod = shared_platform.create_agent(backend=BACKEND)
    yield pod
    pod.destroy()


def test_the_guest_runs_debians_cloud_kernel_under_the_agent(full_vm: Pod) -> None:
    sandbox = full_vm.info().sandbox
    assert sandbox is not None and sandbox.isolation == "full VM (q35, SeaBIOS, PCI, ACPI)"
    assert sandbox.security_boundary == (sandbox.accelerator == "kvm")
    result = full_vm.exec(["sh", "-c", "uname -r; tr '\\0' ' ' </proc/1/cmdline"])
    kernel, init = result.stdout.splitlines()
    assert kernel.endswith("-cloud-amd64"), "the full VM boots Debian's stock kernel, not podbay's own"
    assert "podbay-init" in init, "podbay's init (then agent) is PID 1, as on the microVM"


def test_the_machine_has_firmware_pci_and_acpi(full_vm: Pod) -> None:
    result = full_vm.exec(["sh", "-c", "cat /sys/class/dmi/id/bios_vendor; cat /sys/bus/pci/devices/*/vendor"])
    firmware, *vendors = result.stdout.split()
    assert firmware == "SeaBIOS"
    assert VIRTIO_VENDOR in vendors, "the virtio devices are PCI devices"
    assert full_vm.exec(["ls", "/sys/firmware/acpi/tables"]).stdout.split(), "the firmware gave ACPI tables"


def test_the_disks_come_in_the_microvms_order(full_vm: Pod) -> None:
    result = full_vm.exec(["sh", "-c", "cat /sys/block/vda/ro /sys/block/vdb/ro; ls /sys/block"])
    root_ro, layer_ro, *disks = result.stdout.split()
    assert (root_ro, layer_ro) == ("1", "0"), "vda is the read-only root, vdb the writable layer"
    assert [disk for disk in disks if disk.startswith("vd")] == ["vda", "vdb"]
