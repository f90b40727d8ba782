"""Postgres as a pod's server database: one database and one login role per pod (docs/design.md, "Postgres").

A pod's database `pod_<id>` is owned by the role of the same name (LOGIN, a fresh scram password, no other
right, CONNECTION LIMIT), copied from a template database `tpl_<name>` (CREATE DATABASE ... TEMPLATE: schema
and seed data there at once) or empty. What podbay needs after a restart (pod id, template, retain, retained)
is in a JSON COMMENT ON DATABASE, so nothing else keeps state. Objects copied into a pod's database (from a
template, a parent, a dump) are handed to the pod's role, so the pod owns everything in its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from podbay.errors import Conflict, HostError, InvalidSpec, NotFound, PodbayError
from podbay.paths import PodbayPaths
from podbay.state.pg_guard import guarded_connection
from podbay.state.pg_marks import from_podbay, from_podbay_comment
from podbay.state.pg_server import PG_PORT, PostgresServer, first_error_line, scram_verifier
from podbay.state.pg_spares import EMPTY, Spares
from podbay.state.servers import DatabaseGrant, DatabaseInfo, DatabaseKind, TemplateInfo

# CREATE DATABASE's copy: WAL-logged block by block (15's default: no checkpoint, cost grows with the size),
# or a file copy between two checkpoints (cost grows with what else is dirty on the server).
CopyStrategy = Literal["wal_log", "file_copy"]
CONNECTION_LIMIT = 20  # sessions per pod role: one pod cannot take every slot of the server
SPARES = 2  # ready copies per source kept by the platform's provider (from_paths): provisioning is a rename
TEMPLATE_PREFIX = "tpl_"
DUMP_FILE = "postgres.dump"
META_FILE = "meta.json"
LOCK_WAIT = "10s"  # pg_dump waits this long for a table an open transaction of the parent locked exclusively
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
_POD_ID = re.compile(r"pod-[0-9a-z]{1,59}")
_EXTENSION_ENTRY = re.compile(r"^\d+; \d+ \d+ (EXTENSION|COMMENT - EXTENSION) ")

# Every user object of the current database (not the system's, not an extension's members) to one owner.
# Sequences a table owns follow their table; the `public` schema belongs to pg_database_owner already.
_REOWN = """
DO $podbay$ DECLARE r record; target text := {role}; BEGIN
FOR r IN SELECT n.nspname FROM pg_namespace n
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT IN ('information_schema', 'public')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass AND d.objid = n.oid
                  AND d.deptype = 'e')
LOOP EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, target); END LOOP;
FOR r IN SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND c.relkind IN ('r','p','v','m','S','f')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('a', 'i', 'e'))
LOOP EXECUTE format('ALTER %s %s OWNER TO %I', CASE r.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
  WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, r.obj, target); END LOOP;
FOR r IN SELECT p.oid::regprocedure AS obj FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                  AND d.deptype = 'e')
LOOP EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.obj, target); END LOOP;
FOR r IN SELECT t.oid::regtype AS obj FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' AND t.typtype IN ('c','d','e','r')
  AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                  AND d.deptype = 'e')
LOOP EXECUTE format('ALTER TYPE %s OWNER TO %I', r.obj, target); END LOOP;
-- Whatever else another role owns here (a parent pod's operators, aggregates, ...: the server tracks every
-- owner but its bootstrap superuser in pg_shdepend). An extension keeps its owner (it cannot be given away).
FOR r IN SELECT o.type, o.identity FROM pg_shdepend s, LATERAL pg_identify_object(s.classid, s.objid, 0) o
  WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND s.deptype = 'o'
  AND s.refobjid <> (SELECT oid FROM pg_roles WHERE rolname = target)
  AND s.classid NOT IN ('pg_extension'::regclass, 'pg_default_acl'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = s.classid AND d.objid = s.objid
                  AND d.deptype IN ('a', 'i', 'e'))
LOOP EXECUTE format('ALTER %s %s OWNER TO %I', CASE r.type WHEN 'composite type' THEN 'TYPE'
  WHEN 'foreign-data wrapper' THEN 'FOREIGN DATA WRAPPER' ELSE upper(r.type) END, r.identity, target); END LOOP;
