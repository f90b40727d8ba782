"""The Redis provider against real redis-server processes (run as the `redis` account when the tests run as
root), in a private directory. A client reaches an instance only the way a pod's tunnel does: a local TCP
listener here hands each connection to `provider.connect(grant)`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from podbay.errors import Conflict, DatabaseUnavailable, InvalidSpec, NotFound
from podbay.isolation.supervise import command_lines_mentioning, is_gone
from podbay.state.redis import RedisProvider
from podbay.state.redis_instance import Instance
from podbay.state.servers import DatabaseGrant

pytestmark = pytest.mark.integration
T = TypeVar("T")
REFUSED = "no permissions|not allowed|can't run"  # the ACL's words (DEBUG and MODULE are also off altogether)

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt install redis-server)", allow_module_level=True)


class LoopThread:
    """An event loop in a thread: the provider and the forwarders live there while redis-py (sync) talks."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def db_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: it is under a 0700 directory the redis account cannot pass.
    root = Path(tempfile.mkdtemp(prefix="podbay-redis-"))
    root.chmod(0o755)
    yield root
    leftover = command_lines_mentioning(root)
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert leftover == {}, "every instance must be stopped by the tests that made it"


@pytest.fixture(scope="module")
def provider(db_dir: Path, loop: LoopThread) -> RedisProvider:
    made = RedisProvider(db_dir / "redis")
    loop.run(made.start())
    return made


class Forwarder:
    """A local TCP port whose every connection goes to `provider.connect(grant)`, as a pod's tunnel does."""

    def __init__(self, loop: LoopThread, provider: RedisProvider, grant: DatabaseGrant) -> None:
        self._loop, self._provider, self._grant = loop, provider, grant
        self._server = loop.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._provider.connect(self._grant)
        except ConnectionError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)

    def client(self, password: str | None = None) -> redis.Redis:
        secret = self._grant.secret if password is None else password
        return redis.Redis(host="127.0.0.1", port=self.port, password=secret, socket_timeout=10)

    def close(self) -> None:
        self._loop.run(self._close())  # on the server's own loop: asyncio is not thread-safe

    async def _close(self) -> None:
        self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextlib.contextmanager
def forwarded(loop: LoopThread, provider: RedisProvider, grant: DatabaseGrant) -> Iterator[Forwarder]:
    forwarder = Forwarder(loop, provider, grant)
    try:
        yield forwarder
    finally:
        forwarder.close()


def server_pids(provider: RedisProvider, grant: DatabaseGrant) -> list[int]:
    return [pid for pid in command_lines_mentioning(provider.root / grant.name) if not is_gone(pid)]


def test_a_pod_uses_its_instance_with_its_password_and_nothing_else(loop: LoopThread, provider: RedisProvider) -> None:
    grant = loop.run(provider.provision("pod-0a1b2c", None, retain=False))
    try:
        assert (grant.name, grant.role, grant.guest_port) == ("pod_0a1b2c", "default", 6379)
        assert grant.url == f"redis://default:{grant.secret}@127.0.0.1:6379/0"
        with forwarded(loop, provider, grant) as tunnel:
            client = tunnel.client()
            assert client.set("greeting", "hello") is True
            assert client.get("greeting") == b"hello"
            assert client.eval("return redis.call('INCRBY', KEYS[1], 2)", 1, "n") == 2  # scripts are data commands
            assert sorted(client.keys("*")) == [b"greeting", b"n"]
            assert client.flushdb() is True and client.dbsize() == 0
            with pytest.raises(redis.AuthenticationError):
                tunnel.client(password="not-" + grant.secret).ping()
            with pytest.raises(redis.AuthenticationError):  # the admin user exists, its password is not the pod's
                redis.Redis(host="127.0.0.1", port=tunnel.port, username="podbay", password=grant.secret).ping()

        instance = provider.root / grant.name
        (pid,) = server_pids(provider, grant)
        if os.geteuid() == 0:  # least privilege: never root, and its directory is its own
            assert os.stat(f"/proc/{pid}").st_uid == os.stat(instance).st_uid != 0
        assert instance.stat().st_mode & 0o777 == 0o700
        # The secret is nowhere on disk or on a command line: the configuration holds hashes only.
        for path in instance.iterdir():
            if path.is_file():
                assert grant.secret.encode() not in path.read_bytes(), path.name
        assert grant.secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert "redis.sock" in os.listdir(instance)
    finally:
        loop.run(provider.release(grant))


