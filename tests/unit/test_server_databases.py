"""The server databases' REST routes and SDK methods over the in-process service, with a provider double that
keeps an inventory (live and retained databases) and a templates double: each tenant sees and reaches only its
own pods' databases (another tenant's is a 404 on every route, word for word a missing one's), the admin routes
take only an admin token, uploads are bounded, nothing is left on the server's disk after a transfer.

The real Postgres and Redis providers are tested in tests/integration; the platform's side of them in
test_platform_databases.py, whose recording provider this one extends.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import httpx
import pytest

from podbay import AsyncClient, Conflict, DatabaseUnavailable, Forbidden, InvalidSpec, NotFound, PodbayPaths
from podbay.isolation.fake import LocalProcessBackend
from podbay.platform import AsyncPlatform
from podbay.server import create_app
from podbay.server import databases as db_routes
from podbay.server.registry import Registry
from podbay.state.servers import DatabaseGrant, DatabaseInfo, TemplateInfo
from tests.unit.server_double import BASE_URL, raw
from tests.unit.server_double import serve as serve_plain
from tests.unit.test_platform_databases import RecordingProvider, free_port

POSTGRES = {"backend": "local", "db": "postgres"}
MISSING = "pod-000000000000"


class FakeTemplates:
    """The Postgres templates' seam (ServerDatabases.postgres_templates): name -> the dump's bytes."""

    def __init__(self) -> None:
        self.dumps: dict[str, bytes] = {}

    async def create(self, name: str, dump: Path) -> TemplateInfo:
        if name in self.dumps:
            raise Conflict(f"template {name!r} exists")
        self.dumps[name] = dump.read_bytes()
        return TemplateInfo(name=name, size_bytes=len(self.dumps[name]))

    async def list(self) -> list[TemplateInfo]:
        return [TemplateInfo(name, len(data)) for name, data in sorted(self.dumps.items())]

    async def remove(self, name: str) -> None:
        if self.dumps.pop(name, None) is None:
            raise NotFound(f"no template {name!r}")


class InventoryProvider(RecordingProvider):
    """RecordingProvider plus what the surfaces need: an inventory, retained data after release, dumps, drop.
    Each grant gets a guest port of its own (the local double's guest loopback is the host's, shared by pods)."""

    def __init__(self) -> None:
        super().__init__()
        self.retained: dict[str, DatabaseGrant] = {}
        self.templates = FakeTemplates()
        self.exports: list[Path] = []

    async def provision(self, pod_id: str, template: str | None, retain: bool) -> DatabaseGrant:
        grant = await super().provision(pod_id, template, retain)
        port = free_port()
        url = grant.url.replace(f":{grant.guest_port}/", f":{port}/")
        self.live[pod_id] = grant = dataclasses.replace(grant, guest_port=port, url=url)
        return grant

    async def release(self, grant: DatabaseGrant) -> None:
        await super().release(grant)
        if grant.retain:
            self.retained[grant.pod_id] = grant

    async def databases(self) -> list[DatabaseInfo]:
        held = [(grant, False) for grant in self.live.values()] + [(grant, True) for grant in self.retained.values()]
        return [DatabaseInfo("postgres", g.pod_id, g.name, retained, 4096, g.template) for g, retained in held]

    async def export(self, pod_id: str, dest: Path) -> None:
        grant = self.live.get(pod_id) or self.retained.get(pod_id)
        if grant is None:
            raise NotFound(f"no database for pod {pod_id} on the postgres server at /var/lib/podbay/db/postgres")
        self.exports.append(dest)
        dest.write_text(f"-- dump of {grant.name}\n" + "INSERT INTO t VALUES (1);\n" * 2000)

    async def drop(self, pod_id: str) -> None:
        if self.retained.pop(pod_id, None) is None:
            raise NotFound(f"no retained database for pod {pod_id}")

    async def branch(self, grant: DatabaseGrant, pod_ids: Sequence[str]) -> object:  # type: ignore[override]
        raise NotImplementedError


Scenario = Callable[[httpx.ASGITransport, dict[str, str]], Awaitable[None]]


@pytest.fixture(autouse=True)
def private_db_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No host-wide database server (/var/lib/podbay/db, PODBAY_*_URL) is seen, listed or started."""
    isolate_db_servers(tmp_path, monkeypatch)


def isolate_db_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODBAY_DB_DIR", str(tmp_path / "db-servers"))
    for kind in ("POSTGRES", "REDIS"):
        monkeypatch.delenv(f"PODBAY_{kind}_URL", raising=False)


def platform_with(paths: PodbayPaths, provider: InventoryProvider) -> AsyncPlatform:
    platform = AsyncPlatform(paths, backends={"local": LocalProcessBackend()}, databases={"postgres": provider})
    platform.databases.postgres_templates = lambda: provider.templates  # type: ignore[method-assign]
    return platform


