"""Hostile input to the guest agent of real pods, on every backend: bad fields, planted FIFOs and symlinks,
devices, huge directories and garbage frames. Each attempt gets a clear podbay error (InvalidSpec naming the
field, NotFound, a protocol error) and the same pod goes on answering: the agent can be neither killed nor
wedged by what the host sends or what a command in the pod leaves for the host's next call.

The local, protocol-level version of these checks is tests/unit/test_agent_hostile.py; its helpers are shared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from podbay import InvalidSpec, NotFound, Platform, Pod
from tests.integration.conftest import ALL_BACKENDS, skip_unless_available
from tests.unit.test_agent_hostile import (
    EXEC_REFUSALS,
    RAW_ID,
    assert_alive,
    assert_invalid,
    frame,
    list_all,
    raw_bytes,
    raw_request,
)

pytestmark = [pytest.mark.integration, pytest.mark.security, pytest.mark.timeout(180)]

# Files a command in the pod plants for the host's next call, made in one exec (each exec costs a round trip).
PLANT = r"""
import os, sys
root = sys.argv[1]
os.makedirs(root + "/many")
for index in range(5000):
    open(f"{root}/many/{index:05d}-" + "n" * 249, "w").close()
os.makedirs(root + "/escapes")
for index in range(1100):
    open(f"{root}/escapes/{index:04d}" + "\x01" * 251, "w").close()
os.mkfifo(root + "/fifo")
os.mkdir(root + "/dir")
with open(root + "/victim", "w") as file:
    file.write("precious")
"""
ROOT = "/tmp/hostile"


@pytest.fixture(scope="module", params=ALL_BACKENDS)
def pod(request: pytest.FixtureRequest, shared_platform: Platform) -> Iterator[Pod]:
    skip_unless_available(shared_platform, request.param)
    pod = shared_platform.create_agent(backend=request.param)
    try:
        planted = pod.exec(["python3", "-c", PLANT, ROOT], timeout=120)
        assert planted.exit_code == 0, planted.stderr
        yield pod
    finally:
        pod.destroy()


@pytest.fixture(autouse=True)
def still_answers(pod: Pod) -> Iterator[None]:
    yield
    assert_alive(pod)


@pytest.mark.parametrize(
    ("argv", "options", "field"),
    EXEC_REFUSALS,
    ids=["nul-argv", "nul-env-value", "nul-env-key", "equals-env-key", "nul-cwd"],
)
def test_exec_refuses_what_the_kernel_cannot_take(pod: Pod, argv: list[str], options: Any, field: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.exec(argv, **options)
    assert_invalid(error, field)


@pytest.mark.parametrize("timeout", ["abc", 0, -1, True])
def test_bad_timeouts_are_refused_by_the_agent(pod: Pod, timeout: object) -> None:
    with pytest.raises(InvalidSpec) as error:
        raw_request(pod, {"op": "exec", "argv": ["true"], "timeout": timeout})
    assert_invalid(error, "timeout")


def test_an_infinite_timeout_is_refused_by_name(pod: Pod) -> None:
    header = f'{{"id": {RAW_ID}, "op": "exec", "argv": ["true"], "timeout": 1e999}}'
    error = raw_bytes(pod, frame(header), answer_id=RAW_ID)
    assert (error["error"], error["field"]) == ("invalid", "timeout"), error


@pytest.mark.parametrize("header", ['{"id": 1, "op": "exec", "argv": ["true"], "timeout": NaN}', "}{", "[1]"])
def test_frames_that_are_not_json_objects_are_protocol_errors(pod: Pod, header: str) -> None:
    assert raw_bytes(pod, frame(header))["error"] == "protocol"


def test_a_missing_command_or_directory_is_not_found(pod: Pod) -> None:
    with pytest.raises(NotFound):
        pod.exec(["/no/such/program"])
    with pytest.raises(NotFound):
        pod.exec(["true"], cwd="/no/such/directory")


def test_control_requests_for_a_finished_exec_are_not_found(pod: Pod) -> None:
    process = pod.start_process(["true"], stdin=True)
    process.wait()
    target = process._process._id
    for fields in ({"op": "signal", "target": target, "signal": 9}, {"op": "stdin", "target": target, "eof": True}):
        with pytest.raises(NotFound):
            raw_request(pod, fields)


@pytest.mark.parametrize("mode", [2**40, -1])
def test_file_modes_out_of_range_are_refused(pod: Pod, mode: int) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.files.write(f"{ROOT}/moded", b"x", mode=mode)
    assert_invalid(error, "mode")
    with pytest.raises(NotFound):
        pod.files.stat(f"{ROOT}/moded")


@pytest.mark.parametrize("call", ["read", "list", "stat", "write"])
def test_nul_in_a_path_is_refused(pod: Pod, call: str) -> None:
    arguments = (b"data",) if call == "write" else ()
    with pytest.raises(InvalidSpec) as error:
        getattr(pod.files, call)(f"{ROOT}/a\0b", *arguments)
    assert_invalid(error, "path")


@pytest.mark.parametrize("path", [f"{ROOT}/fifo", "/dev/zero", "/dev/null", f"{ROOT}/dir"])
def test_only_regular_files_are_read(pod: Pod, path: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.files.read(path)
    assert_invalid(error, "path")


@pytest.mark.parametrize("path", [f"{ROOT}/fifo", f"{ROOT}/dir"])
def test_a_fifo_or_directory_is_not_written_over(pod: Pod, path: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.files.write(path, b"data")
    assert_invalid(error, "path")
    assert pod.files.stat(path).type == ("other" if path.endswith("fifo") else "dir")


def test_a_proc_file_reads_in_full_although_its_size_is_zero(pod: Pod) -> None:
    assert pod.files.stat("/proc/self/status").size == 0
    assert b"Name:" in pod.files.read("/proc/self/status")


def test_a_directory_of_thousands_of_long_names_lists_in_full(pod: Pod) -> None:
    expected = sorted(f"{index:05d}-" + "n" * 249 for index in range(5000))
    assert [entry["name"] for entry in list_all(pod, f"{ROOT}/many")] == expected
    assert [entry.name for entry in pod.files.list(f"{ROOT}/many")] == expected


def test_names_of_escapes_still_fit_a_frame(pod: Pod) -> None:
    """1100 names of 255 bytes, nearly all control characters (6 bytes of JSON each): pages stop early."""
    header, _ = raw_request(pod, {"op": "file_list", "path": f"{ROOT}/escapes"})
    assert header["total"] == 1100 and 0 < len(header["entries"]) < 1000 and header["next_offset"]
    names = [entry.name for entry in pod.files.list(f"{ROOT}/escapes")]
    assert names == sorted(f"{index:04d}" + "\x01" * 251 for index in range(1100))


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(pod: Pod) -> None:
    agent_pid = raw_request(pod, {"op": "health"})[0]["pid"]
    planted = f"{ROOT}/out.txt.podbay-{agent_pid}.tmp"
    assert pod.exec(["ln", "-s", f"{ROOT}/victim", planted]).exit_code == 0
    assert pod.files.write(f"{ROOT}/out.txt", b"fresh") == 5
    assert pod.files.read(f"{ROOT}/victim") == b"precious"
    assert pod.files.read(f"{ROOT}/out.txt") == b"fresh"
    assert (pod.files.stat(f"{ROOT}/out.txt").type, pod.files.stat(planted).type) == ("file", "symlink")
