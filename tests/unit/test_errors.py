"""Nothing escapes podbay's exception tree: every error a caller sees is a documented PodbayError subclass
that names the field and the fix (bad input) or the pod (`pod_id`), on the local test double (no VM)."""

from __future__ import annotations

import asyncio
import pickle
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import podbay
from podbay import (
    AsyncPlatform,
    Conflict,
    FileEntry,
    GuestError,
    InvalidSpec,
    NotFound,
    Platform,
    Pod,
    PodbayError,
    PodSpec,
    Unsupported,
    errors,
)
from podbay.channel import GuestChannel, guest_answer
from podbay.guest import protocol
from podbay.isolation.fake import LocalProcessBackend
from podbay.paths import PodbayPaths

SRC = Path(podbay.__file__).parent


@pytest.fixture
def platform(paths: PodbayPaths) -> Iterator[Platform]:
    with Platform(paths, backends={"local": LocalProcessBackend()}) as platform:
        yield platform


@pytest.fixture
def pod(platform: Platform) -> Pod:
    return platform.create_agent(backend="local")


# ---- the tree itself -------------------------------------------------------------------------------------


def test_every_error_class_is_exported_and_drawn_in_the_tree() -> None:
    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, PodbayError)]
    assert len(classes) >= 11
    for cls in classes:
        assert cls.__name__ in podbay.__all__, f"{cls.__name__} is not exported from podbay"
        assert re.search(rf"^[│├└─ ]*{cls.__name__}\s", errors.__doc__ or "", re.MULTILINE), cls.__name__


def test_no_bare_podbay_error_is_raised_anywhere() -> None:
    """The root is for catching; each raise picks the subclass that says what went wrong."""
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\b(raise|return) PodbayError\(", line)
    ]
    assert offenders == []


