"""The Postgres provider on an *external* server (PODBAY_POSTGRES_URL): an admin that is no superuser, only
CREATEDB and CREATEROLE, over TCP with a password. The server is a private cluster on a free local port."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from podbay.paths import PodbayPaths
from podbay.state.pg_server import PostgresServer, find_bindir
from podbay.state.postgres import PostgresProvider
from tests.integration.test_postgres_provider import OWNERS, SEED, _have_postgres, guest_query, run

pytestmark = pytest.mark.skipif(not _have_postgres(), reason="PostgreSQL 15 is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def external(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[PostgresProvider]:
    workdir = Path(tempfile.mkdtemp(prefix="podbay-pg-ext-"))
    workdir.chmod(0o755)
    managed = PostgresServer.managed(workdir / "postgres")
    run(managed.start())  # initdb, then restarted below on TCP with password logins
    run(managed.stop())
    data = workdir / "postgres" / "data"
    (data / "pg_hba.conf").write_text("local all postgres peer map=podbay\nhost all all 127.0.0.1/32 scram-sha-256\n")
    port = _free_port()
    as_postgres = (
        ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if os.geteuid() == 0 else []
    )
    pg_ctl = [*as_postgres, str(find_bindir() / "pg_ctl"), "-D", str(data)]
    subprocess.run([*pg_ctl, "start", "-w", "-l", str(workdir / "postgres" / "server.log"),
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port}"],
                   check=True, capture_output=True, cwd=workdir, start_new_session=True)  # fmt: skip
    try:
        admin = psycopg.connect(host=str(workdir / "postgres" / "run"), port=port, user="postgres", autocommit=True)
        with admin:
            admin.execute("CREATE ROLE ext_admin LOGIN CREATEDB CREATEROLE PASSWORD 'ext-pw'")
        monkeypatch_module.setenv("PODBAY_POSTGRES_URL", f"postgresql://ext_admin:ext-pw@127.0.0.1:{port}/postgres")
        provider = PostgresProvider.from_paths(PodbayPaths(cache=workdir / "c", state=workdir / "s"))
        assert provider.server.managed_root is None
        seed = workdir / "seed.sql"
        seed.write_text(SEED)
        run(provider.templates.create("shop", seed))
        yield provider
    finally:
        subprocess.run([*pg_ctl, "stop", "-m", "immediate", "-w"], capture_output=True, cwd=workdir)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_an_admin_without_superuser_provisions_branches_and_releases(
    external: PostgresProvider, tmp_path: Path
) -> None:
    parent = run(external.provision("pod-ee01", "shop", False))
    assert run(guest_query(external, parent, "SELECT count(*) FROM items")) == [(2,)]
    assert run(guest_query(external, parent, OWNERS)) == [("pod_ee01",)]
    run(guest_query(external, parent, "INSERT INTO items (name) VALUES ('ext')"))

    async def busy_branch() -> list[object]:
        async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=external.server.port, user=parent.role, password=parent.secret, dbname=parent.name
        ):
            branching = await external.branch(parent, ["pod-ee02"])
            assert branching._snapshot is not None
            return list(await branching.finish())

    [quiet_child] = run(run(external.branch(parent, ["pod-ee03"])).finish())
    [busy_child] = run(busy_branch())
    for child in (quiet_child, busy_child):
        assert run(guest_query(external, child, "SELECT name FROM items ORDER BY id")) == [
            ("apple",), ("pear",), ("ext",)
        ]  # fmt: skip
        assert run(guest_query(external, child, OWNERS)) == [(child.role,)]
    saving = run(external.save(parent, tmp_path / "snap"))
    run(saving.finish())
    loaded = run(external.load(tmp_path / "snap", "pod-ee04", False))
    assert run(guest_query(external, loaded, "SELECT count(*) FROM items")) == [(3,)]
    for grant in (parent, quiet_child, busy_child, loaded):
        run(external.release(grant))
    assert run(external.databases()) == []
    run(external.discard("pod-ee01"))  # nothing there: no error
    asyncio.run(external.stop())  # an external server is not podbay's to stop: nothing happens
