"""Pods with a server database on real backends and real servers: the guest's standard clients (psycopg,
redis-py, installed in the guest image) reach the pod's own database on 127.0.0.1 through the tunnel, and
nothing else; fork and snapshot copy it at the VM's instant; retained data outlives the pod; a failed
provisioning leaves nothing behind."""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import NotFound, Platform, Pod

from .conftest import skip_unless_available

pytestmark = pytest.mark.integration
BACKENDS = ["qemu", "gvisor", "runc", "firecracker"]

SEED = """
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
INSERT INTO items (name) VALUES ('apple'), ('pear');
"""

SQL = """
import os, sys, psycopg
with psycopg.connect(os.environ.get("URL") or os.environ["PODBAY_DB_URL"], connect_timeout=20) as conn:
    cursor = conn.execute(sys.argv[1])
    rows = cursor.fetchall() if cursor.description else []
    print(sorted(str(value) for row in rows for value in row))
"""

# Tries each way out that the tunnel must not give: another port, another database, another role.
ESCAPES = """
import os, socket, psycopg
user, name = os.environ["PODBAY_DB_USER"], os.environ["PODBAY_DB_NAME"]
password = os.environ["PODBAY_DB_PASSWORD"]
def pg(who, database):
    return lambda: psycopg.connect(f"postgresql://{who}@127.0.0.1:5432/{database}", connect_timeout=10)
attempts = {
    "other port": lambda: socket.create_connection(("127.0.0.1", 5433), timeout=5).recv(1),
    "other database": pg(f"{user}:{password}", "postgres"),
    "superuser": pg("postgres", "postgres"),
    "other role": pg(f"postgres:{password}", name),
}
for what, attempt in attempts.items():
    try:
        attempt()
        print(what, "REACHED")
    except Exception as exc:
        print(what, "refused", type(exc).__name__)
"""

REDIS = """
import os, sys, redis
r = redis.Redis.from_url(os.environ["PODBAY_DB_URL"], socket_timeout=20)
command = sys.argv[1:]
print(r.execute_command(*command))
"""


@pytest.fixture(scope="module")
def template(shared_platform: Platform) -> Iterator[str]:
    name = f"shop-{secrets.token_hex(3)}"  # the server is host-wide: other runs' templates must not collide
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as dump:
        dump.write(SEED)
        dump.flush()
        shared_platform._loop.run(
            shared_platform._platform.databases.postgres_templates().create(name, Path(dump.name))
        )
    yield name
    shared_platform._loop.run(shared_platform._platform.databases.postgres_templates().remove(name))


