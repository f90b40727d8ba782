"""The pod commands against a server (PODBAY_SERVER/PODBAY_TOKEN): a real uvicorn on a loopback port of this
process over the local test double, the CLI invoked in-process. And without a server: the commands that need
one say so in one line."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from podbay import ExecResult, Platform
from podbay.cli.main import app
from podbay.cli.remote import run_streamed
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
from podbay.server.registry import Registry
from tests.unit.server_double import assert_no_pods_left, loopback_server

START_WAIT_S = 30.0


@pytest.fixture
def env(paths: PodbayPaths) -> Iterator[dict[str, str]]:
    """PODBAY_SERVER and PODBAY_TOKEN of a server running in a thread, for tenant acme."""
    token, _ = Registry(paths.state / "server.db").create_token("acme")
    servers: list[tuple[uvicorn.Server, str]] = []

    async def main() -> None:
        servers.append(loopback_server(paths))
        await servers[0][0].serve()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + START_WAIT_S
    while not (servers and servers[0][0].started):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    server, url = servers[0]
    yield {"PODBAY_SERVER": url, "PODBAY_TOKEN": token, "COLUMNS": "300"}
    server.should_exit = True
    thread.join()
    assert_no_pods_left(paths)


def podbay(env: dict[str, str], *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_a_pods_life_through_the_cli(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = podbay(env, "create", "--backend", "local", "-e", "TASK=refund")
    assert code == 0, err
    pod = out.strip()
    assert pod in podbay(env, "ps")[1]
    assert podbay(env, "exec", pod, "--", "sh", "-c", "echo $TASK; echo oops >&2; exit 3") == (3, "refund\n", "oops\n")
    assert podbay(env, "exec", "-i", pod, "--", "wc", "-c", stdin=b"12345")[1].strip() == "5"
    work = podbay(env, "exec", pod, "--", "pwd")[1].strip()  # the test double's files are the host's
    local = tmp_path / "up.bin"
    local.write_bytes(bytes(range(256)))
    assert podbay(env, "files", "put", pod, str(local), f"{work}/up.bin")[0] == 0
    assert "up.bin" in podbay(env, "files", "ls", pod, work)[1]
    podbay(env, "files", "get", pod, f"{work}/up.bin", "-o", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == bytes(range(256))
    assert podbay(env, "pause", pod)[0] == 0
    assert "paused" in podbay(env, "ps")[1]
    code, _, err = podbay(env, "exec", pod, "--", "true")
    assert code == 2 and "Conflict" in err and "paused" in err and "Traceback" not in err
    assert podbay(env, "resume", pod)[0] == 0
    assert podbay(env, "destroy", pod)[0] == 0
    assert pod not in podbay(env, "ps")[1]
    code, out, _ = podbay(env, "usage", "--json")
    assert code == 0 and pod in out


def test_run_against_the_server_streams_and_exits_with_the_status(env: dict[str, str]) -> None:
    assert podbay(env, "run", "--backend", "local", "--", "sh", "-c", "echo 42; exit 7") == (7, "42\n", "")
    assert podbay(env, "ps")[1].count("pod-") == 0, "run destroys its pod"


def test_errors_are_one_line(env: dict[str, str]) -> None:
    code, _, err = podbay(env, "exec", "pod-nope", "--", "true")
    assert code == 2 and "NotFound" in err and "Traceback" not in err
    code, _, err = podbay(env, "run", "--volume", "v1", "--", "true")
    assert code == 2 and "--volume" in err
    code, _, err = podbay({**env, "PODBAY_TOKEN": "wrong"}, "ps")
    assert code == 2 and "Unauthorized" in err


@pytest.mark.parametrize("command", [["ps"], ["exec", "pod-x", "--", "true"], ["destroy", "pod-x"], ["pause", "pod-x"]])
def test_commands_about_lasting_pods_need_a_server(command: list[str]) -> None:
    code, _, err = podbay({"PODBAY_SERVER": "", "COLUMNS": "300"}, *command)
    assert code == 2 and "needs a server" in " ".join(err.split())


def test_stdin_reaches_the_command_as_it_is_typed(paths: PodbayPaths) -> None:
    """`-i`: each chunk of stdin is fed as it is read, so a command answers a line before stdin ends."""
    read_end, write_end = os.pipe()
    seen: queue.Queue[bytes] = queue.Queue()
    results: list[ExecResult] = []
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform, os.fdopen(read_end, "rb") as source:
        pod = platform.create_agent(backend="local")
        script = "read a; echo got $a; read b; echo got $b"
        runner = threading.Thread(
            target=lambda: results.append(
                run_streamed(
                    pod,
                    ["sh", "-c", script],
                    env=None,
                    cwd=None,
                    stdin=source,
                    timeout=None,
                    on_stdout=seen.put,
                    on_stderr=seen.put,
                )
            )
        )
        runner.start()
        os.write(write_end, b"one\n")
        assert seen.get(timeout=START_WAIT_S) == b"got one\n", "answered while stdin is still open"
        os.write(write_end, b"two\n")
        os.close(write_end)
        runner.join()
    assert results[0].stdout == "got one\ngot two\n"
