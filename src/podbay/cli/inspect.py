"""`podbay logs POD`, `podbay trace POD`, `podbay postmortem ls|show`, `podbay debug POD`: what pods left behind,
on a server (PODBAY_SERVER/PODBAY_TOKEN or --server/--token: the tenant's own pods) or in this host's
PODBAY_STATE (pods of the embedded platform). Each command goes through the `Records` seam (cli/records.py)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import sys
from collections.abc import Callable, Iterator
from typing import BinaryIO

import typer
from rich.table import Table

from podbay.cli.common import console, errors, reported_errors
from podbay.cli.records import Records, open_records
from podbay.cli.remote import CliPod, ServerOption, TokenOption, run_streamed
from podbay.errors import NotFound
from podbay.models import ExecResult
from podbay.postmortem import CONSOLE_KEPT, PostMortem, debug_dump

app = typer.Typer(no_args_is_help=True, help="Post-mortems of pods that ended: why, trace, events, commands.")


@contextlib.contextmanager
def records(server: str | None, token: str | None) -> Iterator[Records]:
    """The records for one command, closed at the end; a podbay error is one line and status 2."""
    with reported_errors():
        found = open_records(server, token)
        try:
            yield found
        finally:
            found.close()


def logs(
    pod_id: str = typer.Argument(..., help="the pod's id"),
    tail: int = typer.Option(CONSOLE_KEPT, "--tail", min=1, max=CONSOLE_KEPT, help="bytes from the end"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The tail of a pod's console log (the guest kernel's and agent's output; a container runtime's stderr)."""
    with records(server, token) as found:
        text = found.console(pod_id, tail)
    sys.stdout.write(text)
    sys.stdout.flush()


def trace(
    pod_id: str = typer.Argument(..., help="the pod's id"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """The phases of a pod's life (an ended pod's from its post-mortem; a live one's too on a server)."""
    with records(server, token) as found:
        phases = found.trace(pod_id)
    table = Table("phase", "start ms", "took ms", "detail")
    for phase in phases:
        table.add_row(phase.name, f"{phase.start_s * 1000:.1f}", f"{phase.duration_ms:.1f}", phase.detail)
    console.print(table)


@app.command("ls")
def ls(server: ServerOption = None, token: TokenOption = None) -> None:
    """Every kept post-mortem, latest first."""
    with records(server, token) as found:
        kept = found.postmortems()
    table = Table("pod", "ended", "failed", "reason", "snapshot")
    for postmortem in kept:
        table.add_row(
            postmortem.pod_id,
            _when(postmortem.ended_at),
            "yes" if postmortem.failed else "no",
            postmortem.reason.splitlines()[0],
            postmortem.snapshot or "-",
        )
    console.print(table)


@app.command("show")
def show(
    pod_id: str = typer.Argument(..., help="the pod's id"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """One post-mortem as JSON (the console log: `podbay logs POD`)."""
    with records(server, token) as found:
        print(debug_dump(found.postmortem(pod_id)))


def debug(
    pod_id: str = typer.Argument(..., help="the id of a pod that failed with keep_on_failure=True"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Restore a failed pod's keep_on_failure snapshot and run shell lines in it, one at a time (the guest
    protocol has no terminal: each line runs as `sh -c LINE`; no job control, no full-screen programs).
    `exit` or end of input ends it and destroys the restored copy; the snapshot stays."""
    with records(server, token) as found:
        postmortem = found.postmortem(pod_id)
        pod = found.restore(_snapshot_of(postmortem))
        errors.print(f"podbay: {pod_id} as it failed ({postmortem.reason.splitlines()[0]}), restored as {pod.id}")
        try:
            _shell(_runner(pod), pod_id)
        finally:
            pod.destroy()


def _runner(pod: CliPod) -> Callable[..., ExecResult]:
    """run(argv, on_stdout=..., on_stderr=...) in the pod, streamed, with its own environment and no timeout."""
    return functools.partial(run_streamed, pod, env=None, cwd=None, stdin=None, timeout=None)


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