END $podbay$
"""


def database_name(pod_id: str) -> str:
    """The database and role of a pod: `pod-1a2b...` → `pod_1a2b...`; any other id → a hash of it (≤ 63 bytes)."""
    if _POD_ID.fullmatch(pod_id):
        return "pod_" + pod_id[4:]
    return "podh_" + hashlib.sha256(pod_id.encode()).hexdigest()[:40]


def check_template_name(name: str) -> None:
    if not _TEMPLATE_NAME.fullmatch(name):
        raise InvalidSpec(
            "template", f"{name[:60]!r} is not a template name", "use 1 to 40 letters, digits, '_' or '-'"
        )


@dataclass(frozen=True)
class _Record:
    """What a pod database's comment says."""

    name: str
    pod_id: str
    template: str | None
    retain: bool
    retained: bool
    size_bytes: int  # 0 unless asked for (`_records(..., sizes=True)`)


@contextlib.contextmanager
def _pg_errors(server: PostgresServer, what: str) -> Any:
    """psycopg's errors as podbay's: a lost or unreachable server is DatabaseUnavailable, an object another
    session holds (ObjectInUse) a Conflict, anything else a HostError."""
    try:
        yield
    except PodbayError:
        raise
    except psycopg.errors.ObjectInUse as exc:
        raise Conflict(f"postgres: {what} failed: {_detail(exc)}; retry in a moment") from None
    except psycopg.OperationalError as exc:
        if _connection_lost(exc):
            raise server.unavailable(exc) from None
        raise HostError(f"postgres: {what} failed: {_detail(exc)}") from None
    except psycopg.Error as exc:
        raise HostError(f"postgres: {what} failed: {_detail(exc)}") from None


def _connection_lost(exc: psycopg.Error) -> bool:
    """A connection-class error: none from the server (the client lost it), 08xxx, the server shutting down or
    not accepting connections (57P0x), no slot left (53300). OperationalError also covers resource and object
    state errors (classes 53, 55, 57) that say nothing of the server's reachability."""
    state = exc.sqlstate
    return state is None or state.startswith(("08", "57P0")) or state == "53300"


def _detail(exc: psycopg.Error) -> str:
    text = str(exc).strip()
    return exc.diag.message_primary or (text.splitlines()[0] if text else type(exc).__name__)


