"""The startup guard: a guest's Postgres connection may log in as its pod's role to its pod's database only.

The guest is hostile. Before a single byte reaches the server the guard reads the connection's startup:
an SSLRequest or GSSENCRequest is answered 'N' here (the tunnel is the channel; the server socket is local)
and the next message read; a CancelRequest is refused (it would name another backend's key); the startup
message must be protocol 3.0, at most MAX_STARTUP bytes, well formed, with each parameter once, no
`replication`, `user` equal to the grant's role and `database` (default: the user) equal to its database.
Only then are the startup bytes forwarded and everything after passed through unchanged. A refusal is told
to the client as a Postgres ErrorResponse (SQLSTATE 28000) and the connection closed.

The server checks the same thing again (pg_hba `sameuser`, scram-sha-256, REVOKE CONNECT FROM PUBLIC); the
guard matters most because the managed server's admin is peer-authenticated on the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

MAX_STARTUP = 10_000  # the server's own limit (MAX_STARTUP_PACKET_LENGTH)
STARTUP_TIMEOUT_S = 30.0  # a guest cannot hold a connection open without logging in
MAX_NEGOTIATIONS = 2  # GSSENCRequest then SSLRequest, as libpq sends them
PROTOCOL_3_0 = 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
_PIPE_CHUNK = 64 * 1024

ServerOpen = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class StartupRefused(ConnectionError):
    """The guest's startup was refused; the message says why (it names no secret)."""


def parse_startup(packet: bytes) -> dict[bytes, bytes]:
    """The parameters of one complete protocol-3.0 StartupMessage (length word included)."""
    if len(packet) < 8:
        raise StartupRefused("the startup message is too short")
    length, code = struct.unpack("!II", packet[:8])
    if length != len(packet):
        raise StartupRefused("the startup message's length does not match its bytes")
    if code != PROTOCOL_3_0:
        raise StartupRefused(f"protocol {code >> 16}.{code & 0xFFFF} is not supported; use 3.0")
    body = packet[8:]
    if not body.endswith(b"\0\0") and body != b"\0":
        raise StartupRefused("the startup parameters are not terminated")
    fields = body[:-1].split(b"\0")[:-1]  # key, value, key, value, ... (each was NUL-terminated)
    if len(fields) % 2:
        raise StartupRefused("a startup parameter has no value")
    params: dict[bytes, bytes] = {}
    for key, value in zip(fields[::2], fields[1::2], strict=True):
        if not key:
            raise StartupRefused("a startup parameter has an empty name")
        if key in params:  # the server keeps one of two: which one must not be a guess
            raise StartupRefused(f"startup parameter {key.decode(errors='replace')!r} is given twice")
        params[key] = value
    return params


def check_startup(params: dict[bytes, bytes], role: str, database: str) -> None:
    """Refuse unless the parameters log in as `role` to `database`, and nothing else."""
    if b"replication" in params:
        raise StartupRefused("replication connections are not allowed")
    user = params.get(b"user")
    if user is None:
        raise StartupRefused("the startup message names no user")
    if user != role.encode():
        raise StartupRefused(f"this connection may log in as {role!r} only")
    if params.get(b"database", user) != database.encode():
        raise StartupRefused(f"this connection may open database {database!r} only")


async def read_startup(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, database: str) -> bytes:
    """Read the guest's startup (answering SSL/GSS requests 'N'), check it, and return its bytes to forward."""
    for _ in range(MAX_NEGOTIATIONS + 1):
        try:
            header = await reader.readexactly(4)
            (length,) = struct.unpack("!I", header)
            if length < 8 or length > MAX_STARTUP:
                raise StartupRefused(f"a startup message of {length} bytes is out of bounds (8..{MAX_STARTUP})")
            body = await reader.readexactly(length - 4)
        except asyncio.IncompleteReadError:
            raise StartupRefused("the connection ended inside its startup message") from None
        (code,) = struct.unpack("!I", body[:4])
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            if length != 8:
                raise StartupRefused("a malformed SSL/GSS encryption request")
            writer.write(b"N")  # no encryption: the bytes only cross the guest channel and a local socket
            await writer.drain()
            continue
        if code == CANCEL_REQUEST:
            raise StartupRefused("cancel requests are not forwarded")
        packet = header + body
        check_startup(parse_startup(packet), role, database)
        return packet
    raise StartupRefused("too many encryption requests before the startup message")


def error_response(message: str) -> bytes:
    """A FATAL ErrorResponse a Postgres client shows as the reason its connection was refused."""
    fields = b"".join(
        tag + value.encode(errors="replace") + b"\0"
        for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", "28000"), (b"M", f"podbay: {message}"))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


async def guarded_connection(
    role: str, database: str, open_server: ServerOpen, tasks: set[asyncio.Task[None]]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """The client's end of a socket pair whose other end is guarded and then joined to the server.

    The tunnel calls this before the guest has sent anything, so the guard runs in a task (kept in `tasks`)."""
    ours, theirs = socket.socketpair()
    try:
        client = await asyncio.open_connection(sock=theirs)
        guard_side = await asyncio.open_connection(sock=ours)
    except BaseException:
        ours.close()
        theirs.close()
        raise
    task = asyncio.get_running_loop().create_task(_guard(guard_side[0], guard_side[1], role, database, open_server))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return client


async def _guard(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, role: str, database: str, open_server: ServerOpen
) -> None:
    server_writer: asyncio.StreamWriter | None = None
    try:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                startup = await read_startup(reader, writer, role, database)
        except (StartupRefused, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, StartupRefused) else "no startup message in time"
            writer.write(error_response(reason))
            await writer.drain()
            return
        try:
            server_reader, server_writer = await open_server()
        except Exception:  # the reason stays on the host: the guest need not learn the host's paths
            writer.write(error_response("the database server cannot be reached; retry later"))
            await writer.drain()
            return
        server_writer.write(startup)
        await asyncio.gather(_pipe(reader, server_writer), _pipe(server_reader, writer))
    except (ConnectionError, OSError):
        pass  # one side hung up: both are closed below
    finally:
        for w in (writer, server_writer):
            if w is not None:
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
