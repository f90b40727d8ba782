"""SQLite on a persistent volume: the database file lives on the pod's volume, mounted at /data."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from podbay.errors import Conflict, NotFound
from podbay.isolation.base import VolumeAttachment
from podbay.state.base import StateLease
from podbay.state.volumes import DB_FILE, MOUNT_POINT, VolumeStore, anonymous_name

# A volume's lock can stay held for a moment after its pod is gone: a process the controller is starting for
# another pod holds copies of every descriptor between its fork and its exec. A refusal is retried this long.
LOCK_RETRY_S = 1.0


class SqliteProvider:
    kind = "sqlite"

    def __init__(self, volumes: VolumeStore) -> None:
        self._volumes = volumes

    async def provision(self, pod_id: str, volume: str | None, size_mib: int) -> StateLease:
        if volume is not None:
            VolumeStore.check_user_name(volume)  # InvalidSpec for a name reserved for another pod's own volume
        # No name asked: a volume that lives and dies with the pod (VolumeStore.reap_anonymous deletes it if the
        # controller dies first). Its database is in WAL mode (see podbay.state.volumes).
        name = volume or anonymous_name(pod_id)
        await _retrying_conflict(lambda: self._volumes.attach(name))
        try:
            image, _ = await asyncio.to_thread(self._volumes.ensure, name, size_mib)
        except BaseException:
            self._volumes.detach(name)
            raise
        db_path = f"{MOUNT_POINT}/{DB_FILE}"
        return StateLease(
            provider=self.kind,
            db_url=f"sqlite:///{db_path}",
            env={"PODBAY_DB_URL": f"sqlite:///{db_path}", "PODBAY_DB_PATH": db_path},
            volumes=(
                VolumeAttachment(name=name, image=image, target=MOUNT_POINT, lock_fd=self._volumes.lock_fd(name)),
            ),
            volume_name=name,
            ephemeral=volume is None,
        )

    async def release(self, lease: StateLease) -> None:
        if lease.volume_name is not None:
            self._volumes.detach(lease.volume_name)
            if lease.ephemeral:
                with contextlib.suppress(NotFound):  # released before (a destroy retried after a failure)
                    await _retrying_conflict(lambda: self._volumes.delete(lease.volume_name or ""))


async def _retrying_conflict(take: Callable[[], None]) -> None:
    """`take` a volume (attach, delete), retrying a Conflict for LOCK_RETRY_S before it counts."""
    deadline = asyncio.get_running_loop().time() + LOCK_RETRY_S
    while True:
        try:
            return take()
        except Conflict:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.01)
