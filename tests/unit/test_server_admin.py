"""Admin tokens and the /admin routes over the app in-process (the local test double, no VM): tenants, tokens,
quotas and pools; the wrong kind of token answers 403 both ways; bad input names the field; `podbay tokens
create --admin`; and a server.db made before these tables and columns existed is migrated."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from podbay import AsyncClient, Conflict, Forbidden, InvalidSpec, NotFound, Unauthorized
from podbay.cli.main import app as cli
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry, hash_token
from tests.unit import server_double
from tests.unit.server_double import raw

AdminScenario = Callable[[httpx.ASGITransport, str, str, str], Awaitable[None]]


def serve(paths: PodbayPaths, scenario: AdminScenario) -> None:
    """The shared double; the scenario gets an admin token (made before its first request), then the tenants'."""

    async def with_admin(transport: httpx.ASGITransport, token_a: str, token_b: str, registry: Registry) -> None:
        admin, _ = registry.create_admin_token()
        await scenario(transport, admin, token_a, token_b)

    server_double.serve(paths, with_admin)


def client(transport: httpx.ASGITransport, token: str) -> AsyncClient:
    return AsyncClient("http://podbay", token, transport=transport)


def test_an_admin_manages_tenants_tokens_and_quotas(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, admin_token: str, token_a: str, _: str) -> None:
        async with client(transport, admin_token) as admin, client(transport, token_a) as acme:
            made = await admin.admin.create_tenant("initech")
            assert (made.name, made.live_pods, made.volumes, made.live_tokens) == ("initech", 0, 0, 0)
            with pytest.raises(Conflict):
                await admin.admin.create_tenant("initech")
            assert [tenant.name for tenant in await admin.admin.tenants()] == ["acme", "globex", "initech"]

            new = await admin.admin.create_token("initech")
            assert new.tenant == "initech" and new.token.startswith("pb_")
            async with client(transport, new.token) as initech:
                assert await initech.list() == []
                async with raw(transport, admin_token) as raw_admin:
                    listed = (await raw_admin.get("/admin/tokens", params={"tenant": "initech"})).text
                assert new.id in listed and new.token not in listed and hash_token(new.token) not in listed
                assert [token.tenant for token in await admin.admin.tokens()].count(None) == 1  # the admin's
                with pytest.raises(NotFound):
                    await admin.admin.create_token("nobody")  # tenants are made by create_tenant here

                quota = await admin.admin.set_quota("initech", pods=1, volumes=2, volume_mib=512)
                assert (quota.pods, quota.volumes, quota.volume_mib, quota.memory_mib) == (1, 2, 512, None)
                lifted = await admin.admin.set_quota("initech", pods=None)
                assert (lifted.pods, lifted.volumes) == (None, 2)
                assert await admin.admin.quota("initech") == lifted

                revoked = await admin.admin.revoke_token(new.id)
                assert revoked.revoked_at is not None
                with pytest.raises(Unauthorized, match="revoked"):
                    await initech.list()

            pod = await acme.create_agent(backend="local")
            with pytest.raises(Conflict, match="1 live pods"):
                await admin.admin.delete_tenant("acme")
            await pod.destroy()
            gone = await admin.admin.delete_tenant("acme")
            assert gone.name == "acme"
            with pytest.raises(Unauthorized):  # its tokens are revoked with it
                await acme.list()
            with pytest.raises(Conflict, match="deleted"):  # a deleted tenant's name is not given again
                await admin.admin.create_tenant("acme")
            with pytest.raises(NotFound):
                await admin.admin.tenant("acme")
            assert [tenant.name for tenant in await admin.admin.tenants()] == ["globex", "initech"]

    serve(paths, scenario)


def test_the_wrong_kind_of_token_is_forbidden_both_ways(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, admin_token: str, token_a: str, _: str) -> None:
        async with raw(transport, token_a) as tenant, raw(transport, admin_token) as admin:
            for method, url in [("GET", "/admin/tenants"), ("GET", "/admin/pools"), ("DELETE", "/admin/tokens/x")]:
                answer = await tenant.request(method, url)
                assert answer.status_code == 403, (url, answer.text)
                assert answer.json()["error"]["type"] == "Forbidden"
                assert "admin token" in answer.json()["error"]["message"]
            for method, url in [("GET", "/pods"), ("GET", "/volumes"), ("POST", "/volumes"), ("GET", "/usage")]:
                answer = await admin.request(method, url, json={"name": "v"})
                assert answer.status_code == 403, (url, answer.text)
                assert "acts for no tenant" in answer.json()["error"]["message"]
        async with raw(transport, None) as nobody, raw(transport, "pb_unknown") as stranger:
            assert (await nobody.get("/admin/tenants")).status_code == 401
            assert (await stranger.get("/admin/tenants")).status_code == 401
        async with client(transport, token_a) as acme:
            with pytest.raises(Forbidden):
                await acme.admin.tenants()
        async with client(transport, admin_token) as admin_sdk:
            with pytest.raises(Forbidden):
                await admin_sdk.list()
            tokens = await admin_sdk.admin.tokens()
            own = next(token for token in tokens if token.tenant is None)
            await admin_sdk.admin.revoke_token(own.id)
            with pytest.raises(Unauthorized, match="revoked"):
                await admin_sdk.admin.tenants()

    serve(paths, scenario)


