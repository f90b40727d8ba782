"""Framing shared by the host and the guest agent (stdlib only: this file is copied into every rootfs).

A frame is an 8-byte prefix, a JSON header and an optional raw payload:

    !I header length | !I payload length | header (UTF-8 JSON object) | payload (bytes)

Requests carry ``op`` and a host-chosen ``id``; every frame the guest sends back carries the ``id`` of the
request it belongs to and an ``event``. Many requests can be in flight at once (multiplexing by ``id``).
See docs/guest-protocol.md for the operations.
"""

from __future__ import annotations

import _json  # the C codec behind `json`: importing json itself pulls in re and enum, ~0.15 s of a cold boot
import struct

TYPE_CHECKING = False  # typing costs ~60 ms of a cold guest boot under TCG; mypy honours this flag
if TYPE_CHECKING:
    from typing import Any

    Header = dict[str, Any]

PROTOCOL_VERSION = 2  # 2: credit windows, guest-opened streams, listen
PORT_NAME = "podbay.agent"  # virtio-serial port name the guest looks for under /sys/class/virtio-ports

PREFIX = struct.Struct("!II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
CHUNK = 64 << 10  # largest stdout/stderr/stdin chunk one frame carries
# Per-stream credit window (docs/guest-protocol.md, "Flow control"): a sender has at most this many payload bytes
# of one stream unacknowledged; the receiver grants credit (`credit` frames) as its consumer takes the bytes.
WINDOW = 256 << 10


class FrameError(ValueError):
    """The byte stream is not valid podbay framing."""


def _unserialisable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


class _DecoderSettings:
    """What _json.make_scanner reads from a json.JSONDecoder: strict JSON, plain dicts, no NaN/Infinity."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_reject_constant)


# Compact, ASCII-only, no NaN/Infinity: json.dumps(value, separators=(",", ":"), allow_nan=False).
_encode = _json.make_encoder(None, _unserialisable, _json.encode_basestring_ascii, None, ":", ",", False, False, False)
_scan = _json.make_scanner(_DecoderSettings())  # type: ignore[arg-type]  # typeshed wants a JSONDecoder-alike


def dumps(value: object) -> str:
    return "".join(_encode(value, 0))


def loads(text: str) -> Any:
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("no JSON value") from None
    except RecursionError:  # the C scanner recurses per nesting level: `[[[[...` must not escape as RuntimeError
        raise ValueError("JSON nested too deeply") from None
    except SystemError:
        # The scanner reports a syntax error as json.decoder.JSONDecodeError, looked up in sys.modules only: where
        # json was never imported (the guest) it returns NULL with no exception set, and Python says SystemError.
        raise ValueError("malformed JSON") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at {end}")
    return value


def encode(header: Header, payload: bytes = b"") -> bytes:
    raw = dumps(header).encode()
    if len(raw) > MAX_HEADER or len(payload) > MAX_PAYLOAD:
        raise FrameError(f"frame too large: header {len(raw)} B, payload {len(payload)} B")
    return PREFIX.pack(len(raw), len(payload)) + raw + payload


def parse_prefix(prefix: bytes) -> tuple[int, int]:
    header_len, payload_len = PREFIX.unpack(prefix)
    if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise FrameError(f"frame too large: header {header_len} B, payload {payload_len} B")
    return header_len, payload_len


def parse_header(raw: bytes) -> Header:
    try:
        header = loads(raw.decode())
    except ValueError as exc:
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return header


class FrameDecoder:
    """Turns an arbitrary sequence of byte chunks into whole frames.

    A frame whose header is not a JSON object is dropped on its own (its prefix still says where the next frame
    starts) and its problem is added to `errors`, for the caller to report and clear; the frames around it are
    decoded as usual. A prefix that breaks the size limits raises FrameError: nothing after it can be trusted
    to be a frame boundary, so the caller starts a fresh decoder.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.errors: list[str] = []

    def feed(self, data: bytes) -> list[tuple[Header, bytes]]:
        self._buffer += data
        frames: list[tuple[Header, bytes]] = []
        while len(self._buffer) >= PREFIX.size:
            header_len, payload_len = parse_prefix(bytes(self._buffer[: PREFIX.size]))
            end = PREFIX.size + header_len + payload_len
            if len(self._buffer) < end:
                break
            raw_header = bytes(self._buffer[PREFIX.size : PREFIX.size + header_len])
            payload = bytes(self._buffer[PREFIX.size + header_len : end])
            del self._buffer[:end]
            try:
                frames.append((parse_header(raw_header), payload))
            except FrameError as exc:
                self.errors.append(str(exc))
        return frames
