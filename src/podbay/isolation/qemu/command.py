"""The QEMU microvm command line, built from a SandboxConfig (pure: unit-testable without QEMU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from podbay.guest.protocol import PORT_NAME
from podbay.isolation.base import SandboxConfig
from podbay.isolation.supervise import disk_device

QEMU_BINARY = "qemu-system-x86_64"
# Devices are probed in the order they are given, so the disks are vda (root), vdb (layer), vdc... (volumes).
# no_timer_check: under TCG on a starved host (100 guests booting on 2 cores) the kernel's check that the
# IO-APIC timer ticks can miss its window and panic ("IO-APIC + timer doesn't work"); the timer is QEMU's own
# and works, so the check is skipped.
KERNEL_CMDLINE = (
    "console=ttyS0 reboot=t panic=-1 quiet loglevel=4 no_timer_check root=/dev/vda ro rootfstype=ext4 "
    "init=/sbin/podbay-init"
)


@dataclass(frozen=True)
class Machine:
    """What differs between the QEMU machines podbay boots: the -M options and the bus the virtio devices sit on."""

    options: str
    virtio_bus: str  # the suffix of QEMU's virtio device names: "device" (virtio-mmio) or "pci"


# acpi=off: QEMU then lists the virtio-mmio devices on the kernel command line (no ACPI in the guest).
# PIT and PIC stay: without them the guest's timer calibration under TCG can hang. The RTC stays too: without
# it the kernel waits ~1 s for a CMOS read to time out at every boot.
MICROVM = Machine(options="microvm,x-option-roms=off,isa-serial=on,acpi=off", virtio_bus="device")


@dataclass(frozen=True)
class RunFiles:
    """Where one sandbox's sockets and logs live (all inside its private run directory)."""

    run_dir: Path

    @property
    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def stderr_log(self) -> Path:
        return self.run_dir / "qemu.stderr"

    @property
    def jail(self) -> Path:
        return self.run_dir / "jail"


def build_command(
    config: SandboxConfig,
    kernel: Path,
    rootfs: Path,
    accelerator: str,
    run_as: str | None,
    *,
    machine: Machine = MICROVM,
    initrd: Path | None = None,
    tsc_khz: int | None = None,
    console: str | None = None,
) -> list[str]:
    """QEMU's command line. `console`: where the serial console goes (a file path, or /proc/self/fd/N of a
    pipe QEMU inherits); the run dir's console.log by default. `run_as`: a user name or "uid:gid"."""
    files = RunFiles(config.run_dir)
    bus = machine.virtio_bus
    cmdline = KERNEL_CMDLINE
    if tsc_khz is not None:  # under TCG the guest cannot calibrate its TSC reliably on a busy host: tell it
        cmdline += f" tsc_early_khz={tsc_khz}"
    if accelerator == "tcg":
        # The guest's TSC is QEMU's own clock here: nothing for the kernel's clocksource watchdog to catch. That
        # watchdog woke every idle guest twice a second: most of an idle pod's host CPU (bench/density.py).
        cmdline += " tsc=reliable"
    if config.layer is not None:
        cmdline += f" podbay.rw={disk_device(1)}"
    command = [
        QEMU_BINARY,
        "-M",
        machine.options,
        "-accel",
        accelerator,
        *(["-cpu", "host,-arch-capabilities"] if accelerator == "kvm" else []),
        "-m",
        str(config.memory_mib),
        "-smp",
        str(config.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        str(kernel),
        *(["-initrd", str(initrd)] if initrd is not None else []),
        "-append",
        cmdline,
        *_disk("root", rootfs, bus, read_only=True),
        *(_disk("layer", config.layer, bus, read_only=False) if config.layer else []),
    ]
    for index, volume in enumerate(config.volumes):
        command += _disk(f"vol{index}", volume.image, bus, read_only=False)
    command += [
        "-device",
        f"virtio-serial-{bus},max_ports=2",
        "-chardev",
        f"socket,id=agent,path={files.agent_socket},server=on,wait=off",
        "-device",
        f"virtserialport,chardev=agent,name={PORT_NAME}",
        "-device",
        f"virtio-rng-{bus}",
        "-chardev",
        f"file,id=console,path={console or files.console_log}",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{files.qmp_socket},server=on,wait=off",
    ]
    # Least privilege: seccomp forbids spawning and resource control. Seccomp is applied before -runas, so
    # set*id must stay allowed for the drop itself; once QEMU is `nobody` it has nothing to elevate to.
    elevate = "allow" if run_as is not None else "deny"
    command += ["-sandbox", f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"]
    if run_as is not None:
        # Every file is opened before QEMU drops to this user and chroots into an empty directory.
        command += ["-runas", run_as, "-chroot", str(files.jail)]
    return command


def _disk(drive_id: str, path: Path, bus: str, read_only: bool) -> list[str]:
    # The format node gets a name, so a running pool member's volume slot can be pointed at another image
    # (blockdev-reopen, isolation/qemu/attach.py).
    options = f"id={drive_id},node-name={drive_id}-format,file={_escape(path)},format=raw,if=none"
    options += ",cache=writeback,aio=threads"
    if read_only:
        options += ",readonly=on"
    return ["-drive", options, "-device", f"virtio-blk-{bus},drive={drive_id}"]


def _escape(path: Path) -> str:
    return str(path).replace(",", ",,")  # QEMU option syntax: a comma inside a value is doubled
