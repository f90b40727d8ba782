"""One real sandbox per backend, many behaviours: exec, streaming, stdin, timeouts, signals, files, env and
context, the copy-on-write root, no network, pause/resume. Every available backend runs the same tests, so a
behaviour difference between backends shows up as a failing test."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from podbay import Conflict, InvalidSpec, NotFound, Platform, Pod
from podbay.images import find_images
from podbay.isolation.registry import default_backends
from podbay.paths import PodbayPaths

from .conftest import ALL_BACKENDS, skip_unless_available

pytestmark = pytest.mark.integration
VIRTUAL_MACHINES = ("qemu", "qemu-q35", "firecracker")


@pytest.fixture(scope="module", params=ALL_BACKENDS)
def pod(request: pytest.FixtureRequest, shared_platform: Platform) -> Iterator[Pod]:
    skip_unless_available(shared_platform, request.param)
    pod = shared_platform.create_agent(backend=request.param, env={"TASK": "refund"}, context={"ticket": 981})
    yield pod
    pod.destroy()


def test_the_sandbox_says_what_isolates_it(pod: Pod, shared_paths: PodbayPaths) -> None:
    info = pod.info().sandbox
    assert info is not None and info.pid is not None
    described = default_backends(shared_paths)[info.backend].describe()
    assert info.model_copy(update={"pid": None, "console_log": None}) == described
    if info.backend in VIRTUAL_MACHINES:
        assert info.security_boundary == (info.accelerator == "kvm"), "TCG is not a security boundary"
        assert pod.exec(["uname", "-r"]).stdout.startswith("6.1."), "a VM runs a guest kernel of its own"


def test_the_agent_is_pid_1(pod: Pod) -> None:
    init = pod.exec(["sh", "-c", "tr '\\0' ' ' </proc/1/cmdline"]).stdout
    assert "podbay-init" in init or "agent.py" in init


def test_exit_codes_and_both_streams(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
    assert pod.exec(["true"]).exit_code == 0


def test_output_streams_while_the_command_runs(pod: Pod) -> None:
    first_chunk = threading.Event()
    process = pod.start_process(
        ["sh", "-c", "echo ready; read reply; echo got $reply"], stdin=True, on_stdout=lambda _: first_chunk.set()
    )
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
    names = "import os; print([open(f'/proc/{p}/comm').read() for p in os.listdir('/proc') if p.isdigit()])"
    assert "sleep" not in pod.exec(["python3", "-c", names]).stdout  # minbase has no pgrep


def test_signal_a_running_command(pod: Pod) -> None:
    process = pod.start_process(["sleep", "60"])
    process.signal(signal.SIGTERM)
    result = process.wait()
    assert result.signal == signal.SIGTERM and result.exit_code == 128 + signal.SIGTERM


def test_commands_start_with_default_signal_dispositions(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "(yes; echo $? >&2) | head -n 1"])
    assert result.stdout == "y\n"
    assert result.stderr.strip() == str(128 + signal.SIGPIPE), "the agent ignores SIGPIPE; its children must not"


def test_missing_binary_is_not_found(pod: Pod) -> None:
    with pytest.raises(NotFound, match="no-such-tool"):
        pod.exec(["no-such-tool"])
    with pytest.raises(NotFound, match="working directory"):
        pod.exec(["true"], cwd="/no/such/dir")
    assert pod.exec(["sh", "-c", "pwd"], cwd="/tmp").stdout == "/tmp\n"


def test_env_and_context_are_injected_at_start(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", 'echo "$TASK"; echo "$PODBAY_POD_ID"; cat "$PODBAY_CONTEXT_FILE"'])
    task, pod_id, context = result.stdout.splitlines()
    assert (task, pod_id, json.loads(context)) == ("refund", pod.id, {"ticket": 981})
    assert pod.exec(["sh", "-c", "echo $EXTRA"], env={"EXTRA": "per-exec"}).stdout == "per-exec\n"


def test_context_lives_in_memory_not_on_disk(pod: Pod) -> None:
    result = pod.exec(["python3", "-c", "import os; print(os.environ['PODBAY_CONTEXT_FILE'])"])
    assert result.stdout.startswith("/run/"), "injected context lives under /run, a tmpfs in every backend"
    mounts = pod.exec(["cat", "/proc/mounts"]).stdout.splitlines()
    assert any(line.split()[1:3] == ["/run", "tmpfs"] for line in mounts)


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
    with pytest.raises(InvalidSpec, match="absolute"):
        pod.files.write("relative.txt", b"x")


def test_writes_to_the_root_stay_in_the_pods_own_layer(pod: Pod, shared_paths: PodbayPaths) -> None:
    assert pod.exec(["sh", "-c", "echo changed > /etc/podbay-test && rm /etc/hostname"]).ok
    assert pod.files.read("/etc/podbay-test") == b"changed\n"
    shared = find_images(shared_paths).rootfs_dir / "etc"
    assert not (shared / "podbay-test").exists() and (shared / "hostname").exists(), "the shared tree is untouched"


def test_no_network_device(pod: Pod) -> None:
    script = "import os; print(sorted(os.listdir('/sys/class/net')))"
    links = pod.exec(["python3", "-c", script]).stdout.strip()
    assert links in ("[]", "['lo']"), f"a pod has no network device (egress is refused for now), saw {links}"


def test_pause_and_resume(pod: Pod) -> None:
    pod.pause()
    assert pod.info().state == "paused"
    with pytest.raises(Conflict, match="paused"):
        pod.exec(["true"])
    with pytest.raises(Conflict, match="paused"):
        pod.files.read("/etc/hostname")
    pod.resume()
    assert pod.exec(["echo", "back"]).stdout == "back\n"


def test_a_paused_guest_really_stops(pod: Pod) -> None:
    """Not only the host's bookkeeping: a counter running in the guest does not advance while paused."""
    counts: list[int] = []

    def seen(chunk: bytes) -> None:
        counts.extend(int(number) for number in chunk.split())

    ticker = "import time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.01)"
    process = pod.start_process(["python3", "-c", ticker], on_stdout=seen)
    deadline = time.monotonic() + 30
    while len(counts) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    pod.pause()
    time.sleep(0.3)  # whatever was already on its way arrives
    at_pause = len(counts)
    time.sleep(1.0)
    assert len(counts) == at_pause, f"the guest printed {len(counts) - at_pause} lines while paused"
    pod.resume()
    deadline = time.monotonic() + 30
    while len(counts) <= at_pause and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(counts) > at_pause, "the guest runs again after resume"
    process.signal(9)
    process.wait()