def test_pods_do_not_see_each_others_keys(loop: LoopThread, provider: RedisProvider) -> None:
    first = loop.run(provider.provision("pod-first", None, retain=False))
    second = loop.run(provider.provision("pod-second", None, retain=False))
    try:
        assert first.secret != second.secret
        with forwarded(loop, provider, first) as one, forwarded(loop, provider, second) as two:
            one.client().set("mine", "first")
            assert two.client().get("mine") is None
            assert two.client().keys("*") == []
            with pytest.raises(redis.AuthenticationError):
                two.client(password=first.secret).ping()
        with pytest.raises(Conflict):  # one instance per pod
            loop.run(provider.provision("pod-first", None, retain=False))
    finally:
        loop.run(provider.release(first))
        loop.run(provider.release(second))


@pytest.mark.parametrize(
    "command",
    [
        ("CONFIG", "GET", "dir"),
        ("CONFIG", "SET", "maxmemory", "0"),
        ("SHUTDOWN", "NOSAVE"),
        ("DEBUG", "SLEEP", "0"),
        ("SAVE",),
        ("BGSAVE",),
        ("ACL", "LIST"),
        ("MODULE", "LIST"),
        ("REPLICAOF", "127.0.0.1", "6380"),
        ("SLAVEOF", "127.0.0.1", "6380"),
        ("MIGRATE", "127.0.0.1", "6380", "k", "0", "1000"),
        ("MONITOR",),
        ("INFO",),
        ("CLIENT", "KILL", "ID", "1"),
        ("CLIENT", "NO-EVICT", "on"),
        ("RESTORE", "k", "0", "x"),
    ],
)
def test_dangerous_commands_are_refused(
    loop: LoopThread, provider: RedisProvider, refused_grant: DatabaseGrant, command: tuple[str, ...]
) -> None:
    with forwarded(loop, provider, refused_grant) as tunnel:
        client = tunnel.client()
        with pytest.raises(redis.ResponseError, match=REFUSED):
            client.execute_command(*command)
        with pytest.raises(redis.ResponseError, match=REFUSED):  # not from a script either
            client.eval(f"return redis.call({', '.join(repr(part) for part in command)})", 0)
        assert client.ping() is True  # still up


@pytest.fixture(scope="module")
def refused_grant(loop: LoopThread, provider: RedisProvider) -> Iterator[DatabaseGrant]:
    grant = loop.run(provider.provision("pod-refused", None, retain=False))
    yield grant
    loop.run(provider.release(grant))


def test_release_without_retain_leaves_nothing(loop: LoopThread, provider: RedisProvider) -> None:
    grant = loop.run(provider.provision("pod-gone", None, retain=False))
    assert server_pids(provider, grant)
    loop.run(provider.release(grant))
    assert server_pids(provider, grant) == []
    assert not (provider.root / grant.name).exists()
    loop.run(provider.release(grant))  # idempotent
    with pytest.raises(ConnectionError):
        loop.run(provider.connect(grant))
    with pytest.raises(NotFound):
        loop.run(provider.export(grant.pod_id, provider.root.parent / "none.rdb"))


