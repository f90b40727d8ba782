"""The REST routes: pods, exec (plain and streamed as NDJSON), files, snapshots, fork. See docs/api.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from podbay.errors import InvalidSpec, PodbayError, Unauthorized
from podbay.guest.protocol import MAX_PAYLOAD
from podbay.metering import UsageReport
from podbay.models import ExecEvent, ExecResult, FileEntry, PodInfo, PodSpec, PodState, SnapshotInfo
from podbay.platform import matching
from podbay.server.errors import responses
from podbay.server.service import Service
from podbay.wire import ExecRequest, FileWritten, ForkRequest, SnapshotRequest, TimeoutRequest, error_body

router = APIRouter()
_background: set[asyncio.Future[None]] = set()  # kills of abandoned streamed commands, until they are sent


def _forget(task: asyncio.Future[None]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # the pod may be gone already: nothing to kill


def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


bearer = HTTPBearer(
    scheme_name="token",
    description="an API token of one tenant (`podbay tokens create --tenant NAME`), shown once when made",
    auto_error=False,  # a missing token answers 401 in podbay's error shape, from `tenant` below
)


def tenant(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The tenant of the request's bearer token: every route but /healthz needs one."""
    token = credentials.credentials.strip() if credentials is not None else ""
    if not token:
        raise Unauthorized("no API token: send `Authorization: Bearer <token>` (`podbay tokens create`)")
    request.state.tenant = found = service(request).registry.tenant_of(token)  # for the access log
    return found


ServiceDep = Annotated[Service, Depends(service)]
TenantDep = Annotated[str, Depends(tenant)]

# The error statuses each route can answer, all in the one error shape (see errors.py): every route with a
# token, those naming a pod, those that reach a backend, and those with a JSON body.
ANY = (401, 500)
POD = (*ANY, 404, 422)
BACKEND = (409, 429, 501, 502, 503, 504)
BODY = (400, 422)
BINARY = {"schema": {"type": "string", "format": "binary"}}


@router.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


@router.post("/pods", response_model=PodInfo, status_code=201, responses=responses(*ANY, *BODY, *BACKEND))
async def create_pod(spec: PodSpec, svc: ServiceDep, who: TenantDep) -> PodInfo:
    return svc.shown(who, await svc.create(who, spec))


@router.get("/pods", response_model=list[PodInfo], responses=responses(*ANY, 422))
async def list_pods(
    svc: ServiceDep,
    who: TenantDep,
    state: Annotated[PodState | None, Query(description="only pods in this state")] = None,
    backend: Annotated[str | None, Query(max_length=64, description="only pods on this backend")] = None,
) -> list[PodInfo]:
    return matching(svc.pods(who), state, backend)


@router.get("/pods/{pod_id}", response_model=PodInfo, responses=responses(*POD))
async def get_pod(pod_id: str, svc: ServiceDep, who: TenantDep) -> PodInfo:
    return svc.shown(who, svc.pod(who, pod_id))


@router.delete("/pods/{pod_id}", response_model=PodInfo, responses=responses(*POD, *BACKEND))
async def destroy_pod(pod_id: str, svc: ServiceDep, who: TenantDep) -> PodInfo:
    pod = svc.pod(who, pod_id)
    await svc.destroy(pod)
    return svc.shown(who, pod)


@router.post("/pods/{pod_id}/pause", response_model=PodInfo, responses=responses(*POD, *BACKEND))
async def pause_pod(pod_id: str, svc: ServiceDep, who: TenantDep) -> PodInfo:
    pod = svc.pod(who, pod_id)
    await pod.pause()
    return svc.shown(who, pod)


@router.post("/pods/{pod_id}/resume", response_model=PodInfo, responses=responses(*POD, *BACKEND))
async def resume_pod(pod_id: str, svc: ServiceDep, who: TenantDep) -> PodInfo:
    pod = svc.pod(who, pod_id)
    await pod.resume()
    return svc.shown(who, pod)


@router.post("/pods/{pod_id}/timeout", response_model=PodInfo, responses=responses(*POD, *BODY, *BACKEND))
async def set_pod_timeout(pod_id: str, body: TimeoutRequest, svc: ServiceDep, who: TenantDep) -> PodInfo:
    """Destroy the pod `timeout_s` seconds from now (extends or shortens its timeout)."""
    pod = svc.pod(who, pod_id)
    await pod.set_timeout(body.timeout_s)
    return svc.shown(who, pod)


@router.post("/pods/{pod_id}/exec", response_model=ExecResult, responses=responses(*POD, *BODY, *BACKEND))
async def exec_in_pod(pod_id: str, body: ExecRequest, svc: ServiceDep, who: TenantDep) -> ExecResult:
    pod = svc.pod(who, pod_id)
    return await pod.exec(body.argv, env=body.env, cwd=body.cwd, stdin=body.stdin, timeout=body.timeout)


