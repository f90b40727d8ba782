"""Tenants' named volumes over the app in-process (the local test double, no VM): each tenant's own namespace,
404 for another's, 409 while a pod holds one, volume quotas, bad input; and no host detail (path, pid, the
volume's host name) in any answer a tenant gets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from podbay import AsyncClient, Conflict, HostError, InvalidSpec, NotFound, QuotaExceeded
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
from podbay.server.redact import _HOST_IDS, HIDDEN_PATH, Redactor
from podbay.server.registry import HOST_VOLUME_PREFIX, Registry
from tests.unit.server_double import LOCAL, raw, serve


def host_images(paths: PodbayPaths) -> list[str]:
    return sorted(path.stem for path in paths.volumes.glob("*.ext4"))


def test_each_tenant_has_its_own_namespace_and_never_reaches_anothers(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, _: Registry) -> None:
        async with raw(transport, token_a) as a, raw(transport, token_b) as b:
            made = await a.post("/volumes", json={"name": "customer-42", "size_mib": 32})
            assert made.status_code == 201, made.text
            assert made.json()["name"] == "customer-42" and made.json()["size_mib"] == 32
            # globex's "customer-42" does not exist: exactly the answer of a name nobody has
            theirs, nobodys = await b.get("/volumes/customer-42"), await b.get("/volumes/customer-43")
            assert theirs.status_code == nobodys.status_code == 404
            assert theirs.json()["error"]["message"].replace("42", "43") == nobodys.json()["error"]["message"]
            assert (await b.delete("/volumes/customer-42")).status_code == 404
            assert (await b.get("/volumes")).json() == []
            # ... and globex may make its own, a different volume on the host
            assert (await b.post("/volumes", json={"name": "customer-42", "size_mib": 16})).status_code == 201
            assert [v["size_mib"] for v in (await a.get("/volumes")).json()] == [32]
            assert [v["size_mib"] for v in (await b.get("/volumes")).json()] == [16]
            images = host_images(paths)
            assert len(images) == 2 and all(name.startswith(HOST_VOLUME_PREFIX) for name in images)
            again = await a.post("/volumes", json={"name": "customer-42"})
            assert again.status_code == 409 and again.json()["error"]["type"] == "Conflict"

    serve(paths, scenario)


def test_a_pod_takes_the_tenants_volume_by_name_and_delete_waits_for_it(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, _: Registry) -> None:
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            AsyncClient("http://podbay", token_b, transport=transport) as b,
        ):
            pod = await a.create_agent(memory_db=True, volume="customer-42", volume_mib=32, **LOCAL)  # made now
            info = await pod.info()
            assert info.volume == "customer-42" and info.spec.volume == "customer-42"
            assert [(v.name, v.attached) for v in await a.volumes()] == [("customer-42", True)]
            with pytest.raises(Conflict, match="'customer-42'") as held:
                await a.delete_volume("customer-42")
            assert HOST_VOLUME_PREFIX not in str(held.value)
            with pytest.raises(Conflict, match="'customer-42'") as taken:  # one pod at a time
                await a.create_agent(memory_db=True, volume="customer-42", **LOCAL)
            assert HOST_VOLUME_PREFIX not in str(taken.value)
            other = await b.create_agent(memory_db=True, volume="customer-42", **LOCAL)  # globex's own
            assert (await other.info()).volume == "customer-42"
            await pod.destroy()
            assert (await a.volume("customer-42")).attached is False
            again = await a.create_agent(memory_db=True, volume="customer-42", **LOCAL)  # the same volume
            assert len(await a.volumes()) == 1
            await again.destroy()
            deleted = await a.delete_volume("customer-42")
            assert deleted.name == "customer-42"
            with pytest.raises(NotFound):
                await a.volume("customer-42")
            assert [v.name for v in await b.volumes()] == ["customer-42"]  # globex's is untouched
            await other.destroy()

    serve(paths, scenario)


def test_volume_quotas_count_volumes_and_their_sizes(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, registry: Registry) -> None:
        registry.set_quota("acme", {"volumes": 1})
        async with raw(transport, token_a) as a, AsyncClient("http://podbay", token_a, transport=transport) as sdk:
            pod = await sdk.create_agent(memory_db=True, volume="v1", volume_mib=64, **LOCAL)
            refused = await a.post("/pods", json={**LOCAL, "memory_db": True, "volume": "v2"})
            assert refused.status_code == 429, refused.text
            message = refused.json()["error"]["message"]
            assert "tenant acme: 1 volumes + 1 = 2 > quota 1" in message and "--volumes" in message
            with pytest.raises(QuotaExceeded, match="1 volumes \\+ 1 = 2 > quota 1"):
                await sdk.create_volume("v3", 16)
            await pod.destroy()
            assert (await a.post("/pods", json={**LOCAL, "memory_db": True, "volume": "v1"})).status_code == 201

            registry.set_quota("acme", {"volumes": None, "volume_mib": 100})
            refused = await a.post("/volumes", json={"name": "v4", "size_mib": 40})
            assert refused.status_code == 429
            assert "64 MiB of volumes + 40 MiB = 104 MiB > quota 100 MiB" in refused.json()["error"]["message"]
            assert (await a.post("/volumes", json={"name": "v4", "size_mib": 36})).status_code == 201
            assert [v["name"] for v in (await a.get("/volumes")).json()] == ["v1", "v4"]
        async with raw(transport, token_b) as b:  # globex has no quota
            for name in ("v1", "v2", "v3"):
                assert (await b.post("/volumes", json={"name": name, "size_mib": 64})).status_code == 201

    serve(paths, scenario)


def test_bad_volume_requests_name_the_field(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, __: Registry) -> None:
        async with raw(transport, token_a) as a:
            for body, field in [
                ({"name": "../etc"}, "name"),
                ({"name": "Customer"}, "name"),
                ({"name": ""}, "name"),
                ({}, "name"),
                ({"name": "ok", "size_mib": -1}, "size_mib"),
                ({"name": "ok", "size_mib": 10**9}, "size_mib"),
                ({"name": "ok", "size_mib": "big"}, "size_mib"),
                ({"name": "ok", "colour": "red"}, "colour"),
            ]:
                answer = await a.post("/volumes", json=body)
                assert answer.status_code == 422, (body, answer.text)
                assert answer.json()["error"]["type"] == "InvalidSpec"
                assert answer.json()["error"]["field"] == field, (body, answer.json())
            no_db = await a.post("/pods", json={**LOCAL, "volume": "v1"})
            assert no_db.status_code == 422 and no_db.json()["error"]["field"] == "volume"
            bad = await a.post("/pods", json={**LOCAL, "memory_db": True, "volume": "../x"})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "volume"
            assert (await a.get("/volumes")).json() == []
        async with AsyncClient("http://podbay", token_a, transport=transport) as sdk:
            with pytest.raises(InvalidSpec) as refused:
                await sdk.create_volume("ok", size_mib=0)
            assert refused.value.field == "size_mib"
        assert host_images(paths) == []

    serve(paths, scenario)


def _host_details(document: Any, where: str = "") -> list[str]:
    """Keys that carry a host pid or file, with a value, anywhere in a JSON document."""
    found = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("pid", "console_log", "path") and value not in (None, ""):
                found.append(f"{where}.{key}={value!r}")
            found += _host_details(value, f"{where}.{key}")
    elif isinstance(document, list):
        for index, item in enumerate(document):
            found += _host_details(item, f"{where}[{index}]")
    return found


def test_no_tenant_answer_names_a_host_path_pid_or_host_volume(paths: PodbayPaths) -> None:
    answers: list[httpx.Response] = []

    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, __: Registry) -> None:
        async with raw(transport, token_a) as a:

            async def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
                answer = await a.request(method, url, **kwargs)
                answers.append(answer)
                return answer

            pod = (await call("POST", "/pods", json={**LOCAL, "memory_db": True, "volume": "kept"})).json()["id"]
            plain = (await call("POST", "/pods", json={**LOCAL, "memory_db": True})).json()["id"]
            started = await call("POST", f"/pods/{pod}/processes", json={"argv": ["sh", "-c", "echo $$"]})
            process = f"/pods/{pod}/processes/{started.json()['id']}"
            for method, url, kwargs in [
                ("GET", f"{process}/output", {}),
                ("GET", process, {}),
                ("GET", f"/pods/{pod}/processes", {}),
                ("GET", f"/pods/{pod}/trace", {}),
                ("GET", f"/pods/{pod}/events", {}),
                ("GET", f"/pods/{pod}/console", {}),
                ("GET", f"/pods/{pod}/files/list", {"params": {"path": "/"}}),
                ("GET", "/snapshots", {}),
                ("GET", "/pods", {}),
                ("GET", f"/pods/{pod}", {}),
                ("POST", f"/pods/{pod}/pause", {}),
                ("POST", f"/pods/{pod}/resume", {}),
                ("POST", f"/pods/{pod}/timeout", {"json": {"timeout_s": 600}}),
                ("POST", f"/pods/{pod}/exec", {"json": {"argv": ["true"]}}),
                ("POST", f"/pods/{pod}/snapshot", {"json": {"name": "s1"}}),  # 501 from the test double
                ("POST", f"/pods/{pod}/fork", {"json": {"n": 1}}),
                ("POST", "/snapshots/none/restore", {}),
                ("GET", "/usage", {"params": {"pod": pod}}),
                ("GET", "/volumes", {}),
                ("GET", "/volumes/kept", {}),
                ("DELETE", "/volumes/kept", {}),  # 409: held
                ("GET", f"/pods/{pod}/files", {"params": {"path": "/nonexistent/file"}}),
                ("DELETE", f"/pods/{plain}", {}),
                ("DELETE", f"/pods/{pod}", {}),
                ("GET", f"/pods/{pod}/trace", {}),  # ended: from its post-mortem
                ("GET", f"/pods/{pod}/events", {}),
                ("GET", f"/pods/{pod}/console", {}),
                ("GET", "/postmortems", {}),
                ("GET", f"/postmortems/{pod}", {}),
                ("GET", "/usage", {}),
                ("DELETE", "/volumes/kept", {}),
            ]:
                await call(method, url, **kwargs)

    serve(paths, scenario)
    assert {answer.status_code for answer in answers} >= {200, 201, 404, 409, 501}
    roots = [str(paths.state), str(paths.cache), str(paths.state.resolve())]
    for answer in answers:
        where = f"{answer.request.method} {answer.request.url.path}"
        text = answer.text
        assert not any(root in text for root in roots), (where, text)
        assert HOST_VOLUME_PREFIX not in text, (where, text)
        if answer.headers.get("content-type", "").startswith("application/json"):
            assert _host_details(json.loads(text)) == [], where
        else:  # the console log, NDJSON output: free text
            assert not _HOST_IDS.search(text), (where, text)
    pod_infos = [
        answer.json()
        for answer in answers
        if answer.request.url.path.startswith("/pods") and answer.headers.get("content-type") == "application/json"
    ]
    assert any(isinstance(info, dict) and info.get("volume") == "kept" for info in pod_infos)
    postmortems = [answer.json() for answer in answers if answer.request.url.path.startswith("/postmortems/")]
    assert [found["spec"]["volume"] for found in postmortems] == ["kept"], "the tenant's own name for its volume"


def test_the_redactor_scrubs_paths_under_the_roots_and_host_ids(tmp_path: Path) -> None:
    redactor = Redactor([tmp_path / "state", tmp_path / "cache"])
    text = (
        f"mkfs.ext4 failed for {tmp_path}/state/volumes/tv-0123.ext4: no space; "
        f"console log ({tmp_path}/state/pods/pod-1/console.log): QEMU pid 4242 died as uid 1001; /data/memory.db; "
        "volume 'tv-0123456789abcdef0123' is attached"
    )
    scrubbed = redactor.text(text)
    assert str(tmp_path) not in scrubbed and "4242" not in scrubbed and "1001" not in scrubbed
    assert HOST_VOLUME_PREFIX not in scrubbed
    assert scrubbed.count(HIDDEN_PATH) == 2
    assert "/data/memory.db" in scrubbed, "a path inside the pod is the tenant's own"


def test_a_volume_made_for_a_pod_that_fails_to_start_is_removed_again(
    paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_start(*_: object, **__: object) -> None:
        raise HostError("the sandbox failed to start (the test double refuses)")

    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        async with raw(transport, token_a) as a:
            assert (await a.post("/volumes", json={"name": "asked-for", "size_mib": 32})).status_code == 201
            monkeypatch.setattr(LocalProcessBackend, "start", no_start)
            for name in ("fresh", "asked-for"):
                failed = await a.post("/pods", json={**LOCAL, "memory_db": True, "volume": name})
                assert failed.status_code == 500 and "failed to start" in failed.text, failed.text
            assert [volume["name"] for volume in (await a.get("/volumes")).json()] == ["asked-for"]
            assert registry.volume("acme", "fresh") is None
            assert len(host_images(paths)) == 1, "the image of the one made by the failed create is gone"

    serve(paths, scenario)


def test_a_failed_create_leaves_the_new_volume_that_another_create_is_starting_a_pod_on(
    paths: PodbayPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = LocalProcessBackend.start
    starts = 0

    async def first_fails(self: LocalProcessBackend, config: Any) -> Any:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise HostError("the sandbox failed to start (the test double refuses the first)")
        return await real_start(self, config)

    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        monkeypatch.setattr(LocalProcessBackend, "start", first_fails)
        body = {**LOCAL, "memory_db": True, "volume": "shared"}
        async with raw(transport, token_a) as a:
            answers = await asyncio.gather(a.post("/pods", json=body), a.post("/pods", json=body))
            assert sorted(answer.status_code for answer in answers) == [201, 500]
            assert [volume["name"] for volume in (await a.get("/volumes")).json()] == ["shared"]
            (made,) = [answer.json()["id"] for answer in answers if answer.status_code == 201]
            wrote = await a.post(f"/pods/{made}/exec", json={"argv": ["sh", "-c", 'test -n "$PODBAY_DB_PATH"']})
            assert wrote.json()["exit_code"] == 0
            assert (await a.delete(f"/pods/{made}")).status_code == 200
        assert registry.volume("acme", "shared") is not None and len(host_images(paths)) == 1

    serve(paths, scenario)
