"""`Client`: the blocking wrapper over `AsyncClient` — its event loop in a daemon thread (podbay.sync's), one
line per method, as `Platform` wraps `AsyncPlatform`."""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Unpack

from podbay.channel import OutputCallback
from podbay.metering import Usage, UsageReport
from podbay.models import ExecEvent, ExecResult, FileEntry, Phase, PodInfo, PodSpec, PodState, SnapshotInfo
from podbay.postmortem import PodEvent, PostMortem
from podbay.sdk.admin import Admin
from podbay.sdk.client import DEFAULT_TIMEOUT_S, AsyncClient, AsyncRemoteFiles, AsyncRemotePod, AsyncRemoteProcess
from podbay.sdk.fields import PodFields
from podbay.state.servers import DatabaseInfo
from podbay.sync import _Loop
from podbay.tenancy import TenantVolume
from podbay.wire import ProcessInfo


class RemoteFiles:
    def __init__(self, loop: _Loop, files: AsyncRemoteFiles) -> None:
        self._loop = loop
        self._files = files

    def read(self, path: str) -> bytes:
        return self._loop.run(self._files.read(path))

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> int:
        return self._loop.run(self._files.write(path, data, mode))

    def list(self, path: str) -> list[FileEntry]:
        return self._loop.run(self._files.list(path))


class RemoteProcess:
    """A process started with `pod.start_process`; see AsyncRemoteProcess. `with process:` kills it at the end
    of the block if it still runs."""

    def __init__(self, loop: _Loop, process: AsyncRemoteProcess) -> None:
        self._loop = loop
        self._process = process
        self.id = process.id
        self.pod_id = process.pod_id
        self.argv = process.argv

    def info(self) -> ProcessInfo:
        return self._loop.run(self._process.info())

    def write_stdin(self, data: bytes, eof: bool = False) -> None:
        self._loop.run(self._process.write_stdin(data, eof=eof))

    def close_stdin(self) -> None:
        self._loop.run(self._process.close_stdin())

    def signal(self, signum: int) -> None:
        self._loop.run(self._process.signal(signum))

    def events(self) -> Iterator[ExecEvent]:
        """Its output (from the oldest chunk the server kept) as it comes, then its exit."""
        return _iterate(self._loop, self._process.events())

    def wait(self) -> ExecResult:
        return self._loop.run(self._process.wait())

    def __enter__(self) -> RemoteProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.run(self._process.__aexit__())