def sql(pod: Pod, statement: str, url: str | None = None) -> str:
    result = pod.exec(["python3", "-c", SQL, statement], env={"URL": url} if url else None, timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def rows(pod: Pod) -> str:
    return sql(pod, "SELECT name FROM items")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_pod_reaches_its_own_postgres_from_its_template_and_nothing_else(
    shared_platform: Platform, template: str, backend: str
) -> None:
    skip_unless_available(shared_platform, backend)
    with shared_platform.create_agent(backend=backend, db="postgres", db_template=template) as pod:
        assert rows(pod) == "['apple', 'pear']"  # the template's seed is there at once
        sql(pod, "INSERT INTO items (name) VALUES ('plum')")
        assert rows(pod) == "['apple', 'pear', 'plum']"
        escapes = pod.exec(["python3", "-c", ESCAPES], timeout=120)
        assert escapes.exit_code == 0, escapes.stderr
        assert "REACHED" not in escapes.stdout, escapes.stdout
        assert escapes.stdout.count("refused") == 4


def test_pods_cannot_use_each_others_credentials_and_retained_data_outlives_the_pod(
    shared_platform: Platform, template: str, tmp_path: Path
) -> None:
    skip_unless_available(shared_platform, "qemu")
    first = shared_platform.create_agent(db="postgres", db_template=template, db_retain=True)
    with shared_platform.create_agent(db="postgres", db_template=template) as second:
        sql(first, "INSERT INTO items (name) VALUES ('kept')")
        first_url = first.exec(["sh", "-c", "echo $PODBAY_DB_URL"]).stdout.strip()
        stolen = second.exec(["python3", "-c", SQL, "SELECT 1"], env={"URL": first_url}, timeout=60)
        assert stolen.exit_code != 0  # the second pod's tunnel leads only to its own database and role
        assert "kept" not in rows(second)
    first.destroy()
    dump = tmp_path / "first.sql"
    shared_platform._loop.run(shared_platform._platform.databases.export(first.id, dump))
    assert "kept" in dump.read_text()
    shared_platform._loop.run(shared_platform._platform.databases.drop(first.id, []))
    with pytest.raises(NotFound):
        shared_platform._loop.run(shared_platform._platform.databases.find(first.id))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_pod_has_its_own_redis(shared_platform: Platform, backend: str) -> None:
    skip_unless_available(shared_platform, backend)
    with (
        shared_platform.create_agent(backend=backend, db="redis") as first,
        shared_platform.create_agent(backend=backend, db="redis") as second,
    ):
        assert first.exec(["python3", "-c", REDIS, "SET", "k", "first"]).stdout.strip() == "True"
        got = second.exec(["python3", "-c", REDIS, "GET", "k"])
        assert got.exit_code == 0, got.stderr
        assert got.stdout.strip() == "None"  # the second pod's instance never saw the first's key
        refused = first.exec(["python3", "-c", REDIS, "CONFIG", "GET", "dir"])
        assert refused.exit_code != 0  # no admin commands for the pod's own user


def test_a_fork_child_gets_the_database_of_the_instant_and_they_diverge(
    shared_platform: Platform, template: str
) -> None:
    skip_unless_available(shared_platform, "qemu")
    with shared_platform.create_agent(db="postgres", db_template=template) as parent:
        sql(parent, "INSERT INTO items (name) VALUES ('before')")
        [child] = parent.fork(1)
        with child:
            assert rows(child) == "['apple', 'before', 'pear']"
            sql(child, "INSERT INTO items (name) VALUES ('child')")
            sql(parent, "INSERT INTO items (name) VALUES ('parent')")
            assert "child" not in rows(parent)
            assert "parent" not in rows(child)


def test_a_fork_with_an_open_session_copies_the_committed_data_of_the_instant(
    shared_platform: Platform, template: str
) -> None:
    skip_unless_available(shared_platform, "qemu")
    holder = (
        "import os, time, psycopg\n"
        "conn = psycopg.connect(os.environ['PODBAY_DB_URL'], autocommit=True)\n"
        "conn.execute(\"INSERT INTO items (name) VALUES ('held')\")\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    with shared_platform.create_agent(db="postgres", db_template=template) as parent:
        process = parent.start_process(["python3", "-c", holder])
        try:
            for _ in range(600):
                if "held" in rows(parent):
                    break
            [child] = parent.fork(1)
            with child:
                assert rows(child) == "['apple', 'held', 'pear']"
        finally:
            process.signal(9)


def test_a_snapshot_carries_its_database_to_the_restored_pod(shared_platform: Platform, template: str) -> None:
    skip_unless_available(shared_platform, "qemu")
    name = f"db-{secrets.token_hex(3)}"
    with shared_platform.create_agent(db="postgres", db_template=template, snapshottable=True) as pod:
        sql(pod, "INSERT INTO items (name) VALUES ('saved')")
        pod.snapshot(name)
        sql(pod, "INSERT INTO items (name) VALUES ('after')")
    try:
        with shared_platform.restore(name) as restored:
            assert rows(restored) == "['apple', 'pear', 'saved']"
    finally:
        shared_platform.snapshots.remove(name)


def test_an_unknown_template_fails_before_any_pod_is_made(shared_platform: Platform) -> None:
    skip_unless_available(shared_platform, "qemu")
    before = {info.pod_id for info in shared_platform._loop.run(shared_platform._platform.databases.inventory())}
    with pytest.raises(NotFound, match="no-such-template"):
        shared_platform.create_agent(db="postgres", db_template="no-such-template")
    after = {info.pod_id for info in shared_platform._loop.run(shared_platform._platform.databases.inventory())}
    assert after == before
    assert shared_platform.list() == []


def test_a_fork_child_gets_its_own_copy_of_the_parents_redis(shared_platform: Platform) -> None:
    skip_unless_available(shared_platform, "qemu")
    with shared_platform.create_agent(db="redis") as parent:
        parent.exec(["python3", "-c", REDIS, "SET", "k", "before"])
        [child] = parent.fork(1)
        with child:
            assert child.exec(["python3", "-c", REDIS, "GET", "k"]).stdout.strip() == "b'before'"
            child.exec(["python3", "-c", REDIS, "SET", "k", "child"])
            assert parent.exec(["python3", "-c", REDIS, "GET", "k"]).stdout.strip() == "b'before'"
            child_url = child.exec(["sh", "-c", "echo $PODBAY_DB_URL"]).stdout.strip()
            parent_url = parent.exec(["sh", "-c", "echo $PODBAY_DB_URL"]).stdout.strip()
            assert child_url != parent_url  # the child's credentials are its own


def test_a_pool_member_gets_its_database_at_claim(platform: Platform) -> None:
    skip_unless_available(platform, "qemu")
    platform.pools.ensure(1, wait=120)
    with platform.create_agent(db="redis") as pod:
        assert pod.info().origin == "pool claim"  # started before any database was asked for
        assert pod.exec(["python3", "-c", REDIS, "SET", "k", "claimed"]).stdout.strip() == "True"
        assert pod.exec(["python3", "-c", REDIS, "GET", "k"]).stdout.strip() == "b'claimed'"
