"""Hostile input against the real guest agent, run locally: every bad request gets a clear error frame and the
agent keeps serving. Two views: the raw protocol (a socketpair and hand-made frames, so nothing on the host side
filters the input first) and the public API through a local pod (what a caller sees: InvalidSpec naming the field,
NotFound, ...). After each attack the same agent must still run `true`.

The pod-level helpers at the top are shared with tests/security/test_hostile_input.py (real sandboxes).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podbay import InvalidSpec, NotFound, Platform, Pod
from podbay.guest import agent, protocol
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths

Header = dict[str, Any]
pytestmark = pytest.mark.timeout(60)  # a wedged agent fails fast instead of holding the run

# ---- helpers for pods (local here, real sandboxes in tests/security) ----------------------------------------


def raw_request(pod: Pod, fields: Header, payload: bytes = b"", timeout: float = 15.0) -> tuple[Header, bytes]:
    """Send a request straight through the pod's channel, past the host-side checks; its first answer frame."""
    channel = pod._pod.sandbox.channel

    async def ask() -> tuple[Header, bytes]:
        request_id, queue = channel._open()
        try:
            await channel._send({**fields, "id": request_id}, payload)
            async with asyncio.timeout(timeout):
                return await channel._next(request_id, queue)
        finally:
            channel._queues.pop(request_id, None)

    return pod._loop.run(ask())


RAW_ID = 1 << 40  # an id for hand-made frames that the channel's own counter never reaches


def raw_bytes(pod: Pod, data: bytes, answer_id: int = 0, timeout: float = 15.0) -> Header:
    """Write bytes to the pod's channel as they are; the first frame the agent answers with `answer_id` (0: the
    id of protocol errors)."""
    channel = pod._pod.sandbox.channel

    async def send() -> Header:
        queue: asyncio.Queue[tuple[Header, bytes] | None] = asyncio.Queue()
        channel._queues[answer_id] = queue
        try:
            channel._writer.write(data)
            await channel._writer.drain()
            async with asyncio.timeout(timeout):
                frame = await queue.get()
            assert frame is not None, "the guest channel closed"
            return frame[0]
        finally:
            channel._queues.pop(answer_id, None)

    return pod._loop.run(send())


def frame(header: Header | str, payload: bytes = b"") -> bytes:
    """A frame whose header may be any text (the codec refuses NaN or garbage; the attacker does not)."""
    raw = header.encode() if isinstance(header, str) else protocol.dumps(header).encode()
    return protocol.PREFIX.pack(len(raw), len(payload)) + raw + payload


def list_all(pod: Pod, path: str) -> list[Header]:
    """Every entry of a directory, page by page through file_list's offset/next_offset."""
    entries: list[Header] = []
    offset: int | None = 0
    while offset is not None:
        header, _ = raw_request(pod, {"op": "file_list", "path": path, "offset": offset})
        assert len(header["entries"]) <= agent.MAX_LIST_PAGE
        assert header["total"] >= len(entries)
        entries += header["entries"]
        offset = header["next_offset"]
    return entries


def assert_invalid(error: pytest.ExceptionInfo[InvalidSpec], field: str) -> None:
    assert error.value.field == field, error.value
    assert error.value.problem and error.value.fix, error.value


def assert_alive(pod: Pod) -> None:
    assert pod.exec(["true"]).exit_code == 0


# ---- the raw protocol -----------------------------------------------------------------------------------


