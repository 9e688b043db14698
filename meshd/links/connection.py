"""One QUIC connection to a neighbour: the aioquic asyncio protocol, link handshake, datagrams.

A connection is a *link* only after the proof exchange of
``meshd.links.handshake`` has completed on its first bidirectional stream;
until then every datagram and every other stream from the peer is dropped and
counted.  The connection reports to its owner (``ConnectionOwner``,
implemented by ``LinkManager``), which decides about duplicates and tells the
rest of the node.

Datagrams.  aioquic 1.7.2 silently accepts a DATAGRAM larger than fits in a
packet and then never sends anything from its datagram queue again, so every
send is checked against ``MESH_MTU`` first.  Our own per-link queue is bounded
(the oldest entry is dropped when full) and is fed to aioquic only as fast as
aioquic actually packs datagrams into packets, so an entry whose deadline
passed while congestion control held it back is dropped, not sent stale.

Clock and transmits.  ``Connection`` replaces the methods of aioquic's asyncio
protocol that read the loop's clock (aioquic runs on ``time.monotonic()``:
uvloop's clock ticks in milliseconds) and coalesces transmits to one per
connection per loop iteration.  What it reads of aioquic's private state goes
through ``meshd.links.aioquic_internals``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.channels import Channel
from meshd.core.codec import DropCounter
from meshd.core.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from meshd.core.identity import Announcement, Identity, NodeId, short_id
from meshd.links.aioquic_internals import (
    ack_pending,
    ack_with_next_packet,
    datagrams_pending,
    hold_ack,
    limit_receive_size,
    negotiated_idle_timeout,
    peer_certificate,
    peer_closed,
    peer_max_ack_delay,
    set_peer_max_ack_delay,
    stream_unacked,
)
from meshd.links.handshake import (
    HANDSHAKE_TIMEOUT_S,
    MAX_HANDSHAKE_MESSAGE,
    NONCE_LEN,
    REFUSAL_REASONS,
    ClientHandshake,
    HandshakeState,
    ServerHandshake,
)
from meshd.links.stream import STREAM_HIGH_WATER, LinkBrokenError, Stream, unread_cap
from meshd.links.tlscert import certificate_fingerprint

__all__ = [
    "ERR_CLOSED",
    "ERR_DUPLICATE",
    "ERR_REFUSED",
    "ERR_STREAM",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_SERVICE_NAME",
    "MESH_MTU",
    "PEER_REFUSAL_REASONS",
    "Connection",
    "ConnectionOwner",
    "LinkStats",
]

log = logging.getLogger(__name__)

#: max bytes of one link datagram we send.  aioquic 1.7.2 fits at most 1,170
#: bytes of DATAGRAM payload into its 1,200-byte packets (measured, both
#: directions, see tests/meshd/test_links_aioquic.py); 20 bytes of margin for
#: longer packet numbers and connection ids.
MESH_MTU = 1150
#: what we advertise (RFC 9221 max_datagram_frame_size); the real limit is MESH_MTU
MAX_DATAGRAM_FRAME_SIZE = 65536
MAX_SERVICE_NAME = 64
#: datagrams a client holds that overtook the server's accept (delivered once it arrives)
_EARLY_MAX = 16
#: datagrams handed to aioquic at once (the rest wait in our queue with their deadline)
_FEED_BATCH = 16

# QUIC application error codes (RFC 9000 §20.2 leaves them to us)
ERR_CLOSED = 0x0
ERR_REFUSED = 0x101
ERR_DUPLICATE = 0x102
ERR_STREAM = 0x103
#: what a refusing peer may give as its reason: anything else is reported as "other"
#: (its reason phrase is hostile text, and a metric label: the set must stay bounded)
PEER_REFUSAL_REASONS = REFUSAL_REASONS | {"revoked", "busy"}


def refusal_reason(phrase: str) -> str:
    """The stable token of a refusing peer's reason phrase (``refused: revoked``)."""
    token = phrase.removeprefix("refused: ")
    return token if token in PEER_REFUSAL_REASONS else "other"