class PostgresProvider:
    """`DatabaseProvider` for Postgres (podbay.state.servers): pod databases on a managed or external server."""

    kind: DatabaseKind = "postgres"
    guest_port = PG_PORT

    def __init__(self, server: PostgresServer, *, copy_strategy: CopyStrategy = "wal_log", spares: int = 0) -> None:
        """`spares`: ready copies kept per source (template or empty), so provisioning renames one (pg_spares)."""
        self.server = server
        self.copy_strategy = copy_strategy
        self.templates = PostgresTemplates(self)
        self.spares = Spares(self, spares)
        self._guards: set[asyncio.Task[None]] = set()

    @classmethod
    def from_paths(cls, paths: PodbayPaths) -> PostgresProvider:
        """The external server of PODBAY_POSTGRES_URL if set, else the managed one under `paths.databases`."""
        url = os.environ.get("PODBAY_POSTGRES_URL")
        if url:
            return cls(PostgresServer.external(url), spares=SPARES)
        return cls(PostgresServer.managed(paths.databases / "postgres"), spares=SPARES)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    # ---- a pod's database -------------------------------------------------------------------------------------

    async def provision(self, pod_id: str, template: str | None, retain: bool) -> DatabaseGrant:
        name = database_name(pod_id)
        async with self._admin("provision a database") as conn:
            source = await self.templates.database_of(conn, template) if template is not None else EMPTY
            try:
                return await self._make(
                    conn, pod_id, name, retain, template, lambda: self._create_db(conn, name, source), spare_of=source
                )
            except _SourceBusy:
                raise Conflict(f"postgres template {template!r} is in use; retry in a moment") from None
            finally:
                self.spares.top_up(source)

    async def close(self) -> None:
        """Let background work (spares being made) finish."""
        await self.spares.close()

    async def release(self, grant: DatabaseGrant) -> None:
        async with self._admin("release a database") as conn:
            # The grant decides (the platform may change the policy); a grant to keep needs its record.
            record = await self._record_named(conn, grant.name) if grant.retain else None
            if record is None:
                await self._drop_all(conn, grant.name)
                return
            await self._revoke_login(conn, grant.name)
            await self._comment(conn, grant.name, grant.pod_id, record.template, retain=True, retained=True)

    async def connect(self, grant: DatabaseGrant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await guarded_connection(grant.role, grant.name, self.server.open_stream, self._guards)

    def direct_conninfo(self, grant: DatabaseGrant) -> str:
        """The grant's login straight to the server, not through the guard (host-side checks and benchmarks)."""
        return make_conninfo(
            host=self.server.host, port=self.server.port, user=grant.role, password=grant.secret, dbname=grant.name
        )

    async def branch(self, grant: DatabaseGrant, pod_ids: Sequence[str]) -> _Branching:
        async with self._admin("branch a database") as conn:
            record = await self._require_record(conn, grant.pod_id)
            if not await self._has_sessions(conn, grant.name):
                made = _Branching(self)
                try:
                    for pod_id in pod_ids:
                        name = database_name(pod_id)

                        async def copy(name: str = name) -> None:
                            await self._create_db(conn, name, grant.name)

                        made.grants.append(await self._make(conn, pod_id, name, record.retain, record.template, copy))
                    return made
                except _SourceBusy:
                    await made.abort()  # a session appeared: take the snapshot path instead
                except BaseException:
                    await made.abort()
                    raise
        snapshot = await _Snapshot.take(self, grant.name)
        return _Branching(self, snapshot=snapshot, pod_ids=list(pod_ids), record=record)

    async def save(self, grant: DatabaseGrant, dest: Path) -> _Branching:
        async with self._admin("save a database") as conn:
            record = await self._require_record(conn, grant.pod_id)
        snapshot = await _Snapshot.take(self, grant.name)
        return _Branching(self, snapshot=snapshot, dest=dest, record=record)

    async def load(self, source: Path, pod_id: str, retain: bool) -> DatabaseGrant:
        dump = source / DUMP_FILE
        try:
            meta = json.loads((source / META_FILE).read_text())
            template = meta.get("template")
        except (OSError, ValueError, AttributeError):
            raise NotFound(f"no saved postgres database in {source} ({META_FILE} is missing or unreadable)") from None
        if not dump.is_file():
            raise NotFound(f"no saved postgres database in {source} ({DUMP_FILE} is missing)")
        name = database_name(pod_id)
        async with self._admin("load a database") as conn:

            async def fill() -> None:
                await self._create_db(conn, name, "template0")
                await self._restore(dump, name)

            return await self._make(conn, pod_id, name, retain, template if isinstance(template, str) else None, fill)

    async def export(self, pod_id: str, dest: Path) -> None:
        async with self._admin("export a database") as conn:
            record = await self._require_record(conn, pod_id)
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as exc:
            raise HostError(f"cannot write {dest}: {exc.strerror}") from None
        try:
            argv = self.server.tool("pg_dump", "--no-owner", "--no-privileges", dbname=record.name)
            rc, err = await self.server.run_tool_rc(argv, stdout=fd)
        finally:
            os.close(fd)
        if rc != 0:
            dest.unlink(missing_ok=True)
            raise HostError(f"pg_dump of {record.name} failed: {first_error_line(err)}")

    async def databases(self) -> list[DatabaseInfo]:
        async with self._admin("list databases") as conn:
            records = await self._records(conn, sizes=True)
        return [
            DatabaseInfo(
                provider="postgres",
                pod_id=r.pod_id,
                name=r.name,
                retained=r.retained,
                size_bytes=r.size_bytes,
                template=r.template,
            )
            for r in records
        ]

    async def drop(self, pod_id: str) -> None:
        async with self._admin("drop a database") as conn:
            record = await self._require_record(conn, pod_id)
            if not record.retained:
                raise Conflict(f"the database of pod {pod_id} is in use by its live pod; destroy the pod first")
            await self._drop_all(conn, record.name)

    async def discard(self, pod_id: str) -> None:
        name = database_name(pod_id)
        async with self._admin("discard a database") as conn:
            # The database's comment is written last, the role's first: a half-made one is known by its role.
            cur = await conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s"
                " UNION ALL SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                (name, name),
            )
            marks = [from_podbay_comment(comment) for (comment,) in await cur.fetchall()]
            if any(mark is not None and mark.get("pod_id") == pod_id for mark in marks):
                await self._drop_all(conn, name)

    # ---- making and unmaking ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _admin(self, what: str, dbname: str | None = None) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with _pg_errors(self.server, what):
            async with self.server.admin_connection(dbname) as conn:
                yield conn

    async def _make(
        self,
        conn: psycopg.AsyncConnection[Any],
        pod_id: str,
        name: str,
        retain: bool,
        template: str | None,
        fill: Callable[[], Awaitable[None]],
        spare_of: str | None = None,
    ) -> DatabaseGrant:
        """Role, database (a spare of `spare_of` renamed, or made by `fill`), owners, rights and comment for one
        pod: all of it, or nothing."""
        if await self._database_exists(conn, name) or await self._role_exists(conn, name):
            raise Conflict(f"pod {pod_id} has a postgres database already ({name})")
        secret = secrets.token_urlsafe(32)
        try:
            role_mark = from_podbay(pod_id=pod_id)
            if spare_of is None or not await self.spares.claim(conn, spare_of, name, secret, role_mark):
                await self._create_role(conn, name, role_mark, secret)
                await self._fill_owned(conn, name, fill)
            await self._comment(conn, name, pod_id, template, retain=retain, retained=False)
        except BaseException:
            await self._undo(name)
            raise
        url = f"postgresql://{name}:{secret}@127.0.0.1:{PG_PORT}/{name}"
        return DatabaseGrant(
            provider="postgres",
            pod_id=pod_id,
            name=name,
            role=name,
            secret=secret,
            guest_port=PG_PORT,
            url=url,
            retain=retain,
            template=template,
        )

    async def _undo(self, name: str) -> None:
        """Drop what a failed or cancelled making left, on a connection of its own (the one it used may be
        mid-statement)."""
        with contextlib.suppress(Exception):
            async with self._admin("undo a half-made database") as conn:
                await asyncio.shield(self._drop_all(conn, name))

    async def _create_role(self, conn: psycopg.AsyncConnection[Any], name: str, mark: str, secret: str | None) -> None:
        """The role `name` with no right but its own database's, CONNECTION_LIMIT sessions and the comment `mark`:
        a login with `secret` (a pod's), or NOLOGIN when None (a spare's, until a claim gives it the login)."""
        role = sql.Identifier(name)
        login: sql.Composable = sql.SQL("NOLOGIN")
        if secret is not None:  # the server is sent the scram verifier, never the password (statement logs)
            login = sql.SQL("LOGIN PASSWORD {}").format(sql.Literal(scram_verifier(conn, name, secret)))
        await conn.execute(
            sql.SQL(
                "CREATE ROLE {} {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {}"
            ).format(role, login, sql.Literal(CONNECTION_LIMIT))
        )
        await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(role, sql.Literal(mark)))
        if not await self._is_superuser(conn):  # an external admin must be a member to give the role a database
            await conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))

    async def _fill_owned(
        self, conn: psycopg.AsyncConnection[Any], name: str, fill: Callable[[], Awaitable[None]]
    ) -> None:
        """Make database `name` by `fill` (owned by the role `name`), close it to PUBLIC and give its role
        everything copied in."""
        await fill()
        await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        await self._reown(name)

    async def _create_db(self, conn: psycopg.AsyncConnection[Any], name: str, source: str) -> None:
        try:
            await conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY {}").format(
                    sql.Identifier(name), sql.Identifier(source), sql.Identifier(name), sql.SQL(self.copy_strategy)
                )
            )
        except psycopg.errors.ObjectInUse:
            raise _SourceBusy from None

    async def _reown(self, name: str) -> None:
        """Give every user object in database `name` to its pod's role (admin sessions there run with
        search_path = pg_catalog, so an operator or function the pod defined is never picked up)."""
        async with self._admin("hand the copied objects to the pod's role", dbname=name) as inside:
            await inside.execute(sql.SQL(_REOWN).format(role=sql.Literal(name)))

    async def _restore(self, dump: Path, name: str) -> None:
        """Restore a pod's dump into the new database `name` as the pod's own role, so that all it makes is the
        pod's and none of the pod's code (check constraints, index expressions, materialized views, triggers)
        ever runs with the admin's rights. Only extensions are made by the admin (some need it)."""
        rc, toc = await self._pg_restore_output(dump, "-l")
        if rc != 0:
            raise HostError(f"pg_restore cannot read {dump}: {first_error_line(toc)}")
        lines = toc.splitlines()
        extension = [line for line in lines if _EXTENSION_ENTRY.match(line)]
        rest = [line if not _EXTENSION_ENTRY.match(line) else f";{line}" for line in lines]
        with tempfile.TemporaryDirectory(prefix="podbay-pg-") as tmp:
            Path(tmp).chmod(0o755)  # the tools run as the server's account; the lists name objects, no data
            for label, entries, role in (("extensions", extension, ()), ("rest", rest, (f"--role={name}",))):
                listing = Path(tmp) / label
                listing.write_text("\n".join(entries) + "\n")
                listing.chmod(0o644)
                await self._pg_restore(dump, name, *role, f"--use-list={listing}")

    async def _pg_restore(self, dump: Path, name: str, *options: str) -> None:
        rc, err = await self._pg_restore_output(
            dump, "--no-owner", "--no-privileges", "--exit-on-error", *options, dbname=name
        )
        if rc != 0:
            raise HostError(f"pg_restore into {name} failed: {first_error_line(err)}")

    async def _pg_restore_output(self, dump: Path, *options: str, dbname: str | None = None) -> tuple[int, str]:
        """Run pg_restore on `dump` (on its stdin); with no `dbname`, its stdout (a listing); else its stderr."""
        fd = os.open(dump, os.O_RDONLY)
        try:
            if dbname is not None:
                return await self.server.run_tool_rc(self.server.tool("pg_restore", *options, dbname=dbname), stdin=fd)
            return await self.server.run_tool_output(self.server.tool_bare("pg_restore", *options), stdin=fd)
        finally:
            os.close(fd)

    async def _revoke_login(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        await conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(name)))
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))

    async def _drop_all(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        if await self._role_exists(conn, name):
            await self._revoke_login(conn, name)
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        try:
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        except psycopg.errors.DependentObjectsStillExist:
            await self._disown(conn, name)
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    async def _disown(self, conn: psycopg.AsyncConnection[Any], role: str) -> None:
        """Clear what other databases still hold of `role` (a fork child's copy of an extension or default
        privileges its parent made): owned objects go to that database's own pod role, grants go away."""
        cur = await conn.execute(
            "SELECT DISTINCT d.datname, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = d.datname)"
            " FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE s.refobjid = (SELECT oid FROM pg_roles WHERE rolname = %s) AND d.datname <> %s",
            (role, role),
        )
        for db, has_own_role in await cur.fetchall():
            async with self._admin("hand a dropped role's objects on", dbname=db) as inside:
                heir = sql.Identifier(db) if has_own_role else sql.SQL("CURRENT_USER")
                await inside.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(role), heir))
                await inside.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))

    async def _comment(
        self,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        pod_id: str,
        template: str | None,
        *,
        retain: bool,
        retained: bool,
    ) -> None:
        mark = from_podbay(pod_id=pod_id, template=template, retain=retain, retained=retained)
        await conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(mark)))

    # ---- what the server holds ------------------------------------------------------------------------------

    async def _records(
        self, conn: psycopg.AsyncConnection[Any], *, name: str | None = None, sizes: bool = False
    ) -> list[_Record]:
        """The pod databases podbay marked (only `name`, if given); their sizes only if `sizes` (pg_database_size
        walks each database's files)."""
        size = sql.SQL("pg_database_size(oid)" if sizes else "0")
        where = sql.SQL(" AND datname = {}").format(sql.Literal(name)) if name is not None else sql.SQL("")
        cur = await conn.execute(
            sql.SQL(
                "SELECT datname, shobj_description(oid, 'pg_database'), {} FROM pg_database"
                " WHERE NOT datistemplate{} ORDER BY datname"
            ).format(size, where)
        )
        records = []
        for datname, comment, size_bytes in await cur.fetchall():
            mark = from_podbay_comment(comment)
            if mark is not None and isinstance(mark.get("pod_id"), str):
                records.append(
                    _Record(
                        name=datname,
                        pod_id=mark["pod_id"],
                        template=mark.get("template"),
                        retain=bool(mark.get("retain")),
                        retained=bool(mark.get("retained")),
                        size_bytes=int(size_bytes),
                    )
                )
        return records

    async def _record_named(self, conn: psycopg.AsyncConnection[Any], name: str) -> _Record | None:
        return next(iter(await self._records(conn, name=name)), None)

    async def _require_record(self, conn: psycopg.AsyncConnection[Any], pod_id: str) -> _Record:
        record = await self._record_named(conn, database_name(pod_id))
        if record is None or record.pod_id != pod_id:
            raise NotFound(f"pod {pod_id} has no postgres database", pod_id=pod_id)
        return record

    async def _has_sessions(self, conn: psycopg.AsyncConnection[Any], name: str) -> bool:
        cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _database_exists(self, conn: psycopg.AsyncConnection[Any], name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return await cur.fetchone() is not None

    async def _role_exists(self, conn: psycopg.AsyncConnection[Any], name: str) -> bool:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        return await cur.fetchone() is not None

    async def _is_superuser(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cur = await conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        row = await cur.fetchone()
        return bool(row and row[0])


class _SourceBusy(Exception):
    """CREATE DATABASE ... TEMPLATE found a session on the source."""


class _Snapshot:
    """A REPEATABLE READ transaction on the source whose exported snapshot pins its data at one instant."""

    def __init__(self, provider: PostgresProvider, source: str, conn: psycopg.AsyncConnection[Any], sid: str) -> None:
        self.provider = provider
        self.source = source
        self.id = sid
        self._conn = conn

    @classmethod
    async def take(cls, provider: PostgresProvider, source: str) -> _Snapshot:
        with _pg_errors(provider.server, "take a snapshot"):
            conn = await provider.server.connect_admin(source)
            try:
                await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                cur = await conn.execute("SELECT pg_export_snapshot()")
                row = await cur.fetchone()
                assert row is not None
                return cls(provider, source, conn, str(row[0]))
            except BaseException:
                await conn.close()
                raise

    async def dump(self, dest: Path) -> None:
        """pg_dump -Fc of the source as of the snapshot into `dest`."""
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            argv = self.provider.server.tool(
                "pg_dump", "-Fc", f"--snapshot={self.id}", f"--lock-wait-timeout={LOCK_WAIT}", dbname=self.source
            )
            rc, err = await self.provider.server.run_tool_rc(argv, stdout=fd)
        finally:
            os.close(fd)
        if rc != 0:
            dest.unlink(missing_ok=True)
            if "lock" in err.lower():
                raise Conflict(
                    f"cannot copy {self.source}: an open transaction of its pod holds a table locked "
                    f"(uncommitted DDL); commit or roll it back and retry"
                )
            raise HostError(f"pg_dump of {self.source} failed: {first_error_line(err)}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._conn.close()


class _Branching:
    """A fork's or a snapshot's copy: made at once (CREATE DATABASE ... TEMPLATE, `grants`), or pinned by a
    `_Snapshot` and copied by `finish()` into new databases (`pod_ids`) or a directory (`dest`)."""

    def __init__(
        self,
        provider: PostgresProvider,
        *,
        snapshot: _Snapshot | None = None,
        pod_ids: list[str] | None = None,
        dest: Path | None = None,
        record: _Record | None = None,
    ) -> None:
        self.provider = provider
        self.grants: list[DatabaseGrant] = []
        self._snapshot = snapshot
        self._pod_ids = pod_ids or []
        self._dest = dest
        self._record = record
        self._wrote: list[Path] = []
        self._made_dir = False

    async def finish(self) -> list[DatabaseGrant]:
        if self._snapshot is None:
            return list(self.grants)
        try:
            with tempfile.TemporaryDirectory(prefix="podbay-pg-") as tmp:
                dump = self._dest / DUMP_FILE if self._dest is not None else Path(tmp) / DUMP_FILE
                if self._dest is not None:
                    if not self._dest.exists():
                        self._dest.mkdir(parents=True)
                        self._made_dir = True
                    self._wrote.append(dump)
                await self._snapshot.dump(dump)
                await self._snapshot.close()  # the copy is taken: the parent's transaction need not stay open
                if self._dest is not None:
                    await self._write_meta()
                    return []
                await self._restore_children(dump)
        except BaseException:
            await self.abort()
            raise
        return list(self.grants)

    async def _restore_children(self, dump: Path) -> None:
        record = self._record
        assert record is not None
        provider = self.provider
        async with provider._admin("branch a database") as conn:
            for pod_id in self._pod_ids:
                name = database_name(pod_id)

                async def fill(name: str = name) -> None:
                    await provider._create_db(conn, name, "template0")
                    await provider._restore(dump, name)

                self.grants.append(await provider._make(conn, pod_id, name, record.retain, record.template, fill))

    async def _write_meta(self) -> None:
        assert self._dest is not None and self._record is not None
        meta = self._dest / META_FILE
        self._wrote.append(meta)
        meta.write_text(json.dumps({"format": 1, "template": self._record.template, "pod_id": self._record.pod_id}))

    async def abort(self) -> None:
        if self._snapshot is not None:
            await self._snapshot.close()
        for path in self._wrote:
            path.unlink(missing_ok=True)
        if self._made_dir and self._dest is not None:
            with contextlib.suppress(OSError):
                self._dest.rmdir()
        if self.grants:
            async with self.provider._admin("undo a branch") as conn:
                for grant in self.grants:
                    await self.provider._drop_all(conn, grant.name)
            self.grants.clear()


class PostgresTemplates:
    """Template databases `tpl_<name>`: loaded once from a dump, copied into each pod's database."""

    def __init__(self, provider: PostgresProvider) -> None:
        self._provider = provider

    async def create(self, name: str, dump: Path) -> TemplateInfo:
        """Load `dump` (plain SQL, or pg_dump's custom format) into a new template. A dump that does not load
        leaves nothing behind (InvalidSpec naming "dump", with the tool's error line).

        The dump is loaded with the admin's rights: it is operator input, trusted like an image."""
        check_template_name(name)
        if not dump.is_file():
            raise InvalidSpec("dump", f"{dump} is not a file", "pass the path of a pg_dump output (plain or -Fc)")
        db = TEMPLATE_PREFIX + name
        provider = self._provider
        async with provider._admin("create a template") as conn:
            if await provider._database_exists(conn, db):
                raise Conflict(f"postgres template {name!r} exists already; remove it first")
            await conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(db)))
            try:
                await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
                await self._load(db, dump)
                await conn.execute(
                    sql.SQL("ALTER DATABASE {} IS_TEMPLATE true ALLOW_CONNECTIONS false").format(sql.Identifier(db))
                )
                await conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(db), sql.Literal(from_podbay(template=name))
                    )
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._drop(conn, db))
                raise
        return next(t for t in await self.list() if t.name == name)

    async def _load(self, db: str, dump: Path) -> None:
        with open(dump, "rb") as f:
            custom = f.read(5) == b"PGDMP"
        server = self._provider.server
        if custom:
            argv = server.tool(
                "pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", dbname=db
            )
        else:
            argv = server.tool("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", dbname=db)
        fd = os.open(dump, os.O_RDONLY)  # on stdin: the server's account need not read the file
        try:
            rc, err = await server.run_tool_rc(argv, stdin=fd)
        finally:
            os.close(fd)
        if rc != 0:
            raise InvalidSpec(
                "dump",
                f"it does not load: {first_error_line(err)}",
                "fix the dump (pg_dump --no-owner --no-privileges makes one that loads anywhere)",
            )

    async def list(self) -> list[TemplateInfo]:
        async with self._provider._admin("list templates") as conn:
            cur = await conn.execute(
                "SELECT shobj_description(oid, 'pg_database'), pg_database_size(oid) FROM pg_database"
                " WHERE datistemplate AND datname LIKE 'tpl\\_%' ORDER BY datname"
            )
            found = []
            for comment, size in await cur.fetchall():
                mark = from_podbay_comment(comment)
                if mark is not None and isinstance(mark.get("template"), str) and "pod_id" not in mark:
                    found.append(TemplateInfo(name=mark["template"], size_bytes=int(size)))
            return found

    async def remove(self, name: str) -> None:
        """Drop a template. NotFound if there is none; Conflict while a copy of it is being made."""
        check_template_name(name)
        async with self._provider._admin("remove a template") as conn:
            db = await self.database_of(conn, name)
            await self._provider.spares.drop(conn, db)
            try:
                await self._drop(conn, db)
            except psycopg.errors.ObjectInUse:
                raise Conflict(
                    f"postgres template {name!r} is in use (a database is being copied from it); retry in a moment"
                ) from None

    async def database_of(self, conn: psycopg.AsyncConnection[Any], name: str) -> str:
        """The template's database name; NotFound (before anything is made) if there is no such template."""
        check_template_name(name)
        db = TEMPLATE_PREFIX + name
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate", (db,))
        if await cur.fetchone() is None:
            raise NotFound(
                f"there is no postgres template {name!r}; `podbay db templates ls` lists them, and an admin "
                "creates one from a dump with `podbay db templates create`"
            )
        return db

    async def _drop(self, conn: psycopg.AsyncConnection[Any], db: str) -> None:
        ident = sql.Identifier(db)
        await conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident))
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


__all__ = ["CONNECTION_LIMIT", "PostgresProvider", "PostgresServer", "PostgresTemplates", "database_name"]
