"""`podbay serve --pool SIZE[:BACKEND]`: the spec is PUT /admin/pools's model, refused by name when bad; the
pools are asked for once the service is up and fill in the background (the local test double pools too)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from typer.testing import CliRunner

from podbay.cli.main import app as cli
from podbay.errors import InvalidSpec
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from podbay.server.startup_pools import parse_pool
from tests.unit.server_double import local_app, raw

WAIT_S = 60.0


def test_a_pool_spec_is_a_size_and_maybe_a_backend() -> None:
    assert (parse_pool("8").size, parse_pool("8").backend) == (8, "qemu")
    assert (parse_pool("4:runc").size, parse_pool("4:runc").backend) == (4, "runc")
    for bad, field in (("", "pool"), ("x:runc", "pool"), ("-1", "pool"), ("999", "size")):
        with pytest.raises(InvalidSpec) as refused:
            parse_pool(bad)
        assert refused.value.field == field, bad


def test_serve_refuses_a_bad_pool_before_it_starts() -> None:
    answer = CliRunner().invoke(cli, ["serve", "--pool", "lots"], env={"COLUMNS": "300"})
    assert answer.exit_code == 2 and "--pool" in answer.output and "SIZE[:BACKEND]" in answer.output


def test_the_pools_fill_in_the_background_from_the_start(paths: PodbayPaths) -> None:
    registry = Registry(paths.state / "server.db")
    admin_token, _ = registry.create_admin_token()
    registry.close()

    async def main() -> list[dict[str, object]]:
        served = local_app(paths, [parse_pool("2:local")])
        async with served.router.lifespan_context(served), raw(httpx.ASGITransport(app=served), admin_token) as admin:
            (started,) = (await admin.get("/admin/pools")).json()  # asked for by the start, not by a request
            assert started["size"] == 2
            # the start did not wait for the members; asking again with a wait returns once they are up
            filled = await admin.put("/admin/pools", json={"size": 2, "backend": "local", "wait_s": WAIT_S})
            assert filled.status_code == 200, filled.text
            pools: list[dict[str, object]] = (await admin.get("/admin/pools")).json()
            return pools

    (pool,) = asyncio.run(main())
    assert pool["size"] == 2 and pool["idle"] == 2
    assert pool["shape"] == {**pool["shape"], "backend": "local"}  # type: ignore[dict-item]
