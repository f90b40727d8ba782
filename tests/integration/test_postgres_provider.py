"""The Postgres provider against a real managed server (one per module, in its own temporary directory).

A guest reaches its database through the tunnel, which calls `provider.connect(grant)` per connection; here a
tiny local TCP listener does the same, so psycopg connects to 127.0.0.1 as a guest would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from podbay.errors import Conflict, DatabaseUnavailable, HostError, InvalidSpec, NotFound
from podbay.state import postgres as postgres_module
from podbay.state.pg_marks import from_podbay_comment
from podbay.state.pg_server import PostgresServer, find_bindir
from podbay.state.postgres import PostgresProvider
from podbay.state.servers import DatabaseGrant

SEED = """
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
CREATE VIEW item_names AS SELECT name FROM items;
CREATE FUNCTION item_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM items';
INSERT INTO items (name) VALUES ('apple'), ('pear');
"""

# Who owns what the template made in the pod's database: the table, its sequence, the view, the function.
OWNERS = """
SELECT DISTINCT owner FROM (
  SELECT pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relnamespace = 'public'::regnamespace
  UNION ALL SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
) o
"""


def _have_postgres() -> bool:
    try:
        find_bindir()
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(not _have_postgres(), reason="PostgreSQL 15 is not installed")


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="podbay-pg-test-"))
    path.chmod(0o755)  # the server's account must pass it
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def provider(workdir: Path) -> Iterator[PostgresProvider]:
    prov = PostgresProvider(PostgresServer.managed(workdir / "db" / "postgres"))
    asyncio.run(prov.start())
    seed = workdir / "seed.sql"
    seed.write_text(SEED)
    asyncio.run(prov.templates.create("shop", seed))
    yield prov
    asyncio.run(prov.stop())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def tunnel(provider: PostgresProvider, grant: DatabaseGrant) -> AsyncIterator[int]:
    """A local listener forwarding each connection through `provider.connect(grant)`, as the tunnel does."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        sr, sw = await provider.connect(grant)
        with contextlib.suppress(asyncio.CancelledError):  # the test's loop ends with connections open
            await asyncio.gather(pipe(r, sw), pipe(sr, w))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def guest_url(
    grant: DatabaseGrant, port: int, *, user: str | None = None, password: str | None = None, dbname: str | None = None
) -> str:
    return f"postgresql://{user or grant.role}:{password or grant.secret}@127.0.0.1:{port}/{dbname or grant.name}"


async def guest_query(provider: PostgresProvider, grant: DatabaseGrant, query: str) -> list[tuple[Any, ...]]:
    async with (
        tunnel(provider, grant) as port,
        await psycopg.AsyncConnection.connect(guest_url(grant, port), autocommit=True) as conn,
    ):
        cur = await conn.execute(query)
        return await cur.fetchall() if cur.description else []


def direct(provider: PostgresProvider, user: str, password: str, dbname: str) -> psycopg.Connection[Any]:
    """A login straight on the server's socket, bypassing the guard."""
    return psycopg.connect(
        host=provider.server.host, user=user, password=password, dbname=dbname, connect_timeout=5, autocommit=True
    )


def names(provider: PostgresProvider) -> set[str]:
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pod%'")}
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pod%'")}
    return dbs | roles


