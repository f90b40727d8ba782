"""A small asyncio HTTP/1.1 client for Firecracker's REST API on its unix socket (stdlib only).

One method per endpoint of Firecracker's API (v1.12 swagger). Requests go one at a time over one kept-alive
connection (Firecracker's API server serves them in order anyway); a connection that broke mid-request is
dropped and the next request opens a fresh one. An error answer raises FirecrackerApiError carrying
Firecracker's own `fault_message`, which names the field and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from podbay.errors import GuestError, PodbayError, Timeout

JsonObject = dict[str, Any]
LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]
MAX_HEADER_LINES = 100


class FirecrackerApiError(GuestError):
    """Firecracker refused a request (HTTP 4xx/5xx); `fault_message` is its own explanation."""

    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        self.status = status
        self.fault_message = fault_message
        super().__init__(f"firecracker {method} {path} answered {status}: {fault_message}")


@dataclass(frozen=True)
class InstanceInfo:
    """`GET /`: which VMM this is and the state of its microVM ("Not started", "Running", "Paused")."""

    id: str
    state: str
    vmm_version: str
    app_name: str


class FirecrackerApi:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    # ---- endpoints -------------------------------------------------------------------------------------

    async def describe_instance(self) -> InstanceInfo:
        answer = await self._get("/")
        return InstanceInfo(**{name: str(answer[name]) for name in ("id", "state", "vmm_version", "app_name")})

    async def get_machine_config(self) -> JsonObject:
        return await self._get("/machine-config")

    async def get_vm_config(self) -> JsonObject:
        """Everything configured so far: boot-source, drives, machine-config, vsock, logger, metrics..."""
        return await self._get("/vm/config")

    async def put_machine_config(
        self, vcpu_count: int, mem_size_mib: int, *, smt: bool = False, track_dirty_pages: bool = False
    ) -> None:
        body = {"vcpu_count": vcpu_count, "mem_size_mib": mem_size_mib, "smt": smt}
        await self.request("PUT", "/machine-config", {**body, "track_dirty_pages": track_dirty_pages})

    async def put_boot_source(self, kernel_image_path: Path, boot_args: str) -> None:
        await self.request("PUT", "/boot-source", {"kernel_image_path": str(kernel_image_path), "boot_args": boot_args})

    async def put_drive(self, drive_id: str, path_on_host: Path, *, is_root_device: bool, is_read_only: bool) -> None:
        body = {"drive_id": drive_id, "path_on_host": str(path_on_host), "is_root_device": is_root_device}
        await self.request("PUT", f"/drives/{drive_id}", {**body, "is_read_only": is_read_only})

    async def patch_drive(self, drive_id: str, path_on_host: Path) -> None:
        """After boot: point a drive at another backing file (the guest sees a media change)."""
        await self.request("PATCH", f"/drives/{drive_id}", {"drive_id": drive_id, "path_on_host": str(path_on_host)})

    async def put_vsock(self, guest_cid: int, uds_path: Path) -> None:
        await self.request("PUT", "/vsock", {"guest_cid": guest_cid, "uds_path": str(uds_path)})

    async def put_logger(
        self, log_path: Path, level: LogLevel = "Info", *, show_level: bool = False, show_log_origin: bool = False
    ) -> None:
        """Firecracker opens `log_path` (it must exist) for writing from its start, over what it holds."""
        body = {"log_path": str(log_path), "level": level, "show_level": show_level}
        await self.request("PUT", "/logger", {**body, "show_log_origin": show_log_origin})

    async def put_metrics(self, metrics_path: Path) -> None:
        """Metrics are appended to `metrics_path` (it must exist) as JSON lines, every 60 s and at exit."""
        await self.request("PUT", "/metrics", {"metrics_path": str(metrics_path)})

    async def start_instance(self) -> None:
        await self.request("PUT", "/actions", {"action_type": "InstanceStart"})

    async def pause(self) -> None:
        await self.request("PATCH", "/vm", {"state": "Paused"})

    async def resume(self) -> None:
        await self.request("PATCH", "/vm", {"state": "Resumed"})

    async def create_snapshot(self, snapshot_path: Path, mem_file_path: Path, *, diff: bool = False) -> None:
        """Save a paused microVM: device state to `snapshot_path`, guest memory to `mem_file_path`."""
        body = {"snapshot_type": "Diff" if diff else "Full", "snapshot_path": str(snapshot_path)}
        await self.request("PUT", "/snapshot/create", {**body, "mem_file_path": str(mem_file_path)})

    async def load_snapshot(
        self, snapshot_path: Path, mem_file_path: Path, *, resume_vm: bool = False, track_dirty_pages: bool = False
    ) -> None:
        """Restore into a fresh, unconfigured Firecracker. A failed load makes Firecracker exit."""
        memory = {"backend_type": "File", "backend_path": str(mem_file_path)}
        body = {"snapshot_path": str(snapshot_path), "mem_backend": memory, "resume_vm": resume_vm}
        await self.request("PUT", "/snapshot/load", {**body, "track_dirty_pages": track_dirty_pages})

    # ---- plumbing --------------------------------------------------------------------------------------

    async def _get(self, path: str) -> JsonObject:
        answer = await self.request("GET", path)
        if not isinstance(answer, dict):
            raise GuestError(f"firecracker GET {path} answered {answer!r}, not a JSON object")
        return answer

    async def request(self, method: str, path: str, body: JsonObject | None = None) -> Any:
        """Send one request; return the decoded JSON answer (None when there is none)."""
        async with self._lock:
            try:
                async with asyncio.timeout(self.timeout):
                    status, payload = await self._exchange(encode_request(method, path, body))
            except BaseException as exc:
                self._drop()  # a half-finished exchange leaves the connection out of step
                error = _translate(exc, f"firecracker {method} {path} over {self.socket_path}", self.timeout)
                if error is None:
                    raise
                raise error from None
        if status >= 400:
            raise FirecrackerApiError(method, path, status, fault_message(payload))
        try:
            return json.loads(payload) if payload else None
        except ValueError:
            raise GuestError(
                f"firecracker {method} {path} answered {status} with bad JSON: {payload[:200]!r}"
            ) from None

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self._stream is None:
            self._stream = await asyncio.open_unix_connection(str(self.socket_path))
        reader, writer = self._stream
        writer.write(request)
        await writer.drain()
        status, headers, body = await read_response(reader)
        if headers.get("connection", "").lower() == "close":
            self._drop()
        return status, body

    def _drop(self) -> None:
        if self._stream is not None:
            self._stream[1].close()
            self._stream = None

    async def close(self) -> None:
        if self._stream is None:
            return
        writer = self._stream[1]
        self._drop()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _translate(exc: BaseException, what: str, timeout: float) -> PodbayError | None:
    """Podbay's error for a failed exchange; None for what must go on as it is (cancellation)."""
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return Timeout(f"{what}: no answer within {timeout} s")
    if isinstance(exc, OSError | asyncio.IncompleteReadError | ValueError):
        return GuestError(f"{what} failed: {exc!r}")
    return None


