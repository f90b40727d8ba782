"""`podbay logs POD`, `podbay trace POD`, `podbay postmortem ls|show`, `podbay debug POD`: what pods of the
embedded platform (PODBAY_STATE) left behind. Each command is thin over one function, so that it can be
pointed at a server (PODBAY_SERVER) the same way."""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable
from typing import BinaryIO

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.errors import NotFound
from podbay.models import ExecResult
from podbay.paths import PodbayPaths
from podbay.postmortem import CONSOLE_KEPT, POD_ID, PostMortem, PostMortemStore, debug_dump, read_tail
from podbay.sync import Platform

app = typer.Typer(no_args_is_help=True, help="Post-mortems of pods that ended: why, trace, events, commands.")


def _store() -> PostMortemStore:
    return PostMortemStore(PodbayPaths.from_env().state / "postmortems")


def console_of(pod_id: str, tail: int) -> bytes:
    """A live pod's console log (a VM's, in its run directory), else its post-mortem's."""
    if POD_ID.match(pod_id):
        live = PodbayPaths.from_env().pods / pod_id / "console.log"
        if live.exists():
            return read_tail(live, tail)
    return _store().console(pod_id)[-tail:]


def logs(
    pod_id: str = typer.Argument(..., help="the pod's id"),
    tail: int = typer.Option(CONSOLE_KEPT, "--tail", min=1, max=CONSOLE_KEPT, help="bytes from the end"),
) -> None:
    """The tail of a pod's console log (the guest kernel's and agent's output; a container runtime's stderr)."""
    with reported_errors():
        data = console_of(pod_id, tail)
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def trace(pod_id: str = typer.Argument(..., help="the pod's id")) -> None:
    """The phases of an ended pod's life, from its post-mortem."""
    with reported_errors():
        phases = _store().load(pod_id).trace
    table = Table("phase", "start ms", "took ms", "detail")
    for phase in phases:
        table.add_row(phase.name, f"{phase.start_s * 1000:.1f}", f"{phase.duration_ms:.1f}", phase.detail)
    console.print(table)


@app.command("ls")
def ls() -> None:
    """Every kept post-mortem, latest first."""
    with reported_errors():
        found = _store().list()
    table = Table("pod", "ended", "failed", "reason", "snapshot")
    for postmortem in found:
        table.add_row(
            postmortem.pod_id,
            _when(postmortem.ended_at),
            "yes" if postmortem.failed else "no",
            postmortem.reason.splitlines()[0],
            postmortem.snapshot or "-",
        )
    console.print(table)


@app.command("show")
def show(pod_id: str = typer.Argument(..., help="the pod's id")) -> None:
    """One post-mortem as JSON (the console log: `podbay logs POD`)."""
    with reported_errors():
        print(debug_dump(_store().load(pod_id)))


def debug(pod_id: str = typer.Argument(..., help="the id of a pod that failed with keep_on_failure=True")) -> None:
    """Restore a failed pod's keep_on_failure snapshot and run shell lines in it, one at a time (the guest
    protocol has no terminal: each line runs as `sh -c LINE`; no job control, no full-screen programs).
    `exit` or end of input ends it and destroys the restored copy; the snapshot stays."""
    with reported_errors():
        postmortem = _store().load(pod_id)
        snapshot = _snapshot_of(postmortem)
        with Platform() as platform:
            pod = platform.restore(snapshot)
            errors.print(f"podbay: {pod_id} as it failed ({postmortem.reason.splitlines()[0]}), restored as {pod.id}")
            try:
                _shell(pod.exec, pod_id)
            finally:
                pod.destroy()


def _snapshot_of(postmortem: PostMortem) -> str:
    if postmortem.snapshot is None:
        why = postmortem.snapshot_note or "it was created without keep_on_failure=True, or did not fail"
        raise NotFound(f"pod {postmortem.pod_id} left no snapshot to debug: {why}")
    return postmortem.snapshot


def _shell(run: Callable[..., ExecResult], pod_id: str) -> None:
    while True:
        errors.print(f"{pod_id}$ ", end="", highlight=False)
        line = sys.stdin.readline()
        if not line or line.strip() == "exit":
            return
        if not line.strip():
            continue
        result = run(["sh", "-c", line], on_stdout=_write(sys.stdout.buffer), on_stderr=_write(sys.stderr.buffer))
        if result.exit_code:
            errors.print(f"[dim](exit {result.exit_code})[/]")


def _write(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        stream.write(chunk)
        stream.flush()

    return write


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
