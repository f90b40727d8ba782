"""What a pod leaves behind: its lifecycle events and exec history while it runs, and a post-mortem when it ends.

A post-mortem is kept under `<state>/postmortems/<pod_id>/` (`postmortem.json` and `console.log`) for a
retention period, then pruned by the platform's reaper. A pod that *failed* keeps it for
`failure_retention_s` (7 days by default); a pod destroyed normally keeps a short one (`normal_retention_s`,
1 hour by default) so "what just happened to it?" can still be answered right after a destroy, without
letting thousands of uneventful pods fill the disk.

A pod failed when (see docs/design.md, "Post-mortem"):
- its sandbox died by itself (the VMM or runtime exited, was OOM-killed, the guest crashed or its agent exited),
- its timeout fired,
- destroying it failed, or
- a command it ran was killed by SIGKILL (the guest's OOM killer, or a kill -9) or timed out.

What is kept: the spec without environment values and without the task context (both may hold secrets; the
environment's *names* are kept), the trace, the events, each command's argv (each argument cut to
ARG_KEPT characters), times, exit code, signal and whether it timed out (never its stdin, stdout, stderr or
environment), the end reason and the tail of the console log (the guest kernel's and agent's own output, or
the container runtime's stderr: never a command's output, which travels over the guest channel).
"""

from __future__ import annotations

import builtins
import collections
import json
import os
import re
import shutil
import signal as signals
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from podbay.errors import InvalidSpec, NotFound, PodbayError
from podbay.models import ExecResult, Phase, PodSpec
from podbay.records import read_record

EVENTS_KEPT = 512  # per pod; the oldest go first (a long-lived pod running many commands)
EXECS_KEPT = 200
ARGS_KEPT = 32
ARG_KEPT = 256
CONSOLE_KEPT = 64 << 10  # bytes of the console log's tail kept in a post-mortem and answered by /console
FAILURE_RETENTION_S = 7 * 86400.0
NORMAL_RETENTION_S = 3600.0
POD_ID = re.compile(r"^pod-[0-9a-f]{12}$")
SNAPSHOT_PREFIX = "postmortem-"  # keep_on_failure's snapshot of pod P is named postmortem-P


class PodEvent(BaseModel):
    """One step of a pod's life: created, paused, resumed, exec_started, exec_ended, snapshot, timeout_set,
    failed, ended. `at` is wall-clock epoch seconds."""

    pod_id: str
    kind: str
    at: float
    detail: str = ""  # for created: the origin (pool, clone, boot, snapshot, fork)
    duration_s: float | None = None  # for created: how long the creation took


class ExecRecord(BaseModel):
    """One command a pod ran: what it was and how it ended, never its input, output or environment."""

    argv: list[str]
    started_at: float
    ended_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None  # the command did not report an exit (the channel closed, the host gave up)

    @property
    def failed_badly(self) -> bool:
        """Killed by SIGKILL (the OOM killer's signal), timed out, or lost: what marks its pod as failed."""
        return self.timed_out or self.signal == signals.SIGKILL or self.error is not None


class PostMortem(BaseModel):
    pod_id: str
    failed: bool
    reason: str  # why it ended, e.g. "sandbox died: QEMU exited (-9)" or "timeout after 30 s" or "destroyed"
    spec: dict[str, Any]  # the PodSpec without env values and context
    env_names: list[str] = Field(default_factory=list)
    origin: str | None = None
    backend: str
    created_at: float
    ended_at: float
    expires_at: float  # pruned after this (epoch seconds)
    trace: list[Phase] = Field(default_factory=list)
    events: list[PodEvent] = Field(default_factory=list)
    execs: list[ExecRecord] = Field(default_factory=list)
    console_bytes: int = 0  # size of the kept console tail (`console.log` beside it)
    snapshot: str | None = None  # keep_on_failure: restore it (`podbay debug POD`) to inspect the pod
    snapshot_note: str | None = None  # why there is no snapshot, when keep_on_failure asked for one


def spec_without_secrets(spec: PodSpec) -> tuple[dict[str, Any], list[str]]:
    return spec.model_dump(exclude={"env", "context"}), sorted(spec.env)


def kept_argv(argv: Sequence[str]) -> list[str]:
    kept = [arg if len(arg) <= ARG_KEPT else arg[:ARG_KEPT] + "…" for arg in list(argv)[:ARGS_KEPT]]
    if len(argv) > ARGS_KEPT:
        kept.append(f"… {len(argv) - ARGS_KEPT} more arguments")
    return kept


class PodHistory:
    """A running pod's events and exec history, bounded, in memory; handed to listeners as they happen."""

    def __init__(self, pod_id: str, emit: Callable[[PodEvent], None]) -> None:
        self.pod_id = pod_id
        self.events: collections.deque[PodEvent] = collections.deque(maxlen=EVENTS_KEPT)
        self.execs: collections.deque[ExecRecord] = collections.deque(maxlen=EXECS_KEPT)
        self._emit = emit

    def event(self, kind: str, detail: str = "", duration_s: float | None = None) -> PodEvent:
        event = PodEvent(pod_id=self.pod_id, kind=kind, at=time.time(), detail=detail, duration_s=duration_s)
        self.events.append(event)
        self._emit(event)
        return event

    def exec_started(self, argv: Sequence[str]) -> ExecRecord:
        record = ExecRecord(argv=kept_argv(argv), started_at=time.time())
        self.execs.append(record)
        self.event("exec_started", " ".join(record.argv)[:ARG_KEPT])
        return record

    def exec_ended(self, record: ExecRecord, outcome: ExecResult | BaseException) -> None:
        record.ended_at = time.time()
        if isinstance(outcome, ExecResult):
            record.exit_code, record.signal, record.timed_out = outcome.exit_code, outcome.signal, outcome.timed_out
            how = f"signal {outcome.signal}" if outcome.signal else f"exit {outcome.exit_code}"
            detail = how + (", timed out" if outcome.timed_out else "")
        else:
            record.error = f"{type(outcome).__name__}: {outcome}"[:1024]
            detail = record.error
        self.event("exec_ended", detail)

    def failed_command(self) -> ExecRecord | None:
        return next((record for record in reversed(self.execs) if record.failed_badly), None)


