from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from podbay.guest import protocol


def test_frames_survive_arbitrary_chunking() -> None:
    frames = [({"id": 1, "op": "exec", "argv": ["ls"]}, b""), ({"id": 2, "event": "stdout"}, b"\x00\xffdata")]
    stream = b"".join(protocol.encode(h, p) for h, p in frames)
    decoder = protocol.FrameDecoder()
    decoded = []
    for i in range(len(stream)):
        decoded += decoder.feed(stream[i : i + 1])
    assert decoded == frames


def test_oversized_frame_is_refused_on_both_ends() -> None:
    with pytest.raises(protocol.FrameError):
        protocol.encode({"id": 1}, b"x" * (protocol.MAX_PAYLOAD + 1))
    bogus = protocol.PREFIX.pack(protocol.MAX_HEADER + 1, 0)
    with pytest.raises(protocol.FrameError):
        protocol.FrameDecoder().feed(bogus)


def test_header_must_be_a_json_object() -> None:
    raw = b"[1]"
    with pytest.raises(protocol.FrameError, match="object"):
        protocol.parse_header(raw)


def test_a_bad_header_drops_its_frame_alone() -> None:
    """The lengths still mark the next frame: the frames around a bad header decode; the problem is reported."""
    good = protocol.encode({"id": 1, "op": "health"})
    stream = good + protocol.PREFIX.pack(3, 2) + b"[1]xx" + good
    decoder = protocol.FrameDecoder()
    assert decoder.feed(stream) == [({"id": 1, "op": "health"}, b"")] * 2
    assert len(decoder.errors) == 1 and "object" in decoder.errors[0]


@pytest.mark.parametrize("text", ['{"a":', "{", "[" * 100_000 + "]" * 100_000, '"\\x"', "{'a': 1}"])
def test_malformed_json_is_a_value_error_where_json_was_never_imported(text: str) -> None:
    """The guest never imports json; _json then cannot build its JSONDecodeError (SystemError) nor survive deep
    nesting (RecursionError). Both must come out as ValueError, which the framing turns into a FrameError."""
    guest = Path(protocol.__file__).parent
    script = f"""
import sys
sys.path.insert(0, {str(guest)!r})
import protocol
try:
    protocol.loads(sys.stdin.read())
except ValueError as exc:
    print("ValueError", "json" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], input=text, capture_output=True, text=True)
    assert (done.stdout.strip(), done.returncode) == ("ValueError False", 0), done.stderr


@pytest.mark.parametrize(
    "value",
    [{}, {"id": 1, "op": "exec", "argv": ["ls", "é\n\x00"], "env": {"A": "b"}}, {"x": [1.5, None, True, [-3]]}],
)
def test_the_codec_matches_json(value: object) -> None:
    import json

    assert protocol.dumps(value) == json.dumps(value, separators=(",", ":"))
    assert protocol.loads(protocol.dumps(value)) == value


@pytest.mark.parametrize("text", ['{"a":NaN}', '{"a":1} trailing', "", "[1,"])
def test_the_codec_refuses_what_is_not_strict_json(text: str) -> None:
    with pytest.raises(ValueError):
        protocol.loads(text)


def test_the_codec_refuses_values_json_cannot_carry() -> None:
    with pytest.raises(ValueError):
        protocol.dumps({"a": float("nan")})
    with pytest.raises(TypeError):
        protocol.dumps({"a": object()})