class RawAgent:
    """The agent as a subprocess on a socketpair, spoken to with hand-made frames."""

    def __init__(self, tmp_path: Path) -> None:
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.sock, agent_end = socket.socketpair()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                agent.__file__,
                f"--transport=fd:{agent_end.fileno()}",
                f"--state-dir={tmp_path / 'state'}",
                f"--workdir={self.workdir}",
            ],
            pass_fds=[agent_end.fileno()],
            stderr=subprocess.PIPE,
        )
        agent_end.close()
        self.sock.settimeout(15)
        self.decoder = protocol.FrameDecoder()
        self.frames: list[tuple[Header, bytes]] = []
        self.ids = iter(range(1, 1 << 30))
        self.pid = self.request({"op": "health"})[0]["pid"]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self, request_id: int) -> tuple[Header, bytes]:
        while True:
            for index, (header, payload) in enumerate(self.frames):
                if header.get("id") == request_id:
                    del self.frames[index]
                    return header, payload
            data = self.sock.recv(1 << 20)
            assert data, f"the agent closed the channel: {self.stderr()}"
            self.frames += self.decoder.feed(data)

    def request(self, fields: Header, payload: bytes = b"") -> tuple[Header, bytes]:
        request_id = next(self.ids)
        self.send(frame({"id": request_id, **fields}, payload))
        return self.next_frame(request_id)

    def error(self, fields: Header, payload: bytes = b"") -> Header:
        header, _ = self.request(fields, payload)
        assert header["event"] == "error", header
        return header

    def invalid(self, fields: Header, field: str, payload: bytes = b"") -> Header:
        header = self.error(fields, payload)
        assert (header["error"], header["field"]) == ("invalid", field), header
        assert header["message"] and header["fix"], header
        return header

    def run(self, argv: list[str], **fields: Any) -> Header:
        """Run a command to its end; its exit frame."""
        header, _ = self.request({"op": "exec", "argv": argv, **fields})
        assert header["event"] == "started", header
        while header["event"] != "exit":
            header, _ = self.next_frame(header["id"])
        return header

    def assert_alive(self) -> None:
        assert self.run(["true"])["exit_code"] == 0
        assert self.process.poll() is None

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        return self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""

    def close(self) -> None:
        self.sock.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawAgent]:
    agent_process = RawAgent(tmp_path)
    yield agent_process
    agent_process.assert_alive()
    agent_process.close()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"argv": ["echo", "a\0b"]}, "argv"),
        ({"argv": ["ech\0o"]}, "argv"),
        ({"argv": ["echo", 3]}, "argv"),
        ({"argv": "echo hi"}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": [""]}, "argv"),
        ({"argv": ["echo", "\ud800"]}, "argv"),  # a lone surrogate: no file-system encoding for it
        ({"argv": ["true"], "env": {"A\0B": "x"}}, "env"),
        ({"argv": ["true"], "env": {"A": "x\0y"}}, "env"),
        ({"argv": ["true"], "env": {"A=B": "x"}}, "env"),
        ({"argv": ["true"], "env": {"": "x"}}, "env"),
        ({"argv": ["true"], "env": {"1A": "x"}}, "env"),
        ({"argv": ["true"], "env": {"A": 1}}, "env"),
        ({"argv": ["true"], "env": ["A=1"]}, "env"),
        ({"argv": ["true"], "cwd": "/tmp\0/x"}, "cwd"),
        ({"argv": ["true"], "cwd": 7}, "cwd"),
        ({"argv": ["true"], "timeout": "abc"}, "timeout"),
        ({"argv": ["true"], "timeout": 0}, "timeout"),
        ({"argv": ["true"], "timeout": -1}, "timeout"),
        ({"argv": ["true"], "timeout": True}, "timeout"),
        ({"argv": ["true"], "timeout": 10**400}, "timeout"),  # no float holds it
        ({"argv": ["true"], "stdin": "yes"}, "stdin"),
    ],
)
def test_bad_exec_fields_are_refused_by_name(raw: RawAgent, fields: Header, field: str) -> None:
    raw.invalid({"op": "exec", **fields}, field)