def serve(paths: PodbayPaths, provider: InventoryProvider, scenario: Scenario) -> None:
    """`scenario` against the app over `provider`, with tokens: acme, globex (tenants) and admin."""
    registry = Registry(paths.state / "server.db")
    tokens = {"acme": registry.create_token("acme")[0], "globex": registry.create_token("globex")[0]}
    tokens["admin"] = registry.create_admin_token()[0]

    async def main() -> None:
        app = create_app(platform=platform_with(paths, provider))
        async with app.router.lifespan_context(app):
            await scenario(httpx.ASGITransport(app=app), tokens)

    try:
        asyncio.run(main())
    finally:
        registry.close()


def client(transport: httpx.ASGITransport, token: str) -> AsyncClient:
    return AsyncClient(BASE_URL, token, transport=transport)


def transfers_left(paths: PodbayPaths) -> list[Path]:
    root = paths.state / "db-transfers"
    return list(root.iterdir()) if root.exists() else []


def test_a_tenant_lists_its_own_pods_databases_live_and_retained(paths: PodbayPaths) -> None:
    provider = InventoryProvider()

    async def scenario(transport: httpx.ASGITransport, tokens: dict[str, str]) -> None:
        async with client(transport, tokens["acme"]) as acme, client(transport, tokens["globex"]) as globex:
            async with raw(transport, tokens["acme"]) as http:
                made = await http.post("/pods", json={**POSTGRES, "db_retain": True})
            assert made.status_code == 201, made.text
            pod_id = made.json()["id"]
            assert made.json()["spec"]["db"] == "postgres" and made.json()["spec"]["db_retain"] is True
            assert "s3cret" not in made.text  # the pod's info shows where its database is, never the password
            assert made.json()["db_url"] == provider.live[pod_id].url.replace(f":{provider.live[pod_id].secret}", "")
            theirs = await globex.create_agent(backend="local", db="postgres")

            assert [(info.pod_id, info.retained) for info in await acme.databases()] == [(pod_id, False)]
            assert [info.pod_id for info in await globex.databases()] == [theirs.id]
            await (await acme.get(pod_id)).destroy()
            listed = await acme.databases()
            assert listed == [DatabaseInfo("postgres", pod_id, pod_id.replace("-", "_"), True, 4096, None)]
            await theirs.destroy()  # not retained: its database goes with it
            assert await globex.databases() == []

    serve(paths, provider, scenario)


def test_another_tenants_database_is_not_found_on_every_route_exactly_as_a_missing_one(paths: PodbayPaths) -> None:
    provider = InventoryProvider()

    async def scenario(transport: httpx.ASGITransport, tokens: dict[str, str]) -> None:
        async with client(transport, tokens["acme"]) as acme, raw(transport, tokens["globex"]) as intruder:
            pod = await acme.create_agent(backend="local", db="postgres", db_retain=True)
            await pod.destroy()  # retained: it outlives the pod, still acme's
            for method, route in (("GET", "/databases/{}/export"), ("DELETE", "/databases/{}")):
                theirs = await intruder.request(method, route.format(pod.id))
                missing = await intruder.request(method, route.format(MISSING))
                assert theirs.status_code == missing.status_code == 404, (method, route)
                assert theirs.json()["error"]["message"] == missing.json()["error"]["message"].replace(MISSING, pod.id)
            assert (await intruder.get("/databases")).json() == []
            assert pod.id in provider.retained and provider.exports == []  # untouched, nothing dumped
            with pytest.raises(NotFound, match="`GET /databases` lists yours"):
                await acme.export_database(MISSING, paths.state / "nothing.sql")

    serve(paths, provider, scenario)


def test_export_streams_the_dump_and_drop_removes_only_a_retained_database(paths: PodbayPaths, tmp_path: Path) -> None:
    provider = InventoryProvider()
    out = tmp_path / "out"
    out.mkdir()

    async def scenario(transport: httpx.ASGITransport, tokens: dict[str, str]) -> None:
        async with client(transport, tokens["acme"]) as acme:
            pod = await acme.create_agent(backend="local", db="postgres", db_retain=True)
            name = pod.id.replace("-", "_")
            live_dump = out / "live.sql"
            assert await acme.export_database(pod.id, live_dump) == live_dump.stat().st_size > 40_000
            assert live_dump.read_text().startswith(f"-- dump of {name}\n")
            with pytest.raises(Conflict, match="is live; destroy it first"):
                await acme.drop_database(pod.id)
            await pod.destroy()
            async with raw(transport, tokens["acme"]) as http:
                answer = await http.get(f"/databases/{pod.id}/export")
            assert answer.status_code == 200 and answer.content == live_dump.read_bytes()
            assert answer.headers["content-disposition"] == f'attachment; filename="{pod.id}.sql"'
            dropped = await acme.drop_database(pod.id)
            assert (dropped.pod_id, dropped.retained) == (pod.id, True)
            assert await acme.databases() == [] and provider.retained == {}
            with pytest.raises(NotFound):
                await acme.drop_database(pod.id)
            kept = out / "kept.sql"
            kept.write_text("an earlier dump")
            with pytest.raises(NotFound):
                await acme.export_database(pod.id, kept)
            assert kept.read_text() == "an earlier dump"  # a failed export replaces nothing, leaves no .part
            assert sorted(path.name for path in out.iterdir()) == ["kept.sql", "live.sql"]
        assert transfers_left(paths) == []  # the server's copies of the dumps are gone once sent

    serve(paths, provider, scenario)


