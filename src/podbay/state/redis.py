"""Redis for pods: one small redis-server per pod, reached only through its unix socket.

A pod's instance runs as the `redis` account (never root), listens on no TCP port, and holds only that pod's
keys, so plain keys and every data command work as usual while no other pod can reach them. The pod logs in as
`default` with a password minted for it; podbay keeps a second user (`podbay`, another secret) for SAVE and
SHUTDOWN, which the pod's user cannot run. Nothing is persisted unless podbay asks: a SAVE when a pod that
retains its data ends, at a fork or snapshot, or for an export. See podbay.state.redis_instance for the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from podbay.errors import Conflict, DatabaseUnavailable, HostError, NotFound
from podbay.isolation.supervise import is_gone
from podbay.paths import PodbayPaths
from podbay.state.redis_instance import (
    Account,
    AdminError,
    Instance,
    Meta,
    check_name,
    copy_regular,
    describe,
    instance_name,
    write_own_file,
)
from podbay.state.servers import DatabaseGrant, DatabaseInfo, DatabaseKind, DatabaseProvider

GUEST_PORT = 6379
STAGING_PREFIX = ".staging-"  # `.staging-<podbay pid>-<token>`: an RDB taken at a fork's or snapshot's instant


class RedisProvider:
    """`DatabaseProvider` for Redis. `root` holds one directory per instance (PodbayPaths.databases / "redis");
    `server` is the redis-server to run (looked up on PATH) and `extra_config` lines are appended to every
    instance's configuration (a seam for tests; nothing else should need it)."""

    kind: DatabaseKind = "redis"
    guest_port = GUEST_PORT

    def __init__(
        self, root: Path, *, server: str = "redis-server", account: str = "redis", extra_config: Sequence[str] = ()
    ) -> None:
        self.root = root
        self._server = server
        self._account_name = account
        self._extra_config = tuple(extra_config)
        # One lock per instance while anyone holds or awaits it (weak: a pod's lock goes when it is done with).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_paths(cls, paths: PodbayPaths) -> RedisProvider:
        return cls(paths.databases / "redis")

    # ---- the seam -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing runs until a pod asks; this checks that one could start (server, account, root)."""
        self._server_binary()
        self._account()
        self._ensure_root()

    async def provision(self, pod_id: str, template: str | None, retain: bool) -> DatabaseGrant:
        if template is not None:
            raise NotFound(f"Redis has no templates (asked for {template!r}); provision it without one")
        return await self._make(pod_id, retain, rdb=None)

    async def release(self, grant: DatabaseGrant) -> None:
        instance = Instance(self.root, check_name(grant.name))
        async with self._lock(instance.name):
            meta = instance.read_meta()
            if meta is None or meta.pod_id != grant.pod_id:
                return  # released before (or never this grant's)
            if meta.state != "retained":
                await self._end(instance, meta, keep=grant.retain)

    async def connect(self, grant: DatabaseGrant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        instance = Instance(self.root, check_name(grant.name))
        try:
            return await asyncio.open_unix_connection(instance.socket)
        except OSError as exc:
            raise ConnectionError(f"the Redis instance {grant.name} is not running ({describe(exc)})") from None

    async def branch(self, grant: DatabaseGrant, pod_ids: Sequence[str]) -> RedisBranching:
        names = [instance_name(pod_id) for pod_id in pod_ids]  # InvalidSpec before anything is made
        for name in names:
            if (self.root / name).exists():
                raise Conflict(f"a Redis instance {name} exists already (live or retained); drop it first")
        staged = await self._stage(grant)
        return RedisBranching(self, grant, staged, children=list(pod_ids), dest=None)

    async def save(self, grant: DatabaseGrant, dest: Path) -> RedisBranching:
        staged = await self._stage(grant)
        return RedisBranching(self, grant, staged, children=[], dest=dest)

    async def load(self, source: Path, pod_id: str, retain: bool) -> DatabaseGrant:
        rdb = source / "dump.rdb"
        if not rdb.is_file():
            raise NotFound(f"{source} holds no saved Redis data (dump.rdb)")
        return await self._make(pod_id, retain, rdb=rdb)

    async def export(self, pod_id: str, dest: Path) -> None:
        instance = Instance(self.root, instance_name(pod_id))
        async with self._lock(instance.name):
            meta = self._meta_of(instance, pod_id)
            if meta.state != "retained":
                await instance.save()
            elif not instance.size_on_disk():
                raise NotFound(f"the retained Redis database of pod {pod_id} holds no saved data")
            await asyncio.to_thread(copy_regular, instance.rdb, dest)

    async def databases(self) -> list[DatabaseInfo]:
        found = [
            (instance, meta)
            for instance in self._instances()
            if (meta := instance.read_meta()) is not None and meta.state != "starting"
        ]
        sizes = await asyncio.gather(
            *(
                asyncio.to_thread(instance.size_on_disk) if meta.state == "retained" else self._live_size(instance)
                for instance, meta in found
            )
        )
        return [
            DatabaseInfo(
                provider=self.kind,
                pod_id=meta.pod_id,
                name=meta.name,
                retained=meta.state == "retained",
                size_bytes=size,
            )
            for (instance, meta), size in zip(found, sizes, strict=True)
        ]

    async def drop(self, pod_id: str) -> None:
        instance = Instance(self.root, instance_name(pod_id))
        async with self._lock(instance.name):
            if self._meta_of(instance, pod_id).state != "retained":
                raise Conflict(f"the Redis database of pod {pod_id} is in use by its live pod; destroy the pod first")
            await self._discard(instance)

    async def close(self) -> None:
        """Nothing runs in the background: each instance lives and ends with its pod."""

    async def discard(self, pod_id: str) -> None:
        """Stop and remove `pod_id`'s instance whatever its state (starting, running, retained, or a directory
        without meta.json: half made); one whose meta.json names another pod is left alone. Staged RDBs
        left by dead podbay processes go too."""
        self._reap_staging()
        instance = Instance(self.root, instance_name(pod_id))
        async with self._lock(instance.name):
            meta = instance.read_meta()
            if meta is not None and meta.pod_id != pod_id:
                return  # another pod id of the same instance name (`pod-a-b` and `pod-a_b`): not this pod's
            await self._discard(instance)

    # ---- making an instance -------------------------------------------------------------------------------

    async def _make(self, pod_id: str, retain: bool, rdb: Path | None) -> DatabaseGrant:
        """A running instance for `pod_id`, started from `rdb` if given. All or nothing."""
        name = instance_name(pod_id)
        server, account = self._server_binary(), self._account()
        self._ensure_root()
        instance = Instance(self.root, name)
        async with self._lock(name):
            try:
                os.mkdir(instance.dir, 0o700)
            except FileExistsError:
                raise Conflict(f"a Redis instance {name} exists already (live or retained); drop it first") from None
            except OSError as exc:
                raise HostError(f"cannot make the Redis instance directory {instance.dir}: {exc}") from None
            try:
                secret = secrets.token_urlsafe(32)
                meta = Meta(pod_id, name, retain, time.time(), "starting")
                await asyncio.to_thread(self._prepare, instance, meta, secret, account, rdb)
                await instance.launch(server, account)
                instance.write_meta(dataclasses.replace(meta, state="running"))
            except BaseException:
                await asyncio.shield(self._discard(instance))
                raise
        return DatabaseGrant(
            provider=self.kind,
            pod_id=pod_id,
            name=name,
            role="default",
            secret=secret,
            guest_port=GUEST_PORT,
            url=f"redis://default:{secret}@127.0.0.1:{GUEST_PORT}/0",
            retain=retain,
        )

    def _prepare(self, instance: Instance, meta: Meta, secret: str, account: Account, rdb: Path | None) -> None:
        """Write the new directory's files (still podbay's alone), then hand it to the server's account."""
        try:
            instance.write_meta(meta)
            instance.write_config(secret, secrets.token_urlsafe(32), account, self._extra_config)
            if rdb is not None:
                copy_regular(rdb, instance.rdb)
                os.chown(instance.rdb, account.uid, account.gid)
            os.chown(instance.dir, account.uid, account.gid)
        except OSError as exc:
            raise HostError(f"cannot prepare the Redis instance directory {instance.dir}: {exc}") from None

    # ---- ending one ---------------------------------------------------------------------------------------

    async def _end(self, instance: Instance, meta: Meta, keep: bool) -> None:
        """Revoke the pod's login, then drop the data, or keep it: SAVE, then no process, no socket, no
        password left; dump.rdb and meta.json stay. A SAVE that fails still stops it, then says so."""
        if not keep:
            await self._discard(instance)
            return
        failed: DatabaseUnavailable | None = None
        running = instance.processes(self._account())
        if running:  # a process that died took its unsaved data with it
            await instance.revoke()  # first: nothing the pod writes is left out of the SAVE unsaid
            try:
                await instance.save()
            except DatabaseUnavailable as exc:
                failed = exc
        await instance.stop(self._account(), running)
        instance.forget_server_files()
        instance.write_meta(dataclasses.replace(meta, state="retained", retained_at=time.time()))
        if failed is not None:
            raise DatabaseUnavailable(f"{failed}; the pod ended with what was saved before (if anything)")

    async def _discard(self, instance: Instance) -> None:
        """No process, no directory: whatever state the instance was in."""
        await instance.stop(self._account())
        await asyncio.to_thread(instance.remove)

    # ---- branching ----------------------------------------------------------------------------------------

    async def _stage(self, grant: DatabaseGrant) -> Path:
        """SAVE the grant's instance now (its pod is stopped) and keep that RDB aside: a hard link is instant
        and stays as it is, since the server replaces dump.rdb by renaming a new file over it."""
        instance = Instance(self.root, check_name(grant.name))
        staging = self.root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        async with self._lock(instance.name):
            meta = instance.read_meta()
            if meta is None or meta.pod_id != grant.pod_id or meta.state != "running":
                raise NotFound(f"pod {grant.pod_id} has no running Redis instance to branch")
            await instance.save()
            try:
                os.mkdir(staging, 0o700)
                staged = staging / "dump.rdb"
                try:
                    os.link(instance.rdb, staged, follow_symlinks=False)
                except OSError:
                    await asyncio.to_thread(copy_regular, instance.rdb, staged)
            except OSError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise HostError(f"cannot keep the Redis data of pod {grant.pod_id} aside in {staging}: {exc}") from None
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return staged

    def _reap_staging(self) -> None:
        """Staged RDBs whose podbay process died before finishing or aborting its branch."""
        with contextlib.suppress(OSError):
            for entry in self.root.iterdir():
                if entry.name.startswith(STAGING_PREFIX):
                    owner = entry.name.removeprefix(STAGING_PREFIX).split("-", 1)[0]
                    if owner.isdigit() and int(owner) != os.getpid() and is_gone(int(owner)):
                        shutil.rmtree(entry, ignore_errors=True)

    def pid_of(self, pod_id: str) -> int | None:
        """The live instance's server process (host-side checks and benchmarks); None if it runs no more."""
        instance, _ = self._find(pod_id)
        pids = instance.pids(self._account())
        return pids[0] if pids else None

    # ---- helpers ------------------------------------------------------------------------------------------

    def _find(self, pod_id: str) -> tuple[Instance, Meta]:
        instance = Instance(self.root, instance_name(pod_id))
        return instance, self._meta_of(instance, pod_id)

    @staticmethod
    def _meta_of(instance: Instance, pod_id: str) -> Meta:
        """The meta of `pod_id`'s live or retained instance; NotFound if it has none (or one being made)."""
        meta = instance.read_meta()
        if meta is None or meta.pod_id != pod_id or meta.state == "starting":
            raise NotFound(f"pod {pod_id} has no Redis database (live or retained)")
        return meta

    def _instances(self) -> list[Instance]:
        try:
            entries = sorted(self.root.iterdir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise HostError(f"cannot list the Redis instances in {self.root}: {exc}") from None
        return [Instance(self.root, entry.name) for entry in entries if entry.name.startswith("pod_")]

    async def _live_size(self, instance: Instance) -> int:
        with contextlib.suppress(OSError, AdminError, TimeoutError, ValueError):
            info = await instance.admin("INFO", "memory", timeout=5.0)
            if isinstance(info, bytes):
                for line in info.decode().splitlines():
                    if line.startswith("used_memory_dataset:"):
                        return int(line.split(":", 1)[1])
        return 0

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _server_binary(self) -> str:
        found = shutil.which(self._server)
        if found is None:
            raise DatabaseUnavailable(
                f"{self._server} is not installed (not on PATH); run scripts/setup or `apt install redis-server`"
            )
        return found

    def _account(self) -> Account:
        return Account.for_server(self._account_name)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot make the Redis directory {self.root}: {exc}") from None


class RedisBranching:
    """An RDB taken at the instant of a fork (`children`: one instance each at `finish`) or a snapshot
    (`dest`: dump.rdb and meta.json written there at `finish`)."""

    def __init__(
        self, provider: RedisProvider, grant: DatabaseGrant, staged: Path, children: list[str], dest: Path | None
    ) -> None:
        self._provider = provider
        self._grant = grant
        self._staged = staged
        self._children = children
        self._dest = dest
        self._made: list[DatabaseGrant] = []
        self._written: list[Path] = []

    async def finish(self) -> list[DatabaseGrant]:
        try:
            if self._dest is not None:
                await asyncio.to_thread(self._write_snapshot, self._dest)
            for pod_id in self._children:
                made = await self._provider._make(pod_id, self._grant.retain, self._staged)
                self._made.append(made)
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        finally:
            shutil.rmtree(self._staged.parent, ignore_errors=True)
        return list(self._made)

    async def abort(self) -> None:
        shutil.rmtree(self._staged.parent, ignore_errors=True)
        for path in self._written:
            with contextlib.suppress(OSError):
                path.unlink()
        made, self._made = self._made, []
        for grant in made:  # the children are dropped whatever their policy: they never existed for anyone
            await self._provider.release(dataclasses.replace(grant, retain=False))

    def _write_snapshot(self, dest: Path) -> None:
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HostError(f"cannot make the snapshot directory {dest}: {exc}") from None
        self._written.append(dest / "dump.rdb")
        copy_regular(self._staged, dest / "dump.rdb")
        meta = {"provider": "redis", "pod_id": self._grant.pod_id, "name": self._grant.name, "saved": time.time()}
        self._written.append(dest / "meta.json")
        write_own_file(dest / "meta.json", json.dumps(meta).encode())


if TYPE_CHECKING:  # mypy checks that the provider fits the seam

    def _fits_the_seam(provider: RedisProvider) -> DatabaseProvider:
        return provider