@pytest.mark.parametrize("value", ["1e999", "-1e999", "NaN", "Infinity"])
def test_timeouts_json_should_not_carry(raw: RawAgent, value: str) -> None:
    header = f'{{"id":77,"op":"exec","argv":["true"],"timeout":{value}}}'
    raw.send(frame(header))
    if "e999" in value:  # valid JSON that decodes to an infinity: a refusal of that field
        answer, _ = raw.next_frame(77)
        assert (answer["error"], answer["field"]) == ("invalid", "timeout"), answer
    else:  # not JSON at all: a protocol error, and that frame alone is dropped
        answer, _ = raw.next_frame(0)
        assert answer["error"] == "protocol", answer


def test_a_huge_timeout_does_not_break_the_main_loop(raw: RawAgent) -> None:
    assert raw.run(["true"], timeout=1e300)["exit_code"] == 0
    process, _ = raw.request({"op": "exec", "argv": ["sleep", "30"], "timeout": 1e300})
    raw.assert_alive()  # the main loop sleeps, bounded, while a deadline 1e300 s away is pending
    raw.request({"op": "signal", "target": process["id"], "signal": 9})


@pytest.mark.parametrize("header", ["not json", "{", '{"id": 1,', "[1, 2]", '"text"', "\xff\xfe"])
def test_a_garbage_header_is_a_protocol_error_and_only_its_frame_is_lost(raw: RawAgent, header: str) -> None:
    raw.send(frame(header) + frame({"id": 5, "op": "health"}))  # one write: the good frame follows the bad one
    assert raw.next_frame(0)[0]["error"] == "protocol"
    assert raw.next_frame(5)[0]["event"] == "result"


def test_a_header_that_is_not_utf8_is_a_protocol_error(raw: RawAgent) -> None:
    raw.send(protocol.PREFIX.pack(3, 0) + b"\xff\xfe\xfd")
    assert raw.next_frame(0)[0]["error"] == "protocol"


def test_deeply_nested_json_is_a_protocol_error(raw: RawAgent) -> None:
    raw.send(frame('{"id": 9, "x": ' + "[" * 200_000 + "]" * 200_000 + "}"))
    assert raw.next_frame(0)[0]["error"] == "protocol"


def test_an_oversized_prefix_resets_the_stream(raw: RawAgent) -> None:
    raw.send(protocol.PREFIX.pack(protocol.MAX_HEADER + 1, 0))
    assert "too large" in raw.next_frame(0)[0]["message"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"id": "seven", "op": "health"}, "id"),
        ({"id": True, "op": "health"}, "id"),
        ({"op": "no_such_op"}, "op"),
        ({"op": 3}, "op"),
        ({}, "op"),
    ],
)
def test_requests_need_an_id_and_a_known_op(raw: RawAgent, fields: Header, field: str) -> None:
    request_id = fields.get("id", 41)
    raw.send(frame({"id": 41, **fields}))
    header, _ = raw.next_frame(request_id if isinstance(request_id, int) and request_id is not True else 0)
    assert (header["error"], header["field"]) == ("invalid", field), header


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"op": "file_read", "path": "/tmp/a\0b"}, "path"),
        ({"op": "file_read", "path": "relative"}, "path"),
        ({"op": "file_read", "path": 5}, "path"),
        ({"op": "file_read", "path": "/etc/hostname", "offset": -1}, "offset"),
        ({"op": "file_read", "path": "/etc/hostname", "length": protocol.MAX_PAYLOAD + 1}, "length"),
        ({"op": "file_read", "path": "/etc/hostname", "offset": 1.5}, "offset"),
        ({"op": "file_stat", "path": "/tmp\0"}, "path"),
        ({"op": "file_list", "path": "/tmp\0"}, "path"),
        ({"op": "file_list", "path": "/tmp", "offset": -5}, "offset"),
        ({"op": "file_list", "path": "/tmp", "limit": 0}, "limit"),
        ({"op": "file_list", "path": "/tmp", "limit": "10"}, "limit"),
        ({"op": "file_write", "path": "/tmp/x\0y"}, "path"),
        ({"op": "file_write", "path": "HOSTILE", "mode": 2**40}, "mode"),
        ({"op": "file_write", "path": "HOSTILE", "mode": -1}, "mode"),
        ({"op": "file_write", "path": "HOSTILE", "mode": "644"}, "mode"),
        ({"op": "file_write", "path": "HOSTILE", "parents": "yes"}, "parents"),
        ({"op": "signal", "target": 1, "signal": 0}, "signal"),
        ({"op": "signal", "target": 1, "signal": 65}, "signal"),
        ({"op": "signal", "target": 1, "signal": "9"}, "signal"),
        ({"op": "signal", "target": "1"}, "target"),
        ({"op": "stdin", "target": 1, "eof": "yes"}, "eof"),
        ({"op": "init", "env": {"A=B": "1"}}, "env"),
        ({"op": "init", "clock": "now"}, "clock"),
        ({"op": "init", "mounts": [{"source": "/dev/vdb", "target": "data\0"}]}, "mounts"),
        ({"op": "init", "mounts": "all"}, "mounts"),
    ],
)
def test_bad_file_and_control_fields_are_refused_by_name(raw: RawAgent, fields: Header, field: str) -> None:
    target = raw.workdir / "hostile"
    if fields.get("path") == "HOSTILE":
        fields = {**fields, "path": str(target)}
    raw.invalid(fields, field)
    assert not target.exists()


