"""Quotas per tenant (pods, guest memory, snapshots): the app in-process over the local test double (no VM),
and `podbay quotas set | show`."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from typer.testing import CliRunner

from podbay import AsyncClient, QuotaExceeded
from podbay.cli.main import app as cli
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from podbay.server.service import Service
from tests.unit.server_double import LOCAL, raw, serve


def refused(answer: httpx.Response, text: str) -> None:
    """A 429 in the one error shape whose message has `text` (the arithmetic) and the fix."""
    assert answer.status_code == 429, answer.text
    error = answer.json()["error"]
    assert error["type"] == "QuotaExceeded"
    assert text in error["message"], error["message"]
    assert "podbay quotas set --tenant acme" in error["message"] or "podbay snapshot rm" in error["message"]


def test_the_pod_quota_refuses_frees_on_destroy_and_spares_other_tenants(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, registry: Registry) -> None:
        registry.set_quota("acme", {"pods": 2})
        async with raw(transport, token_a) as a, AsyncClient("http://podbay", token_b, transport=transport) as b:
            first = (await a.post("/pods", json=LOCAL)).json()["id"]
            assert (await a.post("/pods", json=LOCAL)).status_code == 201
            refused(await a.post("/pods", json=LOCAL), "tenant acme: 2 running pods + 1 = 3 > quota 2; destroy a pod")
            others = [await b.create_agent(**LOCAL) for _ in range(3)]  # globex: no quota, unlimited
            assert (await a.delete(f"/pods/{first}")).status_code == 200
            assert (await a.post("/pods", json=LOCAL)).status_code == 201  # the destroyed pod's share is free
            refused(await a.post("/pods", json=LOCAL), "2 running pods + 1 = 3 > quota 2")
            registry.set_quota("acme", {"pods": None})  # lifted: from the next request on
            assert (await a.post("/pods", json=LOCAL)).status_code == 201
            for pod in others:
                await pod.destroy()

    serve(paths, scenario)


def test_the_memory_quota_counts_each_pods_guest_memory(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        registry.set_quota("acme", {"memory_mib": 600})
        async with AsyncClient("http://podbay", token_a, transport=transport) as client:
            await client.create_agent(memory_mib=256, **LOCAL)
            with pytest.raises(QuotaExceeded, match=r"256 MiB of guest memory in running pods \+ 512 MiB = 768 MiB"):
                await client.create_agent(memory_mib=512, **LOCAL)
            await client.create_agent(memory_mib=256, **LOCAL)  # 512 <= 600
            assert len(await client.list()) == 2

    serve(paths, scenario)


def test_concurrent_creates_never_pass_the_quota_together(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        registry.set_quota("acme", {"pods": 3, "memory_mib": 10_000})
        async with raw(transport, token_a) as a:
            answers = await asyncio.gather(*(a.post("/pods", json=LOCAL) for _ in range(10)))
            assert sorted(answer.status_code for answer in answers) == [201] * 3 + [429] * 7
            assert len((await a.get("/pods")).json()) == 3

    serve(paths, scenario)


def test_an_expired_pod_frees_its_share(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        registry.set_quota("acme", {"pods": 1})
        async with raw(transport, token_a) as a:
            assert (await a.post("/pods", json={**LOCAL, "timeout_s": 0.3})).status_code == 201
            refused(await a.post("/pods", json=LOCAL), "1 running pods + 1 = 2 > quota 1")
            await asyncio.sleep(1.0)
            assert (await a.post("/pods", json=LOCAL)).status_code == 201

    serve(paths, scenario)


def test_fork_restore_and_snapshot_are_checked_before_anything_is_made(
    paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        (paths.state / "snapshots" / "s1").mkdir(parents=True)  # a snapshot acme owns (the files do not matter)
        registry.add_snapshot("s1", "acme")
        async with raw(transport, token_a) as a:
            pod = (await a.post("/pods", json=LOCAL)).json()["id"]
            # unlimited: the test double cannot snapshot or fork (501): the quota check comes first below
            assert (await a.post(f"/pods/{pod}/snapshot", json={"name": "s2"})).status_code == 501
            assert (await a.post(f"/pods/{pod}/fork", json={"n": 2})).status_code == 501

            registry.set_quota("acme", {"snapshots": 1, "pods": 2})
            refused(await a.post(f"/pods/{pod}/snapshot", json={"name": "s2"}), "tenant acme: 1 snapshots + 1 = 2")
            refused(await a.post(f"/pods/{pod}/fork", json={"n": 2}), "1 running pods + 2 = 3 > quota 2")
            assert (await a.post(f"/pods/{pod}/fork", json={"n": 1})).status_code == 501  # 2 <= 2: the backend's

            registry.set_quota("acme", {"pods": 1})
            refused(await a.post("/snapshots/s1/restore"), "1 running pods + 1 = 2 > quota 1")
            registry.set_quota("acme", {"pods": None, "memory_mib": 700})
            refused(await a.post("/snapshots/s1/restore"), "256 MiB of guest memory in running pods + 512 MiB")
            refused(await a.post(f"/pods/{pod}/fork", json={"n": 2}), "256 MiB of guest memory in running pods + 512")

            (paths.state / "snapshots" / "s1").rmdir()  # removed on the host (`podbay snapshot rm`): freed
            assert (await a.post(f"/pods/{pod}/snapshot", json={"name": "s2"})).status_code == 501

    monkeypatch.setattr(Service, "snapshot_memory", lambda self, name: 512)
    serve(paths, scenario)


def test_quotas_set_and_show_round_trip(paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODBAY_STATE", str(paths.state))
    monkeypatch.setenv("PODBAY_CACHE", str(paths.cache))
    runner = CliRunner()
    assert runner.invoke(cli, ["tokens", "create", "--tenant", "acme"]).exit_code == 0

    def show() -> dict[str, object]:
        result = runner.invoke(cli, ["quotas", "show", "--tenant", "acme", "--json"])
        assert result.exit_code == 0, result.output
        shown: dict[str, object] = json.loads(result.stdout)
        return shown

    unlimited = {"volumes": None, "volume_mib": None}
    assert show() == {"tenant": "acme", "pods": None, "memory_mib": None, "snapshots": None, **unlimited}
    result = runner.invoke(cli, ["quotas", "set", "--tenant", "acme", "--pods", "3", "--memory-mib", "4096"])
    assert result.exit_code == 0, result.output
    assert show() == {"tenant": "acme", "pods": 3, "memory_mib": 4096, "snapshots": None, **unlimited}
    result = runner.invoke(
        cli, ["quotas", "set", "--tenant", "acme", "--snapshots", "5", "--pods", "unlimited", "--volumes", "2"]
    )
    assert result.exit_code == 0, result.output
    assert show() == {
        "tenant": "acme",
        "pods": None,
        "memory_mib": 4096,
        "snapshots": 5,
        "volumes": 2,
        "volume_mib": None,
    }
    assert "4096" in runner.invoke(cli, ["quotas", "show", "--tenant", "acme"]).stdout
    for argv in (
        ["quotas", "set", "--tenant", "nobody", "--pods", "1"],
        ["quotas", "set", "--tenant", "acme", "--pods", "-1"],
        ["quotas", "set", "--tenant", "acme", "--pods", "many"],
        ["quotas", "set", "--tenant", "acme"],
        ["quotas", "show", "--tenant", "nobody"],
    ):
        assert runner.invoke(cli, argv).exit_code == 2, argv
