"""Take over a running QEMU that an earlier controller started (a server restart, or a kill -9 of it).

QEMU runs in its own session, so it outlives its controller. Both of its control paths are servers it keeps
listening on: QMP (`-qmp unix:...,server=on`) and the agent's chardev (`socket,...,server=on,wait=off`), and
the guest agent re-opens its virtio-serial port when the host side goes away. So a new process rebuilds the
sandbox object from the record the old one wrote (`QemuSandbox.record()`, kept in the pod's record) and
connects again; the agent's `health` answer is the proof that the guest is the one it was.

What the dead controller held, and what becomes of it:
- the QEMU process: not a child of the new process; `AdoptedProcess` watches it by pidfd and checks its
  identity (pid + start time), so a reused pid is never taken for it. Its exit status is unknown.
- the console and stderr pipes (`BoundedLog`): their reader died with the controller. QEMU ignores SIGPIPE, so
  it runs on and what it writes there from then on is lost; the log files keep what was written before.
- the volumes' flocks and the VMM's uid lock: QEMU holds its own copies (inherited at start or passed by
  `getfd`), so they stay held exactly as long as QEMU lives; the new controller holds none.
- a snapshottable pod's own RAM file in /dev/shm: named in the record, removed when the pod is destroyed
  (and by the reaper, by the pod's id, if it is never re-attached).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podbay.errors import GuestError
from podbay.isolation.base import SandboxConfig
from podbay.isolation.qemu.backend import QemuSandbox, config_from_record
from podbay.isolation.qemu.command import RunFiles
from podbay.isolation.qemu.snapshot import SnapshotSandbox, VmImage
from podbay.isolation.supervise import AdoptedProcess
from podbay.models import SandboxInfo

REATTACH_TIMEOUT_S = 30.0  # the agent retries its port at most once a second; a starved TCG guest is slow


async def reattach(
    run_dir: Path, record: dict[str, Any], *, paused: bool, timeout: float = REATTACH_TIMEOUT_S
) -> QemuSandbox:
    """The running sandbox under `run_dir`, connected and answering. GuestError if its QEMU is gone or its
    agent does not answer (the caller reaps what is left)."""
    try:
        kind, pid, identity = str(record["kind"]), int(record["pid"]), record["identity"]
        config = config_from_record(record["config"])
        info = SandboxInfo.model_validate(record["info"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GuestError(f"its sandbox record cannot be read ({type(exc).__name__}: {exc})") from None
    if config.run_dir != run_dir or kind not in ("qemu", "snapshot"):
        raise GuestError(f"its sandbox record does not describe a QEMU sandbox in {run_dir.name}")
    if not isinstance(identity, str):
        raise GuestError("its QEMU was already gone when the record was written")
    try:
        process = AdoptedProcess(pid, identity)
    except GuestError:
        raise GuestError(f"its QEMU (pid {pid}) is gone: the VMM died while no controller was attached") from None
    files = RunFiles(run_dir)
    sandbox: QemuSandbox
    if kind == "snapshot":
        sandbox = _snapshot_sandbox(record, info, files, process, config)
    else:
        sandbox = QemuSandbox(info, files, process, config)
    try:
        await sandbox.reconnect(timeout, paused=paused)
    except BaseException:
        await sandbox.detach()
        raise
    return sandbox


def _snapshot_sandbox(
    record: dict[str, Any], info: SandboxInfo, files: RunFiles, process: AdoptedProcess, layout: SandboxConfig
) -> SnapshotSandbox:
    """A template clone, restore or fork child, with what a later snapshot or fork of it needs; `layout` is the
    config QEMU was started with (the record's "config")."""
    try:
        vm = record["vm"]
        image = VmImage(Path(vm["kernel"]), Path(vm["rootfs"]), str(vm["accelerator"]), vm["tsc_khz"])
        owned = record["owned_memory_dir"]
        sandbox = SnapshotSandbox(
            info, files, process, layout,
            state=Path(record["state"]), vm=image, layout=layout, memory=Path(record["memory"]),
            memory_shared=bool(record["memory_shared"]), owned_memory_dir=None if owned is None else Path(owned),
        )  # fmt: skip
        sandbox.ignore_shared = bool(record["ignore_shared"])
    except (KeyError, TypeError, ValueError) as exc:
        raise GuestError(f"its clone record cannot be read ({type(exc).__name__}: {exc})") from None
    return sandbox
