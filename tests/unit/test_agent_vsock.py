"""The guest agent's listening transport (`vsock:PORT`, Firecracker's) without a VM.

AF_VSOCK needs a VM, so the agent is handed an AF_UNIX listener instead: ListeningPort only accepts and reads,
and the reconnect logic it shares with the vsock transport is the same.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay.channel import GuestChannel
from podbay.guest import agent

AGENT_ON_UNIX_LISTENER = """
import socket, sys
sys.path.insert(0, sys.argv[1])
import agent
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[2])
listener.listen(1)
agent.Agent(agent.ListeningPort(listener), sys.argv[3], sys.argv[4]).serve()
"""


def test_vsock_transport_names_a_port() -> None:
    assert agent.vsock_port_number("vsock:1024") == 1024
    assert agent.vsock_port_number("vsock:4294967294") == 2**32 - 2


@pytest.mark.parametrize("transport", ["vsock:", "vsock:abc", "vsock:0", "vsock:-1", "vsock:4294967295"])
def test_a_bad_vsock_port_is_refused_with_the_expected_form(transport: str) -> None:
    with pytest.raises(SystemExit, match=f"bad vsock port in '{transport}'; expected vsock:PORT, e.g. vsock:1024"):
        agent.vsock_port_number(transport)


@pytest.fixture
def listening_agent(tmp_path: Path) -> Iterator[Path]:
    socket_path = tmp_path / "agent.sock"
    guest_dir = str(Path(agent.__file__).parent)
    command = [sys.executable, "-I", "-S", "-c", AGENT_ON_UNIX_LISTENER, guest_dir, str(socket_path)]
    process = subprocess.Popen([*command, str(tmp_path / "state"), str(tmp_path / "work")])
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert process.poll() is None, "the agent exited before it listened"
            assert time.monotonic() < deadline, "the agent did not listen within 10 s"
            time.sleep(0.01)
        yield socket_path
    finally:
        process.kill()
        process.wait()


async def connect(socket_path: Path) -> GuestChannel:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    return GuestChannel(reader, writer)


def test_the_agent_serves_one_host_after_another(listening_agent: Path) -> None:
    async def scenario() -> None:
        for _ in range(3):
            channel = await connect(listening_agent)
            header, _ = await channel.request("health", timeout=10)
            assert header["event"] == "result"
            await channel.close()

    asyncio.run(scenario())


def test_a_half_sent_frame_does_not_spoil_the_next_host(listening_agent: Path) -> None:
    async def scenario() -> None:
        _, writer = await asyncio.open_unix_connection(str(listening_agent))
        writer.write(b"\x00\x00\x00\x40")  # the start of a frame prefix, then the host vanishes
        await writer.drain()
        writer.close()
        channel = await connect(listening_agent)
        header, _ = await channel.request(
            "file_write", b"still here", timeout=10, path=str(listening_agent.parent / "f")
        )
        assert header["size"] == len(b"still here")
        await channel.close()

    asyncio.run(scenario())
