"""What the platform does with server databases: one provider per kind, made on first use, and a ledger.

The ledger (`<state>/databases/<pod id>.json`, 0600) names every database this state directory's pods were
given: written before provisioning starts (the intent) and again with the grant once it exists, removed when
the grant is released. The database servers are host-wide (PodbayPaths.databases), shared by every state
directory; the ledger is what lets this platform's reaper clean up after its own dead pods, and only those,
and what lets a later process re-open the tunnel of a pod it re-adopts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from podbay.channel import GuestChannel
from podbay.errors import Conflict, GuestError, HostError, InvalidSpec, NotFound, PodbayError
from podbay.paths import PodbayPaths
from podbay.state.base import StateLease
from podbay.state.servers import (
    DATABASE_KINDS,
    SERVICE,
    Branching,
    DatabaseGrant,
    DatabaseInfo,
    DatabaseKind,
    DatabaseProvider,
    TemplateInfo,
)

log = logging.getLogger("podbay.databases")
SNAPSHOT_DIR = "database"  # in a pod snapshot's directory: what the provider's save() wrote
SNAPSHOT_META = "database.json"  # beside it: which provider, from which template


class ServerDatabases:
    """The server-database providers of one platform (a test passes its own) and its ledger."""

    def __init__(self, paths: PodbayPaths, providers: Mapping[str, DatabaseProvider] | None = None) -> None:
        self._paths = paths
        self._providers: dict[str, DatabaseProvider] = dict(providers or {})
        self.ledger = paths.state / "databases"

    def provider(self, kind: str) -> DatabaseProvider:
        if kind not in self._providers:
            self._providers[kind] = _make_provider(kind, self._paths)
        return self._providers[kind]

    async def provision(self, pod_id: str, kind: DatabaseKind, template: str | None, retain: bool) -> StateLease:
        """A database for `pod_id`, started server and ledger entry included; nothing of it left on failure."""
        provider = self.provider(kind)
        await provider.start()
        self._write(pod_id, {"provider": kind, "retain": retain})
        try:
            grant = await provider.provision(pod_id, template, retain)
        except BaseException:
            self._forget(pod_id)
            raise
        self._write(pod_id, {"provider": kind, "retain": retain, "grant": _grant_json(grant)})
        return lease_of(grant)

    def adopt(self, grant: DatabaseGrant) -> StateLease:
        """Enter a grant made elsewhere (a fork's branch, a snapshot's load) into the ledger."""
        self._write(grant.pod_id, {"provider": grant.provider, "retain": grant.retain, "grant": _grant_json(grant)})
        return lease_of(grant)

    async def load(self, snapshot: Path, pod_id: str) -> StateLease | None:
        """The database saved with the pod snapshot at `snapshot` (see InstantCopy.save), as `pod_id`'s own;
        None if that pod had none."""
        meta = self._read(snapshot / SNAPSHOT_META)
        if meta is None:
            return None
        kind = str(meta.get("provider"))
        provider = self.provider(kind)
        await provider.start()
        self._write(pod_id, {"provider": kind, "retain": False})
        try:
            grant = await provider.load(snapshot / SNAPSHOT_DIR, pod_id, retain=False)
        except BaseException:
            self._forget(pod_id)
            raise
        return self.adopt(grant)

    async def close(self) -> None:
        await asyncio.gather(*(provider.close() for provider in self._providers.values()), return_exceptions=True)

    async def release(self, grant: DatabaseGrant) -> None:
        await self.provider(grant.provider).release(grant)
        self._forget(grant.pod_id)

    async def open_tunnel(self, channel: GuestChannel, grant: DatabaseGrant, *, listen: bool) -> None:
        """Connect the pod's guest-opened streams to its database, and to nothing else. `listen`: have the agent
        listen at the database's port (not for a fork child or a restore: their agent listens already)."""
        provider = self.provider(grant.provider)
        channel.register_service(SERVICE, lambda: provider.connect(grant))
        if listen:
            try:
                await channel.listen(grant.guest_port, SERVICE)
            except GuestError as exc:
                raise GuestError(
                    f"the guest cannot listen on 127.0.0.1:{grant.guest_port} for its {grant.provider} database: {exc}"
                ) from None

    # ---- what an operator (CLI, admin API) does with the databases and templates -------------------------

    async def inventory(self) -> list[DatabaseInfo]:
        """Every database podbay's servers hold (live pods' and retained ones), of the servers that exist here."""
        found: list[DatabaseInfo] = []
        for kind in self.kinds_in_use():
            provider = self.provider(kind)
            await provider.start()
            found += await provider.databases()
        return found

    async def find(self, pod_id: str) -> DatabaseInfo:
        for info in await self.inventory():
            if info.pod_id == pod_id:
                return info
        raise NotFound(f"no database of pod {pod_id!r}; `podbay db ls` lists them", pod_id=pod_id)

    async def export(self, pod_id: str, dest: Path) -> DatabaseInfo:
        """Dump `pod_id`'s database (live, or retained after the pod ended) to `dest`."""
        info = await self.find(pod_id)
        await self.provider(info.provider).export(pod_id, dest)
        return info

    async def drop(self, pod_id: str, live_pod_ids: Iterable[str]) -> DatabaseInfo:
        """Remove a retained database for good, and say what it was (Conflict while its pod lives: destroy the
        pod first)."""
        info = await self.find(pod_id)
        if pod_id in set(live_pod_ids) or self.grant_of(pod_id) is not None:
            raise Conflict(f"pod {pod_id} is live; destroy it first (with db_retain its data stays until then)")
        await self.provider(info.provider).drop(pod_id)
        return info

    def postgres_templates(self) -> PostgresTemplates:
        """The Postgres templates (`db_template=`): create from a dump, list, remove."""
        from podbay.state.postgres import PostgresProvider  # psycopg only where Postgres is used

        provider = self.provider("postgres")
        assert isinstance(provider, PostgresProvider)
        return provider.templates

    def kinds_in_use(self) -> list[str]:
        """Kinds made in this process, or whose managed server has a directory here (made by an earlier one)."""
        return [
            kind
            for kind in DATABASE_KINDS
            if kind in self._providers or (self._paths.databases / kind).exists() or _external(kind)
        ]

    def grant_of(self, pod_id: str) -> DatabaseGrant | None:
        entry = self._read(self.ledger / f"{pod_id}.json")
        grant = entry.get("grant") if entry else None
        return DatabaseGrant(**grant) if isinstance(grant, dict) else None

    async def reap(self, live_pod_ids: Iterable[str]) -> list[str]:
        """Release the databases of this state directory's pods that are gone (their controller died before
        releasing them): a retained one keeps its data, the rest are dropped. Returns their pod ids."""
        live = set(live_pod_ids)
        reaped = []
        for entry_path in sorted(self.ledger.glob("pod-*.json")) if self.ledger.exists() else []:
            pod_id = entry_path.stem
            entry = self._read(entry_path)
            if pod_id in live or entry is None:
                continue
            try:
                await self._release_entry(pod_id, entry)
            except PodbayError as exc:
                log.warning("could not release the database of the reaped pod %s: %s", pod_id, exc)
                continue
            self._forget(pod_id)
            reaped.append(pod_id)
        return reaped

    async def _release_entry(self, pod_id: str, entry: dict[str, object]) -> None:
        grant = entry.get("grant")
        provider = self.provider(str(entry.get("provider")))
        await provider.start()  # after a host restart, nothing may have started it yet
        if isinstance(grant, dict):
            await provider.release(DatabaseGrant(**grant))
        else:  # it died while provisioning: whatever was made goes, retain or not (nobody was given it)
            await provider.discard(pod_id)

    def _write(self, pod_id: str, entry: dict[str, object]) -> None:
        """Atomically, 0600: the entry holds the pod's secret."""
        try:
            self.ledger.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = self.ledger / f".{pod_id}.json.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(entry, out)
            os.replace(temporary, self.ledger / f"{pod_id}.json")
        except OSError as exc:
            raise HostError(f"cannot record pod {pod_id}'s database in {self.ledger}: {exc}") from None

    def _forget(self, pod_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.ledger / f"{pod_id}.json").unlink()

    @staticmethod
    def _read(path: Path) -> dict[str, object] | None:
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None


