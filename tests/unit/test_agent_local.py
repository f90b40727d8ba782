"""The guest agent, channel and platform logic against the local test double (no VM, no isolation)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podbay import InvalidSpec, NotFound, Platform, Pod
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths


@pytest.fixture
def pod(paths: PodbayPaths) -> Iterator[Pod]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        yield platform.create_agent(backend="local", env={"TASK": "refund"}, context={"ticket": 981})


def test_exec_returns_exit_code_and_output(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_output_streams_before_the_command_ends(pod: Pod) -> None:
    seen: list[bytes] = []
    process = pod.start_process(["sh", "-c", "echo first; read line; echo $line"], stdin=True, on_stdout=seen.append)
    process.write_stdin(b"", eof=False)
    import time

    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [b"first\n"], "first line must arrive while the command still waits for stdin"
    process.write_stdin(b"second\n", eof=True)
    assert process.wait().stdout == "first\nsecond\n"


def test_stdin_is_delivered_in_full(pod: Pod) -> None:
    data = bytes(range(256)) * 2000  # larger than a pipe buffer and a frame chunk
    result = pod.exec(
        ["python3", "-c", "import sys, hashlib; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"],
        stdin=data,
    )
    import hashlib

    assert result.stdout.strip() == hashlib.sha256(data).hexdigest()


def test_timeout_kills_the_whole_process_group(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.5)
    assert result.timed_out
    assert result.signal == signal.SIGKILL
    assert result.exit_code == 128 + signal.SIGKILL


def test_signal_reaches_a_running_process(pod: Pod) -> None:
    process = pod.start_process(["sleep", "30"])
    process.signal(signal.SIGTERM)
    result = process.wait()
    assert result.signal == signal.SIGTERM and not result.timed_out


def test_missing_command_is_a_clear_error(pod: Pod) -> None:
    with pytest.raises(NotFound, match="no-such-command"):
        pod.exec(["no-such-command"])


def test_bad_argv_is_invalid_spec(pod: Pod) -> None:
    with pytest.raises(InvalidSpec, match="argv"):
        pod.exec("echo hi")  # type: ignore[arg-type]


def test_env_and_context_are_injected(pod: Pod) -> None:
    result = pod.exec(["sh", "-c", 'echo "$TASK $PODBAY_POD_ID"; cat "$PODBAY_CONTEXT_FILE"'])
    task, pod_id = result.stdout.splitlines()[0].split()
    assert (task, pod_id) == ("refund", pod.id)
    assert json.loads(result.stdout.splitlines()[1]) == {"ticket": 981}


def test_files_round_trip(pod: Pod) -> None:
    work = pod.exec(["pwd"]).stdout.strip()
    assert pod.files.write(f"{work}/sub/agent.py", b"print('hi')") == 11
    assert pod.files.read(f"{work}/sub/agent.py") == b"print('hi')"
    assert [e.name for e in pod.files.list(f"{work}/sub")] == ["agent.py"]
    stat = pod.files.stat(f"{work}/sub/agent.py")
    assert (stat.type, stat.size, stat.mode) == ("file", 11, 0o644)
    assert pod.exec(["python3", f"{work}/sub/agent.py"]).stdout == "hi\n"


def test_reading_a_missing_file_is_not_found(pod: Pod) -> None:
    with pytest.raises(NotFound):
        pod.files.read("/nonexistent/file")


def test_relative_paths_are_refused(pod: Pod) -> None:
    with pytest.raises(InvalidSpec, match="absolute") as error:
        pod.files.read("relative/path")
    assert error.value.field == "path"


def test_trace_records_every_creation_phase(pod: Pod) -> None:
    names = [phase.name for phase in pod.info().trace]
    assert {"choose", "prepare", "db provision", "cold boot", "attach+inject"} <= set(names)
    assert pod.info().origin == "cold boot"
    assert "local has no templates" in next(phase.detail for phase in pod.info().trace if phase.name == "cold boot")
    assert all(phase.end_s >= phase.start_s for phase in pod.info().trace)


def test_unknown_backend_lists_the_valid_ones(paths: PodbayPaths) -> None:
    with (
        Platform(paths, backends={"local": LocalProcessBackend()}) as platform,
        pytest.raises(InvalidSpec, match="local"),
    ):
        platform.create_agent(backend="nope")


def test_destroy_leaves_no_files(paths: PodbayPaths) -> None:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        pod = platform.create_agent(backend="local")
        pod.destroy()
        assert list(paths.pods.iterdir()) == []
        assert platform.list() == []


def test_collected_output_is_bounded_but_streaming_sees_it_all(pod: Pod, monkeypatch: pytest.MonkeyPatch) -> None:
    from podbay import channel

    monkeypatch.setattr(channel, "OUTPUT_LIMIT", 1000)
    streamed: list[bytes] = []
    result = pod.exec(["python3", "-c", "print('x' * 5000)"], on_stdout=streamed.append)
    assert result.truncated and len(result.stdout) == 1000
    assert len(b"".join(streamed)) == 5001


def test_pods_do_not_outlive_a_script_that_forgot_to_close(paths: PodbayPaths) -> None:
    script = f"""
from pathlib import Path
from podbay import Platform
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths
platform = Platform(PodbayPaths(cache=Path({str(paths.cache)!r}), state=Path({str(paths.state)!r})),
                    backends={{"local": LocalProcessBackend()}})
pod = platform.create_agent(backend="local")
print(pod.info().sandbox.pid)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    pid = int(done.stdout.strip())
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert list(paths.pods.iterdir()) == []
