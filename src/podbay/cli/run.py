"""`podbay run [--volume NAME] [--server-db postgres|redis] -- CMD ARGS...`: one command in a fresh pod, streamed,
with its exit status.

Embedded by default; with PODBAY_SERVER (or --server) the pod is made, used and destroyed by that server.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import BinaryIO, NoReturn

import typer

from podbay.channel import check_timeout
from podbay.cli.common import errors, reported_errors
from podbay.cli.db import DbRetainOption, DbTemplateOption, ServerDbOption
from podbay.cli.remote import CliPod, ServerOption, TokenOption, open_host, run_streamed
from podbay.models import ExecResult, PodSpec


def run(
    command: list[str] = typer.Argument(..., help="the command to run in the pod, after --"),
    volume: str | None = typer.Option(None, "--volume", help="attach this persistent volume (its SQLite DB)"),
    backend: str = typer.Option("qemu", "--backend", help="isolation backend"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the guest environment"),
    timeout: float | None = typer.Option(None, "--timeout", help="kill the command after this many seconds"),
    memory_mib: int = typer.Option(256, "--memory", help="guest memory in MiB"),
    interactive: bool = typer.Option(False, "--stdin", "-i", help="forward this process's stdin to the command"),
    cold: bool = typer.Option(False, "--cold", help="boot a fresh sandbox instead of cloning the cached template"),
    from_snapshot: str | None = typer.Option(
        None, "--from-snapshot", help="restore this snapshot (see `podbay snapshot ls`) instead of a fresh pod"
    ),
    server_db: ServerDbOption = None,
    db_template: DbTemplateOption = None,
    db_retain: DbRetainOption = False,
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Run CMD in a fresh pod; stdout/stderr stream through, and podbay exits with the command's status."""
    environment = parse_env(env)
    if server and volume is not None:
        raise typer.BadParameter(
            "names a volume on the server's host, which the server does not serve to tenants; "
            "leave it out, or run without PODBAY_SERVER",
            param_hint="--volume",
        )
    with reported_errors():
        check_timeout(timeout, "--timeout")  # before a pod is made for nothing
        spec = None
        if from_snapshot is None:
            spec = PodSpec.parse(
                backend=backend,
                memory_db=volume is not None,
                volume=volume,
                db=server_db,
                db_template=db_template,
                db_retain=db_retain,
                env=environment,
                memory_mib=memory_mib,
                cold=cold,
            )
    with reported_errors():
        host = open_host(server, token)
        try:
            pod = host.create(spec) if spec is not None else host.restore(str(from_snapshot))
            try:
                result = stream_to_terminal(pod, command, env=None, cwd=None, interactive=interactive, timeout=timeout)
            finally:
                pod.destroy()
        finally:
            host.close()
    exit_with(result, timeout)


def stream_to_terminal(
    pod: CliPod,
    command: list[str],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    interactive: bool,
    timeout: float | None,
) -> ExecResult:
    """Run `command` in `pod` with its output streaming to ours (and, `interactive`, our stdin to it)."""
    return run_streamed(
        pod,
        command,
        env=env,
        cwd=cwd,
        stdin=sys.stdin.buffer if interactive else None,
        timeout=timeout,
        on_stdout=writer(sys.stdout.buffer),
        on_stderr=writer(sys.stderr.buffer),
    )


def exit_with(result: ExecResult, timeout: float | None) -> NoReturn:
    """Exit with the command's status, saying so first when the timeout killed it."""
    if result.timed_out:
        errors.print(f"podbay: the command timed out after {timeout} s and was killed")
    raise typer.Exit(result.exit_code)


def parse_env(pairs: list[str]) -> dict[str, str]:
    environment = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        environment[name] = value
    return environment


def writer(stream: BinaryIO) -> Callable[[bytes], None]:
    def write(chunk: bytes) -> None:
        stream.write(chunk)
        stream.flush()

    return write
