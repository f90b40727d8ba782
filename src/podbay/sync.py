"""Blocking wrappers over the asyncio core: one event loop in a background thread, one line per method."""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from podbay.channel import GuestProcess, OutputCallback
from podbay.isolation.base import Availability, Backend
from podbay.metering import Usage
from podbay.models import ExecResult, FileEntry, PodInfo, PodSpec, PodState, SnapshotInfo
from podbay.paths import PodbayPaths
from podbay.platform import AsyncPlatform, AsyncPod, exit_on_termination_signals
from podbay.pool.pools import AsyncPools
from podbay.pool.warm import PoolReport
from podbay.postmortem import PostMortemStore
from podbay.snapshots import SnapshotStore
from podbay.state.volumes import VolumeStore

T = TypeVar("T")
CANCEL_WAIT_S = 60.0


class _Loop:
    """An event loop running in a daemon thread; `run` blocks the caller until a coroutine finishes."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="podbay-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop. If the caller is interrupted (Ctrl-C, SIGTERM), the coroutine is
        cancelled and given time to undo what it started (a half-made pod) before the interruption goes on."""
        finished = threading.Event()

        async def tracked() -> T:
            try:
                return await coroutine
            finally:
                finished.set()

        future = asyncio.run_coroutine_threadsafe(tracked(), self.loop)
        try:
            return future.result()
        except BaseException:
            if not future.done():
                future.cancel()
                finished.wait(CANCEL_WAIT_S)
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Process:
    def __init__(self, loop: _Loop, process: GuestProcess) -> None:
        self._loop = loop
        self._process = process
        self.pid = process.pid

    def write_stdin(self, data: bytes, eof: bool = False) -> None:
        self._loop.run(self._process.write_stdin(data, eof=eof))

    def close_stdin(self) -> None:
        self._loop.run(self._process.close_stdin())

    def signal(self, signum: int) -> None:
        self._loop.run(self._process.signal(signum))

    def wait(self) -> ExecResult:
        return self._loop.run(self._process.wait())


class Files:
    def __init__(self, loop: _Loop, pod: AsyncPod) -> None:
        self._loop = loop
        self._files = pod.files

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> int:
        return self._loop.run(self._files.write(path, data, mode))

    def read(self, path: str) -> bytes:
        return self._loop.run(self._files.read(path))

    def list(self, path: str) -> list[FileEntry]:
        return self._loop.run(self._files.list(path))

    def stat(self, path: str) -> FileEntry:
        return self._loop.run(self._files.stat(path))


class Pod:
    """A running pod, blocking API. Every PodbayError its methods raise carries its id (`pod_id`); `with pod:`
    destroys it at the end of the block."""

    files: Files

    def __init__(self, loop: _Loop, pod: AsyncPod) -> None:
        self._loop = loop
        self._pod = pod
        self.id = pod.id
        self.files = Files(loop, pod)

    def info(self) -> PodInfo:
        return self._pod.info()

    def usage(self) -> Usage:
        """What this pod used so far (or in all, once destroyed); see podbay.metering."""
        return self._pod.usage()

    def exec(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecResult:
        return self._loop.run(
            self._pod.exec(
                argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr
            )
        )

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
    ) -> Process:
        process = self._loop.run(
            self._pod.start_process(
                argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr
            )
        )
        return Process(self._loop, process)

    def pause(self) -> None:
        self._loop.run(self._pod.pause())

    def resume(self) -> None:
        self._loop.run(self._pod.resume())

    def snapshot(self, name: str) -> SnapshotInfo:
        return self._loop.run(self._pod.snapshot(name))

    def set_timeout(self, seconds: float) -> None:
        """Destroy this pod `seconds` from now (extends or shortens its timeout); see AsyncPod.set_timeout."""
        self._loop.run(self._pod.set_timeout(seconds))

    def fork(self, n: int) -> list[Pod]:
        return [Pod(self._loop, child) for child in self._loop.run(self._pod.fork(n))]

    def destroy(self) -> None:
        self._loop.run(self._pod.destroy())

    def __enter__(self) -> Pod:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.destroy()


