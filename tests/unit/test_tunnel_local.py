"""Credit windows and guest-opened streams against the real guest agent, run locally on a socketpair.

The agent is a host process here, so the guest's loopback is the host's: a test connects to the port the agent
listens on as a program in the guest would. Bounds are asserted on the credit state (what is queued, never more
than a window), not on memory or time.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from podbay.channel import GuestChannel
from podbay.guest import agent, protocol
from podbay.tunnel import TunnelStream

pytestmark = pytest.mark.timeout(120)
Header = dict[str, Any]


@asynccontextmanager
async def local_channel(tmp_path: Path) -> AsyncIterator[GuestChannel]:
    """The real agent as a local process, and the host's channel to it."""
    (tmp_path / "work").mkdir()
    host_end, agent_end = socket.socketpair()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", agent.__file__, f"--transport=fd:{agent_end.fileno()}",
        f"--state-dir={tmp_path / 'state'}", f"--workdir={tmp_path / 'work'}",
        pass_fds=[agent_end.fileno()],
    )  # fmt: skip
    agent_end.close()
    reader, writer = await asyncio.open_unix_connection(sock=host_end)
    channel = GuestChannel(reader, writer)
    try:
        await channel.request("health", timeout=10)
        yield channel
    finally:
        await channel.close()
        process.kill()
        await process.wait()


@asynccontextmanager
async def echo_service() -> AsyncIterator[tuple[int, Callable[[], Awaitable[Any]]]]:
    """A TCP echo server on the host, and a connect callback for it (what a pod's service would be)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port, lambda: asyncio.open_connection("127.0.0.1", port)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


async def settle(streams: list[TunnelStream]) -> None:
    """Wait until these streams have ended on the host."""
    tasks = [stream.task for stream in streams if stream.task is not None]
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks, return_exceptions=True)


async def round_trip(port: int, data: bytes) -> bytes:
    """Send `data`, half-close, read to the end. A refused stream is hung up: EOF, a reset while our bytes were
    unread, or ENOTCONN at our half-close when the reset came first; all read as b""."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        return await reader.read()
    except OSError:  # ConnectionResetError, or ENOTCONN from write_eof
        return b""
    finally:
        writer.close()


def test_forwarded_connections_reach_the_registered_service(tmp_path: Path) -> None:
    async def test() -> None:
        async with local_channel(tmp_path) as channel, echo_service() as (_, connect):
            channel.register_service("echo", connect)
            port = await channel.listen(0, "echo")
            first, second = await asyncio.gather(round_trip(port, b"one" * 1000), round_trip(port, b"two" * 70000))
            assert (first, second) == (b"one" * 1000, b"two" * 70000)
            await settle(list(channel.streams.values()))
            assert channel.streams == {}

    run(test)