def test_pod_id_is_keyword_only_and_survives_pickling() -> None:
    for error in (
        NotFound("no pod", pod_id="pod-1"),
        InvalidSpec("vcpus", "is 0", "use 1 to 16", pod_id="pod-1"),
        Unsupported("runc", "snapshot a pod", "use qemu", pod_id="pod-1"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.pod_id) == (type(error), str(error), "pod-1")
    assert PodbayError("x").pod_id is None
    assert InvalidSpec("f", "p", "x").field == "f"


# ---- PodSpec built directly ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "fix"),
    [
        ({"vcpus": 0}, "vcpus", "use 1 to 16"),
        ({"memory_mib": 1}, "memory_mib", "use 64 to 16384"),
        ({"volume": "Bad Name!"}, "volume", "lower-case"),
        ({"env": {"1BAD": "x"}}, "env", "names like TASK"),
        ({"context": {"x": float("nan")}}, "context", "JSON values"),
        ({"colour": "blue"}, "colour", "unknown fields are refused"),
        ({"boot_timeout_s": 0}, "boot_timeout_s", "seconds"),
        ({"backend": 3}, "backend", "backend name"),
    ],
)
def test_a_directly_built_spec_raises_invalid_spec(fields: dict[str, Any], field: str, fix: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        PodSpec(**fields)
    assert caught.value.field == field and fix in caught.value.fix
    with pytest.raises(InvalidSpec):
        PodSpec.model_validate(fields)


def test_a_spec_read_from_json_raises_invalid_spec() -> None:
    with pytest.raises(InvalidSpec, match="vcpus"):
        PodSpec.model_validate_json('{"vcpus": 99}')


def test_a_spec_cannot_be_changed_and_says_how_to_make_another() -> None:
    spec = PodSpec(vcpus=2)
    with pytest.raises(InvalidSpec, match=r"model_copy") as caught:
        spec.vcpus = 3
    assert caught.value.field == "vcpus"


def test_a_deeply_nested_context_is_invalid_spec() -> None:
    deep: list[Any] = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(InvalidSpec, match="context"):
        PodSpec(context={"deep": deep})


# ---- requests too large for the guest protocol name the caller's field -----------------------------------


def test_a_path_too_long_for_a_frame_names_path(pod: Pod) -> None:
    path = "/tmp/" + "x" * (protocol.MAX_HEADER + 1)
    for call in (lambda: pod.files.write(path, b"x"), lambda: pod.files.read(path), lambda: pod.files.stat(path)):
        with pytest.raises(InvalidSpec) as caught:
            call()
        assert caught.value.field == "path" and "shorter path" in caught.value.fix
        assert caught.value.pod_id == pod.id


def test_data_too_large_for_a_frame_names_data(pod: Pod) -> None:
    with pytest.raises(InvalidSpec) as caught:
        pod.files.write("/tmp/big", b"x" * (protocol.MAX_PAYLOAD + 1))
    assert caught.value.field == "data" and "part" in caught.value.fix and caught.value.pod_id == pod.id


@pytest.mark.parametrize("field", ["argv", "env"])
def test_a_command_too_large_for_a_frame_names_its_field(pod: Pod, field: str) -> None:
    big = "x" * (protocol.MAX_HEADER + 1)
    with pytest.raises(InvalidSpec) as caught:
        if field == "argv":
            pod.exec(["echo", big])
        else:
            pod.exec(["true"], env={"BIG": big})
    assert caught.value.field == field and "pod.files.write" in caught.value.fix
    assert pod.exec(["echo", "still", "serving"]).stdout == "still serving\n"


def test_no_frame_error_escapes_any_send(pod: Pod) -> None:
    process = pod.start_process(["cat"], stdin=True)
    with pytest.raises(InvalidSpec) as caught:
        process.write_stdin("text")  # type: ignore[arg-type]
    assert caught.value.field == "stdin" and ".encode()" in caught.value.fix
    process.write_stdin(b"bytes", eof=True)
    assert process.wait().stdout == "bytes"


# ---- wrong types and values ------------------------------------------------------------------------------


def test_file_data_of_the_wrong_type_is_invalid_spec(pod: Pod) -> None:
    with pytest.raises(InvalidSpec) as caught:
        pod.files.write("/tmp/x", 5)  # type: ignore[arg-type]
    assert caught.value.field == "data" and caught.value.pod_id == pod.id


def test_exec_stdin_of_the_wrong_type_is_invalid_spec(pod: Pod) -> None:
    with pytest.raises(InvalidSpec) as caught:
        pod.exec(["cat"], stdin="text")  # type: ignore[arg-type]
    assert caught.value.field == "stdin"


@pytest.mark.parametrize("signum", [0, 999, "TERM", True, 1.5])
def test_a_bad_signal_is_invalid_spec(pod: Pod, signum: object) -> None:
    process = pod.start_process(["sleep", "30"])
    with pytest.raises(InvalidSpec) as caught:
        process.signal(signum)  # type: ignore[arg-type]
    assert caught.value.field == "signal" and "signal.SIGTERM" in caught.value.fix
    assert caught.value.pod_id == pod.id
    process.signal(signal.SIGKILL)
    assert process.wait().signal == signal.SIGKILL


def test_create_agent_refuses_a_bad_field_with_invalid_spec(platform: Platform) -> None:
    with pytest.raises(InvalidSpec) as caught:
        platform.create_agent(backend="local", vcpus="x")  # type: ignore[arg-type]
    assert caught.value.field == "vcpus" and caught.value.fix == "use 1 to 16"
    with pytest.raises(InvalidSpec, match="env"):
        platform.create_agent(backend="local", env=1)  # type: ignore[arg-type]


# ---- pod state: Conflict, with the pod's id ---------------------------------------------------------------


def test_wrong_pod_states_are_conflicts_naming_the_pod(pod: Pod) -> None:
    with pytest.raises(Conflict, match="running, not paused") as caught:
        pod.resume()
    assert caught.value.pod_id == pod.id
    pod.pause()
    paused: list[Callable[[], object]] = [pod.pause, lambda: pod.exec(["true"]), lambda: pod.files.read("/x")]
    for call in paused:
        with pytest.raises(Conflict, match="paused; resume it") as caught:
            call()
        assert caught.value.pod_id == pod.id
    pod.destroy()
    destroyed: list[Callable[[], object]] = [
        pod.pause,
        pod.resume,
        lambda: pod.exec(["true"]),
        lambda: pod.files.list("/"),
    ]
    for call in destroyed:
        with pytest.raises(Conflict, match="destroyed") as caught:
            call()
        assert caught.value.pod_id == pod.id
        assert "resume it" not in str(caught.value)


def test_errors_from_the_guest_carry_the_pod_id(pod: Pod) -> None:
    with pytest.raises(NotFound) as caught:
        pod.exec(["no-such-command"])
    assert caught.value.pod_id == pod.id
    with pytest.raises(NotFound) as caught:
        pod.files.read("/no/such/file")
    assert caught.value.pod_id == pod.id
    with pytest.raises(InvalidSpec) as invalid:
        pod.exec("echo hi")  # a str is a Sequence[str] to mypy: refused at run time
    assert invalid.value.pod_id == pod.id


def test_unsupported_operations_carry_the_pod_id(pod: Pod) -> None:
    with pytest.raises(Unsupported) as caught:
        pod.snapshot("saved")
    assert caught.value.pod_id == pod.id


def test_an_unknown_pod_is_not_found_with_its_id(platform: Platform) -> None:
    with pytest.raises(NotFound) as caught:
        platform.get("pod-000000000000")
    assert caught.value.pod_id == "pod-000000000000"


def test_get_finds_a_pod(platform: Platform, pod: Pod) -> None:
    assert platform.get(pod.id).info().id == pod.id


# ---- context managers --------------------------------------------------------------------------------------


def test_with_pod_destroys_it(platform: Platform) -> None:
    with platform.create_agent(backend="local") as pod:
        assert pod.exec(["true"]).ok
    assert pod.info().state == "destroyed"
    assert platform.list() == []


def test_async_with_pod_destroys_it(paths: PodbayPaths) -> None:
    async def main() -> None:
        async with AsyncPlatform(paths, backends={"local": LocalProcessBackend()}) as platform:
            async with await platform.create_agent(backend="local") as pod:
                assert (await pod.exec(["true"])).ok
            assert pod.info().state == "destroyed"
            with pytest.raises(Conflict) as caught:
                await pod.exec(["true"])
            assert caught.value.pod_id == pod.id

    asyncio.run(main())


# ---- an untrusted guest's malformed answers are GuestError --------------------------------------------------


async def _channel_answering(answer: dict[str, Any]) -> tuple[GuestChannel, asyncio.Task[None]]:
    """A channel whose guest end answers every request with `answer` (its `id` filled in)."""
    host, guest = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=host)
    guest_reader, guest_writer = await asyncio.open_connection(sock=guest)

    async def serve() -> None:
        decoder = protocol.FrameDecoder()
        while data := await guest_reader.read(65536):
            for header, _ in decoder.feed(data):
                guest_writer.write(protocol.encode({**answer, "id": header["id"]}))
        guest_writer.close()

    return GuestChannel(reader, writer), asyncio.create_task(serve())


