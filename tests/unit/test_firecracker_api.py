"""The Firecracker API client against a fake Firecracker: a unix-socket HTTP/1.1 server that records requests.

The fake answers the way Firecracker v1.12 does on the wire (status line without a reason phrase, keep-alive,
no body on 204); tests against the real binary live in tests/integration/test_firecracker.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from podbay.errors import GuestError, Timeout
from podbay.isolation.firecracker.api import FirecrackerApi, FirecrackerApiError, InstanceInfo, encode_request

T = TypeVar("T")
Answer = bytes | Literal["hang up", "stall"]
NO_CONTENT = b"HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"


def answer(status: int, body: Any, connection: str = "keep-alive") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = f"HTTP/1.1 {status} \r\nServer: Firecracker API\r\nConnection: {connection}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    return head.encode() + payload


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeFirecracker:
    """Answers each request with the next scripted answer (204 once the script is used up)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.script: list[Answer] = []
        self.requests: list[Recorded] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while request_line := await reader.readline():
            method, path, _ = request_line.decode().split(" ")
            headers = {}
            while (line := await reader.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Recorded(method, path, headers, json.loads(body) if body else None))
            reply = self.script.pop(0) if self.script else NO_CONTENT
            if reply == "hang up":
                break
            if reply == "stall":
                await asyncio.sleep(3600)
            assert isinstance(reply, bytes)
            writer.write(reply)
            await writer.drain()
        writer.close()


def run_with_fake(tmp_path: Path, test: Callable[[FakeFirecracker, FirecrackerApi], Awaitable[T]]) -> T:
    async def main() -> T:
        fake = FakeFirecracker(tmp_path / "fc.sock")
        server = await asyncio.start_unix_server(fake.serve, path=str(fake.socket_path))
        api = FirecrackerApi(fake.socket_path, timeout=2.0)
        try:
            return await test(fake, api)
        finally:
            await api.close()
            server.close()

    return asyncio.run(main())


ENDPOINTS: list[tuple[str, Callable[[FirecrackerApi], Coroutine[Any, Any, None]], str, str, Any]] = [
    (
        "machine-config",
        lambda api: api.put_machine_config(2, 256),
        "PUT",
        "/machine-config",
        {"vcpu_count": 2, "mem_size_mib": 256, "smt": False, "track_dirty_pages": False},
    ),
    (
        "boot-source",
        lambda api: api.put_boot_source(Path("/k/vmlinux"), "console=ttyS0 reboot=k"),
        "PUT",
        "/boot-source",
        {"kernel_image_path": "/k/vmlinux", "boot_args": "console=ttyS0 reboot=k"},
    ),
    (
        "drive",
        lambda api: api.put_drive("rootfs", Path("/r.ext4"), is_root_device=False, is_read_only=True),
        "PUT",
        "/drives/rootfs",
        {"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": False, "is_read_only": True},
    ),
    (
        "patch-drive",
        lambda api: api.patch_drive("vol0", Path("/v2.ext4")),
        "PATCH",
        "/drives/vol0",
        {"drive_id": "vol0", "path_on_host": "/v2.ext4"},
    ),
    (
        "vsock",
        lambda api: api.put_vsock(3, Path("/run/v.sock")),
        "PUT",
        "/vsock",
        {"guest_cid": 3, "uds_path": "/run/v.sock"},
    ),
    (
        "logger",
        lambda api: api.put_logger(Path("/run/fc.log"), "Debug", show_level=True),
        "PUT",
        "/logger",
        {"log_path": "/run/fc.log", "level": "Debug", "show_level": True, "show_log_origin": False},
    ),
    ("metrics", lambda api: api.put_metrics(Path("/run/m.json")), "PUT", "/metrics", {"metrics_path": "/run/m.json"}),
    ("start", lambda api: api.start_instance(), "PUT", "/actions", {"action_type": "InstanceStart"}),
    ("pause", lambda api: api.pause(), "PATCH", "/vm", {"state": "Paused"}),
    ("resume", lambda api: api.resume(), "PATCH", "/vm", {"state": "Resumed"}),
    (
        "snapshot-create",
        lambda api: api.create_snapshot(Path("/s/vm.state"), Path("/s/vm.mem")),
        "PUT",
        "/snapshot/create",
        {"snapshot_type": "Full", "snapshot_path": "/s/vm.state", "mem_file_path": "/s/vm.mem"},
    ),
    (
        "snapshot-create-diff",
        lambda api: api.create_snapshot(Path("/s/vm.state"), Path("/s/vm.mem"), diff=True),
        "PUT",
        "/snapshot/create",
        {"snapshot_type": "Diff", "snapshot_path": "/s/vm.state", "mem_file_path": "/s/vm.mem"},
    ),
    (
        "snapshot-load",
        lambda api: api.load_snapshot(Path("/s/vm.state"), Path("/s/vm.mem"), resume_vm=True),
        "PUT",
        "/snapshot/load",
        {
            "snapshot_path": "/s/vm.state",
            "mem_backend": {"backend_type": "File", "backend_path": "/s/vm.mem"},
            "resume_vm": True,
            "track_dirty_pages": False,
        },
    ),
]


