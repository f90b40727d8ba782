"""The platform's side of server databases, over the local test double and a recording provider: the grant
reaches the guest's environment, the guest's loopback listener leads to that grant's `connect()` and nowhere
else, every failure releases what was made, the ledger lets the reaper clean up after a dead controller.

The real providers (Postgres, Redis) and real backends are in tests/integration/test_pod_databases.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from podbay import AsyncPlatform, DatabaseUnavailable, GuestError, InvalidSpec, PodSpec
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
from podbay.state.servers import Branching, DatabaseGrant, DatabaseInfo

CLIENT = """
import os, socket
with socket.create_connection(("127.0.0.1", int(os.environ["PODBAY_DB_PORT"])), timeout=10) as s:
    s.sendall(b"ping")
    s.shutdown(socket.SHUT_WR)
    print(s.recv(100).decode())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RecordingProvider:
    """A provider whose "database" is an answer naming the grant: what a connection reaches shows whose it is."""

    kind = "postgres"

    def __init__(self) -> None:
        self.guest_port = free_port()  # the local double's "guest loopback" is the host's
        self.live: dict[str, DatabaseGrant] = {}
        self.released: list[str] = []
        self.fail_provision = False

    async def start(self) -> None:
        return None

    async def provision(self, pod_id: str, template: str | None, retain: bool) -> DatabaseGrant:
        if self.fail_provision:
            raise DatabaseUnavailable("postgres: out of connection slots")
        name = pod_id.replace("-", "_")
        # The local double's pods share the host's loopback: the first pod gets `guest_port`, later ones their own.
        port = self.guest_port if not self.live and not self.released else free_port()
        grant = DatabaseGrant(
            provider="postgres",
            pod_id=pod_id,
            name=name,
            role=name,
            secret="s3cret-" + name,
            guest_port=port,
            url=f"postgresql://{name}:s3cret-{name}@127.0.0.1:{port}/{name}",
            retain=retain,
            template=template,
        )
        self.live[pod_id] = grant
        return grant

    async def release(self, grant: DatabaseGrant) -> None:
        self.live.pop(grant.pod_id, None)
        self.released.append(grant.pod_id)

    async def connect(self, grant: DatabaseGrant) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            asked = await reader.read()
            writer.write(asked + b" from " + grant.name.encode())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        return await asyncio.open_connection("127.0.0.1", port)

    async def branch(self, grant: DatabaseGrant, pod_ids: Sequence[str]) -> Branching:
        raise NotImplementedError

    async def save(self, grant: DatabaseGrant, dest: Path) -> Branching:
        raise NotImplementedError

    async def load(self, source: Path, pod_id: str, retain: bool) -> DatabaseGrant:
        raise NotImplementedError

    async def export(self, pod_id: str, dest: Path) -> None:
        raise NotImplementedError

    async def databases(self) -> list[DatabaseInfo]:
        return []

    async def drop(self, pod_id: str) -> None:
        self.live.pop(pod_id, None)

    async def close(self) -> None:
        return None

    async def discard(self, pod_id: str) -> None:
        self.live.pop(pod_id, None)
        self.released.append(pod_id)


@pytest.fixture
def paths(tmp_path: Path) -> PodbayPaths:
    return PodbayPaths(cache=tmp_path / "cache", state=tmp_path / "state")


def platform_with(paths: PodbayPaths, provider: RecordingProvider) -> AsyncPlatform:
    return AsyncPlatform(paths, backends={"local": LocalProcessBackend()}, databases={"postgres": provider})


def test_the_guest_reaches_its_own_database_through_its_listener(paths: PodbayPaths) -> None:
    provider = RecordingProvider()

    async def scenario() -> None:
        async with platform_with(paths, provider) as platform:
            pod = await platform.create_agent(backend="local", db="postgres")
            name = pod.id.replace("-", "_")
            result = await pod.exec(["python3", "-c", CLIENT])
            assert result.exit_code == 0, result.stderr
            assert result.stdout.strip() == f"ping from {name}"
            env = await pod.exec(["python3", "-c", "import os; print(os.environ['PODBAY_DB_URL'])"])
            assert env.stdout.strip() == provider.live[pod.id].url  # the whole URL, secret included, in the guest
            shown = pod.info().db_url
            assert shown == f"postgresql://{name}@127.0.0.1:{provider.guest_port}/{name}"  # no secret outside
            assert [phase.name for phase in pod.info().trace].count("tunnel") == 1
            ledger = json.loads((paths.state / "databases" / f"{pod.id}.json").read_text())
            assert ledger["grant"]["name"] == name
            await pod.destroy()
            assert provider.released == [pod.id]
            assert not (paths.state / "databases" / f"{pod.id}.json").exists()

    asyncio.run(scenario())


