"""Traces, console logs, events, post-mortems, /metrics, request ids and structured logs of the service,
in-process over the local test double (no VM)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal

import httpx
import pytest

from podbay import AsyncClient, NotFound
from podbay.paths import PodbayPaths
from podbay.server.observability import JsonFormatter, request_id_of
from tests.unit.server_double import local_app, serve


def samples(text: str) -> dict[str, float]:
    """The exposition text's samples: `name{labels}` -> value (the labels as written)."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_a_tenant_reads_its_pods_records_live_and_ended_and_no_one_elses(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, *_: object) -> None:
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            AsyncClient("http://podbay", token_b, transport=transport) as b,
        ):
            pod = await a.create_agent(backend="local")
            await pod.exec(["true"])
            assert (await pod.trace())[0].name == "choose"
            assert [event.kind for event in await pod.events()] == ["created", "exec_started", "exec_ended"]
            assert await pod.console() == ""  # the test double has no console log
            for read in (b.trace, b.events, b.console, b.postmortem):
                with pytest.raises(NotFound):
                    await read(pod.id)  # type: ignore[operator]
            await pod.destroy()
            ended = await a.postmortem(pod.id)
            assert (ended.failed, ended.reason) == (False, "destroyed")
            assert [event.kind for event in await a.events(pod.id)][-1] == "ended"
            assert [phase.name for phase in await a.trace(pod.id)][-1] == "destroy"
            assert [found.pod_id for found in await a.postmortems()] == [pod.id]
            assert await b.postmortems() == []
            for read in (b.trace, b.events, b.console, b.postmortem):
                with pytest.raises(NotFound) as missing:
                    await read(pod.id)  # type: ignore[operator]
                assert "ended" not in str(missing.value)  # says nothing a missing pod would not
            with pytest.raises(NotFound):
                await a.postmortem("pod-000000000000")

    serve(paths, scenario)


