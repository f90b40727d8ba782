"""One real microVM, many behaviours: exec, streaming, stdin, timeouts, signals, files, env and context."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator

import pytest

from podbay import GuestError, NotFound, Platform, Pod

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pod(shared_platform: Platform) -> Iterator[Pod]:
    pod = shared_platform.create_agent(env={"TASK": "refund"}, context={"ticket": 981})
    yield pod
    pod.destroy()


def test_the_guest_is_a_microvm_with_its_own_kernel(pod: Pod) -> None:
    info = pod.info()
    assert info.sandbox is not None and info.sandbox.isolation == "microvm"
    assert info.sandbox.accelerator in ("kvm", "tcg")
    assert info.sandbox.security_boundary == (info.sandbox.accelerator == "kvm")
    result = pod.exec(["sh", "-c", "echo $$; uname -r; cat /proc/1/cmdline | tr '\\0' ' '"])
    _, kernel, init = result.stdout.splitlines()
    assert kernel.startswith("6.1."), "the guest runs podbay's own kernel, not the host's"
    assert "agent.py" in init, "the agent is PID 1"


def test_exit_codes_and_both_streams(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert pod.exec(["true"]).exit_code == 0


def test_output_streams_while_the_command_runs(pod: Pod) -> None:
    first_chunk = threading.Event()
    process = pod.start_process(["sh", "-c", "echo ready; read reply; echo got $reply"], stdin=True,
                                on_stdout=lambda _: first_chunk.set())
    assert first_chunk.wait(30), "stdout must arrive before the command finishes"
    process.write_stdin(b"go\n", eof=True)
    assert process.wait().stdout == "ready\ngot go\n"


def test_large_stdin_and_stdout(pod: Pod) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: many frames each way
    result = pod.exec(["sh", "-c", "tee /tmp/copy | sha256sum; cat /tmp/copy >&2"], stdin=data)
    assert result.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert len(result.stderr.encode(errors="surrogateescape")) > 0


def test_timeout_kills_the_command_and_its_children(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "sleep 60 & sleep 60"], timeout=1)
    assert result.timed_out and result.signal == signal.SIGKILL
    count_sleeps = "cat /proc/[0-9]*/comm 2>/dev/null | grep -c '^sleep$' || true"  # minbase has no pgrep
    assert pod.exec(["sh", "-c", count_sleeps]).stdout.strip() == "0"


def test_signal_a_running_command(pod: Pod) -> None:
    process = pod.start_process(["sleep", "60"])
    process.signal(signal.SIGTERM)
    result = process.wait()
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM


def test_missing_binary_is_not_found(pod: Pod) -> None:
    with pytest.raises(NotFound, match="no-such-tool"):
        pod.exec(["no-such-tool"])


def test_env_and_context_are_injected_at_start(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", 'echo "$TASK"; echo "$PODBAY_POD_ID"; cat "$PODBAY_CONTEXT_FILE"'])
    task, pod_id, context = result.stdout.splitlines()
    assert (task, pod_id, json.loads(context)) == ("refund", pod.id, {"ticket": 981})
    assert pod.exec(["sh", "-c", "echo $EXTRA"], env={"EXTRA": "per-exec"}).stdout == "per-exec\n"


def test_context_lives_in_memory_not_on_disk(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", 'df -P "$PODBAY_CONTEXT_FILE" | tail -1'])
    assert result.stdout.startswith("tmpfs"), "injected context must not be written to a disk image"


def test_files_write_read_list_stat(pod: Pod) -> None:
    pod.files.write("/work/agent.py", b"print('hi')")
    assert pod.files.read("/work/agent.py") == b"print('hi')"
    assert "agent.py" in [entry.name for entry in pod.files.list("/work")]
    stat = pod.files.stat("/work/agent.py")
    assert (stat.type, stat.size) == ("file", 11)
    assert pod.exec(["python3", "/work/agent.py"]).stdout == "hi\n"
    pod.files.write("/work/run.sh", "#!/bin/sh\necho ok\n", mode=0o755)
    assert pod.exec(["/work/run.sh"]).stdout == "ok\n"


def test_file_errors(pod: Pod) -> None:
    with pytest.raises(NotFound):
        pod.files.read("/no/such/file")
    with pytest.raises(GuestError, match="absolute"):
        pod.files.write("relative.txt", b"x")


def test_the_root_filesystem_is_copy_on_write(pod: Pod) -> None:
    pod.exec(["sh", "-c", "echo changed > /etc/podbay-test"])
    result = pod.exec(["sh", "-c", "cat /etc/podbay-test; grep ' / ' /proc/mounts"])
    assert result.stdout.startswith("changed\noverlay / overlay")


def test_no_network_unless_asked(pod: Pod) -> None:
    links = pod.exec(["ls", "/sys/class/net"]).stdout.split()
    assert links in ([], ["lo"]), f"a pod without network=True must have no network device, saw {links}"


def test_pause_and_resume(pod: Pod) -> None:
    pod.pause()
    assert pod.info().state == "paused"
    with pytest.raises(Exception, match="paused"):
        pod.exec(["true"])
    pod.resume()
    assert pod.exec(["echo", "back"]).stdout == "back\n"
