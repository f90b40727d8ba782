"""The one seam between the pod commands and where pods live: `PodHost`, which both the embedded `Platform` and
the service's `Client` satisfy (mypy checks both at `open_host`), so each command is written once.

With PODBAY_SERVER (or `--server`) the commands go to `podbay serve` with PODBAY_TOKEN (or `--token`); without
it, `podbay run` uses an embedded platform, and the commands about pods that outlive one command (`ps`, `exec`,
`destroy`, ...) say that they need a server: an embedded platform's pods live only inside its process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Annotated, BinaryIO, Protocol

import typer

from podbay.channel import OutputCallback
from podbay.cli.common import errors
from podbay.errors import PodbayError
from podbay.models import ExecResult, FileEntry, PodInfo, PodSpec, PodState, SnapshotInfo

ServerOption = Annotated[
    str | None,
    typer.Option("--server", envvar="PODBAY_SERVER", help="URL of a `podbay serve` (default: PODBAY_SERVER)"),
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="PODBAY_TOKEN", help="API token for --server (default: PODBAY_TOKEN)"),
]


class CliProcess(Protocol):
    def write_stdin(self, data: bytes, eof: bool = False) -> None: ...

    def wait(self) -> ExecResult: ...


class CliFiles(Protocol):
    def read(self, path: str) -> bytes: ...

    def write(self, path: str, data: bytes | str, mode: int = 0o644) -> int: ...

    def list(self, path: str) -> list[FileEntry]: ...


class CliPod(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def files(self) -> CliFiles: ...

    def info(self) -> PodInfo: ...

    def start_process(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> CliProcess: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def snapshot(self, name: str) -> SnapshotInfo: ...

    def fork(self, n: int) -> Sequence[CliPod]: ...

    def destroy(self) -> None: ...


class PodHost(Protocol):
    """Where pods live: an embedded platform (this process) or a server."""

    def create(self, spec: PodSpec) -> CliPod: ...

    def get(self, pod_id: str) -> CliPod: ...

    def list(self, *, state: PodState | None = None, backend: str | None = None) -> list[PodInfo]: ...

    def restore(self, name: str) -> CliPod: ...

    def close(self) -> None: ...


def open_host(server: str | None, token: str | None) -> PodHost:
    """The server's client if a server is named, else an embedded platform (the caller closes either)."""
    if server:
        from podbay.sdk import Client

        client: PodHost = Client(server, token)
        return client
    from podbay.sync import Platform

    platform: PodHost = Platform()
    return platform


def server_host(command: str, server: str | None, token: str | None) -> PodHost:
    """The server's client for a command that only means something against a server; else one clear line."""
    if not server:
        errors.print(
            f"podbay {command} needs a server: set PODBAY_SERVER and PODBAY_TOKEN (or pass --server and --token); "
            "pods of the embedded platform live only inside the process that made them (use `podbay run`)",
            highlight=False,
        )
        raise typer.Exit(2)
    return open_host(server, token)


def run_streamed(
    pod: CliPod,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    stdin: BinaryIO | None,
    timeout: float | None,
    on_stdout: OutputCallback,
    on_stderr: OutputCallback,
) -> ExecResult:
    """Run a command in `pod`, its output to the callbacks as it comes, and return its result. `stdin` is fed
    to it as it is read (a line typed at a terminal reaches the command at once), then closed at its end."""
    process = pod.start_process(
        argv, env=env, cwd=cwd, stdin=stdin is not None, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr
    )
    if stdin is not None:
        threading.Thread(target=_feed, args=(process, stdin), name="podbay-stdin", daemon=True).start()
    return process.wait()


def _feed(process: CliProcess, source: BinaryIO) -> None:
    """Copy `source` to the process's stdin as it comes; a daemon thread, as a terminal may never reach EOF."""
    read = getattr(source, "read1", source.read)
    try:
        while chunk := read(STDIN_CHUNK):
            process.write_stdin(chunk)
        process.write_stdin(b"", eof=True)
    except (PodbayError, RuntimeError, OSError, ValueError):
        pass  # the command ended (409), or podbay is closing (a stopped loop, a closed stream): nothing to feed


STDIN_CHUNK = 64 << 10