def test_a_bulk_transfer_leaves_room_for_other_streams_and_stays_within_its_window(tmp_path: Path) -> None:
    total = 50 << 20
    block = os.urandom(1 << 20)

    async def test() -> None:
        async with local_channel(tmp_path) as channel, echo_service() as (_, connect):
            channel.register_service("echo", connect)
            port = await channel.listen(0, "echo")
            bulk_reader, bulk_writer = await asyncio.open_connection("127.0.0.1", port)
            received = 0
            digest = hashlib.sha256()

            async def send_bulk() -> None:
                for _ in range(total // len(block)):
                    bulk_writer.write(block)
                    await bulk_writer.drain()
                bulk_writer.write_eof()

            async def read_bulk() -> None:
                nonlocal received
                while data := await bulk_reader.read(1 << 20):
                    received += len(data)
                    digest.update(data)

            bulk = asyncio.gather(send_bulk(), read_bulk())
            while received < 4 * protocol.WINDOW:  # the bulk stream is in full flow ...
                await asyncio.sleep(0.01)
            streams = list(channel.streams.values())
            chat_reader, chat_writer = await asyncio.open_connection("127.0.0.1", port)
            for turn in range(5):  # ... and a second stream still gets its answers through
                chat_writer.write(f"ping {turn}\n".encode())
                assert await chat_reader.readline() == f"ping {turn}\n".encode()
            assert received < total, "the small stream had to wait for the whole bulk transfer"
            chat_writer.close()
            await bulk
            assert received == total
            assert digest.digest() == hashlib.sha256(block * (total // len(block))).digest()
            await settle(streams)
            assert all(stream.peak_inflight <= stream.window for stream in streams)
            assert max(stream.peak_inflight for stream in streams) > 0

    run(test)


def test_a_service_that_is_not_registered_is_refused(tmp_path: Path) -> None:
    async def test() -> None:
        async with local_channel(tmp_path) as channel, echo_service() as (_, connect):
            channel.register_service("echo", connect)
            port = await channel.listen(0, "db")  # the agent may listen for anything; the host decides
            assert await round_trip(port, b"hello") == b""
            assert channel.streams == {}
            assert await round_trip(await channel.listen(0, "echo"), b"still up") == b"still up"

    run(test)


def test_a_service_that_cannot_be_reached_is_refused(tmp_path: Path) -> None:
    async def test() -> None:
        async with local_channel(tmp_path) as channel:
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
            closed.close()  # nothing listens there any more
            channel.register_service("db", lambda: asyncio.open_connection("127.0.0.1", dead_port))
            port = await channel.listen(0, "db")
            assert await round_trip(port, b"hello") == b""
            await settle(list(channel.streams.values()))
            assert channel.streams == {}

    run(test)


def test_streams_past_the_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from podbay import tunnel

    monkeypatch.setattr(tunnel, "MAX_STREAMS", 1)

    async def test() -> None:
        async with local_channel(tmp_path) as channel, echo_service() as (_, connect):
            channel.register_service("echo", connect)
            port = await channel.listen(0, "echo")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"held\n")
            assert await reader.readline() == b"held\n"  # one stream open ...
            assert await round_trip(port, b"second") == b""  # ... so the next is refused
            writer.close()
            await settle(list(channel.streams.values()))
            assert await round_trip(port, b"third") == b"third"  # room again

    run(test)


def test_a_peer_that_closes_early_ends_its_stream_only(tmp_path: Path) -> None:
    async def test() -> None:
        async with local_channel(tmp_path) as channel, echo_service() as (_, connect):
            channel.register_service("echo", connect)
            port = await channel.listen(0, "echo")
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = reset
            sock.sendall(b"x" * 100_000)
            sock.close()
            assert await round_trip(port, b"after") == b"after"
            await settle(list(channel.streams.values()))
            assert channel.streams == {}

    run(test)


def test_bad_listen_requests_name_the_field(tmp_path: Path) -> None:
    from podbay import InvalidSpec, NotFound

    async def test() -> None:
        async with local_channel(tmp_path) as channel:
            with pytest.raises(InvalidSpec) as error:
                await channel.listen(70000, "db")
            assert error.value.field == "port"
            with pytest.raises(InvalidSpec) as error:
                await channel.listen(0, "")
            assert error.value.field == "service"
            with pytest.raises(InvalidSpec) as error:
                await channel.request("exec", argv=["true"], window=5)
            assert error.value.field == "window"
            with pytest.raises(InvalidSpec) as error:
                await channel.request("credit", target=1, bytes=0)
            assert error.value.field == "bytes"
            with pytest.raises(NotFound):
                await channel.request("credit", target=-7, bytes=10)

    run(test)


def test_exec_output_is_bounded_by_the_window_and_delivered_in_full(tmp_path: Path) -> None:
    async def test() -> None:
        async with local_channel(tmp_path) as channel:
            seen = 0

            def count(data: bytes) -> None:
                nonlocal seen
                seen += len(data)

            code = "import sys; [sys.stdout.buffer.write(b'x' * 65536) for _ in range(320)]"
            process = await channel.start_process([sys.executable, "-c", code], on_stdout=count)
            result = await process.wait()
            assert result.exit_code == 0 and seen == 320 * 65536
            assert process.flow.window == protocol.WINDOW
            assert 0 < process.flow.peak <= protocol.WINDOW

    run(test)


# ---- the raw protocol: an agent that gets no credit stops reading the child's pipe --------------------------


class RawAgent:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = protocol.FrameDecoder()
        self.frames: list[tuple[Header, bytes]] = []

    def send(self, header: Header, payload: bytes = b"") -> None:
        self.sock.sendall(protocol.encode(header, payload))

    def until(self, done: Callable[[Header], bool]) -> list[tuple[Header, bytes]]:
        """Frames up to and including the first for which `done` holds."""
        seen = []
        while True:
            while self.frames:
                frame = self.frames.pop(0)
                seen.append(frame)
                if done(frame[0]):
                    return seen
            data = self.sock.recv(1 << 16)
            assert data, "the agent hung up"
            self.frames += self.decoder.feed(data)


def test_without_credit_the_agent_stops_reading_and_keeps_serving(tmp_path: Path) -> None:
    import subprocess

    host_end, agent_end = socket.socketpair()
    host_end.settimeout(30)
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", agent.__file__, f"--transport=fd:{agent_end.fileno()}",
         f"--state-dir={tmp_path / 'state'}", f"--workdir={tmp_path}"],
        pass_fds=[agent_end.fileno()],
    )  # fmt: skip
    agent_end.close()
    marker = tmp_path / "wrote-all"
    code = f"import sys; sys.stdout.buffer.write(b'y' * (4 << 20)); sys.stdout.flush(); open({str(marker)!r}, 'w')"
    try:
        raw = RawAgent(host_end)
        raw.send({"id": 1, "op": "exec", "argv": [sys.executable, "-c", code], "window": protocol.CHUNK})
        raw.until(lambda header: header.get("event") == "started")
        out = b"".join(p for h, p in raw.until(lambda h: h.get("event") == "stdout") if h.get("event") == "stdout")
        for probe in range(2, 5):  # the agent answers other requests while the exec's stream waits for credit
            raw.send({"id": probe, "op": "health"})
            frames = raw.until(lambda header, probe=probe: header.get("id") == probe)  # type: ignore[misc]
            out += b"".join(p for h, p in frames if h.get("id") == 1 and h.get("event") == "stdout")
        assert len(out) == protocol.CHUNK, "the agent sent past its credit"
        assert not marker.exists(), "the child wrote everything: nothing held it back"
        received = len(out)
        next_id = 10
        while True:  # grant as we read: the child finishes, the exit comes after all of its output
            raw.send({"id": next_id, "op": "credit", "target": 1, "bytes": protocol.CHUNK})
            next_id += 1
            frames = raw.until(lambda header: header.get("id") == 1 and header.get("event") in ("stdout", "exit"))
            header, payload = frames[-1]
            if header.get("event") == "exit":
                break
            received += len(payload)
        assert received == 4 << 20 and header["exit_code"] == 0 and marker.exists()
    finally:
        process.kill()
        process.wait()


