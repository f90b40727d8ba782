"""Small ext4 disk images: per-pod writable layers and database volumes (on the pod start path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from podbay.errors import HostError


def make_ext4(path: Path, size_mib: int, label: str, journal: bool = True, contents: Path | None = None) -> None:
    """Create a sparse file of *size_mib* MiB at *path* holding an empty ext4 filesystem labelled *label*.

    The file is fresh and sparse, so its unwritten blocks already read as zeros. ``lazy_itable_init=0`` makes
    mke2fs mark the inode tables zeroed (it punches holes rather than writing) so the guest kernel has no
    ``ext4lazyinit`` work that would fill the file with zeros; ``lazy_journal_init=1`` skips writing the
    journal's zeros (32 MiB for 1 GiB), which would only copy what the holes already read as.
    Without a journal (scratch layers thrown away with the pod) the image is smaller and mounts faster;
    keep it for volumes that must survive a crashed guest.
    """
    if size_mib <= 0:
        raise HostError(f"cannot make a {size_mib} MiB ext4 image at {path}: the size must be positive")
    with path.open("wb") as disk:
        disk.truncate(size_mib * 2**20)
    cmd = ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-E", "lazy_itable_init=0,lazy_journal_init=1"]
    if not journal:
        cmd += ["-O", "^has_journal"]
    if contents is not None:  # populate from a host directory (e.g. a new volume's empty database)
        cmd += ["-d", str(contents)]
    result = subprocess.run([*cmd, str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        path.unlink(missing_ok=True)
        raise HostError(f"mkfs.ext4 failed for {path} (exit status {result.returncode}): {result.stderr.strip()}")