def test_templates_are_the_admins_and_uploads_are_bounded(
    paths: PodbayPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = InventoryProvider()
    dump = tmp_path / "shop.sql"
    dump.write_text("CREATE TABLE orders (id int);\n" * 100)
    monkeypatch.setattr(db_routes, "MAX_DUMP_BYTES", 4096)

    async def scenario(transport: httpx.ASGITransport, tokens: dict[str, str]) -> None:
        async with client(transport, tokens["admin"]) as operator, client(transport, tokens["acme"]) as acme:
            made = await operator.admin.create_db_template("shop", dump)
            assert made == TemplateInfo("shop", dump.stat().st_size)
            assert provider.templates.dumps["shop"] == dump.read_bytes()
            assert await operator.admin.db_templates() == [made]
            for call in (
                acme.admin.db_templates(),
                acme.admin.create_db_template("mine", dump),
                acme.admin.delete_db_template("shop"),
            ):
                with pytest.raises(Forbidden, match="admin token"):
                    await call
            with pytest.raises(Forbidden, match="admin token"):
                await operator.databases()  # an admin token acts for no tenant
            pod = await acme.create_agent(backend="local", db="postgres", db_template="shop")
            assert [info.template for info in await acme.databases()] == ["shop"]
            await pod.destroy()

            big = tmp_path / "big.sql"
            big.write_bytes(b"x" * 5000)
            with pytest.raises(InvalidSpec, match="body: is more than 4096 bytes") as refused:
                await operator.admin.create_db_template("big", big)
            assert refused.value.field == "body"
            async with raw(transport, tokens["admin"]) as http:
                assert (await http.post("/admin/db/templates/empty", content=b"")).status_code == 422
                bad_name = await http.post("/admin/db/templates/Bad..Name!", content=b"x")
                assert bad_name.status_code == 422
            with pytest.raises(InvalidSpec, match="dump"):
                await operator.admin.create_db_template("gone", tmp_path / "nope.sql")
            assert set(provider.templates.dumps) == {"shop"}
            assert transfers_left(paths) == []

            await operator.admin.delete_db_template("shop")
            assert await operator.admin.db_templates() == []
            with pytest.raises(NotFound):
                await operator.admin.delete_db_template("shop")

    serve(paths, provider, scenario)


def test_a_server_with_no_database_in_use_starts_none_to_answer(paths: PodbayPaths) -> None:
    """The plain test double's platform has no provider made and no managed server's directory: listing
    answers empty and removing answers 404, without making (and starting) a provider."""

    async def scenario(transport: httpx.ASGITransport, token: str, _: str, registry: Registry) -> None:
        admin_token, _record = registry.create_admin_token()
        async with raw(transport, token) as tenant, raw(transport, admin_token) as operator:
            assert (await tenant.get("/databases")).json() == []
            assert (await operator.get("/admin/db/templates")).json() == []
            assert (await operator.delete("/admin/db/templates/shop")).status_code == 404

    serve_plain(paths, scenario)


def test_a_database_servers_failure_answers_503_without_its_host_paths(paths: PodbayPaths) -> None:
    provider = InventoryProvider()
    socket_path = paths.databases / "postgres" / "run" / ".s.PGSQL.5432"

    async def down() -> list[DatabaseInfo]:
        raise DatabaseUnavailable(f"postgres: cannot connect to {socket_path}: no such file; start it (uid 107)")

    provider.databases = down  # type: ignore[method-assign]

    async def scenario(transport: httpx.ASGITransport, tokens: dict[str, str]) -> None:
        async with raw(transport, tokens["acme"]) as http:
            answer = await http.get("/databases")
        assert answer.status_code == 503
        message = answer.json()["error"]["message"]
        assert str(paths.databases) not in message and "5432" not in message and "107" not in message
        assert message == "postgres: cannot connect to <host path>: no such file; start it (uid (hidden))"

    serve(paths, provider, scenario)
