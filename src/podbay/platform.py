"""The control plane, embedded: create, find and destroy pods (sandbox + private database), asyncio core.

`AsyncPlatform` is the one orchestrator; `podbay.sync.Platform` is its thin blocking wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar, cast

from podbay.channel import GuestChannel, GuestProcess, OutputCallback, guest_answer
from podbay.errors import (
    BackendUnavailable,
    Conflict,
    GuestError,
    InvalidSpec,
    NotFound,
    PodbayError,
    Unsupported,
    concerning,
    errors_name_the_pod,
)
from podbay.guest.protocol import MAX_PAYLOAD
from podbay.isolation.base import (
    Availability,
    Backend,
    PodAssignment,
    ReattachableBackend,
    ReattachableSandbox,
    Sandbox,
    SandboxConfig,
    VolumeAttachment,
)
from podbay.isolation.qemu.snapshot import SnapshotSandbox, save_snapshot, start_from_snapshot
from podbay.isolation.qemu.snapshot import fork as fork_pod
from podbay.isolation.registry import default_backends
from podbay.isolation.supervise import kill_processes_mentioning, process_identity
from podbay.metering import Clock, Meter, Usage, allocated_bytes
from podbay.models import MAX_TIMEOUT_S, ExecResult, FileEntry, Phase, PodInfo, PodSpec, PodState, SnapshotInfo
from podbay.paths import PodbayPaths
from podbay.pool.factory import Origin, PoolClaim, SandboxFactory, Start, require
from podbay.pool.pools import AsyncPools, Pools, shape_of
from podbay.postmortem import (
    SNAPSHOT_PREFIX,
    ExecRecord,
    PodEvent,
    PodHistory,
    PostMortem,
    PostMortemStore,
    keep_orphan_postmortem,
    read_tail,
)
from podbay.postmortem import spec_without_secrets as _spec_without_secrets
from podbay.records import PodRecord, VolumeRecord, read_record, write_record
from podbay.rundir import RunDir, owner_alive, read_owner, remove_run_dir
from podbay.snapshots import SnapshotStore, describe, load_snapshot
from podbay.state.base import StateLease, StateProvider
from podbay.state.databases import InstantCopy, ServerDatabases, lease_of
from podbay.state.servers import DatabaseGrant, DatabaseProvider
from podbay.state.sqlite import SqliteProvider
from podbay.state.volumes import VolumeStore

T = TypeVar("T")
log = logging.getLogger("podbay")
REAP_INTERVAL_S = 30.0  # a long-lived platform looks for orphans this often
MAX_FORK = 16
ENDED_REMEMBERED = 1024  # why a pod that ended by itself (a timeout) is gone: the last this many are kept


class Trace:
    """Timestamps of a pod's phases, relative to the moment creation began."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.phases: list[Phase] = []

    async def timed(self, name: str, work: Awaitable[T], detail: str = "") -> T:
        start = time.monotonic() - self.origin
        try:
            return await work
        finally:
            end = time.monotonic() - self.origin
            self.phases.append(Phase(name=name, start_s=start, end_s=end, detail=detail))


@errors_name_the_pod(lambda files: files._pod.id)
class AsyncFiles:
    """`pod.files`: read and write files inside the sandbox."""

    def __init__(self, pod: AsyncPod) -> None:
        self._pod = pod

    async def write(self, path: str, data: bytes | str, mode: int = 0o644) -> int:
        if not isinstance(data, bytes | bytearray | memoryview | str):
            raise InvalidSpec(
                "data", f"must be bytes or str, got {type(data).__name__}", "pass the file's content as bytes or str"
            )
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(payload) > MAX_PAYLOAD:
            raise InvalidSpec(
                "data", f"is {len(payload)} bytes; one write carries at most {MAX_PAYLOAD}", "write it in parts"
            )
        header, _ = await self._pod._running_channel().request("file_write", payload, path=path, mode=mode)
        with guest_answer("file_write"):
            return int(header["size"])

    async def read(self, path: str) -> bytes:
        _, payload = await self._pod._running_channel().request("file_read", path=path)
        return payload

    async def list(self, path: str) -> list[FileEntry]:
        """Every entry of a directory, sorted by name (the agent answers in pages; this reads them all)."""
        entries: list[FileEntry] = []
        offset: int | None = 0
        while offset is not None:
            header, _ = await self._pod._running_channel().request("file_list", path=path, offset=offset)
            with guest_answer("file_list"):
                entries += (FileEntry(**entry) for entry in header["entries"])
                next_offset = header.get("next_offset")
                offset = int(next_offset) if next_offset is not None and int(next_offset) > offset else None
        return entries

    async def stat(self, path: str) -> FileEntry:
        header, _ = await self._pod._running_channel().request("file_stat", path=path)
        with guest_answer("file_stat"):
            return FileEntry(name=header["path"], **{k: header[k] for k in ("type", "size", "mode", "mtime")})