def test_control_ops_on_a_finished_exec_are_not_found(raw: RawAgent) -> None:
    done = raw.run(["true"], stdin=True)
    for op, fields in (("signal", {"signal": 15}), ("stdin", {"eof": True})):
        header, _ = raw.request({"op": op, "target": done["id"], **fields}, b"data")
        assert header["error"] == "not_found", header


def test_stdin_after_eof_is_refused_not_fatal(raw: RawAgent) -> None:
    process, _ = raw.request({"op": "exec", "argv": ["sleep", "30"], "stdin": True})
    raw.send(frame({"id": 900, "op": "stdin", "target": process["id"], "eof": True}))
    raw.invalid({"op": "stdin", "target": process["id"]}, "eof", b"more")
    raw.request({"op": "signal", "target": process["id"], "signal": 9})


def test_a_fifo_is_refused_without_blocking(raw: RawAgent) -> None:
    fifo = raw.workdir / "fifo"
    os.mkfifo(fifo)
    raw.invalid({"op": "file_read", "path": str(fifo)}, "path")
    raw.invalid({"op": "file_write", "path": str(fifo)}, "path", b"data")
    assert fifo.is_fifo()


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null", "/"])
def test_devices_and_directories_are_not_read(raw: RawAgent, path: str) -> None:
    raw.invalid({"op": "file_read", "path": path}, "path")


def test_a_directory_is_not_written_over(raw: RawAgent) -> None:
    (raw.workdir / "dir").mkdir()
    raw.invalid({"op": "file_write", "path": str(raw.workdir / "dir")}, "path", b"data")
    assert (raw.workdir / "dir").is_dir()


def test_a_file_is_not_listed(raw: RawAgent) -> None:
    (raw.workdir / "file").write_text("x")
    raw.invalid({"op": "file_list", "path": str(raw.workdir / "file")}, "path")


def test_a_proc_file_reads_in_full_although_its_size_is_zero(raw: RawAgent) -> None:
    header, payload = raw.request({"op": "file_read", "path": f"/proc/{raw.pid}/status"})
    assert header["event"] == "result" and header["eof"] is True
    assert b"Name:" in payload and f"Pid:\t{raw.pid}".encode() in payload


def test_ranged_reads(raw: RawAgent) -> None:
    (raw.workdir / "digits").write_bytes(b"0123456789")
    path = str(raw.workdir / "digits")
    header, payload = raw.request({"op": "file_read", "path": path, "offset": 2, "length": 3})
    assert (payload, header["offset"], header["eof"]) == (b"234", 2, False)
    header, payload = raw.request({"op": "file_read", "path": path, "offset": 7, "length": 100})
    assert (payload, header["eof"]) == (b"789", True)
    header, payload = raw.request({"op": "file_read", "path": path, "offset": 1000})
    assert (payload, header["eof"]) == (b"", True)