#: on a quiet link whose both ends agree (``Connection.set_ack_hold``), the ACK of a packet
#: that carried only hellos and routing waits at most this long for a packet of ours to ride
#: on (our next hello: quiet links hello every 8 s at most, ``meshd.node``) instead of going
#: alone 1 ms later; the peer's loss recovery allows for this much more
ACK_HOLD_S = 8.0
#: what the peer's holding is allowed beyond ACK_HOLD_S (timer slack, one-way delay)
ACK_HOLD_SLACK_S = 1.0
#: no ACK holding while streams carry bytes and this long after (a sync session)
STREAM_QUIET_S = 5.0
#: the first bytes of the link datagrams a quiet link's held ACK may answer
_CONTROL_BYTES = frozenset({bytes([Channel.NEIGHBOUR]), bytes([Channel.ROUTING])})


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


def addr_of(addr: Any) -> tuple[str, int]:
    """(host, port) of a socket address of any family."""
    return (str(addr[0]), int(addr[1]))


class ConnectionOwner(Protocol):
    """What a connection needs from the link manager (identity, counters, and its reports)."""

    identity: Identity
    fingerprint: bytes
    known: dict[NodeId, Announcement]
    drops: DropCounter

    def announcement(self) -> Announcement: ...

    def wall_clock(self) -> float: ...

    @property
    def max_service_message(self) -> int: ...

    def deliver_datagram(self, conn: Connection, data: bytes) -> None: ...

    def on_ready(self, conn: Connection) -> None: ...

    def on_terminated(self, conn: Connection, why: str) -> None: ...

    def accept_stream(self, conn: Connection, stream: Stream) -> None: ...


