"""Guest-opened streams on a real sandbox: a program in the pod connects to 127.0.0.1:PORT, the agent forwards
the connection over the guest channel (the pod has no network device), and the host connects it to the
service registered for that pod, and only for that pod."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from podbay import Platform, Pod

from .conftest import skip_unless_available

pytestmark = pytest.mark.integration
GUEST_PORT = 5432

CLIENT = """  # GUEST_PORT: 5432
import socket, sys
try:
    with socket.create_connection(("127.0.0.1", 5432), timeout=30) as s:
        s.sendall((sys.argv[1].encode() * 100000)[:100000])
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(65536):
            got += data
    print(len(got), got[:20].decode())
except OSError as exc:  # a refused stream is hung up: a reset, or a broken pipe while still sending
    print(0, type(exc).__name__)
"""


@pytest.fixture(scope="module", params=["qemu", "runc"])
def two_pods(request: pytest.FixtureRequest, shared_platform: Platform) -> Iterator[tuple[Pod, Pod]]:
    skip_unless_available(shared_platform, request.param)
    first = shared_platform.create_agent(backend=request.param)
    second = shared_platform.create_agent(backend=request.param)
    yield first, second
    first.destroy()
    second.destroy()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    writer.close()


def test_a_pod_reaches_its_own_service_and_no_other_pod_does(two_pods: tuple[Pod, Pod]) -> None:
    mine, other = two_pods
    loop = mine._loop  # the platform's loop, where the channels live

    async def setup() -> asyncio.Server:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        mine._pod.sandbox.channel.register_service("echo", lambda: asyncio.open_connection("127.0.0.1", port))
        for pod in (mine, other):  # both agents listen; only `mine` has the service registered
            assert await pod._pod.sandbox.channel.listen(GUEST_PORT, "echo") == GUEST_PORT
        return server

    server = loop.run(setup())
    try:
        assert mine.exec(["python3", "-c", CLIENT, "a"]).stdout.split() == ["100000", "a" * 20]
        results = [mine.start_process(["python3", "-c", CLIENT, word]) for word in ("bc", "de")]
        assert [r.wait().stdout.split() for r in results] == [["100000", "bc" * 10], ["100000", "de" * 10]]
        refused = other.exec(["python3", "-c", CLIENT, "x"])
        assert refused.stdout.split()[0] == "0", refused
        assert other._pod.sandbox.channel.streams == {}
    finally:
        server.close()
