"""Host-wide exclusive locks on files, shared by volumes and per-pod uids: a lock is held by an open file
description, so it can be handed to a child process (pass_fds) and lives as long as any holder does."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def try_flock(path: Path) -> int | None:
    """A descriptor holding an exclusive flock on `path` (created 0600 if missing), or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd
