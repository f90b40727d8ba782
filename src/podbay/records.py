"""A pod's durable record: `pod.json` in its run directory, what a later process needs to take the pod over.

The platform writes it when a pod is handed over (create, restore, fork) and rewrites it whenever something
in it changes (a timeout set, a pause, a resume); `AsyncPlatform.recover` reads it after a restart or a
kill -9 of the controller. It holds the pod's identity and spec, its origin, its creation time and deadline as
wall-clock times (a monotonic clock does not survive the process), its state, its database volume, and the
backend's own description of the sandbox (`ReattachableSandbox.record()`: for QEMU its pid, sockets, disks).
A pod that cannot be re-adopted, or that the reaper finds, gets its post-mortem from it too
(`podbay.postmortem.keep_orphan_postmortem`).

It is written atomically (a temporary file renamed over the old one), so a reader sees a whole record or the
previous one. It is not fsynced: it only has to survive the controller, not the host (after a power loss no
pod is left to take over). The run directory is 0700 and the file 0600, owned by the controller's user: a
VMM runs as a uid of its own and cannot read it. The spec's environment is in it, as the pod's own
environment is in its guest; no token or host credential ever is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from podbay.errors import GuestError
from podbay.models import Phase, PodSpec, PodState

RECORD_FILE = "pod.json"
RECORD_FORMAT = 1


class VolumeRecord(BaseModel):
    """The pod's database volume, as its lease described it (the lock itself is held by the VMM)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    name: str
    image: str
    target: str
    ephemeral: bool
    db_url: str
    env: dict[str, str]


class PodRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = RECORD_FORMAT
    pod_id: str
    backend: str
    spec: PodSpec
    origin: str
    created_at: float  # wall clock: when its creation began
    metered_from: float  # wall clock: when it was handed over (its usage counts from there)
    state: PodState
    written_at: float  # wall clock: when this record was written
    paused_s: float = 0.0  # seconds it had been paused in all when this record was written
    trace: list[Phase] = []
    timeout_s: float | None = None  # the timeout that set the deadline (for the reason it ends with)
    deadline: float | None = None  # wall clock: when the platform destroys it
    volume: VolumeRecord | None = None
    sandbox: dict[str, Any] = {}  # the backend's own description (empty where it cannot re-attach)
    console: str | None = None  # the console log's file name in the run directory, if it is there


def write_record(run_dir: Path, record: PodRecord) -> None:
    """Replace the run directory's record atomically (OSError if it cannot be written; the temporary file is
    removed then)."""
    temporary = run_dir / f".{RECORD_FILE}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb", opener=_private) as file:
            file.write(record.model_dump_json().encode())
        os.replace(temporary, run_dir / RECORD_FILE)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _private(path: str, flags: int) -> int:
    """open()'s opener for the record: 0600, and not inherited by a VMM started meanwhile."""
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def read_record(run_dir: Path) -> PodRecord | None:
    """The run directory's record; None if it has none (a pool member, or a pod not yet handed over).
    GuestError if it exists but cannot be read as one."""
    try:
        text = (run_dir / RECORD_FILE).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise GuestError(f"its record {run_dir.name}/{RECORD_FILE} cannot be read: {exc.strerror}") from None
    try:
        record = PodRecord.model_validate_json(text)
    except ValidationError as exc:
        raise GuestError(
            f"its record {run_dir.name}/{RECORD_FILE} is malformed: {exc.error_count()} error(s)"
        ) from None
    if record.format != RECORD_FORMAT or record.pod_id != run_dir.name:
        raise GuestError(f"its record {run_dir.name}/{RECORD_FILE} is of another format or another pod")
    return record