def marked_pod_ids(provider: PostgresProvider) -> set[str]:
    """The pods named in podbay's comments on databases and roles (half-made ones included)."""
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        comments = [r[0] for r in conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database")]
        comments += [r[0] for r in conn.execute("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles")]
    marks = [from_podbay_comment(c) for c in comments]
    return {m["pod_id"] for m in marks if m is not None and isinstance(m.get("pod_id"), str)}


@pytest.fixture
def clean(provider: PostgresProvider) -> Iterator[None]:
    """Every test ends with no pod database or role left behind."""
    yield
    for pod_id in marked_pod_ids(provider):
        run(provider.discard(pod_id))
    assert names(provider) == set()


def test_provision_from_a_template_gives_the_pod_its_data_through_the_guard(
    provider: PostgresProvider, clean: None
) -> None:
    grant = run(provider.provision("pod-aa01", "shop", False))
    assert grant.name == grant.role == "pod_aa01" and grant.template == "shop"
    assert grant.url == f"postgresql://pod_aa01:{grant.secret}@127.0.0.1:5432/pod_aa01"
    assert grant.secret not in repr(grant)
    rows = run(guest_query(provider, grant, "SELECT name FROM items ORDER BY id"))
    assert rows == [("apple",), ("pear",)]
    # The pod owns what the template made: it can write, change the schema, use the view and the function.
    run(guest_query(provider, grant, "INSERT INTO items (name) VALUES ('fig'); ALTER TABLE items ADD COLUMN n int"))
    assert run(guest_query(provider, grant, "SELECT item_count(), (SELECT count(*) FROM item_names)")) == [(3, 3)]
    owners = run(guest_query(provider, grant, OWNERS))
    assert owners == [("pod_aa01",)]
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        role = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolconnlimit"
            " FROM pg_roles WHERE rolname = 'pod_aa01'"
        ).fetchone()
        assert role == (True, False, False, False, False, 20)
        public_connect = conn.execute(
            "SELECT d.datacl IS NULL OR EXISTS (SELECT 1 FROM aclexplode(d.datacl) a"
            " WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') FROM pg_database d WHERE datname = %s",
            ("pod_aa01",),
        ).fetchone()
        assert public_connect == (False,)
    infos = run(provider.databases())
    assert [(i.pod_id, i.name, i.retained, i.template) for i in infos] == [("pod-aa01", "pod_aa01", False, "shop")]
    run(provider.release(grant))