def test_a_failed_provisioning_leaves_no_pod_and_no_ledger_entry(paths: PodbayPaths) -> None:
    provider = RecordingProvider()
    provider.fail_provision = True

    async def scenario() -> None:
        async with platform_with(paths, provider) as platform:
            with pytest.raises(DatabaseUnavailable, match="connection slots"):
                await platform.create_agent(backend="local", db="postgres")
            assert platform.list() == []
            assert list((paths.state / "databases").glob("*.json")) == []
            assert list((paths.state / "pods").glob("pod-*")) == []

    asyncio.run(scenario())


def test_a_pod_that_fails_after_provisioning_releases_its_database(paths: PodbayPaths) -> None:
    provider = RecordingProvider()
    taken = socket.socket()
    taken.bind(("127.0.0.1", provider.guest_port))  # the guest's port is taken: its listener cannot start
    taken.listen()

    async def scenario() -> None:
        async with platform_with(paths, provider) as platform:
            with pytest.raises(GuestError, match=f"cannot listen on 127.0.0.1:{provider.guest_port} .*in use"):
                await platform.create_agent(backend="local", db="postgres")
            assert provider.live == {}
            assert len(provider.released) == 1
            assert list((paths.state / "databases").glob("*.json")) == []

    try:
        asyncio.run(scenario())
    finally:
        taken.close()


def test_the_reaper_releases_the_databases_of_pods_whose_controller_died(paths: PodbayPaths) -> None:
    provider = RecordingProvider()

    async def scenario() -> None:
        async with platform_with(paths, provider) as platform:
            grant = await provider.provision("pod-0123456789ab", None, False)
            platform.databases.adopt(grant)  # in the ledger, as a pod of a controller that died
            live = await platform.create_agent(backend="local", db="postgres")
            await platform.reap_orphans()
            assert provider.released == ["pod-0123456789ab"]
            assert live.id in provider.live  # a live pod's database is left alone

    asyncio.run(scenario())


def test_one_database_per_pod_and_the_fields_that_need_one() -> None:
    with pytest.raises(InvalidSpec) as both:
        PodSpec.parse(db="redis", memory_db=True)
    assert both.value.field == "db"
    with pytest.raises(InvalidSpec) as template:
        PodSpec.parse(db="redis", db_template="shop")
    assert template.value.field == "db_template"
    with pytest.raises(InvalidSpec) as unknown:
        PodSpec.parse(db="mysql")
    assert unknown.value.field == "db"


def test_a_re_adopted_pod_reaches_its_database_again_and_a_lost_ones_is_released(paths: PodbayPaths) -> None:
    from podbay.isolation.fake import ReattachableLocalBackend

    from .test_recover import die, kill, orphan

    provider = RecordingProvider()
    backend = ReattachableLocalBackend()

    async def scenario() -> None:
        first = AsyncPlatform(paths, backends={"local": backend}, databases={"postgres": provider})
        kept = await first.create_agent(backend="local", db="postgres")
        lost = await first.create_agent(backend="local", db="postgres")
        await die(first)
        orphan(paths)
        await kill(lost)
        second = AsyncPlatform(paths, backends={"local": backend}, databases={"postgres": provider})
        async with second:
            recovery = await second.recover()
            assert [pod.id for pod in recovery.adopted] == [kept.id]
            assert provider.released == [lost.id]  # torn down with its pod, by the ledger
            result = await second.get(kept.id).exec(["python3", "-c", CLIENT])
            assert result.stdout.strip() == f"ping from {kept.id.replace('-', '_')}", result.stderr
            assert second.get(kept.id).info().db_url == kept.info().db_url
        assert sorted(provider.released) == sorted([lost.id, kept.id])

    asyncio.run(scenario())