@errors_name_the_pod(lambda pod: pod.id)
class AsyncPod:
    """A running pod. Every PodbayError its methods raise carries its id (`pod_id`); `async with pod:`
    destroys it at the end of the block."""

    files: AsyncFiles

    def __init__(
        self,
        platform: AsyncPlatform,
        pod_id: str,
        spec: PodSpec,
        sandbox: Sandbox,
        lease: StateLease | None,
        trace: Trace,
        run_dir: RunDir,
        origin: Origin,
    ) -> None:
        self.id = pod_id
        self.spec = spec
        self.sandbox = sandbox
        self.files = AsyncFiles(self)
        self._platform = platform
        self._lease = lease
        self._trace = trace
        self._run_dir = run_dir
        self.origin = origin
        self._state = PodState.RUNNING
        self._destroy_lock = asyncio.Lock()  # one teardown at a time (a timeout may fire during destroy())
        self._deadline: float | None = None  # monotonic; when the platform's timer destroys this pod
        self._timeout_s: float | None = None  # the timeout that set the deadline (for ended_reason)
        self._expired = False  # the deadline passed: the timer is destroying it
        self._ended_reason: str | None = None
        self._error: str | None = None
        self._meter = Meter(platform._clock)  # see podbay.metering: from the hand-over to a teardown that succeeds
        self.history = PodHistory(pod_id, platform._emit)  # events and exec history (podbay.postmortem)
        self._failure: str | None = None  # why the pod failed, if it did (see podbay.postmortem)
        self._death_watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncPod:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.destroy()

    def info(self) -> PodInfo:
        return PodInfo(
            id=self.id,
            state=self._state,
            spec=self.spec,
            sandbox=self.sandbox.info,
            volume=self._lease.volume_name if self._lease else None,
            db_url=self._lease.db_url if self._lease else None,
            created_at=self._platform.wall_clock(self._trace.origin),
            origin=self.origin.value,
            trace=list(self._trace.phases),
            error=self._error,
            expires_at=None if self._deadline is None else self._platform.wall_clock(self._deadline),
            ended_reason=self._ended_reason,
        )

    def usage(self) -> Usage:
        """What this pod used so far (or in all, once destroyed): see podbay.metering; a paused pod accrues
        memory and storage but no vCPU time."""
        spec = self.spec
        storage = spec.disk_mib + (spec.volume_mib if spec.memory_db else 0)
        return self._meter.usage(self.id, spec.vcpus, spec.memory_mib, storage, self._database_bytes())

    def _database_bytes(self) -> int:
        return sum(allocated_bytes(volume.image) for volume in self._lease.volumes) if self._lease else 0

    async def set_timeout(self, seconds: float) -> None:
        """Destroy this pod `seconds` from now (extends or shortens its timeout, as E2B's set_timeout does);
        a pod created without timeout_s gets one. Conflict if the pod is destroyed or failed."""
        _check_timeout(seconds)
        if self._expired or self._destroy_lock.locked() or self._state in (PodState.DESTROYED, PodState.FAILED):
            state = "being destroyed" if self._expired or self._destroy_lock.locked() else self._state.value
            raise Conflict(f"pod {self.id} is {state}; its timeout cannot be changed")
        self._platform._arm(self, float(seconds))
        self.history.event("timeout_set", f"{_seconds(float(seconds))} s from now")

    def _running_channel(self) -> GuestChannel:
        """The channel to the agent, if the pod can answer (a paused pod cannot: resume it first)."""
        if self._state is PodState.PAUSED:
            raise Conflict(f"pod {self.id} is paused; resume it or create a new one")
        if self._state is not PodState.RUNNING:
            raise Conflict(f"pod {self.id} is {self._state.value}; create a new one")
        return self.sandbox.channel

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
        _check_argv(argv)
        process = await self._running_channel().start_process(
            argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr
        )
        process.pod_id = self.id
        record = self.history.exec_started(argv)
        process.when_done(lambda outcome: self.history.exec_ended(record, outcome))
        return process

    async def exec(
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
        """Run a command to completion; output streams to the callbacks as it comes and is returned too."""
        process = await self.start_process(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin is not None,
            timeout=timeout,
            on_stdout=on_stdout,
            on_stderr=on_stderr,
        )
        if stdin is not None:
            await process.write_stdin(stdin, eof=True)
        return await process.wait()

    async def pause(self) -> None:
        self._running_channel()  # only a running pod can be paused
        await self.sandbox.pause()
        self._state = PodState.PAUSED
        self._meter.pause()
        self.history.event("paused")
        self._platform._save_record(self)

    async def resume(self) -> None:
        if self._state is not PodState.PAUSED:
            raise Conflict(f"pod {self.id} is {self._state.value}, not paused")
        await self.sandbox.resume()
        self._state = PodState.RUNNING
        self._meter.resume()
        self.history.event("resumed")
        self._platform._save_record(self)

    async def snapshot(self, name: str) -> SnapshotInfo:
        """Save this running pod as `name`: its memory, writable layer and database volume, quiesced together
        (the guest syncs and freezes its filesystems). The pod keeps running; `platform.restore(name)` starts
        a copy of it, from this process or any later one."""
        path = self._platform.snapshots.path(name)
        sandbox = self._snapshot_sandbox("snapshot", "snapshot a pod")
        self._running_channel()
        if path.exists():
            raise Conflict(f"a snapshot named {name!r} exists; remove it first (`podbay snapshot rm {name}`)")
        path.parent.mkdir(parents=True, exist_ok=True)
        database = InstantCopy(self._platform.databases, self._grant)
        saving = save_snapshot(sandbox, path, at_instant=database.save(path.parent / f".{name}.database-partial"))
        try:
            snapshot = await self._trace.timed("snapshot", saving, detail=name)
        except BaseException:
            await database.abort()
            raise
        if database.started:
            await self._trace.timed("db save", database.saved_into(path))
        self.history.event("snapshot", name)
        return describe(name, snapshot)

    @property
    def _grant(self) -> DatabaseGrant | None:
        return self._lease.grant if self._lease is not None else None

    async def fork(self, n: int) -> list[AsyncPod]:
        """`n` running copies of this running pod: copy-on-write memory, and each its own writable layer and
        its own copy of the database (discarded with the child). The pod keeps running."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_FORK:
            raise InvalidSpec("n", f"{n!r} is not an integer from 1 to {MAX_FORK}", "pass e.g. fork(3)")
        sandbox = self._snapshot_sandbox("fork", "fork a pod")
        self._running_channel()
        return await self._platform._fork(self, sandbox, n)

    def _snapshot_sandbox(self, capability: str, operation: str) -> SnapshotSandbox:
        backend = self._platform.backends[self.spec.backend]
        require(backend, capability, operation, "use a qemu pod (the default backend)")
        if not isinstance(self.sandbox, SnapshotSandbox):
            raise Unsupported(
                backend.name, f"{operation} that was booted cold", "create it without cold=True (a template clone)"
            )
        return self.sandbox

    async def destroy(self) -> None:
        """Stop the sandbox and release the pod's database. If anything of the sandbox may still run, this
        raises, the pod is FAILED and keeps its volume; calling destroy() again retries."""
        await self._destroy("destroyed")

    async def _destroy(self, reason: str, failure: str | None = None) -> None:
        """Tear the pod down and keep its post-mortem; `failure` says why, if the pod failed (its timeout, its
        sandbox's death). A failed pod with keep_on_failure is snapshotted first."""
        async with self._destroy_lock:  # a second caller waits for the first, then finds the pod destroyed
            if self._state is PodState.DESTROYED:
                return
            self._deadline = None
            failed_command = self.history.failed_command()
            if failure is None and failed_command is not None:
                failure = f"a command failed: {' '.join(failed_command.argv)[:200]} ({_how_it_ended(failed_command)})"
            self._failure = self._failure or failure
            kept = await self._keep_for_inspection() if self._failure and self.spec.keep_on_failure else (None, None)
            console = read_tail(self.sandbox.info.console_log)  # before the teardown removes the run directory
            if failure is not None:  # it ends by itself: say why from the moment it leaves the platform's list
                self._platform._remember_end(self.id, reason)
            database_bytes = self._database_bytes()  # before the teardown deletes an anonymous volume
            try:
                await self._trace.timed(
                    "destroy", self._platform.teardown(self.id, self.sandbox, self._lease, self._run_dir)
                )
            except BaseException as exc:
                self._state = PodState.FAILED
                self._error = f"destroying it ({reason}) failed: {exc}"
                self._failure = self._error
                self._platform._keep_postmortem(self, self._error, console, kept, ended=False)
                raise
            self._stop_death_watch()
            self._state = PodState.DESTROYED
            self._ended_reason = reason
            self._meter.stop(database_bytes)
            self._platform._keep_postmortem(self, reason, console, kept)
            self._platform._ended_usage(self)

    async def _keep_for_inspection(self) -> tuple[str | None, str | None]:
        """keep_on_failure: snapshot the failed pod as postmortem-<id>; (name, None), or (None, why not)."""
        name = SNAPSHOT_PREFIX + self.id
        if not self.sandbox.alive:
            return None, "no snapshot: its sandbox is gone"
        skipped = self._platform._kept_snapshot_refusal(self.id)
        if skipped is not None:
            return None, f"no snapshot: {skipped}"
        try:
            if self._state is PodState.PAUSED:
                await self.resume()  # the guest must freeze its filesystems for a consistent snapshot
            await self.snapshot(name)
        except Exception as exc:  # the post-mortem says why; the teardown goes on
            return None, f"no snapshot: {exc}"
        return name, None

    def _watch_for_death(self) -> None:
        """Notice when the sandbox dies by itself (its VMM or runtime exited, was OOM-killed, the guest crashed
        or the agent exited): the guest channel closes. One waiting task per pod, no polling."""
        self._death_watch = _background_task(self._await_death())

    async def _await_death(self) -> None:
        await self.sandbox.channel.closed()
        if self._destroy_lock.locked() or self._expired or self._state not in (PodState.RUNNING, PodState.PAUSED):
            return  # podbay's own teardown closed it
        why = await self.sandbox.channel.close_reason()
        if self._destroy_lock.locked() or self._state not in (PodState.RUNNING, PodState.PAUSED):
            return
        reason = f"sandbox died: {why}"
        log.warning("pod %s: %s", self.id, reason.splitlines()[0])
        self._death_watch = None  # this task ends in the teardown below: nothing to cancel
        try:
            await self._destroy(reason.splitlines()[0], failure=reason)
        except Exception as exc:  # FAILED, post-mortem kept; close() tries again, the reaper after it
            log.warning("pod %s: cleaning up after its sandbox died failed: %s", self.id, exc)
            self._platform._pods.setdefault(self.id, self)

    def _stop_death_watch(self) -> None:
        watch, self._death_watch = self._death_watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()


@dataclass(frozen=True)
class Recovery:
    """What `AsyncPlatform.recover` took over, and what it could not (pod id -> why; those were torn down)."""

    adopted: list[AsyncPod]
    lost: dict[str, str]


class AsyncPlatform:
    """The embedded platform, asyncio API. `async with AsyncPlatform() as platform:` destroys its pods at the end."""

    paths: PodbayPaths
    volumes: VolumeStore
    pools: AsyncPools
    snapshots: SnapshotStore

    def __init__(
        self,
        paths: PodbayPaths | None = None,
        backends: Mapping[str, Backend] | None = None,
        *,
        clock: Clock | None = None,
        databases: Mapping[str, DatabaseProvider] | None = None,
    ) -> None:
        """`clock`: the monotonic clock pods are metered by (time.monotonic; tests pass their own).
        `databases`: server-database providers by kind (made from `paths` on first use otherwise)."""
        self._clock: Clock = clock or time.monotonic
        self._usage_listeners: list[Callable[[Usage], object]] = []
        self._event_listeners: list[Callable[[PodEvent], object]] = []
        self.paths = paths or PodbayPaths.from_env()
        self.volumes = VolumeStore(self.paths.volumes)
        self.backends: dict[str, Backend] = dict(backends or default_backends(self.paths))
        self._state: StateProvider = SqliteProvider(self.volumes)
        self.databases = ServerDatabases(self.paths, databases)
        self._factory = SandboxFactory(self.paths)
        self._warm = Pools(self._factory, self._backend)
        self.pools = AsyncPools(self._warm)
        self._pods: dict[str, AsyncPod] = {}
        self._clock_offset = time.time() - time.monotonic()
        self.snapshots = SnapshotStore(self.paths.state / "snapshots")
        self.postmortems = PostMortemStore(self.paths.state / "postmortems")
        self._first_reap: asyncio.Task[list[str]] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None  # one task for every pod's timeout: wakes at the nearest
        self._timer_wake = asyncio.Event()
        self._expiring: set[asyncio.Task[None]] = set()  # destroys of expired pods under way
        self._ended: dict[str, str] = {}  # pod id -> why it ended by itself (the last ENDED_REMEMBERED)
        self._kept_snapshot_check: Callable[[str], str | None] | None = None  # see check_kept_snapshots
        exit_on_termination_signals()

    async def __aenter__(self) -> AsyncPlatform:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    def on_pod_end(self, listener: Callable[[Usage], object]) -> None:
        """Call `listener` with a pod's final usage when its teardown succeeds (the service records it)."""
        self._usage_listeners.append(listener)

    def on_pod_event(self, listener: Callable[[PodEvent], object]) -> None:
        """Call `listener` with every lifecycle event of every pod (created, paused, exec_ended, ended, ...)."""
        self._event_listeners.append(listener)

    def check_kept_snapshots(self, check: Callable[[str], str | None]) -> None:
        """Ask `check(pod_id)` before a keep_on_failure snapshot is taken: a reason to skip it (the service: the
        tenant's snapshot quota is full), which the post-mortem's snapshot_note gives, or None to take it."""
        self._kept_snapshot_check = check

    def _kept_snapshot_refusal(self, pod_id: str) -> str | None:
        check = self._kept_snapshot_check
        return None if check is None else check(pod_id)

    def _emit(self, event: PodEvent) -> None:
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:  # an observer must not break the pod
                log.exception("pod %s: a listener of its %s event failed", event.pod_id, event.kind)

    def _keep_postmortem(
        self, pod: AsyncPod, reason: str, console: bytes, kept: tuple[str | None, str | None], ended: bool = True
    ) -> None:
        """Write the pod's post-mortem (see podbay.postmortem); a failure to write it is logged, never raised.
        `ended`: False when its teardown failed (the pod is FAILED and held; a retry writes it again)."""
        failure = pod._failure
        failed = failure is not None
        if failure is not None:
            pod.history.event("failed", failure.splitlines()[0])
        if ended:
            pod.history.event("ended", reason)
        snapshot, note = kept
        if failed and pod.spec.keep_on_failure and snapshot is None and note is None:
            note = "no snapshot: the pod was not running when it failed"
        postmortem = self._postmortem_of(pod, failure or reason, failed).model_copy(
            update={"snapshot": snapshot, "snapshot_note": note}
        )
        try:
            self.postmortems.write(postmortem, console)
        except OSError as exc:
            log.warning("pod %s: keeping its post-mortem failed: %s", pod.id, exc)

    def _postmortem_of(self, pod: AsyncPod, reason: str, failed: bool) -> PostMortem:
        """The pod's post-mortem as it stands now (no secrets: see podbay.postmortem)."""
        spec, env_names = _spec_without_secrets(pod.spec)
        now = time.time()
        return PostMortem(
            pod_id=pod.id,
            failed=failed,
            reason=reason,
            spec=spec,
            env_names=env_names,
            origin=pod.origin.value,
            backend=pod.spec.backend,
            created_at=self.wall_clock(pod._trace.origin),
            ended_at=now,
            expires_at=now + self.postmortems.retention(failed),
            trace=list(pod._trace.phases),
            events=list(pod.history.events),
            execs=list(pod.history.execs),
        )

    def _ended_usage(self, pod: AsyncPod) -> None:
        usage = pod.usage()
        for listener in self._usage_listeners:
            try:
                listener(usage)
            except Exception:  # a listener must not turn a done teardown into a failure
                log.exception("pod %s: recording its usage failed", pod.id)

    def wall_clock(self, monotonic: float) -> float:
        return monotonic + self._clock_offset

    def doctor(self) -> dict[str, Availability]:
        return {name: backend.availability() for name, backend in self.backends.items()}

    async def create_agent(
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
    ) -> AsyncPod:
        """Create a pod from PodSpec's fields (e.g. memory_db=True, volume="customer-42", db="postgres"); see
        PodSpec for each.
        A bad value raises InvalidSpec naming the field and the fix."""
        spec = PodSpec.parse(
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
            env={} if env is None else env,
            context={} if context is None else context,
            network=network,
            boot_timeout_s=boot_timeout_s,
            cold=cold,
            preload=preload,
            snapshottable=snapshottable,
            timeout_s=timeout_s,
            keep_on_failure=keep_on_failure,
        )
        return await self.create(spec)

    async def create(self, spec: PodSpec) -> AsyncPod:
        backend = self._backend(spec.backend)
        if spec.volume is not None and not spec.memory_db:
            raise InvalidSpec("volume", "a volume holds the pod's database", "also pass memory_db=True")
        if spec.volume is not None:
            VolumeStore.check_user_name(spec.volume)
        await self._reaped()
        trace = Trace()
        start = await trace.timed("choose", self._choose_start(backend, spec))
        pod_id = start.run_dir.pod_id
        with concerning(pod_id):
            return await self._create(spec, backend, trace, start, pod_id)

    async def _create(self, spec: PodSpec, backend: Backend, trace: Trace, start: Start, pod_id: str) -> AsyncPod:
        """Prepare, start and inject the pod `start` chose; undo all of it if any part fails.

        A volume must be attached when the sandbox starts, so a SQLite pod's is made first (beside `prepare`);
        a server database is reached through the channel once the guest runs, so it is provisioned while the
        whole sandbox starts and its credentials arrive with `init`."""
        sandbox: Sandbox | None = None
        lease: StateLease | None = None

        def env() -> dict[str, str]:
            return {**spec.env, **(lease.env if lease is not None else {}), "PODBAY_POD_ID": pod_id}

        async def provisioned() -> None:
            nonlocal lease
            lease = await trace.timed("db provision", self._provision(pod_id, spec))

        async def started(volumes: tuple[VolumeAttachment, ...]) -> None:
            nonlocal sandbox
            assignment = PodAssignment(pod_id, volumes, env(), spec.context)
            sandbox = await trace.timed(start.origin.value, start.sandbox(assignment), detail=start.why)

        async def prepared_and_started() -> None:
            await trace.timed("prepare", start.prepare())
            await started(())

        try:
            if spec.db is not None:
                await _all_of(prepared_and_started(), provisioned())
            else:
                await _all_of(trace.timed("prepare", start.prepare()), provisioned())
                if lease is not None:
                    self._guard_host_mounts(backend, lease)
                await started(lease.volumes if lease is not None else ())
            assert sandbox is not None
            await trace.timed(
                "attach+inject",
                sandbox.channel.request(
                    "init", env=env(), context=spec.context, mounts=sandbox.guest_mounts, clock=time.time()
                ),
            )
            if lease is not None and lease.grant is not None:
                tunnel = self.databases.open_tunnel(sandbox.channel, lease.grant, listen=True)
                await trace.timed("tunnel", tunnel, detail=f"{lease.grant.provider} on port {lease.grant.guest_port}")
        except BaseException as exc:
            try:
                await self.teardown(pod_id, sandbox or start.held, lease, start.run_dir)
            except PodbayError as cleanup:
                exc.add_note(f"and cleaning up after it failed too: {cleanup}")
            raise
        pod = AsyncPod(self, pod_id, spec, sandbox, lease, trace, start.run_dir, start.origin)
        self._register(pod)
        return pod

    async def _stop_timers(self) -> None:
        """Stop the reaper and the timeout timer; wait for the expiries under way (teardowns are not cut short)."""
        for task in (self._reaper, self._timer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await asyncio.gather(*list(self._expiring), return_exceptions=True)

    def _register(self, pod: AsyncPod) -> None:
        self._pods[pod.id] = pod
        pod._watch_for_death()
        took = max((phase.end_s for phase in pod._trace.phases), default=0.0)
        pod.history.event("created", pod.origin.value, duration_s=took)
        if pod.spec.timeout_s is not None:
            self._arm(pod, pod.spec.timeout_s)  # writes its record
        else:
            self._save_record(pod)

    def _arm(self, pod: AsyncPod, timeout_s: float) -> None:
        """Set `pod` to be destroyed `timeout_s` from now, and wake the timer to wait for the nearest deadline."""
        pod._deadline = time.monotonic() + timeout_s
        pod._timeout_s = timeout_s
        if self._timer is None or self._timer.done():
            self._timer = _background_task(self._expire_pods())
        self._timer_wake.set()
        self._save_record(pod)

    def _save_record(self, pod: AsyncPod) -> None:
        """Write the pod's durable record (podbay.records), which a later process re-adopts it from. A pod whose
        record cannot be written runs on, but would not survive this process: that is logged."""
        try:
            write_record(pod._run_dir.path, self._record_of(pod))
        except OSError as exc:
            log.warning("pod %s: its record cannot be written, it will not survive a restart: %s", pod.id, exc)

    def _record_of(self, pod: AsyncPod) -> PodRecord:
        backend = self.backends.get(pod.spec.backend)
        sandbox: dict[str, Any] = {}
        if backend is not None and backend.capabilities.reattach:
            sandbox = cast(ReattachableSandbox, pod.sandbox).record()
        lease, usage = pod._lease, pod.usage()
        volume = None
        if lease is not None and lease.volumes and lease.volume_name is not None:
            attached = lease.volumes[0]
            volume = VolumeRecord(
                name=lease.volume_name,
                image=str(attached.image),
                target=attached.target,
                ephemeral=lease.ephemeral,
                db_url=lease.db_url,
                env=lease.env,
                provider=lease.provider,
            )
        return PodRecord(
            pod_id=pod.id,
            backend=pod.spec.backend,
            spec=pod.spec,
            origin=pod.origin.value,
            created_at=self.wall_clock(pod._trace.origin),
            metered_from=usage.started_at,
            state=pod._state,
            written_at=time.time(),
            paused_s=usage.paused_s,
            trace=list(pod._trace.phases),
            timeout_s=pod._timeout_s,
            deadline=None if pod._deadline is None else self.wall_clock(pod._deadline),
            volume=volume,
            sandbox=sandbox,
            console=_console_name(pod.sandbox.info.console_log, pod._run_dir.path),
        )

    async def _expire_pods(self) -> None:
        """The platform's one timer: destroy each pod whose deadline passed, then sleep until the nearest one
        (or until a deadline is set or moved)."""
        while True:
            self._timer_wake.clear()
            now = time.monotonic()
            nearest: float | None = None
            for pod in list(self._pods.values()):
                if pod._deadline is None:
                    continue
                if pod._deadline <= now:
                    pod._deadline, pod._expired = None, True
                    expiring = asyncio.create_task(self._expire(pod))
                    self._expiring.add(expiring)
                    expiring.add_done_callback(self._expiring.discard)
                else:
                    nearest = pod._deadline if nearest is None else min(nearest, pod._deadline)
            wait = None if nearest is None else nearest - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._timer_wake.wait(), wait)

    async def _expire(self, pod: AsyncPod) -> None:
        """The normal teardown, fail-closed: a failure is logged, the pod stays FAILED in this platform (close()
        tries again) and its run directory is left for the reaper."""
        reason = f"timeout after {_seconds(pod._timeout_s or 0)} s"
        try:
            await pod._destroy(reason, failure=reason)
        except Exception as exc:
            log.warning("pod %s: destroying it at its timeout failed; left for the reaper: %s", pod.id, exc)
            self._pods.setdefault(pod.id, pod)

    def _remember_end(self, pod_id: str, reason: str) -> None:
        self._ended[pod_id] = reason
        while len(self._ended) > ENDED_REMEMBERED:
            del self._ended[next(iter(self._ended))]

    async def _reaped(self) -> None:
        if self._first_reap is None:  # once, before this platform's first pod: shared by concurrent creates
            self._first_reap = asyncio.create_task(self.reap_orphans())
            self._reaper = _background_task(self._reap_periodically())
        await self._first_reap

    async def restore(self, name: str) -> AsyncPod:
        """A new running pod from the snapshot `name` (see AsyncPod.snapshot): its memory, layer and database
        as they were, its own copies of the disks, reseeded (randomness, clock, hostname)."""
        snapshot = load_snapshot(self.snapshots, name)
        backend = self._backend("qemu")
        require(backend, "snapshot", "restore a snapshot", "use a host where the qemu backend runs")
        await self._reaped()
        trace = Trace()
        run_dir = RunDir.make(self.paths.pods, backend.name)
        config = _bare_config(run_dir, snapshot.vcpus, snapshot.memory_mib)
        sandbox: SnapshotSandbox | None = None
        lease: StateLease | None = None

        async def restored() -> None:
            nonlocal sandbox
            restoring = start_from_snapshot(snapshot, config, hostname=run_dir.pod_id)
            sandbox = await trace.timed(Origin.SNAPSHOT.value, restoring, detail=f"snapshot {name!r}")

        async def loaded() -> None:  # the database saved with it, if any, while the VM starts
            nonlocal lease
            lease = await trace.timed("db load", self.databases.load(snapshot.path, run_dir.pod_id))

        with concerning(run_dir.pod_id):
            try:
                await _all_of(restored(), loaded())
            except BaseException as exc:
                try:
                    await self.teardown(run_dir.pod_id, sandbox, lease, run_dir)
                except PodbayError as cleanup:
                    exc.add_note(f"and cleaning up after it failed too: {cleanup}")
                raise
            assert sandbox is not None
            spec = PodSpec.parse(
                vcpus=snapshot.vcpus,
                memory_mib=snapshot.memory_mib,
                disk_mib=max(64, (snapshot.layer_size or 0) >> 20),
                memory_db=bool(snapshot.volumes),
                db=lease.grant.provider if lease is not None and lease.grant is not None else None,
            )
            return await self._adopt(sandbox, run_dir, spec, trace, Origin.SNAPSHOT, lease)

    async def _fork(self, parent: AsyncPod, sandbox: SnapshotSandbox, n: int) -> list[AsyncPod]:
        run_dirs = [RunDir.make(self.paths.pods, parent.spec.backend) for _ in range(n)]
        trace = Trace()
        configs = [_bare_config(run_dir, parent.spec.vcpus, parent.spec.memory_mib) for run_dir in run_dirs]
        branch = InstantCopy(self.databases, parent._grant)
        forking = fork_pod(sandbox, configs, at_instant=branch.fork([run_dir.pod_id for run_dir in run_dirs]))
        try:
            forked = await trace.timed(Origin.FORK.value, forking, detail=f"from {parent.id}")
        except BaseException:
            await branch.abort()
            for run_dir in run_dirs:
                run_dir.remove()
            raise
        try:  # the database copies of the instant complete while the parent and the children run
            leases: list[StateLease | None] = [None] * n
            if branch.started:
                leases = list(await trace.timed("db branch", branch.leases()))
        except BaseException:
            await asyncio.gather(*(child.destroy() for child in forked.children), return_exceptions=True)
            for run_dir in run_dirs:
                run_dir.remove()
            raise
        spec = parent.spec.model_copy(update={"volume": None})  # each child's database is its own copy

        def child_trace() -> Trace:
            copy = Trace()
            copy.phases = list(trace.phases)
            return copy

        adopted = await asyncio.gather(
            *(
                self._adopt(child, run_dir, spec, child_trace(), Origin.FORK, lease)
                for child, run_dir, lease in zip(forked.children, run_dirs, leases, strict=True)
            ),
            return_exceptions=True,
        )
        children = [child for child in adopted if isinstance(child, AsyncPod)]
        failed = [error for error in adopted if isinstance(error, BaseException)]
        if failed:  # all or none: a child that could not be adopted was torn down; so are its siblings
            await asyncio.gather(*(child.destroy() for child in children), return_exceptions=True)
            raise failed[0]
        return children

    async def _adopt(
        self,
        sandbox: Sandbox,
        run_dir: RunDir,
        spec: PodSpec,
        trace: Trace,
        origin: Origin,
        lease: StateLease | None = None,
    ) -> AsyncPod:
        """Make a restored or forked sandbox a pod of this platform: its guest already holds its source's
        state (mounts, environment, context, a database listener); it learns its own pod id and the
        credentials of its own copy of the database (`lease`), to which its listener now leads."""
        try:
            env = {**(lease.env if lease else {}), "PODBAY_POD_ID": run_dir.pod_id}
            await trace.timed("inject", sandbox.channel.request("init", env=env, mounts=[], clock=time.time()))
            if lease is not None and lease.grant is not None:
                await self.databases.open_tunnel(sandbox.channel, lease.grant, listen=False)
        except BaseException as exc:
            try:
                await self.teardown(run_dir.pod_id, sandbox, lease, run_dir)
            except PodbayError as cleanup:
                exc.add_note(f"and cleaning up after it failed too: {cleanup}")
            raise
        pod = AsyncPod(self, run_dir.pod_id, spec, sandbox, lease, trace, run_dir, origin)
        self._register(pod)  # a fork child has its parent's timeout_s, counted from its own start
        return pod

    async def _choose_start(self, backend: Backend, spec: PodSpec) -> Start:
        """A claimed pool member if one fits, else a template clone or a cold boot (see podbay.pool.factory)."""
        shape = shape_of(spec)
        if spec.cold:
            return self._factory.new_start(backend, shape, cold=True, boot_timeout_s=spec.boot_timeout_s)
        if spec.snapshottable:  # pool members map their template's RAM: none has RAM of its own
            why = "pool members are not snapshottable"
        elif spec.memory_db and not backend.capabilities.attach_after_start:
            why = f"pool members of {backend.name} cannot take a volume after they start"
        else:
            member, why = await self._warm.claim(shape)
            if member is not None:
                return PoolClaim(member, why)
        return self._factory.new_start(
            backend, shape, cold=False, boot_timeout_s=spec.boot_timeout_s, why=why, owned_memory=spec.snapshottable
        )

    def _guard_host_mounts(self, backend: Backend, lease: StateLease) -> None:
        """Never let the host's kernel mount a filesystem that a guest kernel (untrusted code) has written.

        A VM guest can craft its volume's ext4 to attack whichever kernel mounts it next; container backends
        mount volumes with the host's kernel, so they refuse such volumes.
        """
        for volume in lease.volumes:
            if not backend.mounts_volumes_on_host:
                self.volumes.mark_guest_written(volume.name)
            elif self.volumes.guest_written(volume.name):
                raise InvalidSpec(
                    "backend",
                    f"volume {volume.name!r} was written inside a VM, and {backend.name} would mount it with the "
                    "host's kernel, which a crafted filesystem could attack",
                    "attach it to a VM backend (qemu, qemu-q35, firecracker), or give this pod another volume",
                )

    async def _provision(self, pod_id: str, spec: PodSpec) -> StateLease | None:
        if spec.db is not None:
            return await self.databases.provision(pod_id, spec.db, spec.db_template, spec.db_retain)
        if not spec.memory_db:
            return None
        return await self._state.provision(pod_id, spec.volume, spec.volume_mib)

    async def teardown(self, pod_id: str, sandbox: Sandbox | None, lease: StateLease | None, run_dir: RunDir) -> None:
        """Undo whatever part of a pod exists; every failure path and destroy() end here.

        Fails closed: if the sandbox cannot be shown to be gone, its volume stays held (no other pod may have
        it while something of this one may still write it) and its run directory stays for the reaper.
        """
        self._pods.pop(pod_id, None)
        if sandbox is not None:
            await sandbox.destroy()  # raises if anything of the sandbox may still run
        if lease is not None and lease.grant is not None:
            await self.databases.release(lease.grant)
        elif lease is not None:
            await self._state.release(lease)
        run_dir.remove()

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise InvalidSpec(
                "backend", f"unknown backend {name!r}", f"choose one of: {', '.join(sorted(self.backends))}"
            )
        availability = backend.availability()
        if not availability.available:  # refuse before anything is made; never swap in another backend
            raise BackendUnavailable(f"{name}: {availability.reason}")
        return backend

    async def reap_orphans(self) -> list[str]:
        """Clean up pods whose controlling process died without destroying them (SIGKILL, power loss).

        Runs before this platform's first create, then every REAP_INTERVAL_S. A pod belongs to the process
        named in its run directory's owner file (pid and start time, so a reused pid does not count); a live
        owner's pods are left alone. Anonymous database volumes of pods that are gone are deleted too.
        """
        reaped = []
        for run_dir in sorted(self.paths.pods.glob("pod-*")) if self.paths.pods.exists() else []:
            owner = read_owner(run_dir)
            if owner is not None and process_identity(int(owner["pid"])) == owner["identity"]:
                continue
            if owner is None and time.time() - run_dir.stat().st_mtime < UNOWNED_GRACE_S:
                continue  # another process may be between mkdir and writing the owner file
            backend = self.backends.get(str(owner["backend"])) if owner else None
            try:
                keep_orphan_postmortem(
                    self.postmortems,
                    run_dir,
                    reason=f"its controlling process (pid {owner['pid'] if owner else 'unknown'}) ended without "
                    "destroying it; a later process reaped it",
                )
                if backend is not None:
                    await backend.reap(run_dir)
                else:
                    kill_processes_mentioning(run_dir)
                remove_run_dir(run_dir)
            except (PodbayError, OSError) as exc:  # something survived: leave it for the next round, say so
                log.warning("could not reap %s: %s", run_dir.name, exc)
                continue
            reaped.append(run_dir.name)
        live = {path.name for path in self.paths.pods.glob("pod-*")} if self.paths.pods.exists() else set()
        self.volumes.reap_anonymous(live)
        await self.databases.reap(live | set(self._pods))
        try:
            self.postmortems.prune()
        except OSError as exc:
            log.warning("pruning post-mortems failed: %s", exc)
        return reaped

    async def recover(self, pod_ids: Iterable[str] | None = None) -> Recovery:
        """Take over the pods an earlier process left running (it was restarted, or killed with SIGKILL).

        Looks at the run directories whose owner is dead (all of them, or only `pod_ids`): a pod whose backend
        can re-attach (`Capabilities.reattach`) is rebuilt from its record (podbay.records) and becomes this
        platform's — its run directory names this process, its deadline is re-armed (one that passed meanwhile
        destroys it now, as a timeout), its usage counts from its first hand-over. Every other one is torn down
        and returned in `lost` with the reason, as is each of `pod_ids` that cannot be found. Call it before
        the first create: it ends with the reaper's first round, which reaps whatever is left of dead owners.
        """
        wanted = None if pod_ids is None else set(pod_ids)
        found = {path.name: path for path in self.paths.pods.glob("pod-*")} if self.paths.pods.exists() else {}
        lost: dict[str, str] = {}
        candidates = []
        for name, run_dir in sorted(found.items()):
            if (wanted is not None and name not in wanted) or name in self._pods:
                continue
            if owner_alive(read_owner(run_dir)):
                if wanted is not None:
                    lost[name] = "another running process controls it"
                continue
            candidates.append(run_dir)
        for name in sorted((wanted or set()) - set(found) - set(self._pods)):
            lost[name] = "its run directory is gone (the host restarted, or its sandbox was reaped)"
        outcomes = await asyncio.gather(*(self._recover(run_dir, wanted is not None) for run_dir in candidates))
        adopted = []
        for run_dir, outcome in zip(candidates, outcomes, strict=True):
            if isinstance(outcome, AsyncPod):
                adopted.append(outcome)
            elif outcome is not None:
                lost[run_dir.name] = outcome
        await self._reaped()
        return Recovery(adopted, lost)

    async def _recover(self, run_dir: Path, named: bool) -> AsyncPod | str | None:
        """Re-adopt one orphaned pod: the pod, or why it could not be (it is torn down), or None for a run
        directory without a record that nobody `named` (a pool member: the reaper's)."""
        try:
            record = read_record(run_dir)
        except GuestError as exc:
            return await self._abandon(run_dir, None, str(exc))
        if record is None:
            why = "it has no record: it was not handed over yet when its controller stopped"
            return await self._abandon(run_dir, None, why) if named else None
        backend = self.backends.get(record.backend)
        if backend is None or not backend.capabilities.reattach:
            why = f"its {record.backend} sandbox cannot outlive the process that ran it (its agent exits with it)"
            return await self._abandon(run_dir, backend, why)
        paused = record.state is PodState.PAUSED
        try:
            sandbox = await cast(ReattachableBackend, backend).reattach(run_dir, record.sandbox, paused=paused)
        except PodbayError as exc:
            return await self._abandon(run_dir, backend, f"it could not be re-attached: {exc}")
        pod = self._revive(record, sandbox, RunDir.claim(run_dir, backend.name))
        if pod._grant is not None:  # its agent listens still: its streams lead to its database again
            await self.databases.open_tunnel(sandbox.channel, pod._grant, listen=False)
        self._pods[pod.id] = pod
        pod._watch_for_death()
        pod.history.event("recovered", "re-attached by a new controller")
        if record.deadline is None or record.timeout_s is None:
            self._save_record(pod)
            return pod
        self._arm(pod, max(0.0, record.deadline - time.time()))
        pod._timeout_s = record.timeout_s  # the reason names the timeout it was given, not what was left of it
        if record.deadline > time.time():
            self._save_record(pod)
            return pod
        pod._deadline, pod._expired = None, True  # it expired while no process held it: now, not by the timer
        await self._expire(pod)
        ended = pod._ended_reason if pod._state is PodState.DESTROYED else f"destroying it failed: {pod._error}"
        return f"{ended} (it expired while no process held it)"

    def _revive(self, record: PodRecord, sandbox: Sandbox, run_dir: RunDir) -> AsyncPod:
        trace = Trace()
        trace.origin = record.created_at - self._clock_offset
        trace.phases = list(record.trace)
        now = time.monotonic() - trace.origin
        trace.phases.append(Phase(name="recover", start_s=now, end_s=now, detail="re-attached by a new controller"))
        grant = self.databases.grant_of(record.pod_id)
        lease = lease_of(grant) if grant is not None else None
        if record.volume is not None:
            volume = record.volume  # its lock is held by the VMM, which inherited it from the first controller
            attachment = VolumeAttachment(name=volume.name, image=Path(volume.image), target=volume.target)
            lease = StateLease(
                volume.provider, volume.db_url, dict(volume.env), (attachment,), volume.name, volume.ephemeral
            )
        pod = AsyncPod(self, record.pod_id, record.spec, sandbox, lease, trace, run_dir, Origin(record.origin))
        paused = record.state is PodState.PAUSED
        if paused:
            pod._state = PodState.PAUSED
        paused_s = record.paused_s + (max(0.0, time.time() - record.written_at) if paused else 0.0)
        pod._meter = Meter.resumed(self._clock, record.metered_from, paused_s, paused)
        return pod

    async def _abandon(self, run_dir: Path, backend: Backend | None, why: str) -> str:
        """Tear down what is left of a pod that cannot be re-adopted; `why`, plus what failed if anything did
        (the reaper then tries again: the run directory still names its dead owner)."""
        try:
            keep_orphan_postmortem(self.postmortems, run_dir, reason=f"it could not be re-adopted: {why}")
            if backend is not None:
                await backend.reap(run_dir)
            else:
                kill_processes_mentioning(run_dir)
            remove_run_dir(run_dir)
        except (PodbayError, OSError) as exc:
            log.warning("could not reap %s: %s", run_dir.name, exc)
            return f"{why}; reaping it failed, the reaper retries: {exc}"
        return why

    async def detach_all(self) -> list[str]:
        """Hand this platform's running and paused pods over to a later process, which takes them over with
        `recover()` (`podbay serve --keep-pods`): their records are written and their connections closed, and
        they keep running, with their deadlines in their records. Pods whose backend cannot re-attach are left
        here (close() destroys them). Returns the ids of the pods handed over."""
        await self._stop_timers()
        kept = []
        for pod in list(self._pods.values()):
            backend = self.backends.get(pod.spec.backend)
            movable = backend is not None and backend.capabilities.reattach
            if movable and pod._state in (PodState.RUNNING, PodState.PAUSED) and not pod._destroy_lock.locked():
                pod._stop_death_watch()  # the channel closes next: that is a hand-over, not a death
                self._save_record(pod)
                await cast(ReattachableSandbox, pod.sandbox).detach()
                self._pods.pop(pod.id)
                kept.append(pod.id)
        return kept

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            try:
                await self.reap_orphans()
            except Exception:  # the reaper must outlive one bad round
                log.exception("reaping orphaned pods failed")

    def get(self, pod_id: str) -> AsyncPod:
        try:
            return self._pods[pod_id]
        except KeyError:
            ended = self.ended_reason(pod_id)
            gone = f"pod {pod_id!r} was destroyed ({ended})" if ended else f"no pod {pod_id!r} in this platform"
            raise NotFound(gone, pod_id=pod_id) from None

    def ended_reason(self, pod_id: str) -> str | None:
        """Why a pod of this platform that ended by itself (its timeout) is gone; None if not known."""
        return self._ended.get(pod_id)

    def list(self, *, state: PodState | None = None, backend: str | None = None) -> list[PodInfo]:
        """This platform's pods, oldest first; only those in `state` / on `backend` if given."""
        return matching([pod.info() for pod in self._pods.values()], state, backend)

    async def close(self) -> None:
        """Destroy every pod this platform still holds, and its warm pools' idle members."""
        await self._stop_timers()
        await asyncio.gather(
            self._warm.close(),
            *(pod._destroy("the platform closed") for pod in list(self._pods.values())),
            return_exceptions=True,
        )
        await self.databases.close()


async def _all_of(*work: Awaitable[None]) -> None:
    """Await all of `work` together; then raise the first failure, if any (each has finished by then, so a
    teardown finds whatever any of them made)."""
    for result in await asyncio.gather(*work, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


def _bare_config(run_dir: RunDir, vcpus: int, memory_mib: int) -> SandboxConfig:
    """A restore's or fork child's start: its disks are copies of the saved ones, made in its run directory."""
    return SandboxConfig(pod_id=run_dir.pod_id, run_dir=run_dir.path, vcpus=vcpus, memory_mib=memory_mib, layer=None)


def matching(pods: list[PodInfo], state: PodState | None, backend: str | None) -> list[PodInfo]:
    """The list filters that the platform, the service and the client share."""
    return [
        info
        for info in pods
        if (state is None or info.state is state) and (backend is None or info.spec.backend == backend)
    ]


def _console_name(console_log: str | None, run_dir: Path) -> str | None:
    """The console log's name if it is in the run directory (where a later process will look for it)."""
    return Path(console_log).name if console_log and Path(console_log).parent == run_dir else None


def _background_task(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task of the platform's own, in a fresh context: not of the request (or caller) that happened to start
    it, so what it logs later carries no stale request id."""
    return asyncio.create_task(work, context=contextvars.Context())


def _how_it_ended(record: ExecRecord) -> str:
    if record.error is not None:
        return record.error
    if record.timed_out:
        return "timed out"
    return f"killed by signal {record.signal}" if record.signal else f"exit {record.exit_code}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _check_timeout(seconds: float) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise InvalidSpec(
            "timeout_s",
            f"{seconds!r} is not a number of seconds above 0, at most {MAX_TIMEOUT_S:.0f} (30 days)",
            "pass e.g. set_timeout(300)",
        )


def _check_argv(argv: Sequence[str]) -> None:
    if isinstance(argv, str) or not argv or not all(isinstance(arg, str) for arg in argv):
        raise InvalidSpec(
            "argv",
            "must be a non-empty list of strings",
            'pass e.g. ["python3", "-c", "print(1)"], or ["sh", "-c", "..."] for a shell line',
        )


def exit_on_termination_signals() -> None:
    """Make SIGTERM and SIGHUP (systemctl stop, timeout(1), a closed terminal) end the process through
    SystemExit, so `with`/`async with` blocks and atexit destroy the pods instead of leaving VMs running.
    Only from the main thread, and only where the application kept the default (fatal) disposition."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _raise_system_exit)


def _raise_system_exit(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)


UNOWNED_GRACE_S = 60.0
