"""Host side of the guest protocol: one multiplexed channel over any asyncio byte stream.

The transport (virtio-serial socket, a container's stdio, a socketpair in tests) only supplies the
reader/writer pair; the framing and the request bookkeeping are the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal as signals
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podbay import tunnel
from podbay.errors import GuestError, InvalidSpec, NotFound, Timeout, errors_name_the_pod
from podbay.guest import protocol
from podbay.models import ExecResult
from podbay.tunnel import ServiceConnect, TunnelStream

Header = dict[str, Any]
Frame = tuple[Header, bytes]
OutputCallback = Callable[[bytes], None]
# Output kept per stream for the ExecResult; the callbacks see all of it. Bounds host memory per exec.
OUTPUT_LIMIT = 16 << 20
# The host's own backstop over a guest-enforced exec timeout: an agent that is stopped or starved never reports
# the exit, so the host gives up this long after the guest should have killed the command.
HOST_TIMEOUT_GRACE_S = 5.0
START_TIMEOUT_S = 30.0  # for the agent to confirm that a command started
EXPLAIN_TIMEOUT_S = 3.0
# Says why the channel closed (the sandbox process's exit status, an out-of-memory kill, its log's tail).
CloseExplainer = Callable[[], Awaitable[str]]


@dataclass
class Flow:
    """Credit accounting of one exec's output on the host (docs/guest-protocol.md, "Flow control").

    `inflight`: output bytes received and not yet handed to the consumer (queued here). With a `window` (the
    agent confirmed it counts credit) it never passes the window; `peak` is its highest mark."""

    window: int | None = None
    inflight: int = 0
    peak: int = 0


def check_timeout(timeout: float | None, field: str = "timeout") -> float | None:
    """None (no limit) or a finite number of seconds above zero; anything else is refused, never guessed at."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidSpec(
            field,
            f"{timeout!r} is not a number of seconds above zero",
            "use a number of seconds above zero, e.g. 30 (none at all: no limit)",
        )
    return float(timeout)


