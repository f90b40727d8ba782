"""Give a running template clone its pod's own volumes: swap the backing file of a placeholder volume slot.

A warm pool keeps clones running with placeholder disks in their volume slots (`vol0`, ... see template.py).
QEMU's microvm has virtio-mmio only, so no disk can be hot-plugged: the guest keeps its virtio-blk device and
the host changes the file behind it. QEMU runs under `-chroot` and opens nothing by path, so the volume image
travels as a descriptor (SCM_RIGHTS + QMP `add-fd`) and the new node opens `/dev/fdset/N`. Then, on QEMU 7.2:
`blockdev-add` a `file` node, `blockdev-reopen` the slot's raw node (named `vol0-format`, ... by command.py)
with `file` = that node, `block_resize`.

The placeholder's file node loses its last reference and QEMU closes its file; `block_resize` makes
QEMU signal a configuration change, and the agent's `init` (each mount with its `size`) waits for that size
and drops the guest's cached blocks of the placeholder before it mounts. Not possible on 7.2:
`blockdev-change-medium` / `blockdev-remove-medium` (virtio-blk is not removable), `x-blockdev-change`
(quorum children only), `blockdev-reopen` of the file node (a file node's filename cannot change), and
`blockdev-reopen` of an auto-named (`#blockNNN`) node ("Cannot change the option 'node-name'"): a template
built before command.py named its nodes is refused, and must be rebuilt.

The new file node keeps QEMU's image locking (`locking=auto`: OFD locks): a second VMM that tries to attach the
same image is refused, as with a volume given at start. The volume's flock (`VolumeAttachment.lock_fd`) goes
to QEMU too, by `getfd` (a named descriptor of the monitor, kept until QEMU exits): a descriptor in an fdset
that no node has dup'd is closed when the last QMP client disconnects, and a lock file in the image's fdset
could be picked by QEMU for a reopen of `/dev/fdset/N`. The lock then lives exactly as long as QEMU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import QMPError

from podbay.errors import Conflict, GuestError, HostError, InvalidSpec, NotFound, PodbayError
from podbay.isolation.base import VolumeAttachment
from podbay.isolation.qemu.template import ClonedSandbox
from podbay.isolation.supervise import disk_device


@dataclass(frozen=True)
class Slot:
    """A volume slot of a running clone: its drive id, its format node, and the device the guest sees."""

    index: int
    node: str  # the format (raw) node under the drive
    device: str  # /dev/vdX in the guest

    @property
    def drive(self) -> str:
        return f"vol{self.index}"


async def free_slots(sandbox: ClonedSandbox) -> list[Slot]:
    """The clone's volume slots that still hold their placeholder (`slot<N>.img`, as start_clone makes them)."""
    drives = await sandbox.qmp("query-block")
    first = 2 if any(drive["device"] == "layer" for drive in drives) else 1
    slots = []
    for drive in drives:
        name, inserted = drive["device"], drive.get("inserted")
        if not name.startswith("vol") or not name[3:].isdigit() or inserted is None:
            continue
        index = int(name[3:])
        if Path(inserted["file"]).name == f"slot{index}.img":
            slots.append(Slot(index=index, node=inserted["node-name"], device=disk_device(first + index)))
    return sorted(slots, key=lambda slot: slot.index)


