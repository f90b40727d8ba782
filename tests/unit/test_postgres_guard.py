"""The Postgres startup guard: what a guest's first bytes must be before anything reaches the server."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from podbay.state.pg_guard import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    MAX_STARTUP,
    PROTOCOL_3_0,
    SSL_REQUEST,
    StartupRefused,
    check_startup,
    error_response,
    guarded_connection,
    parse_startup,
    read_startup,
)
from podbay.state.postgres import database_name

ROLE = "pod_1a2b"


def startup(*pairs: tuple[bytes, bytes], protocol: int = PROTOCOL_3_0) -> bytes:
    body = struct.pack("!I", protocol) + b"".join(k + b"\0" + v + b"\0" for k, v in pairs) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


def request(code: int) -> bytes:
    return struct.pack("!II", 8, code)


class FakeWriter:
    def __init__(self) -> None:
        self.sent = b""

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        pass


def read(data: bytes, role: str = ROLE, database: str = ROLE) -> tuple[bytes, bytes]:
    async def go() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        writer = FakeWriter()
        packet = await read_startup(reader, writer, role, database)  # type: ignore[arg-type]
        return packet, writer.sent

    return asyncio.run(go())


def test_a_good_startup_is_passed_on_unchanged() -> None:
    good = startup((b"user", ROLE.encode()), (b"database", ROLE.encode()), (b"application_name", b"psql"))
    assert read(good + b"Ptrailing") == (good, b"")


def test_the_database_defaults_to_the_user() -> None:
    good = startup((b"user", ROLE.encode()))
    assert read(good)[0] == good
    assert parse_startup(good) == {b"user": ROLE.encode()}


def test_ssl_and_gss_requests_are_answered_no_and_the_startup_read_next() -> None:
    good = startup((b"user", ROLE.encode()))
    assert read(request(GSSENC_REQUEST) + request(SSL_REQUEST) + good) == (good, b"NN")


def test_endless_encryption_requests_are_refused() -> None:
    with pytest.raises(StartupRefused, match="too many"):
        read(request(SSL_REQUEST) * 3 + startup((b"user", ROLE.encode())))


def test_a_cancel_request_is_refused() -> None:
    with pytest.raises(StartupRefused, match="cancel"):
        read(struct.pack("!IIII", 16, CANCEL_REQUEST, 1234, 5678))


@pytest.mark.parametrize(
    ("pairs", "why"),
    [
        (((b"user", b"postgres"),), "log in as 'pod_1a2b' only"),
        (((b"user", b"pod_other"), (b"database", ROLE.encode())), "log in as"),
        (((b"user", ROLE.encode()), (b"database", b"postgres")), "open database 'pod_1a2b' only"),
        (((b"user", ROLE.encode()), (b"database", b"pod_other")), "open database"),
        (((b"database", ROLE.encode()),), "names no user"),
        (((b"user", ROLE.encode()), (b"user", b"postgres")), "given twice"),
        (((b"user", ROLE.encode()), (b"replication", b"database")), "replication"),
        (((b"user", ROLE.upper().encode()),), "log in as"),
    ],
)
def test_wrong_user_or_database_is_refused(pairs: tuple[tuple[bytes, bytes], ...], why: str) -> None:
    with pytest.raises(StartupRefused, match=why):
        read(startup(*pairs))


def test_an_old_protocol_is_refused() -> None:
    with pytest.raises(StartupRefused, match=r"protocol 2\.0"):
        read(startup((b"user", ROLE.encode()), protocol=2 << 16))


@pytest.mark.parametrize("length", [0, 4, 7, MAX_STARTUP + 1, 0xFFFFFFFF])
def test_a_length_out_of_bounds_is_refused_before_reading_it(length: int) -> None:
    with pytest.raises(StartupRefused, match="out of bounds"):
        read(struct.pack("!I", length) + b"\0" * 64)


def test_a_short_read_is_refused() -> None:
    whole = startup((b"user", ROLE.encode()))
    with pytest.raises(StartupRefused, match="ended inside"):
        read(whole[:-3])
    with pytest.raises(StartupRefused, match="ended inside"):
        read(b"\0\0")


@pytest.mark.parametrize(
    "body",
    [
        b"user\0pod_1a2b\0",  # no final NUL
        b"user\0pod_1a2b",  # value not terminated
        b"user\0pod_1a2b\0database\0\0",  # a key whose value is the terminator
        b"\0user\0pod_1a2b\0\0",  # an empty key
        b"user\0pod_1a2b\0\0extra\0",  # bytes after the terminator
    ],
)
def test_malformed_parameters_are_refused(body: bytes) -> None:
    packet = struct.pack("!II", len(body) + 8, PROTOCOL_3_0) + body
    with pytest.raises(StartupRefused):
        check_startup(parse_startup(packet), ROLE, ROLE)


def test_parse_rejects_a_length_that_lies() -> None:
    good = startup((b"user", ROLE.encode()))
    with pytest.raises(StartupRefused, match="length"):
        parse_startup(good + b"x")


def test_a_refusal_reaches_the_client_as_an_error_response_and_the_server_is_never_opened() -> None:
    opened: list[int] = []

    async def open_server() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opened.append(1)
        raise AssertionError("the server must not be reached")

    async def go() -> bytes:
        tasks: set[asyncio.Task[None]] = set()
        reader, writer = await guarded_connection(ROLE, ROLE, open_server, tasks)
        writer.write(startup((b"user", b"postgres")))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.gather(*tasks)
        return answer

    answer = asyncio.run(go())
    assert answer.startswith(b"E") and b"28000" in answer and b"may log in as 'pod_1a2b' only" in answer
    assert answer == error_response("this connection may log in as 'pod_1a2b' only")
    assert opened == []


def test_an_accepted_startup_and_what_follows_reach_the_server_and_answers_come_back() -> None:
    async def go() -> tuple[bytes, bytes]:
        received = asyncio.get_running_loop().create_future()

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            received.set_result(await r.readexactly(len(good) + 5))
            w.write(b"R-answer")
            await w.drain()
            w.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        tasks: set[asyncio.Task[None]] = set()
        reader, writer = await guarded_connection(ROLE, ROLE, lambda: asyncio.open_connection("127.0.0.1", port), tasks)
        writer.write(request(SSL_REQUEST))
        assert await reader.readexactly(1) == b"N"
        writer.write(good + b"Xbody")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.gather(*tasks)
        server.close()
        return await received, answer

    good = startup((b"user", ROLE.encode()))
    forwarded, answer = asyncio.run(go())
    assert forwarded == good + b"Xbody"
    assert answer == b"R-answer"


def test_database_names_are_safe_identifiers() -> None:
    assert database_name("pod-1a2b3c4d") == "pod_1a2b3c4d"
    odd = database_name("Pod'; DROP ROLE x;--")
    assert odd.startswith("podh_") and odd.isascii() and odd.replace("_", "").isalnum()
    assert len(database_name("pod-" + "a" * 59)) <= 63
    assert database_name("pod-" + "a" * 60).startswith("podh_")


def test_random_bytes_are_refused_with_a_reason_and_nothing_else() -> None:
    rng = random.Random(9)
    good = startup((b"user", ROLE.encode()))
    for _ in range(2000):
        junk = bytearray(good)
        for _ in range(rng.randint(1, 4)):  # flip bytes of a good message, or send noise
            junk[rng.randrange(len(junk))] = rng.randrange(256)
        data = bytes(junk) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 64))
        try:
            packet, _ = read(data)
        except StartupRefused:
            continue
        assert check_startup(parse_startup(packet), ROLE, ROLE) is None  # what passes is a valid login as ROLE
        assert parse_startup(packet).get(b"user") == ROLE.encode()
