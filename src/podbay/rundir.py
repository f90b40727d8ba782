"""A pod's run directory: made by one piece of code, removed only by whoever holds it, never across a mount.

The directory `<state>/pods/pod-<id>` holds a sandbox's sockets, logs, layer and (for containers) mounts.
Its owner file names the process that controls it, so the reaper of a later process knows an orphan.
The factory makes one for every sandbox it starts (a pool member's is handed over to the pod that claims
it); backends put files in it but never remove it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podbay.errors import GuestError
from podbay.isolation.oci import mounts_under
from podbay.isolation.supervise import process_identity

OWNER_FILE = "owner.json"
PREFIX = "pod-"


@dataclass(frozen=True)
class RunDir:
    pod_id: str
    path: Path

    @classmethod
    def make(cls, pods: Path, backend: str) -> RunDir:
        pod_id = PREFIX + secrets.token_hex(6)
        path = pods / pod_id
        path.mkdir(parents=True, mode=0o700)
        owner = {"pid": os.getpid(), "identity": process_identity(os.getpid()), "backend": backend}
        (path / OWNER_FILE).write_text(json.dumps(owner))
        return cls(pod_id, path)

    @classmethod
    def claim(cls, path: Path, backend: str) -> RunDir:
        """Take over a dead controller's run directory (`AsyncPlatform.recover`): its owner file now names this
        process (replaced atomically), so no reaper takes it for an orphan."""
        owner = {"pid": os.getpid(), "identity": process_identity(os.getpid()), "backend": backend}
        temporary = path / f".{OWNER_FILE}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(owner))
        os.replace(temporary, path / OWNER_FILE)
        return cls(path.name, path)

    def remove(self) -> None:
        remove_run_dir(self.path)


def remove_run_dir(run_dir: Path) -> None:
    """Remove a pod's run directory, never across a mount point: a volume still mounted under it would lose
    its data to a recursive delete. Such a directory is left for the reaper, and the caller told."""
    if not run_dir.exists():
        return
    if mounts_under(run_dir):
        raise GuestError(f"{run_dir} still has mounts under it; left in place (the reaper retries)")
    shutil.rmtree(run_dir)


def owner_alive(owner: dict[str, Any] | None) -> bool:
    """The process an owner file names still runs (a reused pid does not count)."""
    return owner is not None and process_identity(int(owner["pid"])) == owner["identity"]


def read_owner(run_dir: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((run_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None  # half-made by a process that died at once: no owner to wait for
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner if isinstance(owner.get("identity"), str) and isinstance(owner.get("backend"), str) else None
