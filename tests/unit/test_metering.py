"""Metering without VMs or sleeps: a pod of the local test double on a clock the test moves, priced exactly;
the service records usage when a pod ends and shows each tenant only its own."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pytest

from podbay import AsyncClient, Cost, NotFound, PriceTable, Usage
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform
from podbay.server import create_app
from podbay.server.registry import Registry
from podbay.server.usage import UsageLedger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


PRICES = PriceTable(
    currency="EUR",
    vcpu_second=Decimal("0.001"),
    memory_mib_second=Decimal("0.00001"),
    storage_mib_hour=Decimal("0.0001"),
    database_gib=Decimal("2"),
)


def test_usage_arithmetic_on_a_known_clock_with_paused_time_excluded_from_vcpu(paths: PodbayPaths) -> None:
    clock = FakeClock()

    async def main() -> tuple[Usage, Usage]:
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}, clock=clock) as platform:
            ended: list[Usage] = []
            platform.on_pod_end(ended.append)
            pod = await platform.create_agent(backend="local", vcpus=2, memory_mib=512, disk_mib=1024)
            clock.now += 100  # running 100 s
            await pod.pause()
            clock.now += 50  # paused 50 s
            live = pod.usage()
            assert live.ended_at is None and live.paused_s == 50 and live.vcpu_seconds == 200
            await pod.resume()
            clock.now += 30  # running 30 s more
            await pod.destroy()
            clock.now += 1000  # after the end nothing accrues
            assert ended == [pod.usage()]
            return live, pod.usage()

    _, usage = asyncio.run(main())
    assert (usage.alive_s, usage.paused_s) == (180, 50)
    assert usage.vcpu_seconds == 2 * 130  # the 50 paused seconds are not vCPU time
    assert usage.memory_mib_seconds == 512 * 180  # memory is held while paused
    assert usage.storage_mib_hours == 1024 * 180 / 3600 == 51.2
    assert usage.database_bytes == 0  # no database
    assert usage.ended_at is not None and usage.ended_at == pytest.approx(usage.started_at + 180)
    cost = usage.cost(PRICES)
    assert cost == Cost(
        currency="EUR",
        vcpu=Decimal("0.26"),
        memory=Decimal("0.9216"),
        storage=Decimal("0.00512"),
        database=Decimal(0),
        total=Decimal("1.18672"),
    )


def test_storage_counts_the_volume_and_the_database_is_its_allocated_size() -> None:
    usage = Usage(
        pod_id="pod-x",
        started_at=0,
        ended_at=3600,
        vcpus=1,
        memory_mib=256,
        storage_mib=1024 + 256,
        alive_s=3600,
        paused_s=0,
        vcpu_seconds=3600,
        memory_mib_seconds=256 * 3600,
        storage_mib_hours=1280,
        database_bytes=3 << 29,  # 1.5 GiB
    )
    assert usage.cost(PRICES).database == Decimal(3)
    assert usage.cost().currency == "USD"  # the default table


def test_a_price_table_loads_from_json_with_defaults_and_refuses_unknown_fields(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "prices.json"
    path.write_text('{"currency": "EUR", "vcpu_second": "0.00002"}')
    table = PriceTable.load(path)
    assert table.vcpu_second == Decimal("0.00002") and table.database_gib == PriceTable().database_gib
    path.write_text('{"per_cpu": 1}')
    with pytest.raises(ValueError):
        PriceTable.load(path)


def _serve(paths: PodbayPaths, scenario: object, clock: FakeClock) -> tuple[str, str]:
    registry = Registry(paths.state / "server.db")
    token_a, _ = registry.create_token("acme")
    token_b, _ = registry.create_token("globex")

    async def main() -> None:
        platform = AsyncPlatform(paths, backends={"local": LocalProcessBackend()}, clock=clock)
        app = create_app(platform=platform, prices=PRICES)
        async with app.router.lifespan_context(app):
            await scenario(httpx.ASGITransport(app=app), token_a, token_b)  # type: ignore[operator]

    asyncio.run(main())
    return token_a, token_b


def test_the_service_records_usage_at_the_end_per_tenant_only(paths: PodbayPaths) -> None:
    clock = FakeClock()
    ids: dict[str, str] = {}

    async def scenario(transport: httpx.ASGITransport, token_a: str, token_b: str) -> None:
        async with (
            AsyncClient("http://podbay", token_a, transport=transport) as a,
            AsyncClient("http://podbay", token_b, transport=transport) as b,
        ):
            pod = await a.create_agent(backend="local", vcpus=1, memory_mib=256, disk_mib=64)
            ids["a"] = pod.id
            clock.now += 10
            live = await a.usage(pod.id)  # a running pod: its usage so far
            assert live.pods[0].ended_at is None and live.pods[0].vcpu_seconds == 10
            with pytest.raises(NotFound):  # another tenant's pod answers as one that does not exist
                await b.usage(pod.id)
            await pod.destroy()
            clock.now += 99  # nothing accrues after the end
            report = await a.usage(pod.id)  # survives the pod's end
            assert report.pods[0].vcpu_seconds == 10 and report.pods[0].tenant == "acme"
            assert report.cost.total == Decimal("0.001") * 10 + Decimal("0.00001") * 2560 + Decimal(
                repr(64 * 10 / 3600)
            ) * Decimal("0.0001")
            assert report.prices == PRICES
            with pytest.raises(NotFound):
                await b.usage(pod.id)
            assert (await b.usage()).pods == []  # a tenant's range holds only its own pods
            other = await b.create_agent(backend="local")
            ids["b"] = other.id
            await other.destroy()
            mine = await a.usage(start=0, end=time.time() + 60)
            assert [item.pod_id for item in mine.pods] == [pod.id] and mine.totals.pods == 1
            assert mine.totals.vcpu_seconds == 10 and mine.cost == report.cost
            assert (await a.usage(start=time.time() + 60)).pods == []
            async with httpx.AsyncClient(transport=transport, base_url="http://podbay") as raw:
                bad = await raw.get(
                    "/usage", params={"from": 10, "to": 5}, headers={"Authorization": f"Bearer {token_a}"}
                )
                assert bad.status_code == 422 and bad.json()["error"]["field"] == "from"
                assert (await raw.get("/usage")).status_code == 401

    _serve(paths, scenario, clock)
    ledger = UsageLedger(Registry(paths.state / "server.db"))  # read back after the server stopped
    assert [usage.pod_id for usage in ledger.of_tenant("acme")] == [ids["a"]]
    assert [usage.pod_id for usage in ledger.of_tenant("globex")] == [ids["b"]]
    assert ledger.of_pod("globex", ids["a"]) is None


def test_shutdown_records_the_usage_of_pods_still_running(paths: PodbayPaths) -> None:
    clock = FakeClock()
    ids: list[str] = []

    async def scenario(transport: httpx.ASGITransport, token_a: str, _: str) -> None:
        async with AsyncClient("http://podbay", token_a, transport=transport) as a:
            ids.append((await a.create_agent(backend="local", vcpus=3)).id)
            clock.now += 7

    _serve(paths, scenario, clock)
    (usage,) = UsageLedger(Registry(paths.state / "server.db")).of_tenant("acme")
    assert (usage.pod_id, usage.vcpu_seconds) == (ids[0], 21)


def _record(ledger: UsageLedger, pod_id: str, ended_at: float) -> None:
    ledger.registry.add_pod(pod_id, "acme")
    ledger.record(
        Usage(
            pod_id=pod_id,
            started_at=ended_at - 10,
            ended_at=ended_at,
            vcpus=1,
            memory_mib=64,
            storage_mib=64,
            alive_s=10,
            paused_s=0,
            vcpu_seconds=10,
            memory_mib_seconds=640,
            storage_mib_hours=64 * 10 / 3600,
            database_bytes=0,
        )
    )


def test_a_time_range_holds_the_pods_that_ended_in_it(paths: PodbayPaths) -> None:
    registry = Registry(paths.state / "server.db")
    registry.create_token("acme")
    ledger = UsageLedger(registry)
    for name, ended in [("pod-1", 100.0), ("pod-2", 200.0), ("pod-3", 300.0)]:
        _record(ledger, name, ended)
    assert [u.pod_id for u in ledger.of_tenant("acme", 100, 300)] == ["pod-1", "pod-2"]  # [from, to)
    assert [u.pod_id for u in ledger.of_tenant("acme", 150)] == ["pod-2", "pod-3"]
    assert [u.pod_id for u in ledger.of_tenant("acme", None, 150)] == ["pod-1"]
    assert ledger.of_tenant("globex") == []
    assert not ledger.record(ledger.of_tenant("acme")[0].model_copy(update={"pod_id": "unowned", "tenant": None}))