def test_release_looks_for_the_server_once_and_stops_it_once(
    loop: LoopThread, provider: RedisProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[str] = []
    shutdowns: list[str] = []
    pids, admin = Instance.pids, Instance.admin

    def counted_pids(instance: Instance, account: Any) -> list[int]:
        scans.append(instance.name)
        return pids(instance, account)

    async def counted_admin(instance: Instance, *command: str, timeout: float = 60.0) -> object:
        if command[:1] == ("SHUTDOWN",):
            shutdowns.append(instance.name)
        return await admin(instance, *command, timeout=timeout)

    monkeypatch.setattr(Instance, "pids", counted_pids)
    monkeypatch.setattr(Instance, "admin", counted_admin)
    for retain in (False, True):
        grant = loop.run(provider.provision(f"pod-once-{int(retain)}", None, retain=retain))
        scans.clear()
        loop.run(provider.release(grant))
        assert scans == shutdowns == [grant.name] and server_pids(provider, grant) == []
        shutdowns.clear()
        if retain:
            loop.run(provider.drop(grant.pod_id))


def test_release_with_retain_keeps_the_data_and_revokes_the_login(
    loop: LoopThread, provider: RedisProvider, db_dir: Path
) -> None:
    grant = loop.run(provider.provision("pod-kept", None, retain=True))
    with forwarded(loop, provider, grant) as tunnel:
        tunnel.client().set("kept-key", "kept-value")
        with pytest.raises(Conflict):  # its pod is live
            loop.run(provider.drop(grant.pod_id))
        loop.run(provider.release(grant))
        with pytest.raises(redis.ConnectionError):  # the old password has nothing left to log in to
            tunnel.client().ping()
    assert server_pids(provider, grant) == []
    assert sorted(os.listdir(provider.root / grant.name)) == ["dump.rdb", "meta.json", "redis.log"]
    loop.run(provider.release(grant))  # idempotent: still retained
    (info,) = [found for found in loop.run(provider.databases()) if found.pod_id == grant.pod_id]
    assert info.retained and info.size_bytes > 0 and info.name == grant.name

    exported = db_dir / "kept.rdb"
    loop.run(provider.export(grant.pod_id, exported))
    assert exported.read_bytes().startswith(b"REDIS") and b"kept-value" in exported.read_bytes()
    restored = loop.run(provider.load(_as_snapshot(exported, db_dir / "kept-snapshot"), "pod-kept2", retain=False))
    try:
        with forwarded(loop, provider, restored) as tunnel:
            assert tunnel.client().get("kept-key") == b"kept-value"
    finally:
        loop.run(provider.release(restored))

    loop.run(provider.drop(grant.pod_id))
    assert not (provider.root / grant.name).exists()
    with pytest.raises(NotFound):
        loop.run(provider.drop(grant.pod_id))


def _as_snapshot(rdb: Path, directory: Path) -> Path:
    directory.mkdir()
    shutil.copyfile(rdb, directory / "dump.rdb")
    return directory


def test_branch_copies_the_instant_and_later_writes_do_not_cross(loop: LoopThread, provider: RedisProvider) -> None:
    parent = loop.run(provider.provision("pod-parent", None, retain=False))
    children: list[DatabaseGrant] = []
    try:
        with forwarded(loop, provider, parent) as tunnel:
            tunnel.client().set("k", "at-the-instant")
            branching = loop.run(provider.branch(parent, ["pod-child1", "pod-child2"]))
            tunnel.client().set("k", "after")  # the parent runs again before the copy is finished
            children = loop.run(branching.finish())
            assert [child.pod_id for child in children] == ["pod-child1", "pod-child2"]
            assert len({parent.secret, *(child.secret for child in children)}) == 3
            first, second = (Forwarder(loop, provider, child) for child in children)
            try:
                assert first.client().get("k") == b"at-the-instant"
                assert second.client().get("k") == b"at-the-instant"
                first.client().set("k", "child-one")
                assert second.client().get("k") == b"at-the-instant"
                assert tunnel.client().get("k") == b"after"
                with pytest.raises(redis.AuthenticationError):
                    first.client(password=parent.secret).ping()
            finally:
                first.close()
                second.close()
        assert not [entry for entry in os.listdir(provider.root) if entry.startswith(".staging")]
    finally:
        for grant in [parent, *children]:
            loop.run(provider.release(grant))


def test_an_aborted_branch_leaves_nothing(loop: LoopThread, provider: RedisProvider) -> None:
    parent = loop.run(provider.provision("pod-aborts", None, retain=False))
    try:
        branching = loop.run(provider.branch(parent, ["pod-never"]))
        loop.run(branching.abort())
        assert not (provider.root / "pod_never").exists()
        # A finish that fails half-way (the second child's name is taken) undoes the first child too.
        taken = loop.run(provider.provision("pod-taken", None, retain=False))
        try:
            branching = loop.run(provider.branch(parent, ["pod-child-ok"]))
            branching._children.append("pod-taken")  # taken after branch() checked: finish meets the conflict
            with pytest.raises(Conflict):
                loop.run(branching.finish())
            assert not (provider.root / "pod_child_ok").exists()
        finally:
            loop.run(provider.release(taken))
        assert not [entry for entry in os.listdir(provider.root) if entry.startswith(".staging")]
    finally:
        loop.run(provider.release(parent))


def test_save_and_load(loop: LoopThread, provider: RedisProvider, db_dir: Path) -> None:
    source = loop.run(provider.provision("pod-saved", None, retain=False))
    dest = db_dir / "snapshot-1"
    try:
        with forwarded(loop, provider, source) as tunnel:
            tunnel.client().set("k", "saved")
            saving = loop.run(provider.save(source, dest))
            tunnel.client().set("k", "later")
            assert loop.run(saving.finish()) == []
        assert sorted(os.listdir(dest)) == ["dump.rdb", "meta.json"]
        loaded = loop.run(provider.load(dest, "pod-loaded", retain=False))
        try:
            with forwarded(loop, provider, loaded) as tunnel:
                assert tunnel.client().get("k") == b"saved"
        finally:
            loop.run(provider.release(loaded))
        with pytest.raises(NotFound):
            loop.run(provider.load(db_dir / "no-snapshot", "pod-x", retain=False))
        aborted = db_dir / "snapshot-2"
        loop.run(loop.run(provider.save(source, aborted)).abort())
        assert not aborted.exists() or os.listdir(aborted) == []
    finally:
        loop.run(provider.release(source))


def test_discard_removes_the_pods_instance_in_any_state_and_nothing_else(loop: LoopThread, db_dir: Path) -> None:
    provider = RedisProvider(db_dir / "discarded")  # its own root: nothing else is there
    other = loop.run(provider.provision("pod-other", None, retain=True))
    running = loop.run(provider.provision("pod-running", None, retain=False))
    keeps = loop.run(provider.provision("pod-keeps", None, retain=True))  # marked retain: it goes all the same
    retained = loop.run(provider.provision("pod-retained", None, retain=True))
    loop.run(provider.release(retained))
    starting = loop.run(provider.provision("pod-starting", None, retain=False))
    instance = Instance(provider.root, starting.name)
    meta = instance.read_meta()
    assert meta is not None
    instance.write_meta(dataclasses.replace(meta, state="starting"))  # its maker died before it was running
    half_made = provider.root / "pod_half"  # a maker that died before meta.json
    half_made.mkdir()
    twin = loop.run(provider.provision("pod-tw-in", None, retain=False))  # the instance name of pod-tw_in too
    dead_staging = provider.root / ".staging-99999999-dead"  # no such process
    own_staging = provider.root / f".staging-{os.getpid()}-mine"
    for staging in (dead_staging, own_staging):
        staging.mkdir()
        (staging / "dump.rdb").write_bytes(b"staged")
    try:
        later = RedisProvider(provider.root)  # the ledger's reaper, after a crash
        for grant in (running, keeps, starting):
            assert server_pids(provider, grant)
            loop.run(later.discard(grant.pod_id))
            assert server_pids(provider, grant) == [] and not (provider.root / grant.name).exists()
        for pod_id in ("pod-retained", "pod-half"):
            loop.run(later.discard(pod_id))
        assert not (provider.root / retained.name).exists() and not half_made.exists()
        loop.run(later.discard("pod-nothing"))  # nothing there: no error
        loop.run(later.discard("pod-tw_in"))  # another pod's instance of the same name: left alone
        assert server_pids(provider, twin) and server_pids(provider, other)
        assert not dead_staging.exists() and own_staging.exists()
        assert [info.pod_id for info in loop.run(provider.databases())] == ["pod-other", "pod-tw-in"]
    finally:
        shutil.rmtree(own_staging, ignore_errors=True)
        loop.run(provider.release(twin))
        loop.run(provider.release(dataclasses.replace(other, retain=False)))


def test_a_failed_start_leaves_nothing(
    loop: LoopThread, provider: RedisProvider, db_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = set(os.listdir(provider.root))
    broken = RedisProvider(provider.root, extra_config=["no-such-directive yes"])
    with pytest.raises(DatabaseUnavailable, match="no-such-directive"):
        loop.run(broken.provision("pod-broken", None, retain=False))

    # One that dies after it daemonized: the RDB it is given is not one.
    garbage = db_dir / "garbage"
    garbage.mkdir()
    (garbage / "dump.rdb").write_bytes(b"REDIS0009 this is not an RDB")
    with pytest.raises(DatabaseUnavailable, match="redis-server exited while starting"):
        loop.run(provider.load(garbage, "pod-garbage", retain=False))

    with pytest.raises(NotFound, match="no templates"):
        loop.run(provider.provision("pod-templated", "seeded", retain=False))
    with pytest.raises(InvalidSpec):
        loop.run(provider.provision("../../etc", None, retain=False))

    empty = db_dir / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(DatabaseUnavailable, match="apt install redis-server"):
        loop.run(provider.provision("pod-no-server", None, retain=False))
    monkeypatch.undo()

    assert set(os.listdir(provider.root)) == before
    assert command_lines_mentioning(provider.root / "pod_broken") == {}
    assert command_lines_mentioning(provider.root / "pod_garbage") == {}


def test_measure_provision_time_and_idle_memory(loop: LoopThread, provider: RedisProvider) -> None:
    """Not an assertion of speed: prints the medians of 3 (pytest -s shows them) for the design notes."""
    times, rss = [], []
    for index in range(3):
        started = time.perf_counter()
        grant = loop.run(provider.provision(f"pod-measure{index}", None, retain=False))
        times.append(time.perf_counter() - started)
        (pid,) = server_pids(provider, grant)
        status = Path(f"/proc/{pid}/status").read_text()
        rss.append(int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]))
        loop.run(provider.release(grant))
    print(f"\nredis provision median {statistics.median(times) * 1000:.1f} ms, idle RSS {statistics.median(rss)} KiB")
    assert all(value > 0 for value in rss)