def encode_request(method: str, path: str, body: JsonObject | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Accept: application/json"]
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names in lower case) and body of one response.

    Firecracker always sends Content-Length when there is a body, and never chunks.
    """
    status_line = await _read_line(reader)
    version, _, rest = status_line.partition(" ")
    status = rest.partition(" ")[0]
    if not version.startswith("HTTP/1.") or not (status.isdigit() and len(status) == 3):
        raise ValueError(f"not an HTTP/1.x status line: {status_line!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADER_LINES):
        line = await _read_line(reader)
        if not line:
            length = int(headers.get("content-length", "0"))
            return int(status), headers, await reader.readexactly(length) if length else b""
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    raise ValueError(f"more than {MAX_HEADER_LINES} header lines")


async def _read_line(reader: asyncio.StreamReader) -> str:
    line = await reader.readline()
    if not line.endswith(b"\n"):
        raise ConnectionResetError("the connection closed in the middle of a response")
    return line.decode("latin-1").rstrip("\r\n")


def fault_message(payload: bytes) -> str:
    """Firecracker explains errors as {"fault_message": "..."}; show anything else as it came."""
    text = payload.decode(errors="replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        return text or "(no explanation given)"
    if isinstance(answer, dict) and "fault_message" in answer:
        return str(answer["fault_message"])
    return text