def test_another_pods_role_or_database_is_refused_by_the_guard_and_by_the_server(
    provider: PostgresProvider, clean: None
) -> None:
    a = run(provider.provision("pod-aa02", None, False))
    b = run(provider.provision("pod-bb02", None, False))

    async def through_a(**kw: str) -> str:
        async with tunnel(provider, a) as port:
            with pytest.raises(psycopg.OperationalError) as refused:
                await psycopg.AsyncConnection.connect(guest_url(a, port, **kw))
            return str(refused.value)

    assert "may log in as 'pod_aa02' only" in run(through_a(user=b.role, password=b.secret, dbname=b.name))
    assert "may open database 'pod_aa02' only" in run(through_a(dbname=b.name))
    assert "may log in as" in run(through_a(user="postgres", dbname="postgres"))
    assert "password authentication failed" in run(through_a(password="wrong"))
    # Straight on the server's socket, A's own credentials open neither B's database nor any other.
    for other in (b.name, "postgres", "tpl_shop", "template1"):
        with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry|not currently accepting"):
            direct(provider, a.role, a.secret, other)
    with psycopg.connect(provider.direct_conninfo(a), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (a.role, a.name)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE DATABASE escape")
    run(provider.release(a))
    run(provider.release(b))


def test_release_drops_the_data_and_is_idempotent(provider: PostgresProvider, clean: None) -> None:
    grant = run(provider.provision("pod-aa03", "shop", False))
    run(provider.release(grant))
    assert names(provider) == set()
    assert run(provider.databases()) == []
    run(provider.release(grant))  # again: nothing to do, no error
    with pytest.raises(NotFound):
        run(provider.export("pod-aa03", Path(tempfile.mkdtemp()) / "x.sql"))


def test_a_retained_database_outlives_its_pod_but_not_its_credentials(
    provider: PostgresProvider, clean: None, workdir: Path
) -> None:
    grant = run(provider.provision("pod-aa04", "shop", True))
    run(guest_query(provider, grant, "INSERT INTO items (name) VALUES ('kept')"))
    with pytest.raises(Conflict):
        run(provider.drop("pod-aa04"))  # its pod is live
    with direct(provider, grant.role, grant.secret, grant.name) as session:
        run(provider.release(grant))
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")  # its open session was ended
    with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|not permitted to log in"):
        direct(provider, grant.role, grant.secret, grant.name)
    [info] = run(provider.databases())
    assert (info.pod_id, info.retained, info.template) == ("pod-aa04", True, "shop") and info.size_bytes > 0
    dump = workdir / "export.sql"
    run(provider.export("pod-aa04", dump))
    assert "kept" in dump.read_text() and "CREATE TABLE public.items" in dump.read_text()
    run(provider.drop("pod-aa04"))
    assert names(provider) == set()
    with pytest.raises(NotFound):
        run(provider.drop("pod-aa04"))


def _items(provider: PostgresProvider, grant: DatabaseGrant) -> list[str]:
    return [r[0] for r in run(guest_query(provider, grant, "SELECT name FROM items ORDER BY id"))]


def test_branch_without_sessions_copies_at_once_and_the_copies_are_independent(
    provider: PostgresProvider, clean: None
) -> None:
    parent = run(provider.provision("pod-aa05", "shop", False))
    run(guest_query(provider, parent, "INSERT INTO items (name) VALUES ('before')"))
    branching = run(provider.branch(parent, ["pod-cc05", "pod-dd05"]))
    run(guest_query(provider, parent, "INSERT INTO items (name) VALUES ('after')"))
    children = run(branching.finish())
    assert [c.pod_id for c in children] == ["pod-cc05", "pod-dd05"]
    assert len({c.secret for c in children} | {parent.secret}) == 3
    for child in children:
        assert _items(provider, child) == ["apple", "pear", "before"]
        assert child.template == "shop"
    run(guest_query(provider, children[0], "INSERT INTO items (name) VALUES ('child')"))
    assert _items(provider, parent) == ["apple", "pear", "before", "after"]
    assert _items(provider, children[1]) == ["apple", "pear", "before"]
    with pytest.raises(psycopg.OperationalError):
        direct(provider, children[0].role, children[0].secret, parent.name)
    for grant in (parent, *children):
        run(provider.release(grant))


def test_branch_with_open_sessions_copies_the_instant_without_uncommitted_work(
    provider: PostgresProvider, clean: None
) -> None:
    parent = run(provider.provision("pod-aa06", "shop", False))

    async def scenario() -> tuple[list[DatabaseGrant], bool]:
        async with tunnel(provider, parent) as port:
            busy = await psycopg.AsyncConnection.connect(guest_url(parent, port))  # a transaction left open
            await busy.execute("INSERT INTO items (name) VALUES ('uncommitted')")
            async with await psycopg.AsyncConnection.connect(guest_url(parent, port), autocommit=True) as other:
                await other.execute("INSERT INTO items (name) VALUES ('committed')")
                branching = await provider.branch(parent, ["pod-cc06"])
                snapshot_path = branching._snapshot is not None
                await other.execute("INSERT INTO items (name) VALUES ('later')")
                await busy.commit()
                children = await branching.finish()
            await busy.close()
        return children, snapshot_path

    [child], snapshot_path = run(scenario())
    assert snapshot_path  # CREATE DATABASE ... TEMPLATE cannot copy a database in use
    assert _items(provider, child) == ["apple", "pear", "committed"]
    assert _items(provider, parent) == ["apple", "pear", "uncommitted", "committed", "later"]
    run(guest_query(provider, child, "INSERT INTO items (name) VALUES ('child')"))  # the child owns its copy
    assert "child" not in _items(provider, parent)
    run(provider.release(parent))
    run(provider.release(child))


@pytest.mark.parametrize("busy", [False, True])
def test_an_aborted_branch_leaves_nothing(provider: PostgresProvider, clean: None, busy: bool) -> None:
    parent = run(provider.provision("pod-aa07", None, False))

    async def scenario() -> None:
        async with tunnel(provider, parent) as port:
            session = await psycopg.AsyncConnection.connect(guest_url(parent, port)) if busy else None
            branching = await provider.branch(parent, ["pod-cc07"])
            await branching.abort()
            if session is not None:
                await session.close()

    run(scenario())
    assert names(provider) == {"pod_aa07"}
    run(provider.release(parent))


def test_save_then_load_gives_a_new_pod_the_saved_instant(
    provider: PostgresProvider, clean: None, workdir: Path
) -> None:
    source = run(provider.provision("pod-aa08", "shop", False))
    run(guest_query(provider, source, "INSERT INTO items (name) VALUES ('saved')"))
    dest = workdir / "snap-08"
    saving = run(provider.save(source, dest))
    run(guest_query(provider, source, "INSERT INTO items (name) VALUES ('not saved')"))
    assert run(saving.finish()) == []
    assert json.loads((dest / "meta.json").read_text())["template"] == "shop"
    assert (dest / "postgres.dump").read_bytes().startswith(b"PGDMP")
    run(provider.release(source))
    loaded = run(provider.load(dest, "pod-bb08", True))
    assert (loaded.pod_id, loaded.retain, loaded.template) == ("pod-bb08", True, "shop")
    assert _items(provider, loaded) == ["apple", "pear", "saved"]
    run(guest_query(provider, loaded, "INSERT INTO items (name) VALUES ('mine')"))
    run(provider.release(loaded))
    with pytest.raises(NotFound):
        run(provider.load(workdir / "nothing-here", "pod-cc08", False))


def test_an_aborted_save_leaves_no_files(provider: PostgresProvider, clean: None, workdir: Path) -> None:
    source = run(provider.provision("pod-aa09", None, False))
    dest = workdir / "snap-09"
    run(run(provider.save(source, dest)).abort())
    assert not dest.exists()
    run(provider.release(source))


def test_a_dump_that_fails_to_load_leaves_nothing(provider: PostgresProvider, workdir: Path) -> None:
    bad = workdir / "bad.sql"
    bad.write_text("CREATE TABLE ok (id int);\nINSERT INTO missing VALUES (1);\n")
    with pytest.raises(InvalidSpec) as refused:
        run(provider.templates.create("broken", bad))
    assert refused.value.field == "dump" and 'relation "missing" does not exist' in str(refused.value)
    assert [t.name for t in run(provider.templates.list())] == ["shop"]
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = 'tpl_broken'").fetchone() is None


def test_templates_from_a_custom_dump_and_their_names(provider: PostgresProvider, clean: None, workdir: Path) -> None:
    grant = run(provider.provision("pod-aa10", "shop", False))
    custom = workdir / "shop.dump"
    run(provider.export("pod-aa10", workdir / "plain.sql"))
    with open(custom, "wb") as out:
        import subprocess

        argv = provider.server.tool("pg_dump", "-Fc", dbname=grant.name)
        subprocess.run(argv, stdout=out, check=True, env=provider.server.tool_env())
    run(provider.release(grant))
    info = run(provider.templates.create("shop-2", custom))
    assert info.name == "shop-2" and info.size_bytes > 0
    with pytest.raises(Conflict):
        run(provider.templates.create("shop-2", custom))
    other = run(provider.provision("pod-bb10", "shop-2", False))
    assert _items(provider, other) == ["apple", "pear"]
    run(provider.release(other))
    run(provider.templates.remove("shop-2"))
    assert [t.name for t in run(provider.templates.list())] == ["shop"]
    with pytest.raises(NotFound):
        run(provider.templates.remove("shop-2"))
    for bad in ("", "a b", "x" * 41, "t;drop", "é"):
        with pytest.raises(InvalidSpec):
            run(provider.templates.create(bad, custom))


def test_an_unknown_template_is_not_found_before_anything_is_made(provider: PostgresProvider, clean: None) -> None:
    with pytest.raises(NotFound, match="no postgres template 'nope'"):
        run(provider.provision("pod-aa11", "nope", False))
    assert names(provider) == set()
    grant = run(provider.provision("pod-aa11", None, False))
    with pytest.raises(Conflict):
        run(provider.provision("pod-aa11", None, False))  # a second one for the same pod
    run(provider.release(grant))


def test_discard_drops_a_pods_database_in_any_state_and_nothing_of_another_pod(
    provider: PostgresProvider, clean: None
) -> None:
    orphan = run(provider.provision("pod-aa12", "shop", False))
    live = run(provider.provision("pod-bb12", None, False))
    kept = run(provider.provision("pod-cc12", None, True))
    run(provider.release(kept))
    half = run(provider.provision("pod-dd12", None, False))
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(f"DROP DATABASE {half.name}")  # a provision cut short: only its role is left
    run(provider.provision("pod-ee12", None, True))  # marked retain, but its pod died before it was handed over
    for pod_id in ("pod-aa12", "pod-dd12", "pod-ee12", "pod-ff12"):  # pod-ff12 has nothing: no error
        run(provider.discard(pod_id))
    assert {i.pod_id for i in run(provider.databases())} == {"pod-bb12", "pod-cc12"}
    assert names(provider) == {"pod_bb12", "pod_cc12"}
    with pytest.raises(psycopg.OperationalError):
        direct(provider, orphan.role, orphan.secret, orphan.name)
    run(provider.release(live))


def test_the_managed_server_runs_as_its_own_account_on_a_private_socket(provider: PostgresProvider) -> None:
    root = provider.server.managed_root
    assert root is not None
    pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0 or os.geteuid() != 0
    assert (root / "run").stat().st_mode & 0o777 == 0o700
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
    run(provider.start())  # already running: nothing happens


def test_a_server_stopped_behind_podbays_back_is_started_again(provider: PostgresProvider, clean: None) -> None:
    run(PostgresServer.managed(provider.server.managed_root or Path("/")).stop())  # another process stops it
    grant = run(provider.provision("pod-aa13", None, False))  # this provider believed it running
    assert run(guest_query(provider, grant, "SELECT current_database()")) == [("pod_aa13",)]
    run(provider.release(grant))


def test_a_server_that_cannot_start_says_why_with_its_log(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = workdir / "broken" / "postgres"
    run(PostgresServer.managed(root).start())
    run(PostgresServer.managed(root).stop())
    with open(root / "data" / "postgresql.conf", "a") as conf:
        conf.write("\nno_such_setting = 1\n")
    with pytest.raises(DatabaseUnavailable, match="did not start") as failed:
        run(PostgresProvider(PostgresServer.managed(root)).databases())
    assert "no_such_setting" in str(failed.value)
    monkeypatch.setenv("PODBAY_POSTGRES_BIN", str(workdir / "nowhere"))
    with pytest.raises(DatabaseUnavailable, match="apt install postgresql"):
        run(PostgresServer.managed(workdir / "other" / "postgres").start())


def test_connection_errors_are_told_apart() -> None:
    server = PostgresServer.external("postgresql://admin:s3cret@db.example:6543/main")
    assert (server.host, server.port, server.admin, server.maintenance_db) == ("db.example", 6543, "admin", "main")
    slots = server.unavailable(psycopg.errors.TooManyConnections("sorry, too many clients already"))
    assert "out of connection slots" in str(slots)
    down = server.unavailable(psycopg.OperationalError("connection refused\nmore"))
    assert str(down) == "cannot connect to postgres at db.example:6543: connection refused"
    assert "s3cret" not in str(down) + str(slots)
    with pytest.raises(InvalidSpec, match="PODBAY_POSTGRES_URL"):
        PostgresServer.external("mysql://x@y/z")
    with pytest.raises(InvalidSpec, match="PODBAY_POSTGRES_URL") as bad_port:
        PostgresServer.external("postgresql://admin:zq/xw@db.example:6543/main")  # an unquoted '/' in the password
    assert "zq" not in str(bad_port.value) and "xw" not in str(bad_port.value)
    with pytest.raises(InvalidSpec, match="PODBAY_POSTGRES_URL"):
        PostgresServer.external("postgresql://admin@[db.example/main")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.OperationalError("connection lost"), DatabaseUnavailable),  # no SQLSTATE: the client lost it
        (psycopg.errors.AdminShutdown("terminating connection"), DatabaseUnavailable),  # 57P01
        (psycopg.errors.TooManyConnections("too many clients"), DatabaseUnavailable),  # 53300
        (psycopg.errors.ObjectInUse("database is being accessed"), Conflict),  # 55006
        (psycopg.errors.DiskFull("could not extend file"), HostError),  # 53100
        (psycopg.errors.QueryCanceled("canceling statement"), HostError),  # 57014
        (psycopg.errors.UndefinedTable("no such table"), HostError),
    ],
)
def test_only_connection_class_errors_say_the_server_is_unavailable(
    error: psycopg.Error, expected: type[Exception]
) -> None:
    server = PostgresServer.external("postgresql://admin:s3cret@db.example:6543/main")
    with pytest.raises(expected) as raised, postgres_module._pg_errors(server, "do a thing"):
        raise error
    if expected is Conflict:
        assert "retry in a moment" in str(raised.value)