class InstantCopy:
    """A pod's server database copied at a fork's or a snapshot's instant, while its VM is stopped (see
    save_snapshot's `at_instant`); finished after the VM runs again. Nothing to do for a pod without one."""

    def __init__(self, databases: ServerDatabases, grant: DatabaseGrant | None) -> None:
        self._databases = databases
        self._grant = grant
        self._branching: Branching | None = None
        self._staging: Path | None = None

    @property
    def started(self) -> bool:
        return self._branching is not None

    def fork(self, pod_ids: Sequence[str]) -> Callable[[], Awaitable[None]] | None:
        """The at-instant step of a fork: one branch per child pod."""
        grant = self._grant
        if grant is None:
            return None

        async def begin() -> None:
            self._branching = await self._databases.provider(grant.provider).branch(grant, pod_ids)

        return begin

    def save(self, staging: Path) -> Callable[[], Awaitable[None]] | None:
        """The at-instant step of a snapshot: the data goes to `staging`, then into the snapshot."""
        grant = self._grant
        if grant is None:
            return None
        shutil.rmtree(staging, ignore_errors=True)  # a leftover of a save this process did not finish
        self._staging = staging

        async def begin() -> None:
            self._branching = await self._databases.provider(grant.provider).save(grant, staging)

        return begin

    async def leases(self) -> list[StateLease]:
        """The fork children's databases, in the children's order, entered in the ledger."""
        assert self._branching is not None
        try:
            grants = await self._branching.finish()
        except BaseException:
            await self.abort()
            raise
        return [self._databases.adopt(grant) for grant in grants]

    async def saved_into(self, snapshot: Path) -> None:
        """Complete the save and move it into the snapshot's directory; on failure the snapshot goes too
        (a snapshot of a pod with a database is never kept without it)."""
        assert self._branching is not None and self._staging is not None and self._grant is not None
        try:
            await self._branching.finish()
            os.replace(self._staging, snapshot / SNAPSHOT_DIR)
            meta = {"provider": self._grant.provider, "template": self._grant.template}
            (snapshot / SNAPSHOT_META).write_text(json.dumps(meta))  # last: restore looks for this file
        except BaseException as exc:
            await self.abort()
            shutil.rmtree(snapshot, ignore_errors=True)
            if isinstance(exc, OSError):
                raise HostError(f"saving the pod's database into {snapshot} failed: {exc}; nothing was kept") from None
            raise

    async def abort(self) -> None:
        if self._branching is not None:
            try:
                await self._branching.abort()
            except PodbayError as exc:
                log.warning("undoing a database copy failed: %s", exc)
            self._branching = None
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)