class PostMortemStore:
    """`<state>/postmortems/<pod_id>/`: one directory per ended pod, pruned when its retention is over."""

    def __init__(
        self,
        root: Path,
        failure_retention_s: float = FAILURE_RETENTION_S,
        normal_retention_s: float = NORMAL_RETENTION_S,
    ) -> None:
        self.root = root
        self.failure_retention_s = _retention("PODBAY_POSTMORTEM_RETENTION_S", failure_retention_s)
        self.normal_retention_s = _retention("PODBAY_POSTMORTEM_NORMAL_RETENTION_S", normal_retention_s)

    def retention(self, failed: bool) -> float:
        return self.failure_retention_s if failed else self.normal_retention_s

    def _dir(self, pod_id: str) -> Path:
        if not isinstance(pod_id, str) or not POD_ID.match(pod_id):
            raise NotFound(f"no post-mortem of {pod_id!r}: pod ids look like pod-0123456789ab")
        return self.root / pod_id

    def write(self, postmortem: PostMortem, console: bytes) -> Path:
        """Write it whole or not at all (a temporary directory renamed into place); a second write replaces it."""
        final = self._dir(postmortem.pod_id)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.root / f".{postmortem.pod_id}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(mode=0o700)
        kept = console[-CONSOLE_KEPT:]
        (partial / "console.log").write_bytes(kept)
        document = postmortem.model_copy(update={"console_bytes": len(kept)})
        (partial / "postmortem.json").write_text(document.model_dump_json(indent=2))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        return final

    def load(self, pod_id: str) -> PostMortem:
        path = self._dir(pod_id) / "postmortem.json"
        try:
            return PostMortem.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            raise NotFound(f"no post-mortem of pod {pod_id!r} (none was kept, or its retention is over)") from None

    def console(self, pod_id: str) -> bytes:
        self.load(pod_id)  # NotFound if there is none
        try:
            return (self._dir(pod_id) / "console.log").read_bytes()
        except OSError:
            return b""

    def list(self) -> list[PostMortem]:
        """Every kept post-mortem, latest end first."""
        found = []
        for path in self.root.glob("pod-*") if self.root.exists() else []:
            try:
                found.append(self.load(path.name))
            except NotFound:
                continue
        return sorted(found, key=lambda postmortem: postmortem.ended_at, reverse=True)

    def prune(self, now: float | None = None) -> builtins.list[str]:
        """Remove post-mortems whose retention is over (and unreadable or abandoned partial ones)."""
        now = time.time() if now is None else now
        removed = []
        for path in sorted(self.root.iterdir()) if self.root.exists() else []:
            if path.name.startswith("."):  # a write that died half-way; a live one renames within milliseconds
                if now - path.stat().st_mtime > 3600:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                expired = self.load(path.name).expires_at <= now
            except NotFound:
                expired = True
            if expired:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed


def keep_orphan_postmortem(store: PostMortemStore, run_dir: Path, reason: str) -> bool:
    """The post-mortem of a pod whose controlling process died and that is torn down (by the reaper, or by a
    recovery that could not re-adopt it), from its record (podbay.records), ended for `reason`; False if there
    is none (a pool member that no pod claimed, or a record that cannot be read). Its events and commands died
    with the controller: it has what the record holds (spec, trace, origin) and the console's tail."""
    try:
        record = read_record(run_dir)
    except PodbayError:
        return False
    if record is None:
        return False
    spec, env_names = spec_without_secrets(record.spec)
    now = time.time()
    created = PodEvent(
        pod_id=record.pod_id,
        kind="created",
        at=record.metered_from,
        detail=record.origin,
        duration_s=max(0.0, record.metered_from - record.created_at),
    )
    found = PostMortem(
        pod_id=record.pod_id,
        failed=True,
        reason=reason,
        spec=spec,
        env_names=env_names,
        origin=record.origin,
        backend=record.backend,
        created_at=record.created_at,
        ended_at=now,
        expires_at=now + store.failure_retention_s,
        trace=list(record.trace),
        events=[created],
    )
    console = record.console
    store.write(found, read_tail(run_dir / console) if console and "/" not in console else b"")
    return True


def read_tail(path: str | Path | None, limit: int = CONSOLE_KEPT) -> bytes:
    """The last `limit` bytes of a log file (with its rotated `.1` half if the file itself is shorter)."""
    if path is None:
        return b""
    parts = []
    for candidate in (Path(f"{path}.1"), Path(path)):
        try:
            with open(candidate, "rb") as file:
                file.seek(0, os.SEEK_END)
                file.seek(max(0, file.tell() - limit))
                parts.append(file.read())
        except OSError:
            continue
    return b"".join(parts)[-limit:]


def _retention(variable: str, default: float) -> float:
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise InvalidSpec(variable, f"{value!r} is not a number of seconds", "set e.g. 86400, or unset it")
    return seconds


def debug_dump(postmortem: PostMortem) -> str:
    """The post-mortem as indented JSON (the CLI's `--json`)."""
    return json.dumps(postmortem.model_dump(mode="json"), indent=2)
