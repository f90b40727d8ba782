"""`AsyncClient`: the REST API of `podbay serve` with the embedded platform's method names and models.

`AsyncClient` mirrors `AsyncPlatform` (create_agent, create, get, list, restore), `AsyncRemotePod` mirrors
`AsyncPod` (exec, exec_stream, files, pause, resume, set_timeout, snapshot, fork, destroy, info). Errors are the same
`PodbayError` subclasses the server raised, rebuilt from the wire (`podbay.wire`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError

from podbay.errors import HostError, InvalidSpec, PodbayError, Timeout
from podbay.metering import UsageReport
from podbay.models import ExecEvent, ExecResult, Phase, PodInfo, PodSpec, SnapshotInfo
from podbay.postmortem import PodEvent, PostMortem
from podbay.wire import (
    ExecRequest,
    FileWritten,
    SnapshotRequest,
    TimeoutRequest,
    error_from_body,
    validation_error,
)

DEFAULT_TIMEOUT_S = 300.0  # creates boot sandboxes and execs run commands: generous by default


class AsyncRemoteFiles:
    """`pod.files` of a remote pod."""

    def __init__(self, pod: AsyncRemotePod) -> None:
        self._pod = pod

    async def read(self, path: str) -> bytes:
        response = await self._pod._client._request("GET", f"/pods/{self._pod.id}/files", params={"path": path})
        return response.content

    async def write(self, path: str, data: bytes | str, mode: int = 0o644) -> int:
        payload = data.encode() if isinstance(data, str) else data
        response = await self._pod._client._request(
            "PUT",
            f"/pods/{self._pod.id}/files",
            params={"path": path, "mode": mode},
            content=payload,
            headers={"Content-Type": "application/octet-stream"},
        )
        return FileWritten.model_validate(response.json()).size


class AsyncRemotePod:
    """A pod of the server; `info()` asks the server for its current state."""

    def __init__(self, client: AsyncClient, info: PodInfo) -> None:
        self._client = client
        self.id = info.id
        self.spec = info.spec
        self.files = AsyncRemoteFiles(self)

    async def info(self) -> PodInfo:
        return PodInfo.model_validate((await self._client._request("GET", f"/pods/{self.id}")).json())

    async def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a command to completion (for output as it comes, use exec_stream)."""
        body = _exec_body(argv, env, cwd, stdin, timeout)
        response = await self._client._request("POST", f"/pods/{self.id}/exec", content=body)
        return ExecResult.model_validate(response.json())

    async def exec_stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[ExecEvent, None]:
        """Run a command; yield its stdout and stderr chunks as they come, then its exit (with the result).
        Leaving the loop early kills the command."""
        body = _exec_body(argv, env, cwd, stdin, timeout)
        url = f"/pods/{self.id}/exec/stream"
        with _translated("POST", url):
            async with self._client._http.stream("POST", url, content=body, headers=_JSON) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    document = json.loads(line)
                    if "error" in document:
                        raise error_from_body(response.status_code, document)
                    yield ExecEvent.model_validate(document)

    async def pause(self) -> None:
        await self._client._request("POST", f"/pods/{self.id}/pause")

    async def resume(self) -> None:
        await self._client._request("POST", f"/pods/{self.id}/resume")

    async def snapshot(self, name: str) -> SnapshotInfo:
        body = SnapshotRequest(name=name).model_dump_json()
        response = await self._client._request("POST", f"/pods/{self.id}/snapshot", content=body)
        return SnapshotInfo.model_validate(response.json())

    async def set_timeout(self, seconds: float) -> None:
        """Destroy this pod `seconds` from now (extends or shortens its timeout), as the embedded pod's."""
        try:
            body = TimeoutRequest(timeout_s=seconds).model_dump_json()
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        await self._client._request("POST", f"/pods/{self.id}/timeout", content=body)

    async def fork(self, n: int) -> list[AsyncRemotePod]:
        body = json.dumps({"n": n})  # the server checks n (a bad one answers InvalidSpec naming it)
        response = await self._client._request("POST", f"/pods/{self.id}/fork", content=body)
        return [AsyncRemotePod(self._client, PodInfo.model_validate(child)) for child in response.json()]

    async def destroy(self) -> None:
        await self._client._request("DELETE", f"/pods/{self.id}")

    async def trace(self) -> list[Phase]:
        return await self._client.trace(self.id)

    async def events(self) -> list[PodEvent]:
        return await self._client.events(self.id)

    async def console(self, tail: int | None = None) -> str:
        return await self._client.console(self.id, tail)

    async def __aenter__(self) -> AsyncRemotePod:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.destroy()


