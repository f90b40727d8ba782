"""Facts about the host that decide which isolation backends can run, and how well."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from podbay.isolation.base import Availability

CPUINFO = Path("/proc/cpuinfo")
KVM_DEVICE = Path("/dev/kvm")


@functools.cache  # a host fact: read /proc/cpuinfo once per process, not on every pod start
def hardware_kvm() -> Availability:
    """KVM counts only with vmx/svm in the CPU flags *and* a usable /dev/kvm.

    A software nested hypervisor (PVM) also exposes /dev/kvm, but without the flags it cannot boot an
    ordinary guest at usable speed, so it does not count.
    """
    try:
        flags = CPUINFO.read_text()
    except OSError as exc:
        return Availability(False, f"cannot read {CPUINFO}: {exc}")
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE):
        return Availability(False, "the CPU reports no hardware virtualization (no vmx/svm flag)")
    if not KVM_DEVICE.exists():
        return Availability(False, f"{KVM_DEVICE} does not exist (kvm module not loaded?)")
    if not os.access(KVM_DEVICE, os.R_OK | os.W_OK):
        return Availability(False, f"{KVM_DEVICE} is not readable and writable by this user")
    return Availability(True, "hardware virtualization (vmx/svm) and a usable /dev/kvm")


@functools.cache
def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz, which a TCG guest's TSC runs at (QEMU reads the host's TSC), if known."""
    try:
        match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", CPUINFO.read_text(), re.MULTILINE)
    except OSError:
        return None
    return round(float(match.group(1)) * 1000) if match else None
