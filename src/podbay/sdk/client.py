"""`AsyncClient`: the REST API of `podbay serve` with the embedded platform's method names and models.

`AsyncClient` mirrors `AsyncPlatform` (create_agent, create, get, list, restore) and has the tenant's named
volumes (volumes, volume, create_volume, delete_volume), its pods' server databases (databases,
export_database, drop_database) and, for an admin token, `admin` (podbay.sdk.admin).
`AsyncRemotePod` mirrors `AsyncPod` (exec, exec_stream, start_process, files, pause, resume, set_timeout, snapshot,
fork, destroy, info, usage), `AsyncRemoteProcess` mirrors the embedded `GuestProcess` (write_stdin, close_stdin,
signal, wait; and events). Errors are the same `PodbayError` subclasses the server raised, rebuilt from the wire
(`podbay.wire`).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import httpx
from pydantic import TypeAdapter, ValidationError

from podbay.channel import OutputCallback, check_signal
from podbay.errors import HostError, InvalidSpec, NotFound, PodbayError, Timeout
from podbay.metering import Usage, UsageReport
from podbay.models import ExecEvent, ExecResult, FileEntry, Phase, PodInfo, PodSpec, PodState, SnapshotInfo
from podbay.postmortem import PodEvent, PostMortem
from podbay.sdk.admin import AsyncAdmin
from podbay.sdk.fields import PodFields
from podbay.state.servers import DatabaseInfo
from podbay.tenancy import TenantVolume, VolumeRequest
from podbay.wire import (
    ExecRequest,
    FileWritten,
    ProcessInfo,
    ProcessRequest,
    SignalRequest,
    SnapshotRequest,
    TimeoutRequest,
    error_from_body,
    validation_error,
)

DEFAULT_TIMEOUT_S = 300.0  # creates boot sandboxes and execs run commands: generous by default
DATABASE = TypeAdapter(DatabaseInfo)
DATABASES = TypeAdapter(list[DatabaseInfo])


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

    async def list(self, path: str) -> list[FileEntry]:
        """Every entry of a directory in the pod, sorted by name."""
        response = await self._pod._client._request("GET", f"/pods/{self._pod.id}/files/list", params={"path": path})
        return [FileEntry.model_validate(entry) for entry in response.json()]


class AsyncRemoteProcess:
    """A process started with `pod.start_process`: it runs in the server, whoever reads it. `wait()` follows
    its output (to the callbacks given at the start) until it ends; `events()` yields it; leaving
    `async with process:` kills it if it still runs."""

    def __init__(
        self,
        pod: AsyncRemotePod,
        info: ProcessInfo,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> None:
        self._pod = pod
        self.id = info.id
        self.pod_id = info.pod_id
        self.argv = info.argv
        self._callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self._url = f"/pods/{pod.id}/processes/{info.id}"

    async def info(self) -> ProcessInfo:
        return ProcessInfo.model_validate((await self._pod._client._request("GET", self._url)).json())

    async def write_stdin(self, data: bytes, eof: bool = False) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidSpec("data", f"must be bytes, got {type(data).__name__}", "pass bytes, e.g. b'line\\n'")
        await self._pod._client._request(
            "POST",
            f"{self._url}/stdin",
            params={"eof": "true" if eof else "false"},
            content=bytes(data),
            headers={"Content-Type": "application/octet-stream"},
        )

    async def close_stdin(self) -> None:
        await self.write_stdin(b"", eof=True)

    async def signal(self, signum: int) -> None:
        body = SignalRequest(signal=check_signal(signum)).model_dump_json()
        await self._pod._client._request("POST", f"{self._url}/signal", content=body)

    async def events(self) -> AsyncGenerator[ExecEvent, None]:
        """Its output from the oldest chunk the server kept (the last 4 MiB), as it comes, then its exit.
        Leaving the loop early leaves the process running."""
        async for event in self._pod._client._events("GET", f"{self._url}/output", read_timeout=None):
            yield event

    async def wait(self) -> ExecResult:
        """Its result, once it ends; its output goes to the start's callbacks meanwhile (from the oldest chunk
        the server kept, on each call)."""
        async for event in self.events():
            callback = self._callbacks.get(event.kind)
            if callback is not None:
                callback(event.data)
            if event.kind == "exit" and event.result is not None:
                return event.result
        raise HostError(f"the output of process {self.id} ended without its exit")

    async def __aenter__(self) -> AsyncRemoteProcess:
        return self

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(NotFound):  # gone with its pod already: nothing left to kill
            if (await self.info()).state == "running":
                await self.signal(9)


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
        async for event in self._client._events("POST", f"/pods/{self.id}/exec/stream", content=body):
            yield event

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
    ) -> AsyncRemoteProcess:
        """Start a long-running command in the pod (with `stdin=True`, feed it with `write_stdin`); the
        callbacks get its output while `wait()` runs."""
        if isinstance(argv, str):
            raise InvalidSpec("argv", "must be a list of strings", 'pass e.g. ["python3", "-c", "print(1)"]')
        try:
            request = ProcessRequest(argv=list(argv), env=dict(env or {}), cwd=cwd, stdin=stdin, timeout=timeout)
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        response = await self._client._request("POST", f"/pods/{self.id}/processes", content=request.model_dump_json())
        return AsyncRemoteProcess(self, ProcessInfo.model_validate(response.json()), on_stdout, on_stderr)

    async def usage(self) -> Usage:
        """What this pod used so far (or in all, once destroyed), as the embedded pod's usage()."""
        return (await self._client.usage(self.id)).pods[0]

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
        self.admin = AsyncAdmin(self)  # the /admin routes: for a client with an admin token

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if "content" in kwargs and isinstance(kwargs["content"], str):
            kwargs.setdefault("headers", _JSON)
        with _translated(method, url):
            response = await self._http.request(method, url, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response

    async def _events(
        self, method: str, url: str, *, content: str | None = None, read_timeout: float | None = DEFAULT_TIMEOUT_S
    ) -> AsyncGenerator[ExecEvent, None]:
        """An NDJSON stream of ExecEvents; an error line raises the error it carries."""
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout, write=None, pool=None)
        with _translated(method, url):
            async with self._http.stream(method, url, content=content, headers=_JSON, timeout=timeout) as response:
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

    async def create_agent(self, **fields: Unpack[PodFields]) -> AsyncRemotePod:
        """Create a pod from PodSpec's fields (e.g. memory_db=True); the server checks them (InvalidSpec names a
        bad one). Left out, a field takes PodSpec's default."""
        body = {name: value for name, value in fields.items() if not (name in ("env", "context") and value is None)}
        try:
            content = json.dumps(body, default=_jsonable)
        except (TypeError, ValueError) as exc:
            raise InvalidSpec(
                "fields", f"cannot be sent as JSON ({exc})", "pass PodSpec's types (see PodSpec)"
            ) from None
        response = await self._request("POST", "/pods", content=content)
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def create(self, spec: PodSpec) -> AsyncRemotePod:
        response = await self._request("POST", "/pods", content=spec.model_dump_json(exclude_unset=True))
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def get(self, pod_id: str) -> AsyncRemotePod:
        response = await self._request("GET", f"/pods/{pod_id}")
        return AsyncRemotePod(self, PodInfo.model_validate(response.json()))

    async def list(self, *, state: PodState | None = None, backend: str | None = None) -> list[PodInfo]:
        """The tenant's live pods, oldest first; only those in `state` / on `backend` if given."""
        params = {key: str(value) for key, value in (("state", state), ("backend", backend)) if value is not None}
        response = await self._request("GET", "/pods", params=params)
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

    async def volumes(self) -> builtins.list[TenantVolume]:
        """The tenant's named volumes (its own namespace: another tenant's are never listed)."""
        response = await self._request("GET", "/volumes")
        return [TenantVolume.model_validate(item) for item in response.json()]

    async def volume(self, name: str) -> TenantVolume:
        return TenantVolume.model_validate((await self._request("GET", f"/volumes/{name}")).json())

    async def create_volume(self, name: str, size_mib: int = 256) -> TenantVolume:
        """A new volume with an empty database; `create_agent(memory_db=True, volume=name)` also makes one."""
        try:
            body = VolumeRequest(name=name, size_mib=size_mib).model_dump_json()
        except ValidationError as exc:
            raise validation_error(exc.errors()) from None
        return TenantVolume.model_validate((await self._request("POST", "/volumes", content=body)).json())

    async def delete_volume(self, name: str) -> TenantVolume:
        """Delete the volume and its data for good (Conflict while a pod holds it)."""
        return TenantVolume.model_validate((await self._request("DELETE", f"/volumes/{name}")).json())

    async def databases(self) -> builtins.list[DatabaseInfo]:
        """The server databases of the tenant's pods (`db="postgres"|"redis"`): live, and kept after their pod
        ended (`db_retain=True`)."""
        response = await self._request("GET", "/databases")
        return DATABASES.validate_python(response.json())

    async def export_database(self, pod_id: str, dest: str | os.PathLike[str]) -> int:
        """Write a dump of the pod's database (live or retained) to the file `dest`, replacing it only once the
        whole dump is in; returns its size in bytes."""
        url = f"/databases/{pod_id}/export"
        return await self._download(url, Path(dest))

    async def drop_database(self, pod_id: str) -> DatabaseInfo:
        """Remove a database kept after its pod ended, for good (Conflict while the pod lives)."""
        return DATABASE.validate_python((await self._request("DELETE", f"/databases/{pod_id}")).json())

    async def _download(self, url: str, dest: Path) -> int:
        """GET `url` into `dest` through a `.part` file beside it (removed on any failure)."""
        partial = dest.with_name(dest.name + ".part")
        try:
            with _translated("GET", url):
                async with self._http.stream("GET", url) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _error(response)
                    size = 0
                    with partial.open("wb") as out:
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
                            size += len(chunk)
            os.replace(partial, dest)
        except OSError as exc:
            raise HostError(f"cannot write {dest}: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)
        return size

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

    async def snapshots(self) -> builtins.list[SnapshotInfo]:
        """The tenant's snapshots, by name (`path` is empty: it is the server's)."""
        response = await self._request("GET", "/snapshots")
        return [SnapshotInfo.model_validate(info) for info in response.json()]

    async def delete_snapshot(self, name: str) -> None:
        """Delete one of the tenant's snapshots for good (pods restored from it keep running)."""
        await self._request("DELETE", f"/snapshots/{name}")

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


def _jsonable(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


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