def test_the_pod_cannot_grow_the_instance_past_its_memory_limit(loop: LoopThread, provider: RedisProvider) -> None:
    grant = loop.run(provider.provision("pod-greedy", None, retain=False))
    try:
        with forwarded(loop, provider, grant) as tunnel:
            client = tunnel.client()
            chunk = b"x" * (8 << 20)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                for index in range(16):  # 128 MiB asked, 64 MiB allowed
                    client.set(f"k{index}", chunk)
            assert client.delete("k0") == 1  # reads and deletes still work
            with pytest.raises((redis.ResponseError, redis.ConnectionError)):  # the server hangs up on it
                client.set("huge", b"x" * (20 << 20))  # one value past proto-max-bulk-len
            assert tunnel.client().ping() is True
    finally:
        loop.run(provider.release(grant))


def test_release_revokes_before_it_saves(loop: LoopThread, provider: RedisProvider) -> None:
    """A retained pod's open connection is closed before the SAVE: nothing it writes afterwards is lost unsaid."""
    grant = loop.run(provider.provision("pod-revoked", None, retain=True))
    try:
        with forwarded(loop, provider, grant) as tunnel:
            client = tunnel.client()
            client.set("before", "1")
            loop.run(provider.release(grant))
            with pytest.raises(redis.ConnectionError):
                client.set("after", "1")
        exported = provider.root.parent / "revoked.rdb"
        loop.run(provider.export(grant.pod_id, exported))
        assert b"before" in exported.read_bytes()
    finally:
        loop.run(provider.drop(grant.pod_id))


