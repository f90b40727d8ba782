"""Host side of guest-opened streams: one TCP connection in the guest, forwarded to a host service.

The agent listens on the guest's loopback (`GuestChannel.listen`) and opens a stream per connection naming a
service. The channel accepts it only if that service is registered for this pod (`register_service`): the
stream then connects to what the service's callback returns, and nowhere else. Bytes flow both ways under
per-stream credit windows (docs/guest-protocol.md, "Flow control"), so a bulk transfer neither starves the
other streams of the channel nor fills the host's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from podbay.guest import protocol

if TYPE_CHECKING:
    from podbay.channel import GuestChannel

# Connects one stream to the service: a fresh (reader, writer) pair per guest connection.
ServiceConnect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
CONNECT_TIMEOUT_S = 10.0
MAX_STREAMS = 256  # open guest-opened streams per channel: a guest cannot make the host hold connections at will
_EOF = object()


class TunnelStream:
    """One guest-opened stream, accepted and connected to its service.

    `inflight` is the guest's data queued here and not yet written to the service: never more than `window`
    (the guest would have broken the protocol: the stream is closed). `peak_inflight` is its highest mark."""

    def __init__(self, channel: GuestChannel, stream_id: int, service: str, guest_window: int) -> None:
        self.channel = channel
        self.id = stream_id
        self.service = service
        self.window = protocol.WINDOW
        self.inflight = 0
        self.peak_inflight = 0
        self.send_credit = guest_window  # bytes the guest still takes from us
        self._credit = asyncio.Event()
        self._inbox: asyncio.Queue[bytes | object] = asyncio.Queue()
        self._closed = False
        self.task: asyncio.Task[None] | None = None

    # ---- frames from the guest (called by the channel's reader, never blocks) ------------------------------

    def deliver(self, header: dict[str, Any], payload: bytes) -> None:
        event = header.get("event")
        if event == "data":
            self.inflight += len(payload)
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            if self.inflight > self.window:
                self.abort("the guest sent past its credit window", tell_guest=True)
                return
            self._inbox.put_nowait(payload)
        elif event == "credit":
            amount = header.get("bytes")
            if isinstance(amount, int) and not isinstance(amount, bool) and amount > 0:
                self.send_credit += amount
                self._credit.set()
        elif event == "eof":
            self._inbox.put_nowait(_EOF)
        elif event == "close":
            self.abort(None, tell_guest=False)

    def abort(self, why: str | None, tell_guest: bool) -> None:
        """Stop both directions now (the guest hung up, broke the window, or the channel closed)."""
        if self._closed:
            return
        self._closed = True
        if tell_guest:
            self.channel._spawn(self.channel._stream_op("close", self.id, message=why or "closed"))
        if self.task is not None:
            self.task.cancel()

    # ---- the stream's life --------------------------------------------------------------------------------

    async def run(self, connect: ServiceConnect) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await connect()
        except Exception as exc:  # the service is down, or refused: the guest's connection is hung up
            await self.channel._stream_op("refuse", self.id, message=f"cannot reach service {self.service!r}: {exc}")
            return
        try:
            await self.channel._stream_op("accept", self.id, window=self.window)
            await asyncio.gather(self._guest_to_service(writer), self._service_to_guest(reader))
        except (ConnectionError, OSError) as exc:
            self.abort(f"the service's connection failed: {exc}", tell_guest=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _guest_to_service(self, writer: asyncio.StreamWriter) -> None:
        ungranted = 0
        while True:
            item = await self._inbox.get()
            if item is _EOF:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            assert isinstance(item, bytes)
            writer.write(item)
            await writer.drain()  # the service took it: only now is it credited back
            self.inflight -= len(item)
            ungranted += len(item)
            if ungranted >= self.window // 4:  # batched as the agent does (guest/agent.py GRANT_BATCH)
                await self.channel._stream_op("credit", self.id, bytes=ungranted)
                ungranted = 0

    async def _service_to_guest(self, reader: asyncio.StreamReader) -> None:
        while True:
            while self.send_credit <= 0:
                self._credit.clear()
                await self._credit.wait()
            data = await reader.read(min(protocol.CHUNK, self.send_credit))
            if not data:
                await self.channel._stream_op("eof", self.id)
                return
            self.send_credit -= len(data)
            await self.channel._stream_op("send", self.id, payload=data)