class Connection(QuicConnectionProtocol):
    """One QUIC connection: handshake, datagram queue, framed streams (driven by the manager)."""

    def __init__(self, quic: QuicConnection, manager: ConnectionOwner, *, is_client: bool,
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
        #: the reason the peer gave for refusing this connection (busy, revoked, ...), if it did
        self.refused_by_peer: str | None = None
        #: why we refused the peer after its handshake (its key is revoked here), if we did
        self.refused_here: str | None = None
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
        #: ACKs of control-only packets may wait for our next packet (``set_ack_hold``)
        self._hold_acks = False
        #: the peer may do so: our loss recovery allows for it (its advertised delay kept here)
        self._peer_holds = False
        self._peer_ack_delay: float | None = None
        self._want_hold = (False, False)  # what set_ack_hold asked for
        self._stream_io = float("-inf")  # when stream bytes last went either way
        #: while a received UDP datagram is processed: True if it carried only control
        #: datagrams (hellos, routing), False if anything else, None if nothing yet
        self._rx_control: bool | None = None
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
        return addr_of(addr) if addr is not None else self.remote

    @property
    def idle_timeout_s(self) -> float | None:
        """The QUIC idle timeout both ends agreed on (None: not known)."""
        return negotiated_idle_timeout(self._quic)

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
            limit_receive_size(transport)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.remote == ("", 0):
            self.remote = addr_of(addr)
        now = time.monotonic()
        want = self._want_hold
        if (want[0] or want[1]) and (self._hold_acks, self._peer_holds) != want:
            self._apply_ack_hold(now)  # the streams may have gone quiet since
        holding = self._hold_acks and not ack_pending(self._quic)
        self._rx_control = None
        self._quic.receive_datagram(cast(bytes, data), addr, now=now)
        self._process_events()
        if holding and self._hold_acks and self._rx_control:
            # a quiet link: the ACK of this hello (or routing update) rides on our next hello
            hold_ack(self._quic, now + ACK_HOLD_S)
        # one transmit per connection per loop iteration, not one per packet received: a burst
        # of packets read in one go is answered (ACKs, forwarded datagrams) in few packets
        self._transmit_soon()
        if not self.terminated:
            closed = peer_closed(self._quic)
            if closed is not None:
                self.quic_event_received(closed)

    def transmit(self) -> None:
        self._transmit(time.monotonic())

    def _transmit(self, now: float) -> None:
        self._transmit_task = None
        if self._transport is None or self._transport.is_closing():
            return  # the socket is gone (shutdown): late aioquic timers have nothing to send on
        if self._dq or datagrams_pending(self._quic):
            ack_with_next_packet(self._quic, now)
        # feed our deadline-aware queue to aioquic only as fast as it packs datagrams
        for _ in range(64):
            self._feed_datagrams()
            for data, addr in self._quic.datagrams_to_send(now=now):
                self._transport.sendto(data, addr)
            if not self._dq or datagrams_pending(self._quic) > 0:
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
        while self._dq and datagrams_pending(self._quic) < _FEED_BATCH:
            data, deadline = self._dq.popleft()
            if deadline is not None and deadline < now:
                if self.stats is not None:
                    self.stats.dropped_stale += 1
                continue
            self._quic.send_datagram_frame(data)
            if self.stats is not None:
                self.stats.tx_datagrams += 1
                self.stats.tx_datagram_bytes += len(data)

    def set_ack_hold(self, ours: bool, theirs: bool) -> None:
        """Quiet-link ACKs (both ends run this code; ``meshd.node`` decides from the hellos).

        ``ours``: the ACK of a packet that carried only hellos or routing may wait up to
        ``ACK_HOLD_S`` for our next packet instead of leaving alone 1 ms later (RFC 9000
        §13.2.1 would have it within the 25 ms we advertised: only for a peer that said it
        allows for it).  ``theirs``: the peer may do the same, so our probe timeout and RTT
        samples allow for ``ACK_HOLD_S`` more (RFC 9002 §6.2.1, §5.3) until it says otherwise.
        Neither while streams carry bytes (and ``STREAM_QUIET_S`` after; both ends see them):
        a sync session's lost packets are probed for at the usual pace.
        """
        self._want_hold = (ours, theirs)
        self._apply_ack_hold(time.monotonic())

    def _apply_ack_hold(self, now: float) -> None:
        ours, theirs = self._want_hold
        if now < self._stream_io + STREAM_QUIET_S:
            ours = theirs = False
        if self._hold_acks and not ours and ack_pending(self._quic):
            ack_with_next_packet(self._quic, now)  # what we held goes now
            self._transmit_soon()
        self._hold_acks = ours
        if theirs == self._peer_holds:
            return
        if self._peer_ack_delay is None:
            self._peer_ack_delay = peer_max_ack_delay(self._quic)
        if self._peer_ack_delay is None:
            return  # aioquic's internals changed: no holding either way
        self._peer_holds = theirs
        set_peer_max_ack_delay(self._quic, self._peer_ack_delay
                               + (ACK_HOLD_S + ACK_HOLD_SLACK_S if theirs else 0.0))
        if not theirs:
            self._arm_timer(now)  # the probe timer may be due sooner now

    def _stream_activity(self) -> None:
        now = time.monotonic()
        self._stream_io = now
        if self._hold_acks or self._peer_holds:
            self._apply_ack_hold(now)

    @property
    def ack_hold(self) -> tuple[bool, bool]:
        """(ours, theirs) as asked for by ``set_ack_hold`` (in force while streams are quiet)."""
        return self._want_hold

    @property
    def ack_hold_in_force(self) -> tuple[bool, bool]:
        """(ours, theirs) in force now."""
        return self._hold_acks, self._peer_holds

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if self._hold_acks:  # (a relay's busy links never hold: nothing to do per packet)
            if isinstance(event, events.DatagramFrameReceived):
                if self._rx_control is not False:
                    self._rx_control = event.data[:1] in _CONTROL_BYTES
            else:
                self._rx_control = False
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
        # counted per reason, logged once per (reason, peer): a peer cannot flood the log.  An
        # unproven remote is not a peer: a spoofer choosing addresses would get a line each
        key = self.label if self.is_client or self.peer is not None else ""
        self.manager.drops.drop(f"refused-{exc.reason}", key, f"link refused ({self.label}): {exc}")
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
                            buffer_cap=unread_cap(self.manager.max_service_message))
            self._streams[sid] = stream
            if self.stats is not None:
                self.stats.streams_accepted += 1
            self.manager.accept_stream(self, stream)
        if self.stats is not None:
            self.stats.rx_stream_bytes += len(event.data)
        self._stream_activity()
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
        self._stream_activity()
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
        while stream_unacked(self._quic, stream_id) > STREAM_HIGH_WATER:
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
        if event.error_code == ERR_REFUSED and not self.closing:
            self.refused_by_peer = refusal_reason(event.reason_phrase)
        elif event.error_code == QuicErrorCode.CONNECTION_REFUSED and not self.ready.done():
            self.refused_by_peer = "busy"  # its admission refused the handshake (stateless)
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
