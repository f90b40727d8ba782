"""The full VM (q35, SeaBIOS, PCI, ACPI, Debian's stock cloud kernel) runs pods like the microVM does.

Two boots, each some seconds under TCG: one pod to look at the machine from inside, one with a database volume.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import Platform, Pod
from podbay.paths import PodbayPaths

from .conftest import assert_nothing_left

pytestmark = pytest.mark.integration

BACKEND = "qemu-q35"
VIRTIO_VENDOR = "0x1af4"
WRITE = """
import os, sqlite3
db = sqlite3.connect(os.environ["PODBAY_DB_PATH"])
db.execute("CREATE TABLE notes (text TEXT)")
db.execute("INSERT INTO notes VALUES ('written in a full VM')")
db.commit()
"""


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
    assert "agent.py" in init, "the agent is PID 1, as on the microVM"


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


def test_a_database_written_in_a_full_vm_is_exported_on_the_host(vm_paths: PodbayPaths, tmp_path: Path) -> None:
    with Platform(vm_paths) as platform:
        pod = platform.create_agent(backend=BACKEND, memory_db=True, volume="full-vm-notes")
        assert pod.exec(["sh", "-c", "grep ' /data ' /proc/mounts"]).stdout.startswith("/dev/vdc ")
        assert pod.exec(["python3", "-c", WRITE]).exit_code == 0
        pod.destroy()
        exported = platform.volumes.export("full-vm-notes", tmp_path / "notes.db")
    assert sqlite3.connect(exported).execute("SELECT text FROM notes").fetchall() == [("written in a full VM",)]
    assert_nothing_left(vm_paths)