@pytest.mark.parametrize(
    "answers",
    [
        [{"event": "started"}],  # no pid
        [{"event": "started", "pid": "many"}],
        [{"event": "started", "pid": 7}, {"event": "exit"}],  # no exit code
        [{"event": "started", "pid": 7}, {"event": "exit", "exit_code": [1]}],
    ],
)
def test_a_malformed_exec_answer_is_a_guest_error(answers: list[dict[str, Any]]) -> None:
    """The guest is untrusted: a missing or mistyped field is GuestError, never KeyError or ValueError."""

    async def main() -> None:
        channel, guest = await _channel_answering(answers[0])
        try:
            process = await channel.start_process(["true"])
            channel._queues[process._id].put_nowait(({**answers[1], "id": process._id}, b""))  # its "exit"
            await process.wait()
        finally:
            guest.cancel()
            await channel.close()

    with pytest.raises(GuestError, match="malformed"):
        asyncio.run(main())


def test_a_malformed_file_answer_is_a_guest_error() -> None:
    async def main() -> None:
        channel, guest = await _channel_answering({"event": "result", "entries": [{"name": 1}]})
        try:
            header, _ = await channel.request("file_list", path="/")
            with guest_answer("file_list"):
                [FileEntry(**entry) for entry in header["entries"]]
        finally:
            guest.cancel()
            await channel.close()

    with pytest.raises(GuestError, match="'file_list' is malformed"):
        asyncio.run(main())