@contextlib.contextmanager
def guest_answer(op: str) -> Iterator[None]:
    """Read the guest's answer to `op` inside this block: the guest is untrusted, so an answer that lacks a
    field or has one of the wrong type is a GuestError, not a KeyError or a pydantic ValidationError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GuestError(f"the guest agent's answer to {op!r} is malformed ({type(exc).__name__}: {exc})") from None


# What each request field is called where the caller passed it (the header's own name otherwise).
_PAYLOAD_FIELD = {"file_write": "data", "stdin": "stdin"}
_FIELD_FIXES = {
    "path": "use a shorter path",
    "argv": "pass large input in a file (pod.files.write) or on stdin, not in the command line",
    "env": "pass large values in a file (pod.files.write), not in the environment",
    "cwd": "use a shorter path",
    "data": f"write at most {protocol.MAX_PAYLOAD} bytes at once (write the file in parts)",
}


def _payload_bytes(op: str, payload: object) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    field = _PAYLOAD_FIELD.get(op, "payload")
    raise InvalidSpec(field, f"must be bytes, got {type(payload).__name__}", 'encode text first, e.g. "text".encode()')


def _refused_request(header: Header, payload: bytes, exc: Exception) -> InvalidSpec:
    """Which field of a request could not be sent, and what to do instead."""
    op = str(header.get("op", "request"))
    fields = {name: value for name, value in header.items() if name not in ("id", "op", "target")}
    if isinstance(exc, protocol.FrameError) and len(payload) > protocol.MAX_PAYLOAD:
        field = _PAYLOAD_FIELD.get(op, "payload")
        return InvalidSpec(
            field,
            f"is {len(payload)} bytes; one request carries at most {protocol.MAX_PAYLOAD}",
            _FIELD_FIXES.get(field, "send it in parts"),
        )
    sizes: dict[str, int] = {}
    for name, value in fields.items():
        try:
            sizes[name] = len(protocol.dumps(value))
        except (TypeError, ValueError) as failed:
            return InvalidSpec(name, f"cannot be encoded as JSON: {failed}", "pass strings, numbers, lists and dicts")
    if isinstance(exc, protocol.FrameError) and sizes:
        field = max(sizes, key=lambda name: sizes[name])
        return InvalidSpec(
            field,
            f"is {sizes[field]} bytes encoded; one request's fields carry at most {protocol.MAX_HEADER} in all",
            _FIELD_FIXES.get(field, "send less at once"),
        )
    return InvalidSpec(op, f"cannot be sent: {exc}", "pass JSON values, and less at once")


def check_signal(signum: object) -> int:
    if isinstance(signum, bool) or not isinstance(signum, int) or not 1 <= signum < signals.NSIG:
        raise InvalidSpec(
            "signal", f"{signum!r} is not a signal number from 1 to {signals.NSIG - 1}", "pass e.g. signal.SIGTERM"
        )
    return int(signum)


class GuestChannel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, explain_close: CloseExplainer | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[Frame | None]] = {}
        self._closed_reason: str | None = None
        self._explain_close = explain_close
        self._explained: str | None = None
        self._flows: dict[int, Flow] = {}
        self._services: dict[str, ServiceConnect] = {}
        self.streams: dict[int, TunnelStream] = {}  # guest-opened streams now open, by their (negative) id
        self._tasks: set[asyncio.Task[None]] = set()
        self._read_task = asyncio.create_task(self._read_frames())

    # ---- plumbing --------------------------------------------------------------------------------------

    async def _read_frames(self) -> None:
        try:
            while True:
                prefix = await self._reader.readexactly(protocol.PREFIX.size)
                header_len, payload_len = protocol.parse_prefix(prefix)
                header = protocol.parse_header(await self._reader.readexactly(header_len))
                payload = await self._reader.readexactly(payload_len) if payload_len else b""
                request_id = header.get("id", 0)
                if isinstance(request_id, int) and request_id < 0:
                    self._guest_stream_frame(request_id, header, payload)
                    continue
                queue = self._queues.get(request_id)
                if queue is not None:
                    queue.put_nowait(self._counted(request_id, header, payload))
        except (asyncio.IncompleteReadError, ConnectionError, protocol.FrameError) as exc:
            self._closed_reason = f"guest channel closed: {exc!r}"
        finally:
            self._closed_reason = self._closed_reason or "guest channel closed"
            for queue in self._queues.values():
                queue.put_nowait(None)
            for stream in list(self.streams.values()):
                stream.abort(None, tell_guest=False)

    def _counted(self, request_id: int, header: Header, payload: bytes) -> Frame:
        """Count an exec's output against its window; output past it (a guest ignoring credit) fails the exec
        instead of growing the queue."""
        flow = self._flows.get(request_id)
        if flow is None or header.get("event") not in ("stdout", "stderr"):
            return header, payload
        flow.inflight += len(payload)
        flow.peak = max(flow.peak, flow.inflight)
        if flow.window is not None and flow.inflight > flow.window:
            message = f"the guest sent {flow.inflight} bytes of output past its credit window of {flow.window}"
            return {"id": request_id, "event": "error", "error": "protocol", "message": message}, b""
        return header, payload

    # ---- guest-opened streams --------------------------------------------------------------------------

    def register_service(self, name: str, connect: ServiceConnect) -> None:
        """Let the guest open streams to `name`: each one is connected to what `connect()` returns. Only
        registered names are accepted; the guest never chooses where a stream goes."""
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise InvalidSpec("service", f"{name!r} is not a name of 1 to 64 characters", 'pass e.g. "db"')
        self._services[name] = connect

    async def listen(self, port: int, service: str) -> int:
        """Have the agent listen on the guest's 127.0.0.1:`port` (0: any free port) and open a stream to
        `service` for each connection. Returns the port it listens on."""
        header, _ = await self.request("listen", port=port, service=service)
        with guest_answer("listen"):
            return int(header["port"])

    async def unlisten(self, port: int) -> None:
        """Have the agent stop listening on `port` (NotFound if it does not); open streams carry on."""
        await self.request("unlisten", port=port)

    def _guest_stream_frame(self, stream_id: int, header: Header, payload: bytes) -> None:
        if header.get("event") != "open":
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.deliver(header, payload)
            elif header.get("event") in ("data", "eof"):
                # Not a stream of this channel: a fork child's or a restored pod's copy of its source's open
                # connection. Its host end is gone: reset it, or the guest's client would wait for ever.
                self._spawn(self._stream_op("close", stream_id, message="its host end is gone (a fork or restore)"))
            return
        service = header.get("service")
        connect = self._services.get(service) if isinstance(service, str) else None
        why = None
        if connect is None or stream_id in self.streams:
            why = f"no service {service!r} is registered for this pod"
        elif len(self.streams) >= tunnel.MAX_STREAMS:
            why = f"{tunnel.MAX_STREAMS} streams are open already; close one first"
        if why is not None or connect is None:
            self._spawn(self._stream_op("refuse", stream_id, message=why))
            return
        window = header.get("window")
        if not isinstance(window, int) or isinstance(window, bool) or window < protocol.CHUNK:
            window = protocol.CHUNK  # a malformed window: the smallest that still moves a chunk at a time
        stream = TunnelStream(self, stream_id, str(service), min(window, protocol.MAX_PAYLOAD))
        self.streams[stream_id] = stream
        stream.task = self._spawn(stream.run(connect))
        stream.task.add_done_callback(lambda _: self.streams.pop(stream_id, None))

    async def _stream_op(self, op: str, target: int, payload: bytes = b"", **fields: Any) -> None:
        """A fire-and-forget control frame for a stream (the agent answers only errors, which are dropped)."""
        with contextlib.suppress(GuestError):
            await self._send({"id": next(self._ids), "op": op, "target": target, **fields}, payload)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _closed_error(self) -> GuestError:
        """The error for a closed channel, with the sandbox's own account of why (asked once)."""
        if self._explained is None:
            self._explained = self._closed_reason or "guest channel closed"
            if self._explain_close is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(EXPLAIN_TIMEOUT_S):
                        self._explained += f"\n{await self._explain_close()}"
        return GuestError(self._explained)

    def _open(self) -> tuple[int, asyncio.Queue[Frame | None]]:
        if self._closed_reason:
            raise GuestError(self._explained or self._closed_reason)
        request_id = next(self._ids)
        queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._queues[request_id] = queue
        return request_id, queue

    async def _send(self, header: Header, payload: bytes = b"") -> None:
        if self._closed_reason:
            raise await self._closed_error()
        payload = _payload_bytes(str(header.get("op")), payload)
        try:
            frame = protocol.encode(header, payload)
        except (TypeError, ValueError) as exc:  # too large (FrameError), NaN, objects JSON has no form for
            raise _refused_request(header, payload, exc) from None
        self._writer.write(frame)
        try:
            await self._writer.drain()
        except ConnectionError:
            raise await self._closed_error() from None

    async def _next(self, request_id: int, queue: asyncio.Queue[Frame | None]) -> Frame:
        frame = await queue.get()
        if frame is None:
            raise await self._closed_error()
        header, _ = frame
        if header.get("event") == "error":
            raise _error_from(header)
        return frame

    async def request(self, op: str, payload: bytes = b"", timeout: float | None = 30.0, **fields: Any) -> Frame:
        """Send one request and wait for its single `result` frame."""
        timeout = check_timeout(timeout)
        request_id, queue = self._open()
        try:
            await self._send({"id": request_id, "op": op, **fields}, payload)
            async with asyncio.timeout(timeout):
                return await self._next(request_id, queue)
        except TimeoutError:
            raise Timeout(f"guest did not answer {op!r} within {timeout} s") from None
        finally:
            self._queues.pop(request_id, None)

    async def closed(self) -> None:
        """Return when the channel has closed: the sandbox's end of it went away, or close() was called.
        Costs nothing while waiting (the platform's death watch waits on it for each pod)."""
        await asyncio.wait([self._read_task])

    async def close_reason(self) -> str:
        """Why the channel closed, with the sandbox's own account (its VMM's exit status, its log's tail)."""
        return str(await self._closed_error())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
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
        timeout = check_timeout(timeout)
        host_deadline = time.monotonic() + timeout + HOST_TIMEOUT_GRACE_S if timeout is not None else None
        request_id, queue = self._open()
        flow = self._flows[request_id] = Flow()
        fields = {"argv": list(argv), "env": dict(env or {}), "cwd": cwd, "stdin": stdin, "timeout": timeout}
        fields["window"] = protocol.WINDOW  # an agent before protocol 2 ignores it and sends without credit
        try:
            await self._send({"id": request_id, "op": "exec", **fields})
            async with asyncio.timeout(START_TIMEOUT_S):
                header, _ = await self._next(request_id, queue)
        except TimeoutError:
            self._forget(request_id)
            raise Timeout(f"the guest agent did not start {argv[0]!r} within {START_TIMEOUT_S} s") from None
        except BaseException:
            self._forget(request_id)
            raise
        with guest_answer("exec"):
            pid = int(header["pid"])
            window = header.get("window")
            flow.window = int(window) if window is not None else None
        return GuestProcess(self, request_id, queue, pid, on_stdout, on_stderr, host_deadline, flow)

    def _forget(self, request_id: int) -> None:
        self._queues.pop(request_id, None)
        self._flows.pop(request_id, None)


