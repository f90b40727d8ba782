"""Pods that outlive one command, on a server (PODBAY_SERVER/PODBAY_TOKEN or --server/--token): `podbay create |
ps | exec | pause | resume | destroy | fork | files get/put/ls | snapshot create | restore`. Each goes through
the `PodHost` seam (cli/remote.py), as `podbay run` does."""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.table import Table

from podbay.channel import check_timeout
from podbay.cli.common import console, reported_errors
from podbay.cli.db import DbRetainOption, DbTemplateOption, ServerDbOption
from podbay.cli.remote import PodHost, ServerOption, TokenOption, server_host
from podbay.cli.run import exit_with, parse_env, stream_to_terminal
from podbay.models import PodInfo, PodSpec, PodState

files = typer.Typer(no_args_is_help=True, help="Files in a pod on a server: get, put, ls.")


@contextlib.contextmanager
def _session(command: str, server: str | None, token: str | None) -> Iterator[PodHost]:
    """The server's client for one command, closed at the end; a podbay error is one line and status 2."""
    with reported_errors():
        host = server_host(command, server, token)
        try:
            yield host
        finally:
            host.close()


def _print_pods(pods: list[PodInfo], as_json: bool) -> None:
    if as_json:
        print(json.dumps([info.model_dump(mode="json") for info in pods], indent=2))
        return
    table = Table("id", "state", "backend", "vCPUs", "memory MiB", "created", "expires")
    for info in pods:
        table.add_row(
            info.id,
            info.state.value,
            info.spec.backend,
            str(info.spec.vcpus),
            str(info.spec.memory_mib),
            _when(info.created_at),
            _when(info.expires_at) or "-",
        )
    console.print(table)


