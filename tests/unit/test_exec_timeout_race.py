"""An exec whose timeout has already passed (timeout=1e-9) is reported timed out, however fast the command.

Seen once: over the REST API a plain exec with `timeout: 1e-9` said timed out and a streamed one did not. Both
routes start the same guest process; the difference was a race in the agent's loop, which reaped exited children
before enforcing deadlines: a command that exited before the first pass after its start was reported as ended
normally, a slower one as timed out. The agent now enforces deadlines first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from podbay.guest import agent


class RecordingPort(agent.Port):
    """A port that keeps what the agent sends instead of writing it anywhere."""

    def __init__(self) -> None:
        super().__init__(-1, -1, reconnects=False)
        self.sent: list[dict[str, Any]] = []

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.sent.append(header)


def test_a_command_that_exits_before_the_agent_looks_is_still_timed_out(tmp_path: Path) -> None:
    port = RecordingPort()
    guest = agent.Agent(port, state_dir=str(tmp_path / "state"), workdir=str(tmp_path))
    guest.op_exec({"id": 7, "op": "exec", "argv": ["true"], "timeout": 1e-9}, b"")
    (pid,) = guest.processes
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # it has exited, and is not reaped yet: the lost race
    guest.housekeeping()
    (exit_event,) = [header for header in port.sent if header.get("event") == "exit"]
    assert exit_event["timed_out"] is True


def test_a_command_without_a_timeout_is_never_timed_out(tmp_path: Path) -> None:
    port = RecordingPort()
    guest = agent.Agent(port, state_dir=str(tmp_path / "state"), workdir=str(tmp_path))
    guest.op_exec({"id": 8, "op": "exec", "argv": ["true"]}, b"")
    (pid,) = guest.processes
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    guest.housekeeping()
    (exit_event,) = [header for header in port.sent if header.get("event") == "exit"]
    assert (exit_event["timed_out"], exit_event["exit_code"]) == (False, 0)