class Pools:
    """`platform.pools`: warm pools of pre-started sandboxes, one per shape."""

    def __init__(self, loop: _Loop, pools: AsyncPools) -> None:
        self._loop = loop
        self._pools = pools

    def ensure(
        self,
        size: int,
        *,
        wait: float | None = None,
        backend: str = "qemu",
        vcpus: int = 1,
        memory_mib: int = 256,
        disk_mib: int = 1024,
        preload: str | None = None,
    ) -> PoolReport:
        """Keep `size` idle members of this shape (PodSpec's fields of the same names) refilled in the
        background; with `wait`, block up to that many seconds until they are all up."""

        return self._loop.run(
            self._pools.ensure(
                size, wait=wait, backend=backend, vcpus=vcpus, memory_mib=memory_mib, disk_mib=disk_mib, preload=preload
            )
        )

    def report(self) -> list[PoolReport]:
        """Per pool: size, idle members, hit rate, claim latency, refill rate, failures."""
        return self._pools.report()


class Platform:
    """The embedded platform, blocking API. Use it as a context manager: leaving it destroys its pods."""

    pools: Pools

    def __init__(self, paths: PodbayPaths | None = None, backends: Mapping[str, Backend] | None = None) -> None:
        self._loop = _Loop()
        self._platform = self._loop.run(_construct(paths, backends))
        self.pools = Pools(self._loop, self._platform.pools)
        self._closed = False
        # VMMs run in their own sessions, so they would outlive a script that forgot close(), or one stopped
        # by SIGTERM/SIGHUP: not at exit.
        atexit.register(self.close)
        exit_on_termination_signals()

    @property
    def paths(self) -> PodbayPaths:
        return self._platform.paths

    @property
    def volumes(self) -> VolumeStore:
        return self._platform.volumes

    def doctor(self) -> dict[str, Availability]:
        return self._platform.doctor()

    def create_agent(
        self,
        *,
        backend: str = "qemu",
        vcpus: int = 1,
        memory_mib: int = 256,
        disk_mib: int = 1024,
        memory_db: bool = False,
        volume: str | None = None,
        volume_mib: int = 256,
        db: Literal["postgres", "redis"] | None = None,
        db_template: str | None = None,
        db_retain: bool = False,
        env: Mapping[str, str] | None = None,
        context: Mapping[str, Any] | None = None,
        network: bool = False,
        boot_timeout_s: float = 60.0,
        cold: bool = False,
        preload: str | None = None,
        snapshottable: bool = False,
        timeout_s: float | None = None,
        keep_on_failure: bool = False,
    ) -> Pod:
        """Create a pod from PodSpec's fields (e.g. memory_db=True, volume="customer-42", db="postgres"); see
        PodSpec for each.
        A bad value raises InvalidSpec naming the field and the fix."""
        creating = self._platform.create_agent(
            backend=backend,
            vcpus=vcpus,
            memory_mib=memory_mib,
            disk_mib=disk_mib,
            memory_db=memory_db,
            volume=volume,
            volume_mib=volume_mib,
            db=db,
            db_template=db_template,
            db_retain=db_retain,
            env=env,
            context=context,
            network=network,
            boot_timeout_s=boot_timeout_s,
            cold=cold,
            preload=preload,
            snapshottable=snapshottable,
            timeout_s=timeout_s,
            keep_on_failure=keep_on_failure,
        )
        return Pod(self._loop, self._loop.run(creating))

    def create(self, spec: PodSpec) -> Pod:
        return Pod(self._loop, self._loop.run(self._platform.create(spec)))

    def restore(self, name: str) -> Pod:
        return Pod(self._loop, self._loop.run(self._platform.restore(name)))

    @property
    def snapshots(self) -> SnapshotStore:
        return self._platform.snapshots

    @property
    def postmortems(self) -> PostMortemStore:
        return self._platform.postmortems

    def get(self, pod_id: str) -> Pod:
        """The pod `pod_id` of this platform (NotFound if it has none by that id)."""
        return Pod(self._loop, self._platform.get(pod_id))

    def list(self, *, state: PodState | None = None, backend: str | None = None) -> list[PodInfo]:
        return self._platform.list(state=state, backend=backend)

    def close(self) -> None:
        """Destroy every pod this platform holds and stop its event loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        self._loop.run(self._platform.close())
        self._loop.stop()

    def __enter__(self) -> Platform:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


async def _construct(paths: PodbayPaths | None, backends: Mapping[str, Backend] | None) -> AsyncPlatform:
    return AsyncPlatform(paths, backends)  # built inside the loop so its clock and tasks belong to it
