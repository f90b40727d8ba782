"""A long-running process over REST on a real backend (runc where it runs, else QEMU), through the SDK against a
real `podbay serve`: stdin fed in two requests, output seen before the end, a signal, and the guest's exit."""

from __future__ import annotations

import signal

import pytest

from podbay import Client

from .test_server import Server, server  # noqa: F401  (the fixture)

pytestmark = pytest.mark.integration


def test_stdin_output_and_signals_of_a_process(server: Server) -> None:  # noqa: F811
    with Client(server.url, server.token_a) as client, client.create_agent(backend=server.backend) as pod:
        echo = pod.start_process(
            ["python3", "-u", "-c", "import sys\nfor l in sys.stdin: print(l.upper(), end='')"], stdin=True
        )
        echo.write_stdin(b"one\n")
        events = echo.events()
        first = next(events)
        assert (first.kind, first.data) == ("stdout", b"ONE\n"), "the answer comes while the process still runs"
        events.close()
        echo.write_stdin(b"two\n", eof=True)
        result = echo.wait()
        assert (result.exit_code, result.stdout) == (0, "ONE\nTWO\n")

        sleeper = pod.start_process(["sleep", "600"])
        assert sleeper.info().state == "running"
        sleeper.signal(signal.SIGTERM)
        assert sleeper.wait().signal == signal.SIGTERM
        assert [entry.name for entry in pod.files.list("/")].count("tmp") == 1
