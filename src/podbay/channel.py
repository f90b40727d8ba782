"""Host side of the guest protocol: one multiplexed channel over any asyncio byte stream.

The transport (virtio-serial socket, a container's stdio, a socketpair in tests) only supplies the
reader/writer pair; the framing and the request bookkeeping are the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from podbay.errors import GuestError, NotFound, Timeout
from podbay.guest import protocol
from podbay.models import ExecResult

Header = dict[str, Any]
Frame = tuple[Header, bytes]
OutputCallback = Callable[[bytes], None]
# Output kept per stream for the ExecResult; the callbacks see all of it. Bounds host memory per exec.
OUTPUT_LIMIT = 16 << 20


class GuestChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[Frame | None]] = {}
        self._closed_reason: str | None = None
        self._read_task = asyncio.create_task(self._read_frames())

    # ---- plumbing --------------------------------------------------------------------------------------

    async def _read_frames(self) -> None:
        try:
            while True:
                prefix = await self._reader.readexactly(protocol.PREFIX.size)
                header_len, payload_len = protocol.parse_prefix(prefix)
                header = protocol.parse_header(await self._reader.readexactly(header_len))
                payload = await self._reader.readexactly(payload_len) if payload_len else b""
                queue = self._queues.get(header.get("id", 0))
                if queue is not None:
                    queue.put_nowait((header, payload))
        except (asyncio.IncompleteReadError, ConnectionError, protocol.FrameError) as exc:
            self._closed_reason = f"guest channel closed: {exc!r}"
        finally:
            self._closed_reason = self._closed_reason or "guest channel closed"
            for queue in self._queues.values():
                queue.put_nowait(None)

    def _open(self) -> tuple[int, asyncio.Queue[Frame | None]]:
        if self._closed_reason:
            raise GuestError(self._closed_reason)
        request_id = next(self._ids)
        queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._queues[request_id] = queue
        return request_id, queue

    async def _send(self, header: Header, payload: bytes = b"") -> None:
        if self._closed_reason:
            raise GuestError(self._closed_reason)
        self._writer.write(protocol.encode(header, payload))
        await self._writer.drain()

    async def _next(self, request_id: int, queue: asyncio.Queue[Frame | None]) -> Frame:
        frame = await queue.get()
        if frame is None:
            raise GuestError(self._closed_reason or "guest channel closed")
        header, _ = frame
        if header.get("event") == "error":
            raise _error_from(header)
        return frame

    async def request(self, op: str, payload: bytes = b"", timeout: float | None = 30.0, **fields: Any) -> Frame:
        """Send one request and wait for its single `result` frame."""
        request_id, queue = self._open()
        try:
            await self._send({"id": request_id, "op": op, **fields}, payload)
            async with asyncio.timeout(timeout):
                return await self._next(request_id, queue)
        except TimeoutError:
            raise Timeout(f"guest did not answer {op!r} within {timeout} s") from None
        finally:
            self._queues.pop(request_id, None)

    async def close(self) -> None:
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    # ---- processes -------------------------------------------------------------------------------------

    async def start_process(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> GuestProcess:
        request_id, queue = self._open()
        fields = {"argv": list(argv), "env": dict(env or {}), "cwd": cwd, "stdin": stdin, "timeout": timeout}
        try:
            await self._send({"id": request_id, "op": "exec", **fields})
            header, _ = await self._next(request_id, queue)
        except BaseException:
            self._queues.pop(request_id, None)
            raise
        return GuestProcess(self, request_id, queue, int(header["pid"]), on_stdout, on_stderr)


class GuestProcess:
    """A command running in the guest: feed its stdin, signal it, wait for its result."""

    def __init__(
        self,
        channel: GuestChannel,
        request_id: int,
        queue: asyncio.Queue[Frame | None],
        pid: int,
        on_stdout: OutputCallback | None,
        on_stderr: OutputCallback | None,
    ) -> None:
        self._channel = channel
        self._id = request_id
        self._queue = queue
        self.pid = pid
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._truncated = False
        self._result = asyncio.create_task(self._pump())

    async def write_stdin(self, data: bytes, eof: bool = False) -> None:
        for start in range(0, max(len(data), 1), protocol.CHUNK):
            chunk = data[start : start + protocol.CHUNK]
            last = start + protocol.CHUNK >= len(data)
            await self._control("stdin", chunk, eof=eof and last)

    async def close_stdin(self) -> None:
        await self._control("stdin", b"", eof=True)

    async def signal(self, signum: int) -> None:
        await self._control("signal", b"", signal=signum)

    async def _control(self, op: str, payload: bytes, **fields: Any) -> None:
        # Fire and forget: replies (or a not-found error once the process ended) are ignored by wait().
        control_id = next(self._channel._ids)
        await self._channel._send({"id": control_id, "op": op, "target": self._id, **fields}, payload)

    async def wait(self) -> ExecResult:
        return await asyncio.shield(self._result)

    async def _pump(self) -> ExecResult:
        """Deliver output to the callbacks as it arrives (not only when someone waits) and collect it."""
        try:
            while True:
                header, payload = await self._channel._next(self._id, self._queue)
                event = header.get("event")
                if event in self._output:
                    kept = self._output[event]
                    room = OUTPUT_LIMIT - len(kept)
                    self._truncated = self._truncated or len(payload) > room
                    kept += payload[: max(room, 0)]
                    callback = self._callbacks[event]
                    if callback is not None:
                        callback(payload)
                elif event == "exit":
                    return ExecResult(
                        exit_code=int(header["exit_code"]),
                        signal=header.get("signal"),
                        timed_out=bool(header.get("timed_out")),
                        duration_s=float(header.get("duration", 0.0)),
                        stdout=self._output["stdout"].decode(errors="replace"),
                        stderr=self._output["stderr"].decode(errors="replace"),
                        truncated=self._truncated,
                    )
        finally:
            self._channel._queues.pop(self._id, None)


def _error_from(header: Header) -> Exception:
    message = str(header.get("message", "guest error"))
    if header.get("error") == "not_found":
        return NotFound(message)
    return GuestError(message)
