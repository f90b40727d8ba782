"""Long-running processes of a pod over REST: start one, stream its output (NDJSON, as often as asked), feed
its stdin, signal it, read its status and result. See docs/api.md ("Processes").

A process is a resource of the service, not of a connection: a client that goes away leaves it running (unlike
`/exec/stream`). Each pod holds at most MAX_PROCESSES of them (finished ones are forgotten first); they are
dropped, and their waiters cancelled, when the pod ends. Processes are named by unguessable ids and are only
reached through their pod, so another tenant's process answers 404 as its pod does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from podbay.channel import GuestProcess, check_signal
from podbay.errors import Conflict, InvalidSpec, NotFound, PodbayError, QuotaExceeded
from podbay.guest.protocol import MAX_PAYLOAD
from podbay.metering import Usage
from podbay.models import ExecEvent, ExecResult
from podbay.server.errors import responses
from podbay.server.routes import BACKEND, BINARY, BODY, POD, ServiceDep, TenantDep
from podbay.server.service import Service
from podbay.wire import ProcessInfo, ProcessRequest, SignalRequest, error_body

MAX_PROCESSES = 16  # per pod, running or finished and not yet forgotten
KEPT_OUTPUT = 4 << 20  # bytes of output a process keeps for readers; the oldest chunks go first

router = APIRouter()


class RemoteProcess:
    """One process: its guest process, the output events kept for readers, and its end."""

    def __init__(self, process_id: str, pod_id: str, request: ProcessRequest) -> None:
        self.id = process_id
        self.pod_id = pod_id
        self.argv = request.argv
        self.stdin_open = request.stdin
        self.guest: GuestProcess | None = None
        self.events: list[ExecEvent] = []
        self.first = 0  # the index, over the process's life, of events[0] (older ones were dropped)
        self.kept_bytes = 0
        self.result: ExecResult | None = None
        self.error: PodbayError | None = None
        self.changed = asyncio.Event()  # set, and replaced by a fresh one, at each new event or the end
        self.waiter: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None

    def output(self, kind: str, chunk: bytes) -> None:
        self.events.append(ExecEvent(kind="stdout" if kind == "stdout" else "stderr", data=chunk))
        self.kept_bytes += len(chunk)
        while self.kept_bytes > KEPT_OUTPUT and len(self.events) > 1:
            self.kept_bytes -= len(self.events.pop(0).data)
            self.first += 1
        self._notify()

    def _notify(self) -> None:
        woken, self.changed = self.changed, asyncio.Event()
        woken.set()

    async def follow(self) -> None:
        """Wait for the guest process's end; wake every reader when it comes."""
        assert self.guest is not None
        try:
            self.result = await self.guest.wait()
        except PodbayError as exc:
            self.error = exc
        except asyncio.CancelledError:
            self.error = NotFound(f"process {self.id} ended with its pod {self.pod_id}")
            raise
        finally:
            self.stdin_open = False
            self._notify()

    def info(self) -> ProcessInfo:
        error = f"{type(self.error).__name__}: {self.error}" if self.error is not None else None
        state: Literal["running", "exited", "failed"] = "running"
        if self.done:
            state = "exited" if self.result is not None else "failed"
        return ProcessInfo(
            id=self.id,
            pod_id=self.pod_id,
            argv=self.argv,
            state=state,
            stdin_open=self.stdin_open,
            result=self.result,
            error=error,
        )

    async def lines(self) -> AsyncIterator[str]:
        """Every kept event from the oldest, then new ones as they come, then the exit (or the error shape)."""
        position = self.first
        while True:
            while position >= self.first + len(self.events) and not self.done:
                await self.changed.wait()
            position = max(position, self.first)
            pending = self.events[position - self.first :]
            position += len(pending)
            for event in pending:
                yield event.model_dump_json() + "\n"
            if self.done and position >= self.first + len(self.events):
                break
        if self.error is not None:
            yield json.dumps(error_body(self.error, self.pod_id)) + "\n"
        else:
            yield ExecEvent(kind="exit", result=self.result).model_dump_json() + "\n"


class ProcessTable:
    """The service's processes, by pod; forgets a pod's when it ends."""

    def __init__(self, service: Service) -> None:
        self.by_pod: dict[str, dict[str, RemoteProcess]] = {}
        service.platform.on_pod_end(self.pod_ended)

    def pod_ended(self, usage: Usage) -> None:
        for process in self.by_pod.pop(usage.pod_id, {}).values():
            if process.waiter is not None and not process.waiter.done():
                process.waiter.cancel()

    def admit(self, pod_id: str, request: ProcessRequest) -> RemoteProcess:
        """A new process record for `pod_id`, room made by forgetting its oldest finished ones."""
        processes = self.by_pod.setdefault(pod_id, {})
        for finished in [p for p in processes.values() if p.done][: max(0, len(processes) - MAX_PROCESSES + 1)]:
            del processes[finished.id]
        if len(processes) >= MAX_PROCESSES:
            raise QuotaExceeded(
                f"pod {pod_id} has {len(processes)} running processes, the most one pod may have; "
                "wait for one to end or signal it (POST .../signal)"
            )
        process = RemoteProcess(f"proc-{secrets.token_hex(8)}", pod_id, request)
        processes[process.id] = process
        return process

    def get(self, pod_id: str, process_id: str) -> RemoteProcess:
        found = self.by_pod.get(pod_id, {}).get(process_id)
        if found is None:
            raise NotFound(f"no process {process_id!r} in pod {pod_id}")
        return found