def test_a_guest_that_ignores_its_window_loses_the_stream_not_the_host_memory() -> None:
    """The guest's data waits on the host until the service takes it: past one window the stream is aborted."""

    class Channel:
        def __init__(self) -> None:
            self.sent: list[tuple[str, Header]] = []

        def _spawn(self, work: Any) -> None:
            work.close()  # the close frame itself is not under test here

        async def _stream_op(self, op: str, target: int, **fields: Any) -> None:
            self.sent.append((op, fields))

    async def test() -> None:
        stream = TunnelStream(Channel(), -1, "db", protocol.WINDOW)  # type: ignore[arg-type]
        stream.task = asyncio.create_task(asyncio.sleep(60))  # stands for the stream's pumps
        chunk = b"z" * protocol.CHUNK
        for _ in range(protocol.WINDOW // protocol.CHUNK):
            stream.deliver({"event": "data"}, chunk)
        assert stream.inflight == protocol.WINDOW and not stream.task.done()
        stream.deliver({"event": "data"}, b"one byte too many"[:1])
        await asyncio.sleep(0)
        assert stream.task.cancelled(), "the stream must be aborted"
        assert stream.inflight <= protocol.WINDOW + 1 and stream._inbox.qsize() == protocol.WINDOW // protocol.CHUNK

    run(test)
