"""A tenant's snapshots over the app in-process (the local test double cannot snapshot: the snapshots here are
written as a QEMU save would leave them): each tenant lists and deletes only its own (another's answers 404 as
a missing one), no host path is answered, and a delete frees the snapshot quota."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from podbay import AsyncClient, NotFound
from podbay.isolation.qemu.snapshot import SNAPSHOT_FORMAT
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from tests.unit.server_double import LOCAL, raw, serve


def saved(paths: PodbayPaths, name: str, tenant: str, registry: Registry) -> Path:
    """A whole snapshot `name` of `tenant`'s on the host (a 1 MiB streamed save, no disks)."""
    path = paths.state / "snapshots" / name
    path.mkdir(parents=True)
    meta = {
        "format": SNAPSHOT_FORMAT, "kernel": str(paths.cache / "vmlinux"), "rootfs": str(paths.cache / "rootfs"),
        "accelerator": "tcg", "tsc_khz": None, "vcpus": 1, "memory_mib": 256, "ram": "stream",
        "layer_size": None, "disks": [], "frozen": [], "state_bytes": 1 << 20,
    }  # fmt: skip
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "state").write_bytes(b"\0" * (1 << 20))
    registry.add_snapshot(name, tenant)
    return path


def test_each_tenant_lists_and_deletes_only_its_own_snapshots(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str, registry: Registry) -> None:
        mine = saved(paths, "acme-1", "acme", registry)
        theirs = saved(paths, "globex-1", "globex", registry)
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            raw(transport, token_b) as b,
        ):
            (listed,) = await a.snapshots()
            assert (listed.name, listed.memory_mib, listed.path) == ("acme-1", 256, "")
            assert str(paths.state) not in (await b.get("/snapshots")).text
            with pytest.raises(NotFound) as refused:
                await a.delete_snapshot("globex-1")
            assert str(refused.value) == "no snapshot 'globex-1'"  # exactly as a snapshot that does not exist
            with pytest.raises(NotFound):
                await a.delete_snapshot("never-made")
            assert theirs.exists()
            await a.delete_snapshot("acme-1")
            assert not mine.exists() and await a.snapshots() == []
            assert registry.snapshots("acme") == []
            assert [info["name"] for info in (await b.get("/snapshots")).json()] == ["globex-1"]

    serve(paths, scenario)


def test_deleting_a_snapshot_frees_the_quota(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        saved(paths, "kept", "acme", registry)
        registry.set_quota("acme", {"snapshots": 1})
        async with raw(transport, token_a) as a:
            pod = (await a.post("/pods", json=LOCAL)).json()["id"]
            full = await a.post(f"/pods/{pod}/snapshot", json={"name": "next"})
            assert full.status_code == 429 and "1 snapshots + 1 = 2 > quota 1" in full.text
            assert (await a.delete("/snapshots/kept")).status_code == 204
            # the quota passes now: the test double itself cannot snapshot (501)
            assert (await a.post(f"/pods/{pod}/snapshot", json={"name": "next"})).status_code == 501

    serve(paths, scenario)


def test_a_keep_on_failure_snapshot_is_skipped_when_the_snapshot_quota_is_full(paths: PodbayPaths) -> None:
    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str, registry: Registry) -> None:
        saved(paths, "kept", "acme", registry)
        registry.set_quota("acme", {"snapshots": 1})
        async with raw(transport, token_a) as a:
            pod = (await a.post("/pods", json={**LOCAL, "keep_on_failure": True})).json()["id"]
            killed = await a.post(f"/pods/{pod}/exec", json={"argv": ["sh", "-c", "kill -9 $$"]})
            assert killed.json()["signal"] == 9  # what the guest's OOM killer does: the pod failed
            assert (await a.delete(f"/pods/{pod}")).status_code == 200
            postmortem = (await a.get(f"/postmortems/{pod}")).json()
            assert postmortem["failed"] and postmortem["snapshot"] is None
            assert postmortem["snapshot_note"].startswith(
                "no snapshot: skipped: tenant acme's snapshot quota is full (1 of 1)"
            ), postmortem["snapshot_note"]

    serve(paths, scenario)