def test_a_directory_the_server_account_cannot_pass_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to another account")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(DatabaseUnavailable, match=r"cannot pass .*chmod o\+x"):
        run(PostgresServer.managed(private / "db" / "postgres").start())


# A pod's own code that refuses to run with more rights than the pod's: if podbay's copy ran it as the admin
# (an index expression, a check constraint, a materialized view), the copy would fail.
NOT_AS_ADMIN = """
CREATE FUNCTION public.guarded(x text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF current_setting('is_superuser') = 'on' OR current_user NOT LIKE 'pod\\_%' THEN
    RAISE EXCEPTION 'pod code ran as %', current_user;
  END IF;
  RETURN x;
END $$;
CREATE INDEX items_guarded ON items (public.guarded(name));
ALTER TABLE items ADD CONSTRAINT guarded_name CHECK (public.guarded(name) IS NOT NULL);
CREATE MATERIALIZED VIEW guarded_names AS SELECT public.guarded(name) AS name FROM items;
CREATE FUNCTION public.trap(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'a pod operator ran as %', current_user; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.trap);
CREATE EXTENSION pgcrypto;
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;
"""


@pytest.mark.parametrize("busy", [False, True])
def test_a_copy_never_runs_the_pods_code_with_the_admins_rights(
    provider: PostgresProvider, clean: None, workdir: Path, busy: bool
) -> None:
    parent = run(provider.provision("pod-aa14", "shop", False))
    run(guest_query(provider, parent, NOT_AS_ADMIN))

    async def fork() -> list[DatabaseGrant]:
        async with tunnel(provider, parent) as port:
            session = await psycopg.AsyncConnection.connect(guest_url(parent, port)) if busy else None
            children = await (await provider.branch(parent, ["pod-cc14"])).finish()
            if session is not None:
                await session.close()
            return list(children)

    [child] = run(fork())
    assert _items(provider, child) == ["apple", "pear"]
    assert run(
        guest_query(
            provider,
            child,
            "SELECT DISTINCT pg_get_userbyid(oprowner) FROM pg_operator WHERE oprnamespace = 'public'::regnamespace",
        )
    ) == [("pod_cc14",)]
    assert run(guest_query(provider, child, "SELECT length(gen_random_bytes(4))")) == [(4,)]
    assert run(guest_query(provider, child, "SELECT count(*) FROM guarded_names")) == [(2,)]
    saving = run(provider.save(parent, workdir / "snap-14"))
    run(saving.finish())
    loaded = run(provider.load(workdir / "snap-14", "pod-dd14", False))
    assert _items(provider, loaded) == ["apple", "pear"]
    for grant in (parent, child, loaded):
        run(provider.release(grant))
    shutil.rmtree(workdir / "snap-14")