async def attach_volumes(sandbox: ClonedSandbox, volumes: Sequence[VolumeAttachment]) -> list[dict[str, Any]]:
    """Attach `volumes` to the free volume slots of a running clone, in order; return their mounts (with sizes)
    for the agent's `init`, and add them to `sandbox.guest_mounts`.

    Each volume's lock descriptor goes to QEMU, which holds it while it runs. On failure a volume's half-made
    nodes are removed and its slot keeps its placeholder (volumes attached before it stay attached); the
    sandbox can be destroyed as usual.
    """
    slots = await free_slots(sandbox)
    if len(volumes) > len(slots):
        raise InvalidSpec(
            "volumes",
            f"the pod attaches {len(volumes)} volume(s), this sandbox has {len(slots)} free volume slot(s)",
            "use a pool whose template has more volume slots, or boot the pod cold",
        )
    for slot in slots[: len(volumes)]:
        if slot.node.startswith("#"):  # QEMU's auto-generated name: blockdev-reopen refuses it
            raise GuestError(
                f"this sandbox's volume slot {slot.drive} has no named format node (QEMU calls it {slot.node}): "
                "its template predates named nodes and cannot take a volume while running; "
                "rebuild it (`podbay templates rm --stale`, then let the pool build it again)"
            )
    mounts = []
    for volume, slot in zip(volumes, slots, strict=False):
        size = await _attach(sandbox, volume, slot)
        mount = {"source": slot.device, "target": volume.target, "fstype": "ext4", "size": size}
        sandbox.guest_mounts.append(mount)
        mounts.append(mount)
    return mounts


async def _attach(sandbox: ClonedSandbox, volume: VolumeAttachment, slot: Slot) -> int:
    """Swap `slot`'s placeholder for `volume`'s image; return the image's size."""
    try:
        fd = os.open(volume.image, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(
            f"volume {volume.name!r}: its image {volume.image} does not exist; create the volume before attaching it"
        ) from None
    except OSError as exc:
        raise HostError(f"volume {volume.name!r}: cannot open its image {volume.image}: {exc.strerror}") from None
    lock_name = f"podbay-lock-{slot.drive}"
    added: list[str] = []  # nodes to delete if the swap fails
    fdset: int | None = None
    locked = swapped = False
    try:
        size = os.fstat(fd).st_size
        if volume.lock_fd is not None:
            await sandbox.pass_fd(volume.lock_fd, "getfd", {"fdname": lock_name})
            locked = True
        answer = await sandbox.pass_fd(fd, "add-fd", {"opaque": f"podbay volume {volume.name}"})
        fdset = int(answer["fdset-id"])
        file_node = f"{slot.drive}-fd{fdset}-file"
        file_options = {"driver": "file", "node-name": file_node, "filename": f"/dev/fdset/{fdset}", "aio": "threads"}
        await sandbox.qmp("blockdev-add", file_options)
        added.append(file_node)
        reopen = {"driver": "raw", "node-name": slot.node, "file": file_node}
        await sandbox.qmp("blockdev-reopen", {"options": [reopen]})
        swapped = True  # from here the guest's disk is the volume: its lock stays with QEMU whatever happens
        await sandbox.qmp("block_resize", {"device": slot.drive, "size": size})
    except BaseException as failure:
        if not swapped:
            await _undo(sandbox, added, fdset, lock_name if locked else None)
        if isinstance(failure, QMPError | GuestError):
            raise _explain(volume, failure) from None
        raise
    finally:
        os.close(fd)  # QEMU has its own copy
    return size


async def _undo(sandbox: ClonedSandbox, nodes: list[str], fdset: int | None, lock_name: str | None) -> None:
    """Remove what a failed swap added; the placeholder is still under the device. Best effort: QEMU may be gone."""
    with contextlib.suppress(QMPError, OSError):
        for node in nodes:
            await sandbox.qmp("blockdev-del", {"node-name": node})
        if fdset is not None:
            await sandbox.qmp("remove-fd", {"fdset-id": fdset})
        if lock_name is not None:
            await sandbox.qmp("closefd", {"fdname": lock_name})


def _explain(volume: VolumeAttachment, failure: Exception) -> PodbayError:
    words = str(failure)
    if "lock" in words and ("Failed to get" in words or "another process" in words):
        return Conflict(
            f"volume {volume.name!r} is in use by another VM (QEMU: {words}); destroy the pod that holds it first"
        )
    return GuestError(
        f"attaching volume {volume.name!r} ({volume.image}) to a running sandbox failed in QEMU: {words}; "
        "destroy this sandbox and start the pod with the volume given at start (a template clone or a cold boot)"
    )
