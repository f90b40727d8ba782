"""Grant one uid access to one file with a POSIX ACL entry, and take it back; stdlib only (no setfacl).

The jailed Firecracker of a pod runs as the pod's own uid, and must write the pod's volume image, which belongs
to the user running podbay and outlives the pod. Neither the owner nor the mode changes: the image gets one
named-user entry (``user:<uid>:rw-``) while the pod has it, removed at destroy (or by the reaper). With no other
named entry left, the ACL is written back as the bare mode, so the kernel drops the xattr and restores the mode's
group bits: the file is as it was.

The ACL is the ``system.posix_acl_access`` xattr: a version word, then (tag, perm, id) entries sorted by tag and id.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from podbay.errors import HostError

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
READ, WRITE = 4, 2
HEADER = struct.Struct("<I")
ENTRY = struct.Struct("<HHI")
Entry = tuple[int, int, int]  # tag, perm, id


def grant(path: Path, uid: int, perm: int = READ | WRITE) -> None:
    """Give `uid` exactly `perm` on `path` (any earlier entry for it is replaced)."""
    entries = [entry for entry in _read(path) if entry[0] != USER or entry[2] != uid]
    _write(path, [*entries, (USER, perm, uid)])


def revoke(path: Path, uid: int) -> None:
    """Remove `uid`'s entry, if any; a file without one is left untouched."""
    entries = _read(path)
    kept = [entry for entry in entries if entry[0] != USER or entry[2] != uid]
    if kept != entries:
        _write(path, kept)


def user_entries(path: Path) -> dict[int, int]:
    """The named-user entries: uid -> perm."""
    return {entry[2]: entry[1] for entry in _read(path) if entry[0] == USER}


def _read(path: Path) -> list[Entry]:
    try:
        data = os.getxattr(path, XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise _explain(exc, path) from None
        mode = os.stat(path).st_mode
        owner, group, other = mode >> 6 & 7, mode >> 3 & 7, mode & 7
        return [(USER_OBJ, owner, UNDEFINED_ID), (GROUP_OBJ, group, UNDEFINED_ID), (OTHER, other, UNDEFINED_ID)]
    (version,) = HEADER.unpack_from(data)
    if version != VERSION or (len(data) - HEADER.size) % ENTRY.size:
        raise HostError(f"{path}: unreadable POSIX ACL (version {version}, {len(data)} bytes)")
    return [ENTRY.unpack_from(data, offset) for offset in range(HEADER.size, len(data), ENTRY.size)]


def _write(path: Path, entries: list[Entry]) -> None:
    """Write `entries`, with the mask recomputed (as setfacl does): the union of the group class's permissions."""
    base = [entry for entry in entries if entry[0] != MASK]
    if any(tag in (USER, GROUP) for tag, _, _ in base):
        mask = 0
        for tag, perm, _ in base:
            if tag in (USER, GROUP, GROUP_OBJ):
                mask |= perm
        base.append((MASK, mask, UNDEFINED_ID))
    base.sort(key=lambda entry: (entry[0], entry[2]))
    data = HEADER.pack(VERSION) + b"".join(ENTRY.pack(*entry) for entry in base)
    try:
        os.setxattr(path, XATTR, data)
    except OSError as exc:
        raise _explain(exc, path) from None


def _explain(exc: OSError, path: Path) -> HostError:
    if exc.errno == errno.EOPNOTSUPP:
        return HostError(
            f"{path}: its filesystem does not support POSIX ACLs, which give the jailed Firecracker (its own uid) "
            "access to the pod's volume; keep podbay's state on a filesystem with ACLs (ext4, xfs, btrfs, tmpfs)"
        )
    return HostError(f"{path}: cannot change its ACL: {exc.strerror}")