def test_a_pod_whose_sandbox_dies_has_a_postmortem_over_the_api(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            pod = await client.create_agent(backend="local")
            platform = transport.app.state.service.platform  # type: ignore[attr-defined]
            pid = platform.get(pod.id).sandbox.info.pid  # the host's pid: from the platform, not the API
            os.kill(pid, signal.SIGKILL)
            for _ in range(400):
                with_postmortem = [found.pod_id for found in await client.postmortems()]
                if with_postmortem:
                    break
                await asyncio.sleep(0.025)
            postmortem = await client.postmortem(pod.id)
            assert postmortem.failed and postmortem.reason.startswith("sandbox died")
            assert str(paths.state) not in postmortem.model_dump_json()
            with pytest.raises(NotFound, match="sandbox died"):
                await pod.info()

    serve(paths, scenario)


def test_metrics_count_requests_pods_and_errors_without_tenant_labels(
    paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PODBAY_METRICS_TOKEN", raising=False)

    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            pod = await client.create_agent(backend="local")
            await client.create_agent(backend="local", timeout_s=3600)
            await pod.pause()
            with pytest.raises(NotFound):
                await client.get("pod-000000000000")
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
            answer = await raw.get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        found = samples(answer.text)
        assert found['podbay_http_requests_total{method="POST",route="/pods",status="201"}'] == 2
        assert found['podbay_http_requests_total{method="GET",route="/pods/{pod_id}",status="404"}'] == 1
        assert found['podbay_pods{state="running"}'] == 1 and found['podbay_pods{state="paused"}'] == 1
        assert found['podbay_errors_total{type="NotFound"}'] == 1
        assert found['podbay_pod_create_seconds_count{path="cold boot"}'] == 2
        assert found['podbay_pod_create_seconds_bucket{path="cold boot",le="+Inf"}'] == 2
        assert found['podbay_pod_events_total{kind="created"}'] == 2
        assert found['podbay_pod_events_total{kind="failed"}'] == 0
        assert "acme" not in answer.text and "pod-" not in answer.text

    serve(paths, scenario)


def test_metrics_are_hidden_from_remote_clients_unless_they_hold_the_metrics_token(
    paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PODBAY_METRICS_TOKEN", raising=False)

    async def remote(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
            for headers in ({}, {"Authorization": f"Bearer {token}"}):  # a tenant's token is not enough
                answer = await raw.get("/metrics", headers=headers)
                assert answer.status_code == 404 and answer.json()["error"]["type"] == "NotFound"

    serve(paths, remote, client=("203.0.113.9", 4000))
    monkeypatch.setenv("PODBAY_METRICS_TOKEN", "scrape-me")

    async def with_token(transport: httpx.ASGITransport, *_: object) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
            assert (await raw.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 404
            answer = await raw.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
            assert answer.status_code == 200 and "podbay_pods" in answer.text

    serve(paths, with_token, client=("203.0.113.9", 4000))


def test_every_response_carries_a_request_id(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        auth = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
            made = (await raw.get("/healthz")).headers["X-Request-Id"]
            assert re.fullmatch(r"req_[0-9a-f]{16}", made)
            assert (await raw.get("/healthz")).headers["X-Request-Id"] != made
            kept = await raw.get("/pods", headers={**auth, "X-Request-Id": "trace-42.a_b"})
            assert kept.headers["X-Request-Id"] == "trace-42.a_b"
            for error in (await raw.get("/pods"), await raw.get("/nope", headers=auth)):
                assert error.status_code in (401, 404) and error.headers["X-Request-Id"].startswith("req_")
                assert error.json()["error"]["request_id"] == error.headers["X-Request-Id"]
            hostile = await raw.get("/healthz", headers={"X-Request-Id": "a b\tc" + "x" * 100})
            assert hostile.headers["X-Request-Id"].startswith("req_")
        assert request_id_of("x" * 65).startswith("req_") and request_id_of("ok") == "ok"

    serve(paths, scenario)


def test_requests_and_pod_events_are_logged_with_request_tenant_and_pod_ids(
    paths: PodbayPaths, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="podbay")
    created: list[str] = []

    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            created.append((await client.create_agent(backend="local")).id)

    serve(paths, scenario)
    access = [record for record in caplog.records if record.name == "podbay.access"]
    events = [record for record in caplog.records if record.name == "podbay.events"]
    create = next(record for record in access if getattr(record, "route", None) == "/pods")
    assert (create.method, create.status, create.tenant) == ("POST", 201, "acme")  # type: ignore[attr-defined]
    made = next(record for record in events if getattr(record, "event", None) == "created")
    assert (made.pod_id, made.tenant) == (created[0], "acme")  # type: ignore[attr-defined]
    assert made.request_id == create.request_id  # type: ignore[attr-defined]  # the request that made it
    line = json.loads(JsonFormatter().format(made))
    assert {"ts", "level", "logger", "message", "request_id", "tenant", "pod_id", "event"} <= set(line)


def test_an_unexpected_failure_answers_500_with_its_request_id_and_is_counted(paths: PodbayPaths) -> None:
    async def main() -> None:
        app = local_app(paths)

        async def broken() -> None:
            raise RuntimeError("a bug")

        app.add_api_route("/broken", broken)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
                answer = await raw.get("/broken", headers={"X-Request-Id": "bug-1"})
                assert answer.status_code == 500 and answer.headers["X-Request-Id"] == "bug-1"
                error = answer.json()["error"]
                assert error["request_id"] == "bug-1" and "a bug" not in error["message"]
                found = samples((await raw.get("/metrics")).text)
        assert found['podbay_http_requests_total{method="GET",route="/broken",status="500"}'] == 1
        assert found['podbay_errors_total{type="PodbayError"}'] == 1

    asyncio.run(main())


def test_what_the_platform_does_by_itself_is_logged_without_a_stale_request_id(
    paths: PodbayPaths, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="podbay")

    async def scenario(transport: httpx.ASGITransport, token: str, *_: object) -> None:
        async with AsyncClient("http://podbay", token, transport=transport) as client:
            pod = await client.create_agent(backend="local", timeout_s=0.2)  # the create arms the timer
            for _ in range(400):
                if [found for found in await client.postmortems() if found.pod_id == pod.id]:
                    break
                await asyncio.sleep(0.025)

    serve(paths, scenario)
    ended = [record for record in caplog.records if getattr(record, "event", None) == "ended"]
    assert ended and ended[0].tenant == "acme"  # type: ignore[attr-defined]
    assert ended[0].request_id is None  # type: ignore[attr-defined]  # the timer's doing, not the create's