class RemotePod:
    def __init__(self, loop: _Loop, pod: AsyncRemotePod) -> None:
        self._loop = loop
        self._pod = pod
        self.id = pod.id
        self.spec = pod.spec
        self.files = RemoteFiles(loop, pod.files)

    def info(self) -> PodInfo:
        return self._loop.run(self._pod.info())

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        return self._loop.run(self._pod.exec(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout))

    def exec_stream(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> Iterator[ExecEvent]:
        """Yield stdout/stderr chunks as they come, then the exit; leaving the loop early kills the command."""
        return _iterate(self._loop, self._pod.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout))

    def start_process(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> RemoteProcess:
        starting = self._pod.start_process(
            argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr
        )
        return RemoteProcess(self._loop, self._loop.run(starting))

    def usage(self) -> Usage:
        """What this pod used so far (or in all, once destroyed)."""
        return self._loop.run(self._pod.usage())

    def pause(self) -> None:
        self._loop.run(self._pod.pause())

    def resume(self) -> None:
        self._loop.run(self._pod.resume())

    def snapshot(self, name: str) -> SnapshotInfo:
        return self._loop.run(self._pod.snapshot(name))

    def set_timeout(self, seconds: float) -> None:
        self._loop.run(self._pod.set_timeout(seconds))

    def fork(self, n: int) -> list[RemotePod]:
        return [RemotePod(self._loop, child) for child in self._loop.run(self._pod.fork(n))]

    def destroy(self) -> None:
        self._loop.run(self._pod.destroy())

    def trace(self) -> list[Phase]:
        return self._loop.run(self._pod.trace())

    def events(self) -> list[PodEvent]:
        return self._loop.run(self._pod.events())

    def console(self, tail: int | None = None) -> str:
        return self._loop.run(self._pod.console(tail))

    def __enter__(self) -> RemotePod:
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()


class Client:
    """The service's client, blocking API; defaults from PODBAY_SERVER and PODBAY_TOKEN. A context manager:
    leaving it closes the connection (pods live on in the server until destroyed)."""

    def __init__(
        self, base_url: str | None = None, token: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self._loop = _Loop()
        try:
            self._client = self._loop.run(_construct(base_url, token, timeout))
        except BaseException:
            self._loop.stop()
            raise
        self._closed = False
        self.admin = Admin(self._loop, self._client.admin)

    def create_agent(self, **fields: Unpack[PodFields]) -> RemotePod:
        """Create a pod from PodSpec's fields; see AsyncClient.create_agent."""
        return RemotePod(self._loop, self._loop.run(self._client.create_agent(**fields)))

    def create(self, spec: PodSpec) -> RemotePod:
        return RemotePod(self._loop, self._loop.run(self._client.create(spec)))

    def get(self, pod_id: str) -> RemotePod:
        return RemotePod(self._loop, self._loop.run(self._client.get(pod_id)))

    def list(self, *, state: PodState | None = None, backend: str | None = None) -> list[PodInfo]:
        return self._loop.run(self._client.list(state=state, backend=backend))

    def usage(self, pod_id: str | None = None, *, start: float | None = None, end: float | None = None) -> UsageReport:
        return self._loop.run(self._client.usage(pod_id, start=start, end=end))

    def trace(self, pod_id: str) -> builtins.list[Phase]:
        return self._loop.run(self._client.trace(pod_id))

    def events(self, pod_id: str) -> builtins.list[PodEvent]:
        return self._loop.run(self._client.events(pod_id))

    def console(self, pod_id: str, tail: int | None = None) -> str:
        return self._loop.run(self._client.console(pod_id, tail))

    def postmortems(self) -> builtins.list[PostMortem]:
        return self._loop.run(self._client.postmortems())

    def postmortem(self, pod_id: str) -> PostMortem:
        return self._loop.run(self._client.postmortem(pod_id))

    def snapshots(self) -> builtins.list[SnapshotInfo]:
        return self._loop.run(self._client.snapshots())

    def delete_snapshot(self, name: str) -> None:
        self._loop.run(self._client.delete_snapshot(name))

    def restore(self, name: str) -> RemotePod:
        return RemotePod(self._loop, self._loop.run(self._client.restore(name)))

    def volumes(self) -> builtins.list[TenantVolume]:
        return self._loop.run(self._client.volumes())

    def volume(self, name: str) -> TenantVolume:
        return self._loop.run(self._client.volume(name))

    def create_volume(self, name: str, size_mib: int = 256) -> TenantVolume:
        return self._loop.run(self._client.create_volume(name, size_mib))

    def delete_volume(self, name: str) -> TenantVolume:
        return self._loop.run(self._client.delete_volume(name))

    def databases(self) -> builtins.list[DatabaseInfo]:
        return self._loop.run(self._client.databases())

    def export_database(self, pod_id: str, dest: str | os.PathLike[str]) -> int:
        return self._loop.run(self._client.export_database(pod_id, dest))

    def drop_database(self, pod_id: str) -> DatabaseInfo:
        return self._loop.run(self._client.drop_database(pod_id))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.run(self._client.aclose())
        self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


async def _construct(base_url: str | None, token: str | None, timeout: float) -> AsyncClient:
    return AsyncClient(base_url, token, timeout=timeout)  # made inside the loop that will use it


async def _next(events: AsyncGenerator[ExecEvent, None]) -> ExecEvent:
    return await anext(events)


def _iterate(loop: _Loop, events: AsyncGenerator[ExecEvent, None]) -> Iterator[ExecEvent]:
    """An async generator of the loop's, iterated from this thread; closing this closes it."""
    try:
        while True:
            try:
                yield loop.run(_next(events))
            except StopAsyncIteration:
                return
    finally:
        loop.run(events.aclose())
