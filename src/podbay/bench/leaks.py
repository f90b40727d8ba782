"""What pods can leave behind on the host, looked for under one podbay state root: processes, mounts, loop
devices, cgroups, runtime state, run directories, anonymous volumes, pods' own RAM files. The tests assert it
is all empty after every pod; `podbay bench soak` counts it after thousands."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from podbay.isolation.oci import mounts_under
from podbay.isolation.qemu.backend import MEMORY_ROOT, RAM_PREFIX
from podbay.isolation.supervise import command_lines_mentioning
from podbay.paths import PodbayPaths

POD_ID = re.compile(r"pod-[0-9a-f]{12}")
RUNTIME_ROOTS = {"runc": Path("/run/podbay-runc"), "runsc": Path("/run/podbay-runsc")}


def processes_mentioning(root: Path) -> list[str]:
    """Processes whose command line mentions `root` (pods' run directories): VMMs, runtimes, gofers."""
    return [
        f"{pid}: " + cmdline.replace(b"\0", b" ").decode(errors="replace")
        for pid, cmdline in command_lines_mentioning(root).items()
    ]


def loop_devices_under(root: Path) -> list[str]:
    """Loop devices whose backing file lies under `root`."""
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(str(root)):
                found.append(backing.parent.parent.name)
        except OSError:
            continue
    return found


def pod_cgroups(pod_ids: set[str] | None = None) -> list[str]:
    """Cgroup directories named after pods (any controller), optionally only those of `pod_ids`."""
    if pod_ids is not None and not pod_ids:
        return []  # none asked for: skip walking every hierarchy
    found = []
    for parent in Path("/sys/fs/cgroup").rglob("podbay"):
        for child in parent.iterdir() if parent.is_dir() else []:
            if POD_ID.fullmatch(child.name) and (pod_ids is None or child.name in pod_ids):
                found.append(str(child))
    return found


def runtime_containers(pod_ids: set[str] | None = None) -> list[str]:
    """Containers the OCI runtimes still know of, by pod id."""
    if pod_ids is not None and not pod_ids:
        return []  # none asked for: skip asking every runtime
    found: list[str] = []
    for binary, root in RUNTIME_ROOTS.items():
        if not root.exists():
            continue
        try:
            listing = subprocess.run(
                [binary, f"--root={root}", "list", "--format=json"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
            names = [str(container["id"]) for container in json.loads(listing or "null") or []]
        except (OSError, subprocess.TimeoutExpired, ValueError, TypeError, KeyError):
            continue
        found += [f"{binary}:{name}" for name in names if pod_ids is None or name in pod_ids]
    return found


def unmapped_ram_files(root: Path = MEMORY_ROOT) -> list[str]:
    """Pods' own RAM files (`/dev/shm/podbay-ram-*`, see isolation/qemu/snapshot.py) that no process maps any
    more: their pod is gone, and its destroy or reap missed them (host-wide, but cheap when there are none)."""
    directories = list(root.glob(f"{RAM_PREFIX}*"))
    if not directories:
        return []
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:
            continue
        mapped.update(line.split(maxsplit=5)[-1] for line in lines if RAM_PREFIX in line)
    return [str(directory) for directory in directories if str(directory / "memory") not in mapped]


def host_leaks(paths: PodbayPaths, pod_ids: set[str] | None = None) -> dict[str, list[str]]:
    """Everything of pods still on the host under `paths.state`; empty lists mean nothing leaked.

    Cgroups and runtime state are host-wide: pass the ids of the pods in question to look only for theirs.
    """
    run_dirs = sorted(str(path) for path in paths.pods.iterdir()) if paths.pods.exists() else []
    anonymous = sorted(str(path) for path in paths.volumes.glob("pod-*-db.ext4")) if paths.volumes.exists() else []
    return {
        "processes": processes_mentioning(paths.state),
        "mounts": [str(path) for path in mounts_under(paths.state)],
        "loop_devices": loop_devices_under(paths.state),
        "cgroups": pod_cgroups(pod_ids),
        "runtime_containers": runtime_containers(pod_ids),
        "run_dirs": run_dirs,
        "anonymous_volumes": anonymous,
        "ram_files": unmapped_ram_files(),
    }