class AsyncClient:
    """The service's client, asyncio core (`podbay.Client` is its blocking wrapper). Defaults come from
    PODBAY_SERVER and PODBAY_TOKEN. Use it as an async context manager, or call `aclose()`."""

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("PODBAY_SERVER")
        token = token or os.environ.get("PODBAY_TOKEN")
        if not base_url:
            raise InvalidSpec("base_url", "is missing", "pass the server's URL or set PODBAY_SERVER")
        if not token:
            raise InvalidSpec("token", "is missing", "pass a token (`podbay tokens create`) or set PODBAY_TOKEN")
        self.base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "content" in kwargs and isinstance(kwargs["content"], str):
            kwargs.setdefault("headers", _JSON)
        with _translated(method, url):
            response = await self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def create_agent(self, **fields: Any) -> AsyncRemotePod:
        """Create a pod from keyword fields of PodSpec; the server checks them (InvalidSpec names a bad one)."""
        response = await self._request("POST", "/pods", content=json.dumps(fields))
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def create(self, spec: PodSpec) -> AsyncRemotePod:
        return await self.create_agent(**spec.model_dump(exclude_unset=True))

    async def get(self, pod_id: str) -> AsyncRemotePod:
        response = await self._request("GET", f"/pods/{pod_id}")
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def list(self) -> list[PodInfo]:
        response = await self._request("GET", "/pods")
        return [PodInfo.model_validate(info) for info in response.json()]

    async def usage(
        self, pod_id: str | None = None, *, start: float | None = None, end: float | None = None
    ) -> UsageReport:
        """What a pod used and costs (ended or running), or the tenant's pods that ended in [start, end)
        (epoch seconds), under the server's price table."""
        params: dict[str, str | float] = {}
        if pod_id is not None:
            params["pod"] = pod_id
        if start is not None:
            params["from"] = start
        if end is not None:
            params["to"] = end
        response = await self._request("GET", "/usage", params=params)
        return UsageReport.model_validate(response.json())

    async def trace(self, pod_id: str) -> builtins.list[Phase]:
        """A pod's phases with their times (a pod that ended: from its post-mortem)."""
        response = await self._request("GET", f"/pods/{pod_id}/trace")
        return [Phase.model_validate(phase) for phase in response.json()]

    async def events(self, pod_id: str) -> builtins.list[PodEvent]:
        """A pod's lifecycle events, oldest first (a pod that ended: from its post-mortem)."""
        response = await self._request("GET", f"/pods/{pod_id}/events")
        return [PodEvent.model_validate(event) for event in response.json()]

    async def console(self, pod_id: str, tail: int | None = None) -> str:
        """The tail of a pod's console log (`tail` bytes at most; the server's bound if None)."""
        params = {} if tail is None else {"tail": tail}
        return (await self._request("GET", f"/pods/{pod_id}/console", params=params)).text

    async def postmortems(self) -> builtins.list[PostMortem]:
        """The tenant's kept post-mortems, latest end first."""
        response = await self._request("GET", "/postmortems")
        return [PostMortem.model_validate(found) for found in response.json()]

    async def postmortem(self, pod_id: str) -> PostMortem:
        return PostMortem.model_validate((await self._request("GET", f"/postmortems/{pod_id}")).json())

    async def restore(self, name: str) -> AsyncRemotePod:
        response = await self._request("POST", f"/snapshots/{name}/restore")
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()


_JSON = {"Content-Type": "application/json"}


def _exec_body(
    argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | None, stdin: bytes | None, timeout: float | None
) -> str:
    if isinstance(argv, str):  # the server would refuse it too, but this names the mistake
        raise InvalidSpec("argv", "must be a list of strings", 'pass e.g. ["python3", "-c", "print(1)"]')
    try:
        request = ExecRequest(argv=list(argv), env=dict(env or {}), cwd=cwd, stdin=stdin, timeout=timeout)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    return request.model_dump_json()


@contextlib.contextmanager
def _translated(method: str, url: str) -> Iterator[None]:
    """httpx's transport errors as podbay's: Timeout, or PodbayError naming the request."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise Timeout(f"{method} {url}: the server did not answer in time ({type(exc).__name__})") from None
    except httpx.HTTPError as exc:
        raise HostError(f"{method} {url}: {type(exc).__name__}: {exc}") from None


def _error(response: httpx.Response) -> PodbayError:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return error_from_body(response.status_code, body)
