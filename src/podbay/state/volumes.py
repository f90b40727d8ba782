"""Persistent volumes: sparse ext4 images on the host, one per name, attached to one pod at a time.

A volume outlives its pods and is re-attached by name. Its files can be read on the host after the pod is
gone without mounting anything (debugfs reads the image directly), so no root mount is needed to export.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from podbay.errors import Conflict, InvalidSpec, NotFound
from podbay.images.ext4 import make_ext4
from podbay.models import NAME_PATTERN

SAFE_FILE = re.compile(r"^/?[A-Za-z0-9._-][A-Za-z0-9._/-]*$")
DB_FILE = "memory.db"  # at the root of the volume, which the guest mounts at /data
MOUNT_POINT = "/data"


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    path: Path
    size_mib: int
    used_kib: int  # host blocks actually allocated (the image is sparse)
    attached: bool


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, int] = {}

    def image(self, name: str) -> Path:
        if not re.match(NAME_PATTERN, name):
            raise InvalidSpec(
                "volume",
                f"{name!r} is not a valid volume name",
                "use 1-63 characters: lower-case letters, digits, '.', '_' or '-'",
            )
        return self.root / f"{name}.ext4"

    def ensure(self, name: str, size_mib: int) -> tuple[Path, bool]:
        """The volume's image, created with an empty SQLite database if new. Returns (path, created)."""
        path = self.image(name)
        if path.exists():
            return path, False
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix=f".{name}.") as scratch:
            contents = Path(scratch) / "contents"
            contents.mkdir()
            sqlite3.connect(contents / DB_FILE).close()
            partial = Path(scratch) / "image.ext4"
            make_ext4(partial, size_mib, label=name[:16], journal=True, contents=contents)
            os.replace(partial, path)  # a half-made volume never appears under its name
        return path, True

    def attach(self, name: str) -> None:
        """Take the volume for one pod; a second pod (in any process) gets Conflict until it is detached."""
        lock_path = self.image(name).with_suffix(".lock")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"volume {name!r} is attached to another pod; destroy that pod first") from None
        self._locks[name] = fd

    def lock_fd(self, name: str) -> int | None:
        """The descriptor holding this process's lock on the volume (see VolumeAttachment.lock_fd)."""
        return self._locks.get(name)

    def detach(self, name: str) -> None:
        fd = self._locks.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock

    def mark_guest_written(self, name: str) -> None:
        """Record that a guest kernel mounts this volume read-write (its filesystem is no longer trusted)."""
        self._marker(name).touch()

    def guest_written(self, name: str) -> bool:
        return self._marker(name).exists()

    def _marker(self, name: str) -> Path:
        return self.image(name).with_suffix(".guest-written")

    def list(self) -> list[VolumeInfo]:
        if not self.root.exists():
            return []
        return [self.info(path.stem) for path in sorted(self.root.glob("*.ext4"))]

    def info(self, name: str) -> VolumeInfo:
        path = self._existing(name)
        st = path.stat()
        return VolumeInfo(
            name=name,
            path=path,
            size_mib=st.st_size >> 20,
            used_kib=st.st_blocks // 2,
            attached=self._is_locked(name),
        )

    def delete(self, name: str) -> None:
        path = self._existing(name)
        if self._is_locked(name):
            raise Conflict(f"volume {name!r} is attached to a pod; destroy that pod first")
        path.unlink()
        path.with_suffix(".lock").unlink(missing_ok=True)
        self._marker(name).unlink(missing_ok=True)

    def export(self, name: str, destination: Path, file: str = DB_FILE) -> Path:
        """Copy one file out of the volume image to the host (the database by default), without mounting it.

        A guest may have crafted the image, so it is parsed by debugfs in userspace, and — when podbay runs
        as root — as `nobody`, reading an already-open descriptor and writing the file to its stdout.
        """
        if not SAFE_FILE.match(file) or ".." in file.split("/"):
            raise InvalidSpec("file", f"{file!r} is not a plain path inside the volume", "use e.g. memory.db")
        path = self._existing(name)
        if self._is_locked(name):
            raise Conflict(f"volume {name!r} is attached to a running pod; export it after the pod is gone")
        image = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            command = ["debugfs", "-c", "-R", f"cat /{file.lstrip('/')}", f"/proc/self/fd/{image}"]
            if os.geteuid() == 0:
                command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
            result = subprocess.run(command, capture_output=True, pass_fds=[image], check=False)
        finally:
            os.close(image)
        errors = [line for line in result.stderr.decode(errors="replace").splitlines() if ":" in line]
        if result.returncode != 0 or errors:
            raise NotFound(f"cannot export {file!r} from volume {name!r}: {(errors or ['debugfs failed'])[-1]}")
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(result.stdout)
        return destination

    def _existing(self, name: str) -> Path:
        path = self.image(name)
        if not path.exists():
            raise NotFound(f"no volume named {name!r}; it is created by the first pod that asks for it")
        return path

    def _is_locked(self, name: str) -> bool:
        if name in self._locks:
            return True
        lock_path = self.image(name).with_suffix(".lock")
        if not lock_path.exists():
            return False
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