class PostgresTemplates(Protocol):
    async def create(self, name: str, dump: Path) -> TemplateInfo: ...

    async def list(self) -> list[TemplateInfo]: ...

    async def remove(self, name: str) -> None: ...


def _external(kind: str) -> bool:
    """Postgres may be a server podbay is pointed at (Redis is always an instance per pod)."""
    return kind == "postgres" and bool(os.environ.get("PODBAY_POSTGRES_URL"))


def lease_of(grant: DatabaseGrant) -> StateLease:
    return StateLease(provider=grant.provider, db_url=shown_url(grant), env=grant.env, grant=grant)


def shown_url(grant: DatabaseGrant) -> str:
    """The grant's URL without its secret: what pod info shows (the guest's environment has the whole one)."""
    return grant.url.replace(f":{grant.secret}@", "@", 1) if grant.secret else grant.url


def _grant_json(grant: DatabaseGrant) -> dict[str, object]:
    return asdict(grant)


def _make_provider(kind: str, paths: PodbayPaths) -> DatabaseProvider:
    if kind == "postgres":
        from podbay.state.postgres import PostgresProvider  # psycopg only where Postgres is used

        return PostgresProvider.from_paths(paths)
    if kind == "redis":
        from podbay.state.redis import RedisProvider

        return RedisProvider.from_paths(paths)
    raise InvalidSpec("db", f"unknown database {kind!r}", f"choose one of: {', '.join(DATABASE_KINDS)}")