@pytest.mark.parametrize(("call", "method", "path", "body"), [e[1:] for e in ENDPOINTS], ids=[e[0] for e in ENDPOINTS])
def test_each_endpoint_sends_its_method_path_and_json_body(
    tmp_path: Path, call: Callable[[FirecrackerApi], Coroutine[Any, Any, None]], method: str, path: str, body: Any
) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        await call(api)  # answered 204 No Content
        [request] = fake.requests
        assert (request.method, request.path, request.body) == (method, path, body)
        assert request.headers["content-type"] == "application/json"
        assert int(request.headers["content-length"]) == len(json.dumps(body, separators=(",", ":")))

    run_with_fake(tmp_path, test)


def test_get_requests_have_no_body_and_answers_are_decoded(tmp_path: Path) -> None:
    instance = {"id": "pod-1", "state": "Not started", "vmm_version": "1.12.1", "app_name": "Firecracker"}
    machine = {"vcpu_count": 2, "mem_size_mib": 256, "smt": False, "track_dirty_pages": False, "huge_pages": "None"}

    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = [answer(200, instance), answer(200, machine), answer(200, {"drives": []})]
        assert await api.describe_instance() == InstanceInfo("pod-1", "Not started", "1.12.1", "Firecracker")
        assert await api.get_machine_config() == machine
        assert await api.get_vm_config() == {"drives": []}
        assert [(r.method, r.path, r.body) for r in fake.requests] == [
            ("GET", "/", None),
            ("GET", "/machine-config", None),
            ("GET", "/vm/config", None),
        ]
        assert all("content-length" not in r.headers for r in fake.requests)

    run_with_fake(tmp_path, test)


def test_encoded_request_is_exact_http_1_1() -> None:
    assert encode_request("PUT", "/vsock", {"guest_cid": 3}) == (
        b"PUT /vsock HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n"
        b'{"guest_cid":3}'
    )
    assert encode_request("GET", "/", None) == b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n"


def test_an_error_answer_raises_with_firecrackers_fault_message(tmp_path: Path) -> None:
    fault = "Machine config error: The number of vCPUs must be greater than 0, less than 32 ..."

    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> FirecrackerApiError:
        fake.script = [answer(400, {"fault_message": fault})]
        with pytest.raises(FirecrackerApiError) as caught:
            await api.put_machine_config(0, 256)
        return caught.value

    error = run_with_fake(tmp_path, test)
    assert isinstance(error, GuestError)
    assert (error.status, error.fault_message) == (400, fault)
    assert str(error) == f"firecracker PUT /machine-config answered 400: {fault}"


def test_an_error_without_a_fault_message_shows_the_body_as_it_came(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = [answer(500, b"internal trouble"), answer(404, b"")]
        with pytest.raises(FirecrackerApiError, match=r"answered 500: internal trouble$"):
            await api.start_instance()
        with pytest.raises(FirecrackerApiError, match=r"answered 404: \(no explanation given\)$"):
            await api.start_instance()

    run_with_fake(tmp_path, test)


def test_requests_share_one_kept_alive_connection(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        await asyncio.gather(*(api.put_machine_config(1, 128 + n) for n in range(20)))
        assert fake.connections == 1
        assert len(fake.requests) == 20

    run_with_fake(tmp_path, test)


def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = [answer(200, {"drives": []}, connection="close")]
        await api.get_vm_config()
        await api.pause()
        assert fake.connections == 2

    run_with_fake(tmp_path, test)


def test_a_broken_connection_fails_the_request_and_the_next_one_reconnects(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = ["hang up"]
        with pytest.raises(GuestError, match="closed in the middle of a response"):
            await api.pause()
        await api.resume()
        assert fake.connections == 2

    run_with_fake(tmp_path, test)


def test_a_cancelled_request_never_leaves_its_answer_to_the_next(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = ["stall", answer(200, {"id": "b", "state": "Running", "vmm_version": "1", "app_name": "F"})]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await api.describe_instance()
        assert (await api.describe_instance()).id == "b"

    run_with_fake(tmp_path, test)


def test_no_answer_in_time_raises_timeout(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = ["stall"]
        api.timeout = 0.1
        with pytest.raises(Timeout, match=r"firecracker PATCH /vm over .*: no answer within 0.1 s"):
            await api.pause()

    run_with_fake(tmp_path, test)


def test_garbage_instead_of_http_raises_guest_error(tmp_path: Path) -> None:
    async def test(fake: FakeFirecracker, api: FirecrackerApi) -> None:
        fake.script = [b"SSH-2.0-OpenSSH\r\n\r\n", answer(200, b"{not json")]
        with pytest.raises(GuestError, match=r"not an HTTP/1\.x status line"):
            await api.pause()
        with pytest.raises(GuestError, match="with bad JSON"):
            await api.get_vm_config()

    run_with_fake(tmp_path, test)


def test_a_missing_socket_raises_guest_error_naming_it(tmp_path: Path) -> None:
    async def test() -> None:
        api = FirecrackerApi(tmp_path / "nothing.sock")
        with pytest.raises(GuestError, match=r"firecracker GET / over .*nothing\.sock failed: FileNotFoundError"):
            await api.describe_instance()

    asyncio.run(test())