def test_a_pod_that_busies_its_instance_is_still_ended_at_once(loop: LoopThread, provider: RedisProvider) -> None:
    grant = loop.run(provider.provision("pod-busy", None, retain=False))
    with forwarded(loop, provider, grant) as tunnel:
        client = tunnel.client()
        client.set("k", "v")
        busy = threading.Thread(target=_busy_forever, args=(tunnel.client(),), daemon=True)
        busy.start()
        time.sleep(0.3)  # the script runs: the server takes no command for 5 s (busy-reply-threshold)
        started = time.monotonic()
        loop.run(provider.release(grant))
        print(f"\nreleased a busy instance in {(time.monotonic() - started) * 1000:.0f} ms")
        busy.join(10)
    assert server_pids(provider, grant) == [] and not (provider.root / grant.name).exists()


def _busy_forever(client: redis.Redis) -> None:
    with contextlib.suppress(redis.RedisError):
        client.eval("while true do end", 0)


def test_pods_are_provisioned_concurrently(loop: LoopThread, provider: RedisProvider) -> None:
    async def many() -> list[DatabaseGrant]:
        return list(await asyncio.gather(*(provider.provision(f"pod-many{i}", None, False) for i in range(4))))

    grants = loop.run(many())
    try:
        for index, grant in enumerate(grants):
            with forwarded(loop, provider, grant) as tunnel:
                tunnel.client().set("me", index)
        for index, grant in enumerate(grants):
            with forwarded(loop, provider, grant) as tunnel:
                assert tunnel.client().get("me") == str(index).encode()
    finally:
        for grant in grants:
            loop.run(provider.release(grant))
