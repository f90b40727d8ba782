"""The record commands (`podbay postmortem`, `logs`, `trace`, `snapshot ls`) against a real `podbay serve` on a
real backend, as a user runs them: PODBAY_SERVER and PODBAY_TOKEN, a subprocess per command; another tenant's
pod is not found."""

from __future__ import annotations

import json
import subprocess

import pytest

from podbay import Client

from .conftest import cli_env
from .test_server import PODBAY, Server, server

pytestmark = pytest.mark.integration
__all__ = ["server"]  # the fixture: a real podbay serve with tenants acme and globex


def remote(server: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(server.paths), "PODBAY_SERVER": server.url, "PODBAY_TOKEN": token, "COLUMNS": "300"}
    return subprocess.run([*PODBAY, *args], capture_output=True, text=True, env=env, timeout=120)


def test_what_a_pod_left_is_read_through_the_server(server: Server) -> None:
    with Client(server.url, server.token_a) as client:
        pod = client.create_agent(backend=server.backend)
        assert pod.exec(["echo", "hi"]).stdout == "hi\n"
        pod.destroy()
    listed = remote(server, server.token_a, "postmortem", "ls")
    assert listed.returncode == 0 and pod.id in listed.stdout, listed.stderr
    shown = remote(server, server.token_a, "postmortem", "show", pod.id)
    assert shown.returncode == 0 and json.loads(shown.stdout)["reason"] == "destroyed"
    assert str(server.paths.state) not in shown.stdout, "no host path reaches a tenant"
    traced = remote(server, server.token_a, "trace", pod.id)
    assert traced.returncode == 0 and "destroy" in traced.stdout, traced.stderr
    assert remote(server, server.token_a, "logs", pod.id).returncode == 0
    snapshots = remote(server, server.token_a, "snapshot", "ls", "--json")
    assert snapshots.returncode == 0 and json.loads(snapshots.stdout) == []
    for command in (["postmortem", "show", pod.id], ["logs", pod.id], ["trace", pod.id]):
        refused = remote(server, server.token_b, *command)
        assert refused.returncode == 2 and "NotFound" in refused.stderr, command
