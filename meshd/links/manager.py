"""QUIC neighbour links: the asyncio adapter between aioquic and the rest of meshd.

Theory of operation
-------------------
One QUIC connection (aioquic, ALPN ``carmesh/1``) per neighbour pair
(DESIGN.md "Neighbour links").  A connection is a *link* only after the
proof exchange of ``meshd.links.handshake`` has completed on its first
bidirectional stream; until then every datagram and every other stream from
the peer is dropped and counted.  ``LinkManager`` owns the listening sockets,
the connections, the per-peer state and the static-peer reconnect loops, and
reports to a ``LinkListener``: ``link_up`` once per peer, ``link_down`` when
the last usable connection to it is gone, ``datagram_received`` for each QUIC
DATAGRAM frame (RFC 9221) from a linked peer.

Datagrams.  aioquic 1.7.2 silently accepts a DATAGRAM larger than fits in a
packet and then never sends anything from its datagram queue again, so every
send is checked against ``MESH_MTU`` first.  Our own per-link queue is bounded
(the oldest entry is dropped when full) and is fed to aioquic only as fast as
aioquic actually packs datagrams into packets, so an entry whose deadline
passed while congestion control held it back is dropped, not sent stale.

Streams.  ``Stream`` frames messages (4-byte length prefix) on a QUIC stream.
The opener's first frame names the service; the accepting node runs the
handler registered under that name.  ``send`` waits while more than
``STREAM_HIGH_WATER`` bytes are unacknowledged (backpressure); ``recv``
refuses a frame larger than the service's ``max_message``.  aioquic grants
stream credit as data arrives, whether the application reads it or not, so a
receiver buffers at most ``STREAM_PIPELINE`` unread max-size messages and
resets a stream that exceeds that: application protocols window their
messages (as sync does).

Duplicates.  When two connections to the same peer both complete (the two
nodes dialled each other at once, or the peer restarted), the one initiated by
the node with the smaller NodeId is kept; both nodes apply the same rule.  A
connection the rule prefers is first pinged: if it no longer answers (the
peer restarted and lost it) the newer one is kept instead.

aioquic internals.  Besides the peer certificate (``meshd.links.tlscert``), five
guarded helpers here use aioquic private state: the datagram queue length,
a stream's unacknowledged bytes, the draining state (a peer's
CONNECTION_CLOSE is reported on arrival, not three PTOs later), the pending
ACK (sent with the next datagram instead of in a packet of its own) and the
protocol's ping waiters.  ``_Connection`` replaces the methods of aioquic's
asyncio protocol that read the loop's clock (aioquic runs on
``time.monotonic()``: uvloop's clock ticks in milliseconds) and coalesces
transmits to one per connection per loop iteration.
``tests/meshd/test_links_tlscert.py`` pins them.

Errors.  Peer-caused trouble in event handling is counted in ``drops``
(a ``DropCounter``) and logged once; nothing a peer does is raised into the
event loop.  ``connect`` raises ``VerificationError`` (or another
``RemoteProtocolError``) when the peer cannot prove the NodeId, and
``ConnectionError`` when it does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd import ALPN
from meshd.core.codec import DropCounter
from meshd.core.errors import LocalProtocolError, MeshError, RemoteProtocolError, VerificationError
from meshd.core.identity import Announcement, Identity, NodeId, short_id
from meshd.links.handshake import (
    HANDSHAKE_TIMEOUT_S,
    MAX_HANDSHAKE_MESSAGE,
    NONCE_LEN,
    ClientHandshake,
    HandshakeState,
    ServerHandshake,
)
from meshd.links.tlscert import certificate_fingerprint, make_certificate, peer_certificate

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "IDLE_TIMEOUT_S",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MESH_MTU",
    "STREAM_HIGH_WATER",
    "STREAM_PIPELINE",
    "LinkBrokenError",
    "LinkListener",
    "LinkManager",
    "LinkStats",
    "Stream",
]

log = logging.getLogger(__name__)

#: max bytes of one link datagram we send.  aioquic 1.7.2 fits at most 1,170
#: bytes of DATAGRAM payload into its 1,200-byte packets (measured, both
#: directions, see tests/meshd/test_links_tlscert.py); 20 bytes of margin for
#: longer packet numbers and connection ids.
MESH_MTU = 1150
#: what we advertise (RFC 9221 max_datagram_frame_size); the real limit is MESH_MTU
MAX_DATAGRAM_FRAME_SIZE = 65536
#: receive buffer per UDP read (stock asyncio reads 256 KiB per datagram otherwise).
#: The kernel's socket buffers stay at their default (about 208 KiB): a 1 MiB receive buffer
#: absorbed a relay's scheduling stalls, but a stream's whole send window then queued in it,
#: ahead of voice (RTT of datagrams during a stream transfer 8 ms -> 40 ms, bench/links.py)
UDP_RECV_SIZE = 4096
#: QUIC idle timeout; liveness for routing is the hello core's job (~2 s)
IDLE_TIMEOUT_S = 8.0
#: Stream.send waits while more than this many bytes are unacknowledged
STREAM_HIGH_WATER = 256 * 1024
#: unread max-size messages a receiver buffers per stream before it resets the stream
#: (application protocols window their messages, as sync does)
STREAM_PIPELINE = 4
#: static-peer reconnect backoff bounds
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
#: how long a peer may take to name the service of a stream it opened
SERVICE_NAME_TIMEOUT_S = 10.0
MAX_SERVICE_NAME = 64
#: grace before reporting link_down when the peer closed our link as a duplicate
_DUPLICATE_GRACE_S = 1.5
#: how long a preferred duplicate may take to answer a liveness ping
_LIVENESS_PING_S = 1.0
#: datagrams a client holds that overtook the server's accept (delivered once it arrives)
_EARLY_MAX = 16
#: connections still in the handshake per listener; more are refused at once (cheap DoS guard)
MAX_PENDING_HANDSHAKES = 128
#: datagrams handed to aioquic at once (the rest wait in our queue with their deadline)
_FEED_BATCH = 16

# QUIC application error codes (RFC 9000 §20.2 leaves them to us)
ERR_CLOSED = 0x0
ERR_REFUSED = 0x101
ERR_DUPLICATE = 0x102
ERR_STREAM = 0x103


class LinkListener(Protocol):
    """What the daemon implements to hear about links (called from the event loop)."""

    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None: ...

    def link_down(self, peer: NodeId, reason: str) -> None: ...

    def datagram_received(self, peer: NodeId, data: bytes) -> None: ...


class LinkBrokenError(MeshError):
    """The link or stream went away (peer closed, reset, timed out) before the operation ended."""


@dataclass(slots=True)
class LinkStats:
    """Counters of one link (a copy is returned by ``LinkManager.links``)."""

    peer: NodeId
    remote: tuple[str, int]
    initiator: bool
    connected_since: float  # wall-clock seconds
    tx_datagrams: int = 0
    tx_datagram_bytes: int = 0
    rx_datagrams: int = 0
    rx_datagram_bytes: int = 0
    tx_stream_bytes: int = 0
    rx_stream_bytes: int = 0
    dropped_stale: int = 0  # queue entries whose deadline passed before aioquic took them
    dropped_oversize: int = 0  # sends refused for exceeding MESH_MTU
    dropped_queue_full: int = 0  # oldest entries pushed out of the bounded queue
    streams_opened: int = 0
    streams_accepted: int = 0


def _addr(addr: Any) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1]))


# --- aioquic internals other than the peer certificate (guarded; see tests) -------------------

def _limit_receive_size(transport: Any) -> None:
    """Make stock asyncio read UDP into a small buffer instead of 256 KiB per datagram.

    QUIC packets of our peers are at most ~1,200 bytes (aioquic does no PMTU
    discovery); anything larger than UDP_RECV_SIZE is truncated and then fails
    decryption like any other garbage.  uvloop has no such attribute (and no need).
    """
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = UDP_RECV_SIZE


def _aioquic_datagrams_pending(quic: QuicConnection) -> int:
    """Datagrams aioquic holds but has not packed yet (0 if its internals changed)."""
    pending = getattr(quic, "_datagrams_pending", None)
    return len(pending) if pending is not None else 0


def _aioquic_ack_with_next_packet(quic: QuicConnection, now: float) -> None:
    """Let the next packet carry the pending ACK, not a packet of its own later (no-op if unknown).

    aioquic writes an ACK frame only once its ack delay has passed, even into a
    packet it sends anyway; RFC 9000 §13.2.1 lets an ACK go sooner.  Without
    this a relay answered every voice packet with a separate ACK packet a
    millisecond later, though a voice packet the other way left in between.
    """
    spaces = getattr(quic, "_spaces", None)
    space = spaces.get(tls.Epoch.ONE_RTT) if isinstance(spaces, dict) else None
    ack_at = getattr(space, "ack_at", None)
    if isinstance(ack_at, float) and ack_at > now:
        space.ack_at = now  # type: ignore[union-attr]


def _aioquic_peer_closed(quic: QuicConnection) -> events.ConnectionTerminated | None:
    """The peer's CONNECTION_CLOSE as soon as it arrived (None if not, or internals changed).

    aioquic emits ConnectionTerminated only when draining ends (RFC 9000 §10.2.2,
    three probe timeouts later); the link is gone the moment the close arrives.
    """
    if getattr(quic, "_state", None) is not QuicConnectionState.DRAINING:
        return None
    event = getattr(quic, "_close_event", None)
    return event if isinstance(event, events.ConnectionTerminated) else None


def _aioquic_unacked(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged (0 if unknown)."""
    streams = getattr(quic, "_streams", None)
    stream = streams.get(stream_id) if streams is not None else None
    sender = getattr(stream, "sender", None)
    buf = getattr(sender, "_buffer", None)
    return len(buf) if buf is not None else 0