def test_uncommitted_ddl_in_the_parent_fails_the_fork_cleanly(
    provider: PostgresProvider, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_module, "LOCK_WAIT", "1s")
    parent = run(provider.provision("pod-aa15", "shop", False))

    async def scenario() -> None:
        async with tunnel(provider, parent) as port:
            session = await psycopg.AsyncConnection.connect(guest_url(parent, port))
            await session.execute("ALTER TABLE items ADD COLUMN pending int")  # holds the table exclusively
            branching = await provider.branch(parent, ["pod-cc15"])
            with pytest.raises(Conflict, match="uncommitted DDL"):
                await branching.finish()
            await session.rollback()
            await session.close()

    run(scenario())
    assert names(provider) == {"pod_aa15"}
    run(provider.release(parent))


def spares_of(provider: PostgresProvider) -> set[str]:
    with psycopg.connect(**provider.server.conninfo(), autocommit=True) as conn:  # type: ignore[arg-type]
        dbs = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'spare%'")}
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'spare%'")}
    assert dbs == roles  # a spare is a database and its role, or nothing
    return dbs


def test_spares_make_provisioning_a_rename_and_a_claimed_spare_is_the_pods_alone(
    provider: PostgresProvider, clean: None, workdir: Path
) -> None:
    warm = PostgresProvider(provider.server, spares=1)
    seed = workdir / "seed.sql"

    async def scenario() -> None:
        first = await warm.provision("pod-sp01", "shop", False)  # none ready: a copy, then a spare is made
        await warm.spares.settled()
        [spare] = spares_of(warm)
        assert [info.pod_id for info in await warm.databases()] == ["pod-sp01"]  # spares are no pod's
        second = await warm.provision("pod-sp02", "shop", False)
        assert spare not in spares_of(warm)  # the spare became pod-sp02's database
        rows = await guest_query(warm, second, "SELECT name FROM items ORDER BY id")
        assert rows == [("apple",), ("pear",)]
        assert await guest_query(warm, second, OWNERS) == [("pod_sp02",)]
        await guest_query(warm, second, "INSERT INTO items (name) VALUES ('mine')")
        assert ("mine",) not in await guest_query(warm, first, "SELECT name FROM items")
        await warm.spares.settled()
        assert len(spares_of(warm)) == 1  # topped up again
        # A template removed takes its spares; one made again under the name never gets the old ones.
        await warm.templates.remove("shop")
        assert spares_of(warm) == set()
        await warm.templates.create("shop", seed)
        await warm.release(first)
        await warm.release(second)
        await warm.close()

    run(scenario())
    assert spares_of(warm) == set()
