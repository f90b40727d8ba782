"""Spare branches: databases copied ahead of time from a source (a template, or an empty database), so that a
pod's provisioning renames one instead of copying (CREATE DATABASE, which costs more as the template grows;
`podbay bench db` measures both, docs/SPECIFICATION.md) — the database side of the warm pool (docs/design.md,
"Postgres": spares).

A spare `spare_<hex>` is made exactly as a pod's database is (its own NOLOGIN role of the same name owning it
and everything copied in, no right for PUBLIC) and marked in its comment with its source: the template's name
*and database oid*, so spares of a template that was removed and made again never match the new one. A claim
renames the database and its role to the pod's name, sets the login and the pod's comment, in one transaction:
two processes sharing the server cannot claim one spare twice (the loser's rename fails, it tries the next).
After each provisioning the provider tops its source's spares up again in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from podbay.state.pg_marks import from_podbay, from_podbay_comment
from podbay.state.pg_server import scram_verifier

if TYPE_CHECKING:
    from podbay.state.postgres import PostgresProvider

log = logging.getLogger("podbay.postgres")
SPARE_PREFIX = "spare_"
EMPTY = "template0"  # the source of a pod without a template
REFILL_DELAY_S = 1.0  # a top-up begins this long after the claim that asked for it
ABANDONED_S = 600.0  # a spare still unmarked this long after its making began was abandoned


class Spares:
    """Up to `per_source` ready spares per source on the provider's server (0: none, every provisioning copies)."""

    def __init__(self, provider: PostgresProvider, per_source: int) -> None:
        self._provider = provider
        self.per_source = per_source
        self._refills: dict[str, asyncio.Task[None]] = {}
        self._making: set[str] = set()  # sources whose top-up has begun making (close() waits for those)

    async def claim(
        self, conn: psycopg.AsyncConnection[Any], source: str, name: str, secret: str, role_mark: str
    ) -> bool:
        """Make a spare of `source` the database and role `name` with the login `secret` and the role's comment
        `role_mark` (so a claimed spare is never without its pod's mark); False if none is ready (the caller
        copies). The caller writes the database's comment."""
        if not self.per_source:
            return False
        verifier = scram_verifier(conn, name, secret)
        for spare in await self._ready(conn, await _label(conn, source)):
            try:
                async with conn.transaction():
                    await conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(spare), sql.Identifier(name))
                    )
                    await conn.execute(
                        sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(spare), sql.Identifier(name))
                    )
                    await conn.execute(
                        sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(verifier))
                    )
                    await conn.execute(
                        sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), sql.Literal(role_mark))
                    )
            except (psycopg.errors.InvalidCatalogName, psycopg.errors.UndefinedObject, psycopg.errors.ObjectInUse):
                continue  # another process claimed it first
            return True
        return False

    def top_up(self, source: str) -> None:
        """Make spares of `source` in the background until `per_source` are ready (one task per source)."""
        running = self._refills.get(source)
        if self.per_source and (running is None or running.done()):
            self._refills[source] = asyncio.create_task(self._top_up(source))

    async def drop(self, conn: psycopg.AsyncConnection[Any], source: str) -> None:
        """Drop every spare of `source` (a template being removed)."""
        for spare in await self._ready(conn, await _label(conn, source)):
            await self._provider._drop_all(conn, spare)

    async def settled(self) -> None:
        """Wait until every top-up asked for is done (tests, benchmarks)."""
        await asyncio.gather(*self._refills.values(), return_exceptions=True)

    async def close(self) -> None:
        """Let the refills under way finish (a spare cut in half would be a database nobody reaps); those still
        waiting to begin are dropped."""
        for source, task in self._refills.items():
            if source not in self._making:
                task.cancel()
        await asyncio.gather(*self._refills.values(), return_exceptions=True)

    async def _top_up(self, source: str) -> None:
        # Not at once: the pod that just claimed a spare is starting now, and a copy competes with it for the
        # host's CPU and disk.
        await asyncio.sleep(REFILL_DELAY_S)
        self._making.add(source)
        try:
            async with self._provider._admin("make spare databases") as conn:
                label = await _label(conn, source)
                await self._drop_stale(conn)
                while len(await self._ready(conn, label)) < self.per_source:
                    await self._make(conn, source, label)
        except Exception as exc:  # spares are an optimisation: provisioning copies meanwhile
            log.warning("making spare postgres databases of %s failed: %s", source, exc)
        finally:
            self._making.discard(source)

    async def _make(self, conn: psycopg.AsyncConnection[Any], source: str, label: str) -> None:
        name = SPARE_PREFIX + secrets.token_hex(8)
        provider = self._provider
        try:
            started = from_podbay(making=time.time())  # lets a later _drop_stale tell abandoned from under way
            await provider._create_role(conn, name, started, None)
            await provider._fill_owned(conn, name, lambda: provider._create_db(conn, name, source))
            await conn.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(_mark(label)))
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(provider._drop_all(conn, name))
            raise

    async def _ready(self, conn: psycopg.AsyncConnection[Any], label: str) -> list[str]:
        cur = await conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'spare\\_%%' AND NOT datistemplate"
            " AND shobj_description(oid, 'pg_database') = %s ORDER BY datname",
            (_mark(label),),
        )
        return [row[0] for row in await cur.fetchall()]

    async def _drop_stale(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Spares whose source is gone (a removed template), and half-made ones (no mark yet: a spare is marked
        last) whose making began over ABANDONED_S ago: their process died."""
        cur = await conn.execute(
            "SELECT r.rolname, shobj_description(r.oid, 'pg_authid'), shobj_description(d.oid, 'pg_database')"
            " FROM pg_roles r LEFT JOIN pg_database d ON d.datname = r.rolname WHERE r.rolname LIKE 'spare\\_%%'"
        )
        ready = {_mark(label) for label in await self._labels(conn)}
        for spare, role_comment, comment in await cur.fetchall():
            making = (from_podbay_comment(role_comment) or {}).get("making")
            abandoned = not isinstance(making, int | float) or time.time() - making > ABANDONED_S
            if comment not in ready and (comment is not None or abandoned):
                await self._provider._drop_all(conn, spare)

    async def _labels(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """The label (`_label`) of every source there is: the empty one and each template."""
        cur = await conn.execute(
            "SELECT datname || '@' || oid FROM pg_database"
            " WHERE datname = 'template0' OR (datistemplate AND datname LIKE 'tpl\\_%')"
        )
        return [row[0] for row in await cur.fetchall()]


async def _label(conn: psycopg.AsyncConnection[Any], source: str) -> str:
    """`source@oid`: a template made again under the same name is another source."""
    cur = await conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (source,))
    row = await cur.fetchone()
    return f"{source}@{row[0] if row else 'gone'}"


def _mark(label: str) -> str:
    return from_podbay(spare=label)
