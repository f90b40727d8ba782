"""The issue's shell story, against a real `podbay serve` process on a loopback port:

    podbay serve --listen 127.0.0.1:PORT
    podbay tokens create --tenant acme
    export PODBAY_SERVER=http://127.0.0.1:PORT PODBAY_TOKEN=...
    podbay run -- python3 -c 'print(42)'
    podbay ps ; podbay usage --tenant acme

(`run` gets `--backend` with the fastest real backend here, runc where it runs, as the server tests do.)"""

from __future__ import annotations

import json
import subprocess

import pytest

from podbay.paths import PodbayPaths

from .conftest import assert_nothing_left, cli_env
from .test_server import PODBAY, fastest_backend, free_port, stop_serving, wait_until_serving

pytestmark = pytest.mark.integration


def test_the_cli_story_against_a_real_server(vm_paths: PodbayPaths) -> None:
    def podbay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*PODBAY, *args], capture_output=True, text=True, env=env or cli_env(vm_paths), timeout=300
        )

    made = podbay("tokens", "create", "--tenant", "acme")
    assert made.returncode == 0, made.stderr
    port = free_port()
    log = (vm_paths.state / "serve.log").open("wb")
    server = subprocess.Popen(
        [*PODBAY, "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "warning"],
        env=cli_env(vm_paths),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    remote = {**cli_env(vm_paths), "PODBAY_SERVER": f"http://127.0.0.1:{port}", "PODBAY_TOKEN": made.stdout.strip()}
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server, vm_paths.state / "serve.log")
        backend = fastest_backend(vm_paths)

        ran = podbay("run", "--backend", backend, "--", "python3", "-c", "print(42)", env=remote)
        assert (ran.returncode, ran.stdout) == (0, "42\n"), ran.stderr
        failed = podbay("run", "--backend", backend, "--", "sh", "-c", "exit 9", env=remote)
        assert failed.returncode == 9

        pod = podbay("create", "--backend", backend, env=remote)
        assert pod.returncode == 0, pod.stderr
        pod_id = pod.stdout.strip()
        listed = podbay("ps", "--json", env=remote)
        assert [info["id"] for info in json.loads(listed.stdout)] == [pod_id]
        echoed = podbay("exec", pod_id, "--", "sh", "-c", "echo hello; exit 4", env=remote)
        assert (echoed.returncode, echoed.stdout) == (4, "hello\n")
        assert podbay("destroy", pod_id, env=remote).returncode == 0
        assert json.loads(podbay("ps", "--json", env=remote).stdout) == []

        usage = podbay("usage", "--tenant", "acme", "--json", env=remote)
        assert usage.returncode == 0, usage.stderr
        report = json.loads(usage.stdout)
        assert pod_id in {item["pod_id"] for item in report["pods"]}
        assert len(report["pods"]) == 3, "two runs and one created pod, all ended"
        other = podbay("usage", "--tenant", "globex", env=remote)
        assert other.returncode == 2 and "acme" in other.stderr, "the token speaks for acme only"
    finally:
        try:
            stop_serving(server)
        finally:
            log.close()
    assert "Traceback" not in (vm_paths.state / "serve.log").read_text()
    assert_nothing_left(vm_paths)
