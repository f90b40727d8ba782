"""The service in-process over the local test double (no VM): routes, tenants, the error shape, the SDK.

The SDK talks to the app through httpx's ASGI transport; the real `podbay serve` process is exercised by
tests/integration/test_server.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from podbay import AsyncClient, ExecResult, InvalidSpec, NotFound, PodState, Unauthorized
from podbay.paths import PodbayPaths
from podbay.sdk.client import AsyncRemotePod
from tests.unit import server_double
from tests.unit.server_double import Scenario, assert_no_pods_left


def serve(paths: PodbayPaths, scenario: Scenario) -> None:
    server_double.serve(paths, scenario)
    assert_no_pods_left(paths)


def test_a_tenant_runs_commands_and_moves_files(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            pod = await client.create_agent(backend="local", env={"TASK": "refund"})
            result = await pod.exec(["sh", "-c", "echo $TASK; cat; echo oops >&2; exit 3"], stdin=b"in")
            assert isinstance(result, ExecResult)
            assert (result.exit_code, result.stdout, result.stderr) == (3, "refund\nin", "oops\n")
            kinds = [event.kind async for event in pod.exec_stream(["sh", "-c", "echo a; echo b >&2"])]
            assert kinds[-1] == "exit" and {"stdout", "stderr"} <= set(kinds)
            work = (await pod.exec(["pwd"])).stdout.strip()  # the test double's files are the host's
            assert await pod.files.write(f"{work}/f.bin", bytes(range(256))) == 256
            assert await pod.files.read(f"{work}/f.bin") == bytes(range(256))
            assert [info.id for info in await client.list()] == [pod.id]
            await pod.pause()
            assert (await pod.info()).state == "paused"
            await pod.resume()
            await pod.destroy()
            assert await client.list() == []
            with pytest.raises(NotFound) as missing:
                await pod.info()
            assert missing.value.pod_id == pod.id

    serve(paths, scenario)


def test_another_tenant_sees_nothing_and_bad_tokens_are_refused(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, *_: object) -> None:
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            AsyncClient("http://podbay", token_b, transport=transport) as b,
            AsyncClient("http://podbay", "pb_wrong", transport=transport) as stranger,
        ):
            pod = await a.create_agent(backend="local")
            assert await b.list() == []
            with pytest.raises(NotFound):
                await b.get(pod.id)
            with pytest.raises(Unauthorized):
                await stranger.list()
            async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
                answer = await raw.get("/pods")
                assert answer.status_code == 401
                assert answer.json()["error"]["type"] == "Unauthorized"
            await pod.destroy()

    serve(paths, scenario)


def test_bad_requests_answer_in_the_error_shape(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay", headers=headers) as raw:
            for body, field in [
                (b"{not json", None),
                (b'{"backend": "local", "colour": "red"}', "colour"),
                (b'{"backend": "local", "memory_mib": -5}', "memory_mib"),
                (b'{"backend": "local", "preload": "/etc/shadow"}', "preload"),
                (b'{"backend": "nope"}', "backend"),
            ]:
                answer = await raw.post("/pods", content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 422, answer.text
                error = answer.json()["error"]
                assert error["type"] == "InvalidSpec"
                if field is not None:
                    assert error["field"] == field, error
            missing = await raw.get("/no/such/route")
            assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFound"
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            with pytest.raises(InvalidSpec) as bad:
                await client.create_agent(backend="local", vcpus=0)
            assert bad.value.field == "vcpus"

    serve(paths, scenario)


def test_the_registry_lives_in_the_state_root(paths: PodbayPaths) -> None:
    async def scenario(*_: object) -> None:
        assert (paths.state / "server.db").exists()

    serve(paths, scenario)
    assert Path(paths.state / "server.db").stat().st_size > 0


def test_hostile_bodies_are_refused_with_4xx_never_500(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay", headers=headers) as raw:
            for body in [
                b'{"backend": "local", "context": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                b'{"backend": "local", "context": {"a": NaN}}',
                b'{"backend": "local", "env": {"PODBAY_POD_ID": "forged"}}',
                b"\xff\xfe",
                b"",
            ]:
                answer = await raw.post("/pods", content=body)
                assert 400 <= answer.status_code < 500, answer.text
                assert answer.json()["error"]["type"] == "InvalidSpec"
            assert (await raw.request("PATCH", "/pods")).status_code == 405

    serve(paths, scenario)


def test_a_pod_times_out_over_the_api(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, *_: object) -> None:
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            AsyncClient("http://podbay", token_b, transport=transport) as b,
        ):
            pod = await a.create_agent(backend="local", timeout_s=3600)
            info = await pod.info()
            assert info.spec.timeout_s == 3600 and info.expires_at is not None
            with pytest.raises(InvalidSpec) as bad:
                await pod.set_timeout(0)
            assert bad.value.field == "timeout_s"
            async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
                auth = {"Authorization": f"Bearer {token_a}"}
                for body in ('{"timeout_s": -1}', '{"timeout_s": 1e9}', '{"seconds": 5}', "{}"):
                    answer = await raw.post(f"/pods/{pod.id}/timeout", content=body, headers=auth)
                    assert answer.status_code == 422, body
                    assert answer.json()["error"]["type"] == "InvalidSpec"
                answer = await raw.post(f"/pods/{pod.id}/timeout", json={"timeout_s": 7200}, headers=auth)
                assert answer.status_code == 200
                assert answer.json()["expires_at"] > info.expires_at + 3000
            with pytest.raises(NotFound):
                await AsyncRemotePod(b, info).set_timeout(1)  # another tenant's pod: 404
            await pod.set_timeout(0.5)
            for _ in range(200):
                if not await a.list():
                    break
                await asyncio.sleep(0.05)
            assert await a.list() == []
            with pytest.raises(NotFound, match=r"timeout after 0\.5 s") as missing:
                await pod.info()
            assert missing.value.pod_id == pod.id

    serve(paths, scenario)


def test_the_pod_list_filters_by_state_and_backend(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            running = await client.create_agent(backend="local")
            paused = await client.create_agent(backend="local")
            await paused.pause()
            assert [info.id for info in await client.list(state=PodState.PAUSED)] == [paused.id]
            assert [info.id for info in await client.list(state=PodState.RUNNING)] == [running.id]
            assert len(await client.list(backend="local")) == 2
            assert await client.list(backend="qemu") == []
            with pytest.raises(InvalidSpec) as bad:
                await client._request("GET", "/pods", params={"state": "sleeping"})
            assert bad.value.field == "state"
            await paused.destroy()
            await running.destroy()

    serve(paths, scenario)