@errors_name_the_pod(lambda process: process.pod_id)
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
        host_deadline: float | None = None,
        flow: Flow | None = None,
    ) -> None:
        self.pod_id: str | None = None  # set by the pod that started it; its errors carry it
        self._channel = channel
        self._host_deadline = host_deadline
        self._id = request_id
        self._queue = queue
        self.pid = pid
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._truncated = False
        self.flow = flow or Flow()
        # Stdin bytes the agent still takes (its window, replenished by its `credit` frames); unbounded for an
        # agent that does not count credit.
        self._stdin_credit = self.flow.window
        self._stdin_granted = asyncio.Event()
        self._result = asyncio.create_task(self._pump())
        # A process nobody waits for any more (its waiter was cancelled, its sandbox destroyed) still ends in
        # an error when the channel closes: that is expected, not an "exception never retrieved".
        self._result.add_done_callback(lambda done: done.cancelled() or done.exception())

    def when_done(self, callback: Callable[[ExecResult | BaseException], object]) -> None:
        """Call `callback` with the command's result, or the error that ended it, once it ends."""

        def done(task: asyncio.Task[ExecResult]) -> None:
            if task.cancelled():
                callback(asyncio.CancelledError())
            else:
                callback(task.exception() or task.result())

        self._result.add_done_callback(done)

    async def write_stdin(self, data: bytes, eof: bool = False) -> None:
        data = _payload_bytes("stdin", data)
        for start in range(0, max(len(data), 1), protocol.CHUNK):
            chunk = data[start : start + protocol.CHUNK]
            last = start + protocol.CHUNK >= len(data)
            await self._stdin_room(len(chunk))
            await self._control("stdin", chunk, eof=eof and last)

    async def _stdin_room(self, size: int) -> None:
        """Wait until the agent has room for `size` more stdin bytes (a chunk never passes its window)."""
        while self._stdin_credit is not None and self._stdin_credit < size and not self._result.done():
            self._stdin_granted.clear()
            await self._stdin_granted.wait()
        if self._stdin_credit is not None:
            self._stdin_credit -= size

    async def close_stdin(self) -> None:
        await self._control("stdin", b"", eof=True)

    async def signal(self, signum: int) -> None:
        await self._control("signal", b"", signal=check_signal(signum))

    async def _control(self, op: str, payload: bytes, **fields: Any) -> None:
        # Fire and forget: replies (or a not-found error once the process ended) are ignored by wait().
        control_id = next(self._channel._ids)
        await self._channel._send({"id": control_id, "op": op, "target": self._id, **fields}, payload)

    async def wait(self) -> ExecResult:
        """The command's result. With a timeout, the host gives up HOST_TIMEOUT_GRACE_S after the guest should
        have killed it, so a stopped or starved agent cannot hold the caller forever."""
        if self._host_deadline is None:
            return await asyncio.shield(self._result)
        try:
            async with asyncio.timeout_at(_loop_time(self._host_deadline)):
                return await asyncio.shield(self._result)
        except TimeoutError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.signal(9)
            raise Timeout(
                f"the guest did not report the end of process {self.pid} within its timeout plus "
                f"{HOST_TIMEOUT_GRACE_S} s: the guest agent is stopped or starved; destroy the pod"
            ) from None

    async def _pump(self) -> ExecResult:
        """Deliver output to the callbacks as it arrives (not only when someone waits) and collect it."""
        ungranted = 0
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
                    self.flow.inflight -= len(payload)
                    ungranted += len(payload)
                    ungranted = await self._grant(ungranted)
                elif event == "credit":
                    self._stdin_credited(header.get("bytes"))
                elif event == "exit":
                    return _exit_result(header, self._output, self._truncated)
        finally:
            self._channel._forget(self._id)
            self._stdin_granted.set()  # a writer waiting for credit gives up waiting (its stdin goes nowhere)

    async def _grant(self, ungranted: int) -> int:
        """Credit the agent with output the consumer took: in batches of a quarter window, or whenever the
        queue runs dry (so a stalled agent always gets its grant). Returns what is still ungranted."""
        window = self.flow.window
        if window is None or not ungranted or (ungranted < window // 4 and not self._queue.empty()):
            return 0 if window is None else ungranted
        with contextlib.suppress(GuestError):  # the channel closed: the next frame says so
            await self._channel._send(
                {"id": next(self._channel._ids), "op": "credit", "target": self._id, "bytes": ungranted}
            )
        return 0

    def _stdin_credited(self, amount: object) -> None:
        if self._stdin_credit is not None and isinstance(amount, int) and not isinstance(amount, bool) and amount > 0:
            self._stdin_credit += amount
            self._stdin_granted.set()


def _exit_result(header: Header, output: dict[str, bytearray], truncated: bool) -> ExecResult:
    with guest_answer("exec"):
        return ExecResult(
            exit_code=int(header["exit_code"]),
            signal=header.get("signal"),
            timed_out=bool(header.get("timed_out")),
            duration_s=float(header.get("duration", 0.0)),
            stdout=output["stdout"].decode(errors="replace"),
            stderr=output["stderr"].decode(errors="replace"),
            truncated=truncated,
        )


def _loop_time(monotonic: float) -> float:
    """A time.monotonic() moment on the running loop's clock."""
    return asyncio.get_running_loop().time() + (monotonic - time.monotonic())


def _error_from(header: Header) -> Exception:
    message = str(header.get("message", "guest error"))
    kind = header.get("error")
    if kind == "not_found":
        return NotFound(message)
    if kind in ("invalid", "too_large"):  # the agent refused the request itself; the pod carries on
        return InvalidSpec(str(header.get("field", "request")), message, str(header.get("fix", "check the request")))
    return GuestError(message)