def test_a_file_beyond_the_payload_limit_is_too_large(raw: RawAgent) -> None:
    big = raw.workdir / "big"
    with big.open("wb") as file:
        file.truncate(protocol.MAX_PAYLOAD + 1)  # sparse: no disk, still too large to send whole
    header = raw.error({"op": "file_read", "path": str(big)})
    assert (header["error"], header["field"]) == ("too_large", "path"), header
    header, payload = raw.request({"op": "file_read", "path": str(big), "offset": protocol.MAX_PAYLOAD})
    assert (payload, header["eof"]) == (b"\0", True)


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(raw: RawAgent) -> None:
    victim = raw.workdir / "victim"
    victim.write_bytes(b"precious")
    target = raw.workdir / "notes.txt"
    planted = raw.workdir / f"notes.txt.podbay-{raw.pid}.tmp"
    planted.symlink_to(victim)
    header, _ = raw.request({"op": "file_write", "path": str(target), "mode": 0o600}, b"new content")
    assert header["event"] == "result", header
    assert victim.read_bytes() == b"precious"
    assert target.read_bytes() == b"new content" and not target.is_symlink()
    assert target.stat().st_mode & 0o7777 == 0o600
    assert planted.is_symlink(), "what was planted is left alone"
    assert sorted(p.name for p in raw.workdir.iterdir()) == sorted(["victim", "notes.txt", planted.name])


def test_a_file_of_the_longest_name_is_written(raw: RawAgent) -> None:
    """<name>.podbay-<pid>.tmp is too long a name there: the temporary file takes a short random one."""
    target = raw.workdir / ("x" * 255)
    header, _ = raw.request({"op": "file_write", "path": str(target)}, b"long")
    assert header["event"] == "result", header
    assert [p.name for p in raw.workdir.iterdir()] == [target.name] and target.read_bytes() == b"long"


def test_a_page_of_the_longest_names_fits_in_a_frame(raw: RawAgent) -> None:
    """1100 names of 255 control characters: 1.5 KiB of JSON each, so a page must stop before 1000 entries."""
    directory = raw.workdir / "escapes"
    directory.mkdir()
    for index in range(1100):
        (directory / (f"{index:04d}" + "\x01" * 251)).touch()
    names: list[str] = []
    offset: int | None = 0
    pages: list[int] = []
    while offset is not None:
        header, _ = raw.request({"op": "file_list", "path": str(directory), "offset": offset, "limit": 5000})
        assert header["total"] == 1100 and 0 < len(header["entries"]) <= agent.MAX_LIST_PAGE
        names += [entry["name"] for entry in header["entries"]]
        offset = header["next_offset"]
        pages.append(len(header["entries"]))
    assert pages[0] < agent.MAX_LIST_PAGE, "1000 entries of 1.5 KiB do not fit in a 1 MiB header"
    assert names == sorted(f"{index:04d}" + "\x01" * 251 for index in range(1100))


def test_names_that_are_not_utf8_are_listed_escaped(raw: RawAgent) -> None:
    directory = raw.workdir / "bytes"
    directory.mkdir()
    for name in (b"caf\xe9", b"\xff\xfe", "ok-é".encode()):
        os.close(os.open(os.path.join(bytes(directory), name), os.O_CREAT | os.O_WRONLY))
    header, _ = raw.request({"op": "file_list", "path": str(directory)})
    assert sorted(entry["name"] for entry in header["entries"]) == sorted(["caf\\xe9", "\\xff\\xfe", "ok-é"])
    assert all(entry["type"] == "file" for entry in header["entries"])


def test_an_entry_that_vanished_is_listed_as_other() -> None:
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert agent._describe_at(fd, "podbay-no-such-entry")["type"] == "other"
    finally:
        os.close(fd)