@router.post(
    "/pods/{pod_id}/exec/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "NDJSON: one ExecEvent per line, the last an exit event (or the error shape)",
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        },
        **responses(*POD, *BODY, *BACKEND),
    },
)
async def exec_stream(pod_id: str, body: ExecRequest, svc: ServiceDep, who: TenantDep) -> StreamingResponse:
    """NDJSON: a line per stdout/stderr chunk as it comes (`data` in base64), then one exit line with the
    result. Errors before the command starts answer as usual; a failure after it started is one last line in
    the error shape. A client that goes away kills the command."""
    pod = svc.pod(who, pod_id)
    queue: asyncio.Queue[ExecEvent | None] = asyncio.Queue()
    process = await pod.start_process(
        body.argv,
        env=body.env,
        cwd=body.cwd,
        stdin=body.stdin is not None,
        timeout=body.timeout,
        on_stdout=lambda chunk: queue.put_nowait(ExecEvent(kind="stdout", data=chunk)),
        on_stderr=lambda chunk: queue.put_nowait(ExecEvent(kind="stderr", data=chunk)),
    )
    if body.stdin is not None:
        await process.write_stdin(body.stdin, eof=True)
    waiter = asyncio.ensure_future(process.wait())
    waiter.add_done_callback(lambda _: queue.put_nowait(None))  # after every chunk: wait() ends after them

    async def lines() -> AsyncIterator[str]:
        try:
            while (event := await queue.get()) is not None:
                yield event.model_dump_json() + "\n"
            try:
                result = waiter.result()
            except PodbayError as exc:
                yield json.dumps(error_body(svc.redactor.error(exc), pod_id)) + "\n"
                return
            yield ExecEvent(kind="exit", result=result).model_dump_json() + "\n"
        finally:
            if not waiter.done():  # the client went away: the command goes too (not awaited: we are cancelled)
                waiter.cancel()
                kill = asyncio.ensure_future(process.signal(9))
                _background.add(kill)
                kill.add_done_callback(_forget)

    return StreamingResponse(lines(), media_type="application/x-ndjson")


@router.get(
    "/pods/{pod_id}/files",
    response_class=Response,
    responses={
        200: {"description": "the file's bytes", "content": {"application/octet-stream": BINARY}},
        **responses(*POD, *BACKEND),
    },
)
async def read_file(
    pod_id: str, svc: ServiceDep, who: TenantDep, path: Annotated[str, Query(min_length=1)]
) -> Response:
    data = await svc.pod(who, pod_id).files.read(path)
    return Response(content=data, media_type="application/octet-stream")


@router.get("/pods/{pod_id}/files/list", response_model=list[FileEntry], responses=responses(*POD, *BACKEND))
async def list_files(
    pod_id: str, svc: ServiceDep, who: TenantDep, path: Annotated[str, Query(min_length=1)]
) -> list[FileEntry]:
    """The entries of a directory in the pod, sorted by name."""
    return await svc.pod(who, pod_id).files.list(path)


@router.put(
    "/pods/{pod_id}/files",
    response_model=FileWritten,
    responses=responses(*POD, *BACKEND),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/octet-stream": BINARY}},
    },
)
async def write_file(
    pod_id: str,
    request: Request,
    svc: ServiceDep,
    who: TenantDep,
    path: Annotated[str, Query(min_length=1)],
    mode: Annotated[int, Query(ge=0, le=0o7777)] = 0o644,
) -> FileWritten:
    pod = svc.pod(who, pod_id)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_PAYLOAD:  # stop reading: the body would never fit one write
            raise InvalidSpec("body", f"is more than {MAX_PAYLOAD} bytes", "upload it in parts")
    size = await pod.files.write(path, bytes(data), mode)
    return FileWritten(path=path, size=size)


@router.post(
    "/pods/{pod_id}/snapshot", response_model=SnapshotInfo, status_code=201, responses=responses(*POD, *BODY, *BACKEND)
)
async def snapshot_pod(pod_id: str, body: SnapshotRequest, svc: ServiceDep, who: TenantDep) -> SnapshotInfo:
    info = await svc.snapshot(who, svc.pod(who, pod_id), body.name)
    return svc.redactor.snapshot_info(info)  # a path on the server's host is none of the client's business


@router.post("/snapshots/{name}/restore", response_model=PodInfo, status_code=201, responses=responses(*POD, *BACKEND))
async def restore_snapshot(name: str, svc: ServiceDep, who: TenantDep) -> PodInfo:
    return svc.shown(who, await svc.restore(who, name))


@router.post(
    "/pods/{pod_id}/fork", response_model=list[PodInfo], status_code=201, responses=responses(*POD, *BODY, *BACKEND)
)
async def fork_pod(pod_id: str, body: ForkRequest, svc: ServiceDep, who: TenantDep) -> list[PodInfo]:
    children = await svc.fork(who, svc.pod(who, pod_id), body.n)
    return [svc.shown(who, child) for child in children]


@router.get("/usage", response_model=UsageReport, responses=responses(*POD))
async def usage(
    svc: ServiceDep,
    who: TenantDep,
    pod: Annotated[str | None, Query(description="one pod (ended or running); else the tenant's pods")] = None,
    start: Annotated[float | None, Query(alias="from", description="epoch seconds: ended at or after")] = None,
    end: Annotated[float | None, Query(alias="to", description="epoch seconds: pods that ended before")] = None,
) -> UsageReport:
    """The caller's usage and its cost under the server's price table: one pod (`?pod=ID`), or every pod of the
    tenant that ended in [from, to). Another tenant's pod answers 404, as a pod that does not exist."""
    return svc.usage(who, pod, start, end)
