"""Message-framed QUIC streams between two linked neighbours.

``Stream`` frames messages (4-byte length prefix) on a QUIC stream.  The
opener's first frame names the service; the accepting node runs the handler
registered under that name (``LinkManager.register_stream_service``).
``send`` waits while more than ``STREAM_HIGH_WATER`` bytes are unacknowledged
(backpressure); ``recv`` refuses a frame larger than the service's
``max_message``.  aioquic grants stream credit as data arrives, whether the
application reads it or not, so a receiver buffers at most ``STREAM_PIPELINE``
unread max-size messages and resets a stream that exceeds that: application
protocols window their messages (as sync does).

A stream talks to its connection only through ``StreamOwner`` (implemented by
``meshd.links.connection.Connection``; tests use a recorder).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from meshd.core.errors import LocalProtocolError, MeshError, RemoteProtocolError
from meshd.core.identity import NodeId

__all__ = [
    "STREAM_HIGH_WATER",
    "STREAM_PIPELINE",
    "LinkBrokenError",
    "Stream",
    "StreamOwner",
    "unread_cap",
]

#: Stream.send waits while more than this many bytes are unacknowledged
STREAM_HIGH_WATER = 256 * 1024
#: unread max-size messages a receiver buffers per stream before it resets the stream
#: (application protocols window their messages, as sync does)
STREAM_PIPELINE = 4


class LinkBrokenError(MeshError):
    """The link or stream went away (peer closed, reset, timed out) before the operation ended."""


class StreamOwner(Protocol):
    """What a Stream needs from its QUIC connection."""

    @property
    def peer_id(self) -> NodeId | None: ...

    def drop(self, reason: str, detail: str = "") -> None: ...

    def abort_stream(self, stream_id: int) -> None: ...

    def forget_stream(self, stream_id: int) -> None: ...

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None: ...

    async def wait_drained(self, stream_id: int, stream: Stream) -> None: ...


def unread_cap(max_message: int) -> int:
    """Unread bytes a stream may hold: STREAM_PIPELINE max-size messages plus some slack."""
    return STREAM_PIPELINE * (max_message + 4) + 65536


class Stream:
    """A message-framed QUIC stream between two linked neighbours."""

    def __init__(self, conn: StreamOwner, stream_id: int, max_message: int,
                 buffer_cap: int | None = None) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.max_message = max_message
        # aioquic grants the peer stream credit as data arrives, whether we read it or not,
        # so the unread buffer is capped here: a few max-size messages, then the stream is reset
        self._cap = buffer_cap if buffer_cap is not None else unread_cap(max_message)
        self._buf = bytearray()
        self._eof = False
        self._broken: str | None = None
        self._closed = False
        self._readable = asyncio.Event()

    def set_max_message(self, max_message: int) -> None:
        """Adopt the limits of the service this stream turned out to be for."""
        self.max_message = max_message
        self._cap = unread_cap(max_message)

    @property
    def peer(self) -> NodeId | None:
        """The NodeId at the other end."""
        return self._conn.peer_id

    # called by the connection
    def _feed(self, data: bytes, end: bool) -> None:
        if self._broken is not None:
            return  # refused already: what still arrives is discarded
        self._buf += data
        if end:
            self._eof = True
            self._forget_if_done()
        # a peer may pipeline messages, but not flood us: a few max-size messages at most
        if len(self._buf) > self._cap:
            self._conn.drop("stream-overflow", f"stream {self.stream_id}")
            self._conn.abort_stream(self.stream_id)
            self._break("overflow")
        self._readable.set()

    def _break(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
        self._readable.set()

    async def recv(self) -> bytes | None:
        """The next whole message; None on a clean end of stream.

        Raises ``RemoteProtocolError`` for a frame over ``max_message`` or a
        truncated one, ``LinkBrokenError`` if the stream or link broke.
        """
        while True:
            if len(self._buf) >= 4:
                n = int.from_bytes(self._buf[:4], "big")
                if n > self.max_message:
                    self._buf.clear()
                    self._conn.abort_stream(self.stream_id)
                    self._break("oversize")
                    raise RemoteProtocolError("oversize", f"stream message {n} > {self.max_message}")
                if len(self._buf) >= 4 + n:
                    msg = bytes(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    return msg
            if self._broken is not None:
                raise LinkBrokenError(f"stream {self.stream_id}: {self._broken}")
            if self._eof:
                if self._buf:
                    self._buf.clear()
                    self._break("truncated")
                    raise RemoteProtocolError("truncated", f"stream {self.stream_id}")
                return None
            self._readable.clear()
            await self._readable.wait()

    async def send(self, msg: bytes) -> None:
        """Send one message; waits while too much is unacknowledged (backpressure)."""
        if self._closed:
            raise LocalProtocolError("send on a closed stream")
        if self._broken is not None:
            raise LinkBrokenError(f"stream {self.stream_id}: {self._broken}")
        if len(msg) >= 1 << 32:
            raise LocalProtocolError("stream message too large")
        self._conn.write_stream(self.stream_id, len(msg).to_bytes(4, "big") + msg, end=False)
        await self._conn.wait_drained(self.stream_id, self)

    async def close(self) -> None:
        """End our side of the stream (FIN); idempotent."""
        if self._closed or self._broken is not None:
            self._closed = True
            return
        self._closed = True
        with contextlib.suppress(LinkBrokenError):
            self._conn.write_stream(self.stream_id, b"", end=True)
        self._forget_if_done()

    def _forget_if_done(self) -> None:
        # both sides have sent FIN: nothing more arrives for this stream, so the connection
        # drops its entry (what is buffered stays readable here); without this an opener's
        # streams stayed in the connection's table for the link's life, one per sync session
        if self._closed and self._eof:
            self._conn.forget_stream(self.stream_id)
