"""Post-mortems with real QEMU pods: a VMM killed under a pod, a command the guest's OOM killer ends, and
keep_on_failure's snapshot restored for inspection."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from podbay import Client, NotFound, Platform
from podbay.paths import PodbayPaths
from podbay.postmortem import PostMortem

from .conftest import assert_nothing_left, cli_env, skip_unless_available
from .test_server import PODBAY, fastest_backend, free_port, podbay

pytestmark = pytest.mark.integration
# Touches memory 16 MiB at a time until the guest's OOM killer ends it (SIGKILL): never a MemoryError.
EAT_MEMORY = "x = []\nwhile True: x.append(bytearray(16 << 20))"


@pytest.fixture
def qemu(platform: Platform) -> Platform:
    skip_unless_available(platform, "qemu")
    return platform


def postmortem_of(platform: Platform, pod_id: str) -> PostMortem:
    """Wait for the platform to notice the death and keep the post-mortem (bounded; not a timing assertion)."""
    for _ in range(600):
        try:
            return platform.postmortems.load(pod_id)
        except NotFound:
            time.sleep(0.05)
    raise AssertionError(f"{pod_id} left no post-mortem")


def test_a_killed_vmm_leaves_a_postmortem_with_its_console_and_reason(qemu: Platform) -> None:
    pod = qemu.create_agent()
    said = pod.exec(["sh", "-c", "echo '<2>last words' > /dev/kmsg"])  # the kernel prints it on the console
    assert said.ok, said
    pid = pod.info().sandbox.pid  # type: ignore[union-attr]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    postmortem = postmortem_of(qemu, pod.id)
    assert postmortem.failed and postmortem.reason.startswith("sandbox died"), postmortem.reason
    assert "QEMU exited (-9)" in postmortem.reason
    assert [record.exit_code for record in postmortem.execs] == [0]
    assert "last words" in qemu.postmortems.console(pod.id).decode(errors="replace")
    assert pod.id not in [info.id for info in qemu.list()]


def test_an_oom_killed_command_with_keep_on_failure_leaves_a_snapshot_that_restores(
    qemu: Platform, vm_paths: PodbayPaths
) -> None:
    pod = qemu.create_agent(memory_mib=192, keep_on_failure=True)
    assert pod.exec(["sh", "-c", "echo evidence > /root/marker"]).ok
    eaten = pod.exec(["python3", "-c", EAT_MEMORY], timeout=120)
    assert eaten.signal == signal.SIGKILL, eaten
    pod.destroy()
    postmortem = qemu.postmortems.load(pod.id)
    assert postmortem.failed and "killed by signal 9" in postmortem.reason, postmortem.reason
    assert postmortem.snapshot == f"postmortem-{pod.id}", postmortem.snapshot_note
    assert "Out of memory" in qemu.postmortems.console(pod.id).decode(errors="replace")  # the guest kernel's word
    try:
        restored = qemu.restore(postmortem.snapshot)
        try:
            assert restored.exec(["cat", "/root/marker"]).stdout == "evidence\n"
        finally:
            restored.destroy()
        debugged = subprocess.run(  # `podbay debug POD`: the same, as a line-by-line shell from another process
            [*PODBAY, "debug", pod.id],
            input="cat /root/marker\nexit\n",
            env=cli_env(vm_paths),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert debugged.returncode == 0, debugged.stderr
        assert debugged.stdout == "evidence\n" and "restored as pod-" in debugged.stderr
    finally:
        qemu.snapshots.remove(postmortem.snapshot)


def test_a_real_server_logs_json_lines_and_answers_records_and_metrics(tmp_path: Path) -> None:
    paths = PodbayPaths(cache=PodbayPaths.from_env().cache, state=tmp_path / "state")
    token = podbay(paths, "tokens", "create", "--tenant", "acme").stdout.strip()
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*PODBAY, "serve", "--listen", address, "--log-format", "json"],
            env=cli_env(paths),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        for _ in range(300):
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://{address}/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        with Client(f"http://{address}", token) as client:
            pod = client.create_agent(backend=fastest_backend(paths))
            assert pod.exec(["true"]).ok
            pod.destroy()
            assert client.postmortem(pod.id).reason == "destroyed"
            assert [event.kind for event in client.events(pod.id)][-1] == "ended"
        headers = {"Authorization": f"Bearer {token}", "X-Request-Id": "it-is-me"}
        answer = httpx.get(f"http://{address}/postmortems", headers=headers, timeout=30)
        assert answer.headers["X-Request-Id"] == "it-is-me" and answer.json()[0]["pod_id"] == pod.id
        metrics = httpx.get(f"http://{address}/metrics", timeout=30).text
        assert 'podbay_http_requests_total{method="GET",route="/postmortems",status="200"} 1' in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") == "it-is-me"]
    assert mine and mine[0]["tenant"] == "acme" and mine[0]["route"] == "/postmortems", lines
    created = [line for line in lines if line.get("event") == "created"]
    assert created and created[0]["pod_id"] == pod.id and created[0]["tenant"] == "acme"
    assert_nothing_left(paths)