def table(request: Request) -> ProcessTable:
    """The app's one ProcessTable, made on first use (it listens for the ends of the service's pods)."""
    state = request.app.state
    if getattr(state, "processes", None) is None:
        state.processes = ProcessTable(state.service)
    found: ProcessTable = state.processes
    return found


def _process(request: Request, svc: Service, who: str, pod_id: str, process_id: str) -> RemoteProcess:
    svc.pod(who, pod_id)  # the tenant check: another tenant's pod (and so its processes) is 404
    return table(request).get(pod_id, process_id)


@router.post(
    "/pods/{pod_id}/processes",
    response_model=ProcessInfo,
    status_code=201,
    responses=responses(*POD, *BODY, *BACKEND),
)
async def start_process(
    pod_id: str, body: ProcessRequest, request: Request, svc: ServiceDep, who: TenantDep
) -> ProcessInfo:
    """Start a command that outlives this request; read its output with `GET .../output`."""
    pod = svc.pod(who, pod_id)
    processes = table(request)
    process = processes.admit(pod_id, body)
    try:
        process.guest = await pod.start_process(
            body.argv,
            env=body.env,
            cwd=body.cwd,
            stdin=body.stdin,
            timeout=body.timeout,
            on_stdout=lambda chunk: process.output("stdout", chunk),
            on_stderr=lambda chunk: process.output("stderr", chunk),
        )
    except BaseException:
        processes.by_pod.get(pod_id, {}).pop(process.id, None)
        raise
    process.waiter = asyncio.create_task(process.follow())
    return process.info()


@router.get("/pods/{pod_id}/processes", response_model=list[ProcessInfo], responses=responses(*POD))
async def list_processes(pod_id: str, request: Request, svc: ServiceDep, who: TenantDep) -> list[ProcessInfo]:
    svc.pod(who, pod_id)
    return [process.info() for process in table(request).by_pod.get(pod_id, {}).values()]


@router.get("/pods/{pod_id}/processes/{process_id}", response_model=ProcessInfo, responses=responses(*POD))
async def get_process(pod_id: str, process_id: str, request: Request, svc: ServiceDep, who: TenantDep) -> ProcessInfo:
    return _process(request, svc, who, pod_id, process_id).info()


@router.get(
    "/pods/{pod_id}/processes/{process_id}/output",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "NDJSON: one ExecEvent per line from the oldest kept chunk, the last an exit event "
            "(or the error shape); it stays open while the process runs",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **responses(*POD),
    },
)
async def process_output(
    pod_id: str, process_id: str, request: Request, svc: ServiceDep, who: TenantDep
) -> StreamingResponse:
    """The process's output as NDJSON, replayed from the oldest kept chunk (the last 4 MiB) and followed
    until it ends. Any number of readers; a reader that goes away leaves the process running."""
    process = _process(request, svc, who, pod_id, process_id)
    return StreamingResponse(process.lines(), media_type="application/x-ndjson")


@router.post(
    "/pods/{pod_id}/processes/{process_id}/stdin",
    response_model=ProcessInfo,
    responses=responses(*POD, *BACKEND),
    openapi_extra={"requestBody": {"required": False, "content": {"application/octet-stream": BINARY}}},
)
async def write_stdin(
    pod_id: str,
    process_id: str,
    request: Request,
    svc: ServiceDep,
    who: TenantDep,
    eof: Annotated[bool, Query(description="close the process's stdin after these bytes")] = False,
) -> ProcessInfo:
    """Send the body's bytes to the process's stdin (`?eof=true` closes it after them)."""
    process = _process(request, svc, who, pod_id, process_id)
    if not process.stdin_open:
        if process.done:
            raise Conflict(f"process {process_id} has ended; its stdin is closed")
        raise Conflict(
            f"process {process_id}'s stdin is closed: it was started without stdin, or sent eof already; "
            'start it with "stdin": true and send eof once, last'
        )
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_PAYLOAD:
            raise InvalidSpec("body", f"is more than {MAX_PAYLOAD} bytes", "send it in parts")
    assert process.guest is not None
    await process.guest.write_stdin(bytes(data), eof=eof)
    if eof:
        process.stdin_open = False
    return process.info()


@router.post(
    "/pods/{pod_id}/processes/{process_id}/signal",
    response_model=ProcessInfo,
    responses=responses(*POD, *BODY, *BACKEND),
)
async def signal_process(
    pod_id: str, process_id: str, body: SignalRequest, request: Request, svc: ServiceDep, who: TenantDep
) -> ProcessInfo:
    """Send a signal to the process (and its process group). A process that ended already is left as it is."""
    process = _process(request, svc, who, pod_id, process_id)
    signum = check_signal(body.signal)
    if not process.done and process.guest is not None:
        await process.guest.signal(signum)
    return process.info()