def _buffer_cap(max_message: int) -> int:
    """Unread bytes a stream may hold: STREAM_PIPELINE max-size messages plus some slack."""
    return STREAM_PIPELINE * (max_message + 4) + 65536


class Stream:
    """A message-framed QUIC stream between two linked neighbours."""

    def __init__(self, conn: _Connection, stream_id: int, max_message: int,
                 buffer_cap: int | None = None) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.max_message = max_message
        # aioquic grants the peer stream credit as data arrives, whether we read it or not,
        # so the unread buffer is capped here: a few max-size messages, then the stream is reset
        self._cap = buffer_cap if buffer_cap is not None else _buffer_cap(max_message)
        self._buf = bytearray()
        self._eof = False
        self._broken: str | None = None
        self._closed = False
        self._readable = asyncio.Event()

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


class _Connection(QuicConnectionProtocol):
    """One QUIC connection: handshake, datagram queue, framed streams (driven by the manager)."""

    def __init__(self, quic: QuicConnection, manager: LinkManager, *, is_client: bool,
                 expect: NodeId | None = None, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.manager = manager
        self.is_client = is_client
        self.expect = expect
        self.peer: Announcement | None = None
        self.remote: tuple[str, int] = ("", 0)
        self.stats: LinkStats | None = None
        self.ready: asyncio.Future[NodeId] = self._loop.create_future()
        self.superseded = False  # closed as a duplicate: no link_down for it
        self.down_reported = False
        self.terminated = False
        self.closing = False  # we called close(); aioquic reports termination later
        self.created = self._loop.time()
        self._hs_server: ServerHandshake | None = None
        self._hs_client: ClientHandshake | None = None
        self._hs_stream: int | None = None
        self._hs_buf = bytearray()
        self._dq: deque[tuple[bytes, float | None]] = deque()
        self._early: list[bytes] = []
        self._streams: dict[int, Stream] = {}
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._client_transport: asyncio.DatagramTransport | None = None
        self._hs_timer = self._loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)
        if not is_client:
            self._hs_server = ServerHandshake(
                manager.identity, manager.announcement(), manager.fingerprint,
                nonce=os.urandom(NONCE_LEN), now=self._loop.time(), known=manager.known)

    # --- identity of the other end -------------------------------------------------------------

    @property
    def peer_id(self) -> NodeId | None:
        return self.peer.node_id if self.peer is not None else None

    @property
    def label(self) -> str:
        if self.peer is not None:
            return short_id(self.peer.node_id)
        return f"{self.remote[0]}:{self.remote[1]}"

    @property
    def peer_address(self) -> tuple[str, int]:
        addr = self._quic.get_peer_address()
        return _addr(addr) if addr is not None else self.remote

    @property
    def is_ready(self) -> bool:
        return self.ready.done() and not self.ready.cancelled() and self.ready.exception() is None

    def drop(self, reason: str, detail: str = "") -> None:
        self.manager.drops.drop(reason, self.label, detail)

    # --- asyncio / aioquic plumbing ------------------------------------------------------------
    #
    # aioquic runs on time.monotonic(), not loop.time(): uvloop's clock ticks in whole
    # milliseconds and is read once per loop iteration, so aioquic's RTT samples, ack timer
    # and pacer (refilled only when the clock moves) saw a clock up to an iteration stale.
    # On stock asyncio loop.time() is time.monotonic() already.  The methods below replace
    # those of QuicConnectionProtocol that read the loop's clock.

    def connect(self, addr: Any, transmit: bool = True) -> None:
        self._quic.connect(addr, now=time.monotonic())
        if transmit:
            self.transmit()

    def close(self, error_code: int = ERR_CLOSED, reason_phrase: str = "") -> None:
        self.closing = True
        super().close(error_code=error_code, reason_phrase=reason_phrase)
        for stream in self._streams.values():
            stream._break("link closed")
        self._wake_drain_waiters()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.is_client:
            self._client_transport = transport  # type: ignore[assignment]
            _limit_receive_size(transport)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.remote == ("", 0):
            self.remote = _addr(addr)
        self._quic.receive_datagram(cast(bytes, data), addr, now=time.monotonic())
        self._process_events()
        # one transmit per connection per loop iteration, not one per packet received: a burst
        # of packets read in one go is answered (ACKs, forwarded datagrams) in few packets
        self._transmit_soon()
        if not self.terminated:
            closed = _aioquic_peer_closed(self._quic)
            if closed is not None:
                self.quic_event_received(closed)

    def transmit(self) -> None:
        self._transmit(time.monotonic())

    def _transmit(self, now: float) -> None:
        self._transmit_task = None
        if self._transport is None or self._transport.is_closing():
            return  # the socket is gone (shutdown): late aioquic timers have nothing to send on
        if self._dq or _aioquic_datagrams_pending(self._quic):
            _aioquic_ack_with_next_packet(self._quic, now)
        # feed our deadline-aware queue to aioquic only as fast as it packs datagrams
        for _ in range(64):
            self._feed_datagrams()
            for data, addr in self._quic.datagrams_to_send(now=now):
                self._transport.sendto(data, addr)
            if not self._dq or _aioquic_datagrams_pending(self._quic) > 0:
                break
        self._arm_timer(now)
        self._wake_drain_waiters()

    def _arm_timer(self, now: float) -> None:
        # aioquic's timer moves with nearly every packet (ack, loss, idle deadlines); a timer
        # armed earlier than needed is kept (it fires, finds nothing due and re-arms), so
        # only a deadline that moved earlier costs a cancel and a new timer handle
        timer_at = self._quic.get_timer()
        if self._timer is not None and self._timer_at is not None and (
                timer_at is None or timer_at < self._timer_at):
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_later(max(0.0, timer_at - now), self._handle_timer)
            self._timer_at = timer_at

    def _handle_timer(self) -> None:
        armed, self._timer, self._timer_at = self._timer_at, None, None
        now = time.monotonic()
        if armed is not None:
            # uvloop fires timers up to a millisecond early (its clock ticks in milliseconds):
            # what was due is handled and sent now, or the ACK or paced packet would wait
            # for another timer, and a sub-millisecond one is a call_soon: a busy loop
            now = max(now, armed)
        self._quic.handle_timer(now=now)
        self._process_events()
        self._transmit(now)

    def _feed_datagrams(self) -> None:
        if not self._dq:
            return
        now = self._loop.time()
        while self._dq and _aioquic_datagrams_pending(self._quic) < _FEED_BATCH:
            data, deadline = self._dq.popleft()
            if deadline is not None and deadline < now:
                if self.stats is not None:
                    self.stats.dropped_stale += 1
                continue
            self._quic.send_datagram_frame(data)
            if self.stats is not None:
                self.stats.tx_datagrams += 1
                self.stats.tx_datagram_bytes += len(data)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            self._on_event(event)
        except RemoteProtocolError as exc:
            self.drop(exc.reason, exc.detail)
        except Exception:  # adapter boundary: never raise into aioquic / the loop
            log.exception("[%s] error handling %s", self.label, type(event).__name__)
            self.drop("internal", type(event).__name__)

    def _on_event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            if self.is_client:
                self._start_client_handshake()
        elif isinstance(event, events.DatagramFrameReceived):
            if not self.is_ready or self.peer is None or self.stats is None:
                if (self._hs_client is not None and len(self._early) < _EARLY_MAX
                        and self._hs_client.state is HandshakeState.EXPECT_ACCEPT):
                    # the server accepted us and sent at once: aioquic packs DATAGRAM
                    # frames before STREAM frames, so these can overtake its accept
                    self._early.append(event.data)
                    return
                self.drop("early-datagram", "before the link handshake completed")
                return
            self.stats.rx_datagrams += 1
            self.stats.rx_datagram_bytes += len(event.data)
            self.manager.deliver_datagram(self, event.data)
        elif isinstance(event, events.StreamDataReceived):
            self._on_stream_data(event)
        elif isinstance(event, events.StreamReset | events.StopSendingReceived):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._break("reset by peer")
        elif isinstance(event, events.ConnectionTerminated):
            self._on_terminated(event)

    # --- handshake -----------------------------------------------------------------------------

    def _start_client_handshake(self) -> None:
        try:
            cert = peer_certificate(self._quic)
        except LocalProtocolError as exc:  # no certificate, or aioquic internals changed
            log.error("[%s] cannot read the peer certificate: %s", self.label, exc)
            self.fail(VerificationError("cert-key", str(exc)))
            return
        key = cert.public_key()
        if not isinstance(key, Ed25519PublicKey):
            self.fail(VerificationError("cert-key", "certificate key is not Ed25519"))
            return
        self._hs_client = ClientHandshake(
            self.manager.identity, self.manager.announcement(), expect=self.expect,
            cert_key=key.public_bytes(Encoding.Raw, PublicFormat.Raw),
            cert_fingerprint=certificate_fingerprint(cert), now=self._loop.time(),
            known=self.manager.known)
        self._hs_stream = self._quic.get_next_available_stream_id()
        self._send_hs(self._hs_client.hello(), end=False)

    def _send_hs(self, msg: bytes, end: bool) -> None:
        assert self._hs_stream is not None
        self._quic.send_stream_data(self._hs_stream, len(msg).to_bytes(2, "big") + msg, end)
        self._transmit_soon()

    def _on_hs_data(self, data: bytes) -> None:
        if self.is_ready:
            return  # the exchange is over; nothing more is expected on this stream
        self._hs_buf += data
        while len(self._hs_buf) >= 2:
            n = int.from_bytes(self._hs_buf[:2], "big")
            if n > MAX_HANDSHAKE_MESSAGE:
                self.fail(RemoteProtocolError("oversize", f"handshake message of {n} bytes"))
                return
            if len(self._hs_buf) < 2 + n:
                return
            msg = bytes(self._hs_buf[2:2 + n])
            del self._hs_buf[:2 + n]
            now, wall = self._loop.time(), self.manager.wall_clock()
            try:
                if self._hs_server is not None:
                    reply = self._hs_server.receive(msg, now, wall)
                    done = self._hs_server.state is HandshakeState.DONE
                    if reply is not None:
                        self._send_hs(reply, end=done)
                    if done:
                        self.peer = self._hs_server.peer
                        self._handshake_done()
                        return
                elif self._hs_client is not None:
                    reply = self._hs_client.receive(msg, now, wall)
                    if reply is not None:
                        self._send_hs(reply, end=True)
                    if self._hs_client.state is HandshakeState.DONE:
                        self.peer = self._hs_client.peer
                        self._handshake_done()
                        return
                else:
                    raise RemoteProtocolError("unexpected", "handshake data before TLS completed")
            except RemoteProtocolError as exc:
                self.fail(exc)
                return

    def _handshake_done(self) -> None:
        self._hs_timer.cancel()
        self._hs_buf.clear()
        assert self.peer is not None
        self.remote = self.peer_address
        self.stats = LinkStats(peer=self.peer.node_id, remote=self.remote,
                               initiator=self.is_client,
                               connected_since=self.manager.wall_clock())
        if not self.ready.done():
            self.ready.set_result(self.peer.node_id)
        self.manager.on_ready(self)
        early, self._early = self._early, []
        for data in early if not self.closing else ():
            self.stats.rx_datagrams += 1
            self.stats.rx_datagram_bytes += len(data)
            self.manager.deliver_datagram(self, data)

    def _handshake_timeout(self) -> None:
        if self.ready.done() or self.terminated:
            return
        hs = self._hs_server or self._hs_client
        try:
            if hs is not None:
                hs.check_timeout(self._loop.time() + 1e-3)
            raise VerificationError("timeout", f"no link within {HANDSHAKE_TIMEOUT_S} s")
        except RemoteProtocolError as exc:
            self.fail(exc)

    def fail(self, exc: RemoteProtocolError) -> None:
        """Refuse this connection: close it with the reason and fail ``ready``."""
        if self.ready.done():
            return
        self._hs_timer.cancel()
        if exc.reason == "timeout" and self._hs_client is None and self._hs_server is None:
            err: BaseException = ConnectionError(f"{self.label}: no answer within "
                                                 f"{HANDSHAKE_TIMEOUT_S} s")
        else:
            err = exc
        # counted per reason, logged once per (reason, peer): a peer cannot flood the log
        self.manager.drops.drop(f"refused-{exc.reason}", self.label, f"link refused: {exc}")
        self.ready.set_exception(err)
        self.ready.exception()  # mark retrieved: refusals are reported via connect() or logs
        self.close(error_code=ERR_REFUSED, reason_phrase=f"refused: {exc.reason}")

    # --- streams -------------------------------------------------------------------------------

    def _on_stream_data(self, event: events.StreamDataReceived) -> None:
        sid = event.stream_id
        if sid == self._hs_stream or (self._hs_stream is None and self._hs_server is not None
                                      and sid == 0):
            self._hs_stream = sid
            self._on_hs_data(event.data)
            return
        if not self.is_ready:
            self.drop("early-stream", f"stream {sid} before the link handshake completed")
            self.abort_stream(sid)
            return
        stream = self._streams.get(sid)
        if stream is None:
            if not self._peer_initiated(sid):
                return  # data for a stream of ours we already forgot
            # the service (and its max_message) is known once the first frame is read;
            # until then buffer as much as the largest service allows
            stream = Stream(self, sid, MAX_SERVICE_NAME,
                            buffer_cap=_buffer_cap(self.manager.max_service_message))
            self._streams[sid] = stream
            if self.stats is not None:
                self.stats.streams_accepted += 1
            self.manager.accept_stream(self, stream)
        if self.stats is not None:
            self.stats.rx_stream_bytes += len(event.data)
        stream._feed(event.data, event.end_stream)

    def _peer_initiated(self, stream_id: int) -> bool:
        # RFC 9000 §2.1: bit 0 is 0 for client-initiated streams
        return bool(stream_id & 1) == self.is_client

    def open_stream(self, max_message: int) -> Stream:
        sid = self._quic.get_next_available_stream_id()
        stream = Stream(self, sid, max_message)
        self._streams[sid] = stream
        if self.stats is not None:
            self.stats.streams_opened += 1
        return stream

    def write_stream(self, stream_id: int, data: bytes, end: bool) -> None:
        if self.terminated or self.closing:
            raise LinkBrokenError(f"[{self.label}] link closed")
        try:
            self._quic.send_stream_data(stream_id, data, end)
        except Exception as exc:  # aioquic raises ValueError / StreamFinishedError
            raise LinkBrokenError(f"[{self.label}] stream {stream_id}: {exc}") from None
        if self.stats is not None:
            self.stats.tx_stream_bytes += len(data)
        self._transmit_soon()

    def forget_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)

    def abort_stream(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        with contextlib.suppress(Exception):
            self._quic.stop_stream(stream_id, ERR_STREAM)
        with contextlib.suppress(Exception):
            self._quic.reset_stream(stream_id, ERR_STREAM)
        self._transmit_soon()

    async def wait_drained(self, stream_id: int, stream: Stream) -> None:
        while _aioquic_unacked(self._quic, stream_id) > STREAM_HIGH_WATER:
            if self.terminated or self.closing or stream._broken is not None:
                raise LinkBrokenError(f"[{self.label}] stream {stream_id} broke while sending")
            fut: asyncio.Future[None] = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut

    def _wake_drain_waiters(self) -> None:
        if self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    # --- datagrams -----------------------------------------------------------------------------

    def queue_datagram(self, data: bytes, deadline: float | None, queue_max: int) -> None:
        if len(self._dq) >= queue_max:
            self._dq.popleft()
            if self.stats is not None:
                self.stats.dropped_queue_full += 1
        self._dq.append((data, deadline))
        self._transmit_soon()

    async def answers_ping(self, timeout_s: float) -> bool:
        """True if the peer acknowledges a QUIC PING within ``timeout_s``."""
        if self.terminated or self.closing:
            return False
        # aioquic's ping() leaves its waiter behind on timeout (to fail unretrieved later)
        waiter: asyncio.Future[None] = self._loop.create_future()
        uid = id(waiter)
        self._ping_waiters[uid] = waiter
        self._quic.send_ping(uid)
        self.transmit()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except (TimeoutError, ConnectionError):
            return False
        finally:
            self._ping_waiters.pop(uid, None)
            if not waiter.done():
                waiter.cancel()
        return not self.terminated

    # --- end -----------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop all timers and release our socket (after close() sent its frames)."""
        self._hs_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._client_transport is not None:
            self._client_transport.close()

    def _on_terminated(self, event: events.ConnectionTerminated) -> None:
        if self.terminated:
            return
        self.terminated = True
        self._hs_timer.cancel()
        for stream in list(self._streams.values()):
            stream._break("link closed")
        self._streams.clear()
        self._wake_drain_waiters()
        if not self.ready.done():
            if event.error_code == ERR_REFUSED:
                reason = event.reason_phrase.removeprefix("refused: ") or "refused"
                exc: BaseException = VerificationError(reason, f"{self.label} refused the link")
            else:
                exc = ConnectionError(f"{self.label}: connection closed during the handshake "
                                      f"({event.reason_phrase or event.error_code})")
            self.ready.set_exception(exc)
            self.ready.exception()
        if event.error_code == ERR_DUPLICATE:
            why = "duplicate"
        elif event.reason_phrase:
            why = event.reason_phrase
        elif event.error_code == 0 and event.frame_type is None:
            why = "idle timeout or closed"
        else:
            why = f"error {event.error_code}"
        self.manager.on_terminated(self, why)
        if self._client_transport is not None:
            self._client_transport.close()


@dataclass(slots=True)
class _StaticPeer:
    host: str
    port: int
    expect: NodeId | None
    on_learned: Callable[[NodeId], None] | None
    task: asyncio.Task[None] | None = None
    attempts: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Service:
    handler: Callable[[NodeId, Stream], Awaitable[None]]
    max_message: int


@dataclass(slots=True)
class _PeerState:
    active: _Connection
    down_event: asyncio.Event = field(default_factory=asyncio.Event)
    pending_down: asyncio.TimerHandle | None = None


class LinkManager:
    """All QUIC links of one node: listen, connect, datagrams, streams, duplicates, reconnects."""

    def __init__(self, identity: Identity, announcement: Callable[[], Announcement],
                 listener: LinkListener, *, wall_clock: Callable[[], float] = time.time,
                 datagram_queue_max: int = 256, rng: random.Random | None = None,
                 tls_identity_override: Identity | None = None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.identity = identity
        self.announcement = announcement
        self.listener = listener
        self.wall_clock = wall_clock
        self.datagram_queue_max = datagram_queue_max
        self.drops = DropCounter(log)
        #: newest verified announcement per peer seen on a link (refuses older ones: replays)
        self.known: dict[NodeId, Announcement] = {}
        self._rng = rng if rng is not None else random.Random()
        # tls_identity_override is a test-only switch: present a certificate of another key
        cert, key = make_certificate(tls_identity_override or identity)
        self._cert = cert
        self._key = key
        self.fingerprint = certificate_fingerprint(cert)
        self._idle_timeout_s = idle_timeout_s
        self._servers: list[QuicServer] = []
        self._peers: dict[NodeId, _PeerState] = {}
        self._conns: set[_Connection] = set()
        self._services: dict[str, _Service] = {}
        self._static: list[_StaticPeer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    # --- configuration -------------------------------------------------------------------------

    def _config(self, is_client: bool) -> QuicConfiguration:
        cfg = QuicConfiguration(
            is_client=is_client, alpn_protocols=[ALPN],
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
            idle_timeout=self._idle_timeout_s,
        )
        if is_client:
            # aioquic verifies only the server, against CAs: we check its key by hand
            cfg.verify_mode = ssl.CERT_NONE
        else:
            cfg.certificate = self._cert
            cfg.private_key = self._key
        return cfg

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- public API ----------------------------------------------------------------------------

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Accept links on ``host:port`` (UDP); returns the bound address (port 0 -> real port)."""
        if self._closing:
            raise LocalProtocolError("link manager is closed")

        def factory(quic: QuicConnection, **kwargs: Any) -> _Connection:
            pending = sum(1 for c in self._conns if not c.ready.done())
            conn = _Connection(quic, self, is_client=False, **kwargs)
            self._conns.add(conn)
            if pending >= MAX_PENDING_HANDSHAKES:
                conn.fail(RemoteProtocolError("busy", f"{pending} handshakes pending"))
            return conn

        server = await serve(host, port, configuration=self._config(False),
                             create_protocol=factory)
        self._servers.append(server)
        transport = server._transport
        assert transport is not None
        _limit_receive_size(transport)
        sockname = transport.get_extra_info("sockname")
        return _addr(sockname)

    async def connect(self, host: str, port: int, expect: NodeId | None) -> NodeId:
        """One attempt to link with ``host:port``; returns the peer's proven NodeId.

        Raises ``VerificationError`` (a ``RemoteProtocolError``) if the peer is
        not ``expect`` or cannot prove its id, ``ConnectionError``/``OSError``
        if it does not answer within the handshake timeout.
        """
        if self._closing:
            raise LocalProtocolError("link manager is closed")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise ConnectionError(f"cannot resolve {host}")
        family, _, _, _, addr = infos[0]
        local = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
        quic = QuicConnection(configuration=self._config(True))
        _, conn = await loop.create_datagram_endpoint(
            lambda: _Connection(quic, self, is_client=True, expect=expect),
            local_addr=local, family=family)
        self._conns.add(conn)
        conn.remote = _addr(addr)
        conn.connect(addr)
        try:
            return await asyncio.shield(conn.ready)
        except asyncio.CancelledError:
            conn.close(error_code=ERR_CLOSED, reason_phrase="cancelled")
            raise

    def add_static_peer(self, host: str, port: int, expect: NodeId | None,
                        on_learned: Callable[[NodeId], None] | None = None) -> None:
        """Keep a link to ``host:port``: reconnect with backoff + jitter while not linked.

        With ``expect`` None the first successful link learns the NodeId (trust
        on first use, logged) and pins it; ``on_learned`` is told.
        """
        sp = _StaticPeer(host, port, expect, on_learned)
        self._static.append(sp)
        sp.task = self._spawn(self._static_loop(sp), f"static-peer {host}:{port}")

    def send_datagram(self, peer: NodeId, data: bytes, *, deadline: float | None = None) -> bool:
        """Queue one datagram to ``peer``; False if there is no link.

        Raises ``LocalProtocolError`` if ``len(data) > MESH_MTU``.  ``deadline``
        is in ``loop.time()`` seconds: an entry still queued after it is dropped.
        The per-link queue holds ``datagram_queue_max`` entries; when full, the
        oldest is dropped (counted in ``LinkStats.dropped_queue_full``).
        """
        state = self._peers.get(peer)
        if len(data) > MESH_MTU:
            if state is not None and state.active.stats is not None:
                state.active.stats.dropped_oversize += 1
            raise LocalProtocolError(f"datagram of {len(data)} bytes exceeds MESH_MTU {MESH_MTU}")
        if state is None or state.active.terminated:
            return False
        state.active.queue_datagram(bytes(data), deadline, self.datagram_queue_max)
        return True

    @property
    def max_service_message(self) -> int:
        """The largest ``max_message`` of any registered stream service."""
        return max((s.max_message for s in self._services.values()), default=MAX_SERVICE_NAME)

    def register_stream_service(self, name: str,
                                handler: Callable[[NodeId, Stream], Awaitable[None]], *,
                                max_message: int = 1 << 20) -> None:
        """Run ``handler(peer, stream)`` for each stream a linked peer opens for ``name``."""
        if not name or len(name.encode()) > MAX_SERVICE_NAME:
            raise LocalProtocolError(f"service name must be 1..{MAX_SERVICE_NAME} bytes")
        if name in self._services:
            raise LocalProtocolError(f"service {name!r} already registered")
        self._services[name] = _Service(handler, max_message)

    async def open_stream(self, peer: NodeId, service: str, *,
                          max_message: int = 1 << 20) -> Stream:
        """Open a framed stream to ``peer`` for ``service`` (LinkBrokenError if not linked)."""
        state = self._peers.get(peer)
        if state is None or state.active.terminated:
            raise LinkBrokenError(f"no link to {short_id(peer)}")
        name = service.encode()
        if not name or len(name) > MAX_SERVICE_NAME:
            raise LocalProtocolError(f"service name must be 1..{MAX_SERVICE_NAME} bytes")
        stream = state.active.open_stream(max_message)
        await stream.send(name)
        return stream

    def close_link(self, peer: NodeId, reason: str) -> None:
        """Close the link to ``peer`` now; ``link_down(peer, reason)`` is reported here."""
        state = self._peers.get(peer)
        if state is None:
            return
        conn = state.active
        self._report_down(peer, reason)
        conn.close(error_code=ERR_CLOSED, reason_phrase=reason[:100])

    def links(self) -> dict[NodeId, LinkStats]:
        """A snapshot of the counters of every current link."""
        out: dict[NodeId, LinkStats] = {}
        for peer, st in self._peers.items():
            if st.active.stats is not None:
                out[peer] = replace(st.active.stats, remote=st.active.peer_address)
        return out

    def peer_address(self, peer: NodeId) -> tuple[str, int] | None:
        """The remote UDP address of the link to ``peer``, if linked."""
        state = self._peers.get(peer)
        return state.active.peer_address if state is not None else None

    def is_linked(self, peer: NodeId) -> bool:
        """True while there is a link to ``peer``."""
        return peer in self._peers

    async def close(self) -> None:
        """Close every link (reporting link_down), stop listening and reconnecting."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for peer in list(self._peers):
            self._report_down(peer, "shutdown")
        for conn in list(self._conns):
            conn.close(error_code=ERR_CLOSED, reason_phrase="shutdown")
        await asyncio.sleep(0)  # let the close frames go out
        for conn in list(self._conns):
            conn.shutdown()
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- called by connections -----------------------------------------------------------------

    def deliver_datagram(self, conn: _Connection, data: bytes) -> None:
        assert conn.peer is not None
        try:
            self.listener.datagram_received(conn.peer.node_id, data)
        except Exception:  # the listener's bug must not break the link
            log.exception("[%s] listener.datagram_received failed", conn.label)
            self.drops.drop("listener-error", conn.label)

    def on_ready(self, conn: _Connection) -> None:
        assert conn.peer is not None
        peer = conn.peer.node_id
        known = self.known.get(peer)
        if known is None or conn.peer.seqno >= known.seqno:
            self.known[peer] = conn.peer
        if self._closing:
            conn.close(error_code=ERR_CLOSED, reason_phrase="shutdown")
            return
        state = self._peers.get(peer)
        if state is None:
            self._peers[peer] = _PeerState(conn)
            log.info("[%s] link up (%s, %s)", conn.label, conn.remote,
                     "we connected" if conn.is_client else "it connected")
            self._call_listener("link_up", peer, conn.peer, conn.remote, conn.is_client)
            return
        cur = state.active
        if state.pending_down is not None:
            # the peer closed our link as a duplicate and this is its replacement
            state.pending_down.cancel()
            state.pending_down = None
            state.active = conn
            return
        if cur.terminated:
            state.active = conn
            return
        if self._preferred(cur) == self._preferred(conn):
            # same direction twice: the peer restarted (or re-dialled); the newer wins
            self._replace(state, conn, cur)
        elif self._preferred(conn):
            self._replace(state, conn, cur)
        else:
            self._spawn(self._check_preferred(state, cur, conn), f"liveness {conn.label}")

    def _preferred(self, conn: _Connection) -> bool:
        """True if ``conn`` was initiated by the node with the smaller NodeId."""
        assert conn.peer is not None
        initiator = self.identity.node_id if conn.is_client else conn.peer.node_id
        return initiator == min(self.identity.node_id, conn.peer.node_id)

    def _replace(self, state: _PeerState, keep: _Connection, lose: _Connection) -> None:
        state.active = keep
        if keep.stats is not None and lose.stats is not None:
            # the link lives on: keep its history
            keep.stats.connected_since = lose.stats.connected_since
        self._supersede(lose)

    def _supersede(self, conn: _Connection) -> None:
        log.debug("[%s] closing duplicate connection", conn.label)
        conn.superseded = True
        conn.close(error_code=ERR_DUPLICATE, reason_phrase="duplicate")

    async def _check_preferred(self, state: _PeerState, cur: _Connection,
                               new: _Connection) -> None:
        """``cur`` wins by the rule; keep it if it still answers, else take ``new``."""
        alive = await cur.answers_ping(_LIVENESS_PING_S)
        if state.active is not cur or self._peers.get(new.peer_id or b"") is not state:
            # the link changed meanwhile (closed, or replaced): the new one is not needed
            if state.active is not new and not new.terminated:
                self._supersede(new)
            return
        if alive:
            self._supersede(new)
        else:
            log.info("[%s] old connection is dead; keeping the new one", new.label)
            self._replace(state, new, cur)

    def on_terminated(self, conn: _Connection, why: str) -> None:
        self._conns.discard(conn)
        peer = conn.peer_id
        if peer is None or conn.superseded:
            return
        state = self._peers.get(peer)
        if state is None or state.active is not conn:
            return
        if why == "duplicate" and not self._closing:
            # the peer kept another connection; it completes here within moments
            loop = asyncio.get_running_loop()
            state.pending_down = loop.call_later(_DUPLICATE_GRACE_S, self._report_down,
                                                 peer, "duplicate closed, no replacement")
            return
        self._report_down(peer, why)

    def _report_down(self, peer: NodeId, reason: str) -> None:
        state = self._peers.pop(peer, None)
        if state is None:
            return
        if state.pending_down is not None:
            state.pending_down.cancel()
        state.active.down_reported = True
        state.down_event.set()
        log.info("[%s] link down: %s", short_id(peer), reason)
        self._call_listener("link_down", peer, reason)

    def _call_listener(self, what: str, *args: Any) -> None:
        try:
            getattr(self.listener, what)(*args)
        except Exception:
            log.exception("listener.%s failed", what)
            self.drops.drop("listener-error", "", what)

    def accept_stream(self, conn: _Connection, stream: Stream) -> None:
        self._spawn(self._serve_stream(conn, stream), f"stream {conn.label}/{stream.stream_id}")

    async def _serve_stream(self, conn: _Connection, stream: Stream) -> None:
        peer = conn.peer_id
        assert peer is not None
        try:
            try:
                name_b = await asyncio.wait_for(stream.recv(), SERVICE_NAME_TIMEOUT_S)
            except TimeoutError:
                raise RemoteProtocolError("stream-name", "no service name in time") from None
            if name_b is None:
                return
            try:
                name = name_b.decode()
            except UnicodeDecodeError:
                raise RemoteProtocolError("stream-name", "not UTF-8") from None
            service = self._services.get(name)
            if service is None:
                raise RemoteProtocolError("unknown-service", name[:MAX_SERVICE_NAME])
            stream.max_message = service.max_message
            stream._cap = _buffer_cap(service.max_message)
            await service.handler(peer, stream)
        except RemoteProtocolError as exc:
            conn.drop(exc.reason, exc.detail)
            conn.abort_stream(stream.stream_id)
        except LinkBrokenError:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # adapter boundary: the service's bug is logged, the link lives
            log.exception("[%s] stream service failed", conn.label)
            conn.drop("service-error")
            conn.abort_stream(stream.stream_id)
        finally:
            await stream.close()
            conn.forget_stream(stream.stream_id)

    # --- static peers --------------------------------------------------------------------------

    async def _static_loop(self, sp: _StaticPeer) -> None:
        delay = BACKOFF_MIN_S
        while not self._closing:
            if sp.expect is not None and sp.expect in self._peers:
                await self._peers[sp.expect].down_event.wait()
                delay = BACKOFF_MIN_S
                continue
            sp.attempts += 1
            try:
                peer = await self.connect(sp.host, sp.port, sp.expect)
            except Exception as exc:  # refused, unreachable, or our bug: retry all the same
                if not isinstance(exc, MeshError | OSError):
                    log.exception("static peer %s:%s: unexpected error", sp.host, sp.port)
                sp.last_error = str(exc)
                level = logging.WARNING if sp.attempts == 1 else logging.DEBUG
                log.log(level, "static peer %s:%s: %s (retrying in %.2f s)",
                        sp.host, sp.port, exc, delay)
                # full jitter on the upper half: spreads cars that lost the same relay
                await asyncio.sleep(delay * (0.5 + self._rng.random() * 0.5))
                delay = min(delay * 2, BACKOFF_MAX_S)
                continue
            sp.attempts = 0
            delay = BACKOFF_MIN_S
            if sp.expect is None:
                sp.expect = peer
                log.warning("static peer %s:%s is %s: trusted on first use and pinned",
                            sp.host, sp.port, peer.hex())
                if sp.on_learned is not None:
                    try:
                        sp.on_learned(peer)
                    except Exception:
                        log.exception("on_learned callback failed")