def test_bad_admin_requests_name_the_field(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, admin_token: str, _: str, __: str) -> None:
        async with raw(transport, admin_token) as admin:
            for method, url, body, field in [
                ("POST", "/admin/tenants", {"name": "Bad Name"}, "name"),
                ("POST", "/admin/tenants", {"name": "ok", "colour": 1}, "colour"),
                ("POST", "/admin/tokens", {"tenant": "../x"}, "tenant"),
                ("POST", "/admin/tokens", {"tenant": "acme", "admin": True}, "admin"),
                ("PATCH", "/admin/tenants/acme/quota", {"pods": -1}, "pods"),
                ("PATCH", "/admin/tenants/acme/quota", {"volume_mib": "lots"}, "volume_mib"),
                ("PATCH", "/admin/tenants/acme/quota", {"disks": 3}, "disks"),
                ("PUT", "/admin/pools", {"size": -1, "backend": "local"}, "size"),
                ("PUT", "/admin/pools", {"size": 1000, "backend": "local"}, "size"),
                ("PUT", "/admin/pools", {"size": 1, "backend": "nope"}, "backend"),
            ]:
                answer = await admin.request(method, url, json=body)
                assert answer.status_code == 422, (url, body, answer.text)
                error = answer.json()["error"]
                assert error["type"] == "InvalidSpec" and error["field"] == field, (url, body, error)
            assert (await admin.patch("/admin/tenants/nobody/quota", json={"pods": 1})).status_code == 404
            assert (await admin.get("/admin/tenants/nobody/quota")).status_code == 404
            assert (await admin.delete("/admin/tenants/nobody")).status_code == 404
            assert (await admin.delete("/admin/tokens/tok_nope")).status_code == 404
        async with client(transport, admin_token) as admin_sdk:
            with pytest.raises(InvalidSpec) as bad:
                await admin_sdk.admin.set_quota("acme", snapshots=-2)
            assert bad.value.field == "snapshots"

    serve(paths, scenario)


def test_an_admin_sizes_and_drains_a_warm_pool(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, admin_token: str, _: str, __: str) -> None:
        async with client(transport, admin_token) as admin:
            assert await admin.admin.pools() == []
            report = await admin.admin.ensure_pool(1, backend="local", memory_mib=128, wait_s=30)
            assert (report.size, report.idle, report.shape.backend, report.shape.memory_mib) == (1, 1, "local", 128)
            assert len(report.idle_member_pids) == 1  # admins may see host pids
            drained = await admin.admin.ensure_pool(0, backend="local", memory_mib=128)
            assert drained.size == 0
            assert [pool.size for pool in await admin.admin.pools()] == [0]

    serve(paths, scenario)


def test_tokens_create_admin_on_the_cli(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODBAY_STATE", str(paths.state))
    monkeypatch.setenv("PODBAY_CACHE", str(paths.cache))
    runner = CliRunner()
    made = runner.invoke(cli, ["tokens", "create", "--admin"])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip()
    registry = Registry(paths.state / "server.db")
    assert registry.admin_of(token).startswith("adm_")
    with pytest.raises(Forbidden):
        registry.tenant_of(token)
    assert "admin" in runner.invoke(cli, ["tokens", "ls"]).stdout
    for argv in (["tokens", "create"], ["tokens", "create", "--admin", "--tenant", "acme"]):
        assert runner.invoke(cli, argv).exit_code == 2, argv
    assert runner.invoke(cli, ["tokens", "revoke", registry.tokens()[0].id]).exit_code == 0
    with pytest.raises(Unauthorized, match="revoked"):
        registry.admin_of(token)


def test_a_server_db_from_before_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "server.db"
    with sqlite3.connect(path) as old:  # the schema podbay shipped first, with a tenant and a quota in it
        old.executescript(
            """
            CREATE TABLE tenants (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
            CREATE TABLE tokens (id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(name),
                sha256 TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL);
            CREATE TABLE quotas (tenant TEXT PRIMARY KEY REFERENCES tenants(name), pods INTEGER,
                memory_mib INTEGER, snapshots INTEGER);
            INSERT INTO tenants VALUES ('acme', 1.0);
            INSERT INTO quotas VALUES ('acme', 3, NULL, 2);
            """
        )
    old.close()
    registry = Registry(path)
    quota = registry.quota("acme")
    assert (quota.pods, quota.snapshots, quota.volumes, quota.volume_mib) == (3, 2, None, None)
    assert registry.set_quota("acme", {"volumes": 4}).volumes == 4
    assert [tenant.name for tenant in registry.tenants()] == ["acme"]
    record, made = registry.add_volume("acme", "v1", 64)
    assert made and registry.volume("acme", "v1") == record
    registry.close()
    Registry(path).close()  # a second opening finds every column there
