"""The seam between the platform and a pod's private database.

A provider prepares state for one pod (concurrently with the sandbox), says what the sandbox must attach
(volumes) and what the guest must see (environment: connection string, credentials), and releases it all
when the pod ends. Providers know nothing of isolation backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from podbay.isolation.base import VolumeAttachment
from podbay.state.servers import DatabaseGrant


@dataclass
class StateLease:
    provider: str
    db_url: str
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[VolumeAttachment, ...] = ()
    volume_name: str | None = None
    ephemeral: bool = False  # delete the volume on release (no name was asked for)
    grant: DatabaseGrant | None = None  # a server database's (podbay.state.servers); None for SQLite


class StateProvider(Protocol):
    kind: str

    async def provision(self, pod_id: str, volume: str | None, size_mib: int) -> StateLease: ...

    async def release(self, lease: StateLease) -> None:
        """Revoke what the lease granted. Persistent data (a volume) stays; access to it ends."""
