"""`podbay db ...` and the server-database options of `podbay create | run`, invoked in-process through typer's
CliRunner: against a real uvicorn on a loopback port of this process (over the local test double and the
inventory provider of test_server_databases.py), and without a server on this host's databases."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from podbay.cli import db as db_cli
from podbay.paths import PodbayPaths
from podbay.server import create_app
from podbay.server.registry import Registry
from tests.unit.server_double import LOOPBACK, assert_no_pods_left
from tests.unit.test_cli_remote import START_WAIT_S, podbay
from tests.unit.test_server_databases import InventoryProvider, isolate_db_servers, platform_with


@pytest.fixture(autouse=True)
def private_db_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_db_servers(tmp_path, monkeypatch)


@pytest.fixture
def provider() -> InventoryProvider:
    return InventoryProvider()


@pytest.fixture
def env(paths: PodbayPaths, provider: InventoryProvider) -> Iterator[dict[str, str]]:
    """PODBAY_SERVER and PODBAY_TOKEN (tenant acme's) of a server over `provider` running in a thread; the
    admin's token in PODBAY_ADMIN_TOKEN (not a variable podbay reads: the test swaps it in)."""
    registry = Registry(paths.state / "server.db")
    token, _ = registry.create_token("acme")
    admin_token, _ = registry.create_admin_token()
    registry.close()
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    servers: list[uvicorn.Server] = []

    async def main() -> None:
        app = create_app(platform=platform_with(paths, provider))
        servers.append(uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning")))
        await servers[0].serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + START_WAIT_S
    while not (servers and servers[0].started):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield {
        "PODBAY_SERVER": f"http://{LOOPBACK}:{port}",
        "PODBAY_TOKEN": token,
        "PODBAY_ADMIN_TOKEN": admin_token,
        "COLUMNS": "300",
    }
    servers[0].should_exit = True
    thread.join()
    assert_no_pods_left(paths)


def test_a_retained_database_through_the_cli(
    env: dict[str, str], provider: InventoryProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = podbay(env, "create", "--backend", "local", "--server-db", "postgres", "--db-retain", "--json")
    assert code == 0, err
    info = json.loads(out)
    pod = info["id"]
    assert (info["spec"]["db"], info["spec"]["db_retain"], info["spec"]["memory_db"]) == ("postgres", True, False)
    code, out, err = podbay(env, "db", "ls")
    assert code == 0, err
    row = next(line for line in out.splitlines() if pod in line).split("│")
    assert [cell.strip() for cell in row[1:-1]] == [pod, "postgres", pod.replace("-", "_"), "no", "4.0 KiB", "-"]
    code, _, err = podbay(env, "db", "rm", pod)
    assert code == 2 and "is live; destroy it first" in err

    assert podbay(env, "destroy", pod)[0] == 0
    code, out, _ = podbay(env, "db", "ls", "--json")
    assert code == 0 and [(found["pod_id"], found["retained"]) for found in json.loads(out)] == [(pod, True)]
    monkeypatch.chdir(tmp_path)
    code, out, err = podbay(env, "db", "export", pod)
    assert code == 0, err
    assert (tmp_path / f"{pod}.sql").read_text().startswith(f"-- dump of {pod.replace('-', '_')}")
    assert f"to {pod}.sql" in out
    code, _, err = podbay(env, "db", "export", pod, "-o", str(tmp_path / "copy.sql"))
    assert code == 0, err
    assert (tmp_path / "copy.sql").read_bytes() == (tmp_path / f"{pod}.sql").read_bytes()
    code, out, err = podbay(env, "db", "rm", pod)
    assert code == 0 and f"removed the database of {pod}" in out, err
    assert provider.retained == {}
    code, _, err = podbay(env, "db", "export", pod)
    assert code == 2 and "NotFound" in err


def test_the_pod_commands_pass_the_database_options(env: dict[str, str], provider: InventoryProvider) -> None:
    code, _, err = podbay(env, "create", "--backend", "local", "--server-db", "mysql")
    assert code == 2 and "'mysql' is not one of: postgres, redis" in err
    code, _, err = podbay(env, "create", "--backend", "local", "--db-template", "shop")
    assert code == 2 and "db_template" in err  # PodSpec's own check: a template needs --server-db postgres
    code, out, err = podbay(env, "create", "--backend", "local", "--db", "--json")  # --db is SQLite, as before
    assert code == 0, err
    assert (json.loads(out)["spec"]["memory_db"], json.loads(out)["spec"]["db"]) == (True, None)
    assert podbay(env, "destroy", json.loads(out)["id"])[0] == 0
    probe = "import os; print(os.environ['PODBAY_DB_KIND'], os.environ['PODBAY_DB_NAME'])"
    code, out, err = podbay(env, "run", "--backend", "local", "--server-db", "postgres", "--", "python3", "-c", probe)
    assert code == 0, err
    kind, name = out.split()
    assert kind == "postgres" and provider.released == [name.replace("_", "-")]  # run destroys its pod


def test_templates_need_the_admins_token(env: dict[str, str], provider: InventoryProvider, tmp_path: Path) -> None:
    dump = tmp_path / "shop.sql"
    dump.write_text("CREATE TABLE orders (id int);\n")
    code, _, err = podbay(env, "db", "templates", "create", "shop", "--from-dump", str(dump))
    assert code == 2 and "Forbidden" in err
    operator = {**env, "PODBAY_TOKEN": env["PODBAY_ADMIN_TOKEN"]}
    code, out, err = podbay(operator, "db", "templates", "create", "shop", "--from-dump", str(dump))
    assert code == 0 and "created template shop (30 B)" in out, err
    code, out, _ = podbay(operator, "db", "templates", "ls", "--json")
    assert json.loads(out) == [{"name": "shop", "size_bytes": 30}]
    code, out, err = podbay(env, "create", "--backend", "local", "--server-db", "postgres", "--db-template", "shop")
    assert code == 0, err
    assert provider.live[out.strip()].template == "shop"
    assert podbay(env, "destroy", out.strip())[0] == 0
    code, out, _ = podbay(operator, "db", "templates", "rm", "shop")
    assert code == 0 and "removed template shop" in out
    assert provider.templates.dumps == {}


def test_without_a_server_the_commands_read_this_hosts_databases(
    paths: PodbayPaths, provider: InventoryProvider, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    local = db_cli.LocalDatabases(paths, {"postgres": provider})
    local.close = lambda: None  # type: ignore[method-assign]  # shared by the commands below
    monkeypatch.setattr(db_cli, "LocalDatabases", lambda: local)
    retained = asyncio.run(provider.provision("pod-0123456789ab", None, True))
    asyncio.run(provider.release(retained))
    live = asyncio.run(provider.provision("pod-ba9876543210", None, False))
    local._databases.adopt(live)  # a live pod of this state directory: in its ledger
    try:
        code, out, err = podbay({"COLUMNS": "300"}, "db", "ls", "--json")
        assert code == 0, err
        assert {(found["pod_id"], found["retained"]) for found in json.loads(out)} == {
            ("pod-0123456789ab", True),
            ("pod-ba9876543210", False),
        }
        code, _, err = podbay({}, "db", "rm", "pod-ba9876543210")
        assert code == 2 and "is live; destroy it first" in err
        code, _, err = podbay({}, "db", "export", "pod-0123456789ab", "-o", str(tmp_path / "d.sql"))
        assert code == 0 and (tmp_path / "d.sql").read_text().startswith("-- dump of pod_0123456789ab"), err
        assert podbay({}, "db", "rm", "pod-0123456789ab")[0] == 0
        assert provider.retained == {}
    finally:
        local._loop.stop()
