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