# ---- the agent's last resorts, in process ---------------------------------------------------------------


def _read_frames(fd: int) -> list[tuple[Header, bytes]]:
    decoder = protocol.FrameDecoder()
    frames: list[tuple[Header, bytes]] = []
    while chunk := os.read(fd, 1 << 20):
        frames += decoder.feed(chunk)
    return frames


def test_an_answer_too_large_for_a_frame_becomes_a_too_large_error() -> None:
    read_fd, write_fd = os.pipe()
    port = agent.Port(read_fd, write_fd, reconnects=False)
    port.send({"id": 12, "event": "result", "entries": ["x" * protocol.MAX_HEADER]})
    port.send({"id": 13, "event": "result"}, b"x" * (protocol.MAX_PAYLOAD + 1))
    os.close(write_fd)
    frames = _read_frames(read_fd)
    os.close(read_fd)
    assert [(h["id"], h["error"], h["field"]) for h, _ in frames] == [
        (12, "too_large", "request"),
        (13, "too_large", "request"),
    ]


def test_an_unexpected_exception_in_an_op_is_an_internal_error(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    server = agent.Agent(agent.Port(right.fileno(), right.fileno(), reconnects=False), str(tmp_path), str(tmp_path))

    def broken(request: Header, payload: bytes) -> None:
        raise RuntimeError("a bug")

    server.ops["health"] = broken
    server.handle({"id": 3, "op": "health"}, b"")
    server.handle({"id": 4, "op": "file_stat", "path": "/"}, b"")
    right.close()
    frames = _read_frames(left.fileno())
    left.close()
    assert frames[0][0] == {"id": 3, "event": "error", "error": "internal", "message": "RuntimeError: a bug"}
    assert (frames[1][0]["id"], frames[1][0]["type"]) == (4, "dir")


def test_system_exit_is_not_swallowed(tmp_path: Path) -> None:
    left, right = socket.socketpair()
    server = agent.Agent(agent.Port(right.fileno(), right.fileno(), reconnects=False), str(tmp_path), str(tmp_path))

    def leave(request: Header, payload: bytes) -> None:
        raise SystemExit(0)

    server.ops["health"] = leave
    with pytest.raises(SystemExit):
        server.handle({"id": 3, "op": "health"}, b"")
    left.close()
    right.close()


# ---- the public API, through a local pod ----------------------------------------------------------------


@pytest.fixture
def pod(paths: PodbayPaths) -> Iterator[Pod]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        pod = platform.create_agent(backend="local")
        yield pod
        assert_alive(pod)


@pytest.fixture
def workdir(pod: Pod) -> Path:
    return Path(pod.exec(["pwd"]).stdout.strip())


# What exec must refuse (argv, keyword options, the field named); the security suite replays it on real pods.
EXEC_REFUSALS = [
    (["echo", "a\0b"], {}, "argv"),
    (["true"], {"env": {"A": "x\0y"}}, "env"),
    (["true"], {"env": {"A\0": "x"}}, "env"),
    (["true"], {"env": {"A=B": "x"}}, "env"),
    (["true"], {"cwd": "/tmp\0x"}, "cwd"),
]


@pytest.mark.parametrize(("argv", "options", "field"), EXEC_REFUSALS)
def test_exec_refuses_what_the_kernel_cannot_take(pod: Pod, argv: list[str], options: Any, field: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.exec(argv, **options)
    assert_invalid(error, field)
    assert_alive(pod)


@pytest.mark.parametrize("timeout", ["abc", 0, -1])
def test_bad_timeouts_reach_the_agent_and_are_refused(pod: Pod, timeout: object) -> None:
    with pytest.raises(InvalidSpec) as error:
        raw_request(pod, {"op": "exec", "argv": ["true"], "timeout": timeout})
    assert_invalid(error, "timeout")
    assert_alive(pod)


def test_nan_in_a_header_is_a_protocol_error(pod: Pod) -> None:
    error = raw_bytes(pod, frame('{"id": 99999, "op": "exec", "argv": ["true"], "timeout": NaN}'))
    assert error["error"] == "protocol"
    assert_alive(pod)


def test_an_infinite_timeout_in_a_header_is_refused_by_name(pod: Pod) -> None:
    header = f'{{"id": {RAW_ID}, "op": "exec", "argv": ["true"], "timeout": 1e999}}'
    error = raw_bytes(pod, frame(header), answer_id=RAW_ID)
    assert (error["error"], error["field"]) == ("invalid", "timeout"), error
    assert_alive(pod)


def test_a_garbage_header_is_a_protocol_error(pod: Pod) -> None:
    assert raw_bytes(pod, frame("}{ not json"))["error"] == "protocol"
    assert_alive(pod)


def test_a_missing_command_or_directory_is_not_found(pod: Pod) -> None:
    with pytest.raises(NotFound):
        pod.exec(["/no/such/program"])
    with pytest.raises(NotFound):
        pod.exec(["true"], cwd="/no/such/directory")
    assert_alive(pod)


@pytest.mark.parametrize("mode", [2**40, -1, 0o10000])
def test_file_modes_out_of_range_are_refused(pod: Pod, workdir: Path, mode: int) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.files.write(f"{workdir}/moded", b"x", mode=mode)
    assert_invalid(error, "mode")
    assert not (workdir / "moded").exists()
    assert_alive(pod)


@pytest.mark.parametrize("call", ["read", "list", "stat"])
def test_nul_in_a_path_is_refused(pod: Pod, workdir: Path, call: str) -> None:
    with pytest.raises(InvalidSpec) as error:
        getattr(pod.files, call)(f"{workdir}/a\0b")
    assert_invalid(error, "path")
    with pytest.raises(InvalidSpec) as error:
        pod.files.write(f"{workdir}/a\0b", b"data")
    assert_invalid(error, "path")
    assert_alive(pod)


def test_reading_a_fifo_does_not_wedge_the_agent(pod: Pod, workdir: Path) -> None:
    os.mkfifo(workdir / "planted")  # what a command in the pod leaves for the host's next call
    with pytest.raises(InvalidSpec) as error:
        pod.files.read(f"{workdir}/planted")
    assert_invalid(error, "path")
    assert "FIFO" in error.value.problem
    assert_alive(pod)


def test_reading_dev_zero_does_not_wedge_the_agent(pod: Pod) -> None:
    with pytest.raises(InvalidSpec) as error:
        pod.files.read("/dev/zero")
    assert_invalid(error, "path")
    assert_alive(pod)


def test_a_listing_of_thousands_of_long_names_comes_back_in_pages(pod: Pod, workdir: Path) -> None:
    directory = workdir / "many"
    directory.mkdir()
    expected = sorted(f"{index:05d}-" + "n" * 249 for index in range(5000))
    for name in expected:
        (directory / name).touch()
    entries = list_all(pod, str(directory))
    assert [entry["name"] for entry in entries] == expected
    assert {entry["type"] for entry in entries} == {"file"}
    assert [entry.name for entry in pod.files.list(str(directory))] == expected  # the host reads every page
    assert_alive(pod)


def test_a_write_through_a_planted_symlink_leaves_its_target_alone(pod: Pod, workdir: Path) -> None:
    agent_pid = raw_request(pod, {"op": "health"})[0]["pid"]
    victim = workdir / "victim"
    victim.write_bytes(b"precious")
    (workdir / f"out.txt.podbay-{agent_pid}.tmp").symlink_to(victim)
    assert pod.files.write(f"{workdir}/out.txt", b"fresh") == 5
    assert victim.read_bytes() == b"precious"
    assert pod.files.read(f"{workdir}/out.txt") == b"fresh"
    assert_alive(pod)
