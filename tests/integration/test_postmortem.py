"""Post-mortems with real QEMU pods: a VMM killed under a pod, a command the guest's OOM killer ends, and
keep_on_failure's snapshot restored for inspection."""

from __future__ import annotations

import os
import signal
import time

import pytest

from podbay import NotFound, Platform
from podbay.postmortem import PostMortem

from .conftest import skip_unless_available

pytestmark = pytest.mark.integration
# Touches memory 16 MiB at a time until the guest's OOM killer ends it (SIGKILL): never a MemoryError.
EAT_MEMORY = "x = []\nwhile True: x.append(bytearray(16 << 20))"


@pytest.fixture
def qemu(platform: Platform) -> Platform:
    skip_unless_available(platform, "qemu")
    return platform


def postmortem_of(platform: Platform, pod_id: str) -> PostMortem:
    """Wait for the platform to notice the death and keep the post-mortem (bounded; not a timing assertion)."""
    for _ in range(600):
        try:
            return platform.postmortems.load(pod_id)
        except NotFound:
            time.sleep(0.05)
    raise AssertionError(f"{pod_id} left no post-mortem")


def test_a_killed_vmm_leaves_a_postmortem_with_its_console_and_reason(qemu: Platform) -> None:
    pod = qemu.create_agent()
    said = pod.exec(["sh", "-c", "echo '<2>last words' > /dev/kmsg"])  # the kernel prints it on the console
    assert said.ok, said
    pid = pod.info().sandbox.pid  # type: ignore[union-attr]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    postmortem = postmortem_of(qemu, pod.id)
    assert postmortem.failed and postmortem.reason.startswith("sandbox died"), postmortem.reason
    assert "QEMU exited (-9)" in postmortem.reason
    assert [record.exit_code for record in postmortem.execs] == [0]
    assert "last words" in qemu.postmortems.console(pod.id).decode(errors="replace")
    assert pod.id not in [info.id for info in qemu.list()]


def test_an_oom_killed_command_with_keep_on_failure_leaves_a_snapshot_that_restores(qemu: Platform) -> None:
    pod = qemu.create_agent(memory_mib=192, keep_on_failure=True)
    assert pod.exec(["sh", "-c", "echo evidence > /root/marker"]).ok
    eaten = pod.exec(["python3", "-c", EAT_MEMORY], timeout=120)
    assert eaten.signal == signal.SIGKILL, eaten
    pod.destroy()
    postmortem = qemu.postmortems.load(pod.id)
    assert postmortem.failed and "killed by signal 9" in postmortem.reason, postmortem.reason
    assert postmortem.snapshot == f"postmortem-{pod.id}", postmortem.snapshot_note
    assert "Out of memory" in qemu.postmortems.console(pod.id).decode(errors="replace")  # the guest kernel's word
    restored = qemu.restore(postmortem.snapshot)
    try:
        assert restored.exec(["cat", "/root/marker"]).stdout == "evidence\n"
    finally:
        restored.destroy()
        qemu.snapshots.remove(postmortem.snapshot)
