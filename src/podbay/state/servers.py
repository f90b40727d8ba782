"""The seam between the platform and a pod's *server* database (Postgres, Redis).

SQLite lives on the pod's own volume (podbay.state.sqlite). A server database lives on the host, in a server
podbay runs (or one it is pointed at by URL), and the guest reaches it only through its guest channel: the
agent listens on the guest's loopback at the database's usual port and opens a stream per connection
(podbay.tunnel); the host connects that stream to `DatabaseProvider.connect(grant)`, i.e. to this pod's
database and nowhere else.

A provider makes one `DatabaseGrant` per pod (`provision`, concurrently with the sandbox's start), revokes it
when the pod ends (`release`: the data is dropped, or kept when the grant says `retain`), and branches it at
the instant a pod is forked or snapshotted: `branch` / `save` run while the source pod's VM is stopped and
return a `Branching` whose `finish` completes the copy once it runs again. Providers know nothing of
isolation backends, tenants or HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

DatabaseKind = Literal["postgres", "redis"]
DATABASE_KINDS: tuple[DatabaseKind, ...] = ("postgres", "redis")
SERVICE = "db"  # the tunnel's service name on the pod's channel
DUMP_SUFFIXES: dict[DatabaseKind, str] = {"postgres": ".sql", "redis": ".rdb"}  # what an export is named by


@dataclass(frozen=True)
class DatabaseGrant:
    """One pod's server database: which one it is, who may log in, how the guest reaches it.

    `secret` is the login password minted for this pod alone; it reaches the guest in `env` at start (or at
    claim) and nowhere else (never a log line, never an API answer other than the pod's own environment)."""

    provider: DatabaseKind
    pod_id: str
    name: str  # the database (postgres) or the instance (redis), e.g. pod_7f3a...; unique on the server
    role: str  # the login role (postgres); "default" (redis)
    secret: str = field(repr=False)
    guest_port: int  # where the guest's loopback listener is: 5432, 6379
    url: str = field(repr=False)  # as the guest uses it, e.g. postgresql://pod_7f3a:<secret>@127.0.0.1:5432/pod_7f3a
    retain: bool = False  # keep the data when the pod ends (its credentials are revoked either way)
    template: str | None = None  # what it was branched from (a template's name), if anything

    @property
    def env(self) -> dict[str, str]:
        """What the guest sees: PODBAY_DB_URL plus the parts, so clients that want them need not parse it."""
        return {
            "PODBAY_DB_URL": self.url,
            "PODBAY_DB_KIND": self.provider,
            "PODBAY_DB_HOST": "127.0.0.1",
            "PODBAY_DB_PORT": str(self.guest_port),
            "PODBAY_DB_NAME": self.name,
            "PODBAY_DB_USER": self.role,
            "PODBAY_DB_PASSWORD": self.secret,
        }


@dataclass(frozen=True)
class DatabaseInfo:
    """A database the server holds for podbay: a live pod's, or one retained after its pod ended."""

    provider: DatabaseKind
    pod_id: str
    name: str
    retained: bool  # its pod ended and the data was kept (`podbay db export POD`, `podbay db rm POD`)
    size_bytes: int
    template: str | None = None


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    size_bytes: int


class Branching(Protocol):
    """A copy begun at an instant (the source VM stopped); completed or undone after the VM runs again."""

    async def finish(self) -> list[DatabaseGrant]:
        """The copies' grants (one per child for a fork; none for a snapshot save, whose files are written)."""
        ...

    async def abort(self) -> None:
        """Undo whatever of the copy exists (no role, database, instance or file left)."""
        ...


class DatabaseProvider(Protocol):
    kind: DatabaseKind
    guest_port: int

    async def start(self) -> None:
        """Make sure the server runs (a managed one is started if needed). DatabaseUnavailable says why not."""
        ...

    async def provision(self, pod_id: str, template: str | None, retain: bool) -> DatabaseGrant:
        """A new database and login for `pod_id`, from `template` if given (NotFound if there is none).
        All or nothing: on failure nothing of it is left (no role, no database, no instance, no socket)."""
        ...

    async def release(self, grant: DatabaseGrant) -> None:
        """Revoke the grant's login and end its sessions; drop the data unless `grant.retain`. Idempotent."""
        ...

    async def connect(self, grant: DatabaseGrant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to this grant's database only: the tunnel's target for one guest connection. A
        connection that asks for another database or role is refused (ConnectionError)."""
        ...

    async def branch(self, grant: DatabaseGrant, pod_ids: Sequence[str]) -> Branching:
        """Begin one copy per `pod_ids` of `grant`'s data as it is now. Called while the source pod's VM is
        stopped, so the copy is of the same instant as its memory; `finish()` after the VM runs again."""
        ...

    async def save(self, grant: DatabaseGrant, dest: Path) -> Branching:
        """Begin saving `grant`'s data as it is now into the new directory `dest` (a pod snapshot's);
        same instant rule as `branch`."""
        ...

    async def load(self, source: Path, pod_id: str, retain: bool) -> DatabaseGrant:
        """A new database for `pod_id` from what `save` wrote to `source`."""
        ...

    async def export(self, pod_id: str, dest: Path) -> None:
        """Write a dump of `pod_id`'s database (live or retained) to `dest`. NotFound if there is none."""
        ...

    async def databases(self) -> list[DatabaseInfo]: ...

    async def drop(self, pod_id: str) -> None:
        """Remove a retained database for good. NotFound if there is none; Conflict if its pod is live."""
        ...

    async def close(self) -> None:
        """Let this provider's background work finish (the platform is closing)."""
        ...

    async def discard(self, pod_id: str) -> None:
        """Remove whatever exists of `pod_id`'s database, in any state (half-made, running, even marked
        retain): its pod died before the grant was handed over, so it holds no data anyone was given. Nothing
        of another pod is touched; nothing there is no error."""
        ...