def create(
    backend: str = typer.Option("qemu", "--backend", help="isolation backend"),
    memory_mib: int = typer.Option(256, "--memory", help="guest memory in MiB"),
    vcpus: int = typer.Option(1, "--vcpus", help="virtual CPUs"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the guest environment"),
    memory_db: bool = typer.Option(False, "--db", help="give the pod its own SQLite database"),
    server_db: ServerDbOption = None,
    db_template: DbTemplateOption = None,
    db_retain: DbRetainOption = False,
    timeout_s: float | None = typer.Option(None, "--timeout", help="destroy the pod this many seconds from now"),
    as_json: bool = typer.Option(False, "--json", help="print the pod's info as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Make a pod on the server and print its id (use it with exec, files, pause, destroy...)."""
    with _session("create", server, token) as host:
        spec = PodSpec.parse(
            backend=backend,
            memory_mib=memory_mib,
            vcpus=vcpus,
            env=parse_env(env),
            memory_db=memory_db,
            db=server_db,
            db_template=db_template,
            db_retain=db_retain,
            timeout_s=timeout_s,
        )
        pod = host.create(spec)
        info = pod.info()
    print(info.model_dump_json(indent=2) if as_json else info.id)


def ps(
    as_json: bool = typer.Option(False, "--json", help="print the list as JSON on stdout"),
    state: PodState | None = typer.Option(None, "--state", help="only pods in this state"),
    backend: str | None = typer.Option(None, "--backend", help="only pods on this backend"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The pods you have on the server (running or paused)."""
    with _session("ps", server, token) as host:
        pods = host.list(state=state, backend=backend)
    _print_pods(pods, as_json)


def exec_(
    pod_id: str = typer.Argument(..., help="the pod (see `podbay ps`)"),
    command: list[str] = typer.Argument(..., help="the command to run in the pod, after --"),
    env: list[str] = typer.Option([], "--env", "-e", help="KEY=VALUE for the command's environment"),
    cwd: str | None = typer.Option(None, "--cwd", help="the command's working directory in the pod"),
    timeout: float | None = typer.Option(None, "--timeout", help="kill the command after this many seconds"),
    interactive: bool = typer.Option(False, "--stdin", "-i", help="forward this process's stdin to the command"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Run CMD in a pod on the server; output streams through, and podbay exits with the command's status."""
    environment = parse_env(env)
    if command[:1] == ["--"]:  # options stop at POD, so click keeps the `--` that follows it
        command = command[1:]
    if not command:
        raise typer.BadParameter("is missing: `podbay exec POD -- CMD ARGS...`", param_hint="CMD")
    with reported_errors():
        check_timeout(timeout, "--timeout")
    with _session("exec", server, token) as host:
        result = stream_to_terminal(
            host.get(pod_id), command, env=environment, cwd=cwd, interactive=interactive, timeout=timeout
        )
    exit_with(result, timeout)


def pause(
    pod_id: str = typer.Argument(..., help="the pod"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """Pause a pod (it keeps its memory, uses no CPU)."""
    with _session("pause", server, token) as host:
        host.get(pod_id).pause()
    console.print(f"paused {pod_id}", highlight=False)


def resume(
    pod_id: str = typer.Argument(..., help="the pod"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """Resume a paused pod."""
    with _session("resume", server, token) as host:
        host.get(pod_id).resume()
    console.print(f"resumed {pod_id}", highlight=False)


def destroy(
    pod_ids: list[str] = typer.Argument(..., help="the pods"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """Destroy pods (their sandbox and private database)."""
    with _session("destroy", server, token) as host:
        for pod_id in pod_ids:
            host.get(pod_id).destroy()
            console.print(f"destroyed {pod_id}", highlight=False)


def fork(
    pod_id: str = typer.Argument(..., help="the pod to copy"),
    n: int = typer.Option(1, "-n", help="how many copies"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Running copies of a running pod (memory, disk and database); prints their ids."""
    with _session("fork", server, token) as host:
        children = host.get(pod_id).fork(n)
    for child in children:
        print(child.id)


def snapshot_create(
    pod_id: str = typer.Argument(..., help="the pod to save"),
    name: str = typer.Argument(..., help="the snapshot's name"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Save a running pod as NAME on the server (restore it with `podbay restore NAME`)."""
    with _session("snapshot create", server, token) as host:
        info = host.get(pod_id).snapshot(name)
    console.print(f"saved {pod_id} as {info.name}", highlight=False)


def restore(
    name: str = typer.Argument(..., help="the snapshot"), server: ServerOption = None, token: TokenOption = None
) -> None:
    """A new pod on the server from your snapshot NAME; prints its id."""
    with _session("restore", server, token) as host:
        pod = host.restore(name)
    print(pod.id)


@files.command("get")
def files_get(
    pod_id: str = typer.Argument(..., help="the pod"),
    path: str = typer.Argument(..., help="the file's absolute path in the pod"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write it here (default: stdout)"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Download a file from a pod."""
    with _session("files get", server, token) as host:
        data = host.get(pod_id).files.read(path)
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)


@files.command("put")
def files_put(
    pod_id: str = typer.Argument(..., help="the pod"),
    source: Path = typer.Argument(..., exists=True, dir_okay=False, help="the local file ('-' is not taken)"),
    path: str = typer.Argument(..., help="the file's absolute path in the pod"),
    mode: str = typer.Option("644", "--mode", help="octal permissions in the pod"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """Upload a local file into a pod."""
    try:
        permissions = int(mode, 8)
    except ValueError:
        raise typer.BadParameter(f"{mode!r} is not an octal mode such as 644", param_hint="--mode") from None
    data = source.read_bytes()
    with _session("files put", server, token) as host:
        size = host.get(pod_id).files.write(path, data, permissions)
    console.print(f"wrote {size} bytes to {path}", highlight=False)


@files.command("ls")
def files_ls(
    pod_id: str = typer.Argument(..., help="the pod"),
    path: str = typer.Argument("/", help="the directory in the pod"),
    as_json: bool = typer.Option(False, "--json", help="print the entries as JSON on stdout"),
    server: ServerOption = None,
    token: TokenOption = None,
) -> None:
    """The entries of a directory in a pod."""
    with _session("files ls", server, token) as host:
        entries = host.get(pod_id).files.list(path)
    if as_json:
        print(json.dumps([entry.model_dump() for entry in entries], indent=2))
        return
    table = Table("name", "type", "size", "mode", "modified")
    for entry in entries:
        table.add_row(entry.name, entry.type, str(entry.size), f"{entry.mode:o}", _when(entry.mtime))
    console.print(table)


def _when(stamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds") if stamp is not None else ""
