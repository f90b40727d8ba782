from __future__ import annotations

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
        protocol.FrameDecoder().feed(protocol.PREFIX.pack(len(raw), 0) + raw)


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
