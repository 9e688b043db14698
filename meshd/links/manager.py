"""QUIC neighbour links: ``LinkManager``, the link layer's face to the rest of meshd.

Theory of operation
-------------------
One QUIC connection (aioquic, ALPN ``carmesh/1``) per neighbour pair
(DESIGN.md "Neighbour links").  The link layer is four modules:

- ``meshd.links.manager`` (this one): ``LinkManager`` owns the listening
  sockets, the connections, the per-peer state and the static-peer reconnect
  loops, and reports to a ``LinkListener``: ``link_up`` once per peer,
  ``link_down`` when the last usable connection to it is gone,
  ``datagram_received`` for each QUIC DATAGRAM frame (RFC 9221) from a linked peer;
- ``meshd.links.connection``: one QUIC connection (aioquic's asyncio protocol,
  the link handshake, the datagram queue);
- ``meshd.links.stream``: message-framed streams;
- ``meshd.links.rules``: the pure rules applied here (duplicate connections,
  redial backoff), and ``meshd.links.aioquic_internals``: every access to
  aioquic's private state.

Duplicates.  When two connections to the same peer both complete, both nodes
apply ``rules.resolve_duplicate``: the one initiated by the node with the
smaller NodeId is kept.  A connection the rule prefers is first pinged: if it
no longer answers (the peer restarted and lost it) the newer one is kept instead.

Refusals.  A peer may answer and refuse the link: in the handshake (busy,
another version, a failed proof) or right after it (our key is revoked there;
the refusing side closes with ``ERR_REFUSED`` and the reason, so the dialler
knows why).  Static and discovered peers that refuse are redialled on the
slower refusal schedule of ``rules.Backoff`` (1 s doubling to 60 s), and so is
a peer whose link went down within ``rules.STABLE_LINK_S`` of coming up; the
first refusal in a row is logged ("refused by PEER: revoked — will retry in
N s"), each is counted in ``refused_by_peer`` and each dial in ``dials``.

Errors.  Peer-caused trouble in event handling is counted in ``drops``
(a ``DropCounter``) and logged once; nothing a peer does is raised into the
event loop.  ``connect`` raises ``VerificationError`` (or another
``RemoteProtocolError``) when the peer cannot prove the NodeId, and
``ConnectionError`` when it does not answer, ``PeerRefusedError`` when it
refuses the link.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from meshd import ALPN
from meshd.core.codec import DropCounter
from meshd.core.errors import (
    LocalProtocolError,
    MeshError,
    RemoteProtocolError,
    VerificationError,
)
from meshd.core.identity import Announcement, Identity, NodeId, short_id
from meshd.links.admission import AdmissionPolicy, PendingHandshakes, RetryTokens
from meshd.links.aioquic_internals import limit_receive_size
from meshd.links.connection import (
    ERR_CLOSED,
    ERR_DUPLICATE,
    ERR_REFUSED,
    MAX_DATAGRAM_FRAME_SIZE,
    MAX_SERVICE_NAME,
    MESH_MTU,
    Connection,
    LinkStats,
    addr_of,
)
from meshd.links.rules import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    DISCOVERED_BACKOFF_MAX_S,
    Backoff,
    Duplicate,
    resolve_duplicate,
)
from meshd.links.server import LinkServer, serve_links
from meshd.links.stream import STREAM_HIGH_WATER, STREAM_PIPELINE, LinkBrokenError, Stream
from meshd.links.tlscert import certificate_fingerprint, make_certificate

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "IDLE_TIMEOUT_S",
    "MAX_DATAGRAM_FRAME_SIZE",
    "MAX_DISCOVERED_DIALS",
    "MAX_DISCOVERED_PEERS",
    "MESH_MTU",
    "STREAM_HIGH_WATER",
    "STREAM_PIPELINE",
    "LinkBrokenError",
    "LinkListener",
    "LinkManager",
    "LinkStats",
    "PeerRefusedError",
    "Stream",
]

log = logging.getLogger(__name__)

#: QUIC idle timeout; liveness for routing is the hello core's job (~2 s).  Quiet links hello
#: every ``meshd.node.IDLE_HELLO_INTERVAL_S`` (8 s): this leaves room for a lost hello and more
#: (a node never slows its hellos beyond half the timeout a link agreed on: older peers say 8 s)
IDLE_TIMEOUT_S = 20.0
#: connect attempts to discovered peers at once (each is a UDP socket and a TLS handshake)
MAX_DISCOVERED_DIALS = 4
#: discovered peers dialled (a spoofed zeroconf flood must not become a dial flood)
MAX_DISCOVERED_PEERS = 64
#: how long a peer may take to name the service of a stream it opened
SERVICE_NAME_TIMEOUT_S = 10.0
#: grace before reporting link_down when the peer closed our link as a duplicate
_DUPLICATE_GRACE_S = 1.5
#: how long a preferred duplicate may take to answer a liveness ping
_LIVENESS_PING_S = 1.0


class PeerRefusedError(VerificationError):
    """The peer answered and refused the link; ``reason`` is its stable token (``revoked``)."""


def _quiet_aioquic_loggers() -> None:
    """aioquic logs every connection's events at INFO and each peer's protocol error at
    WARNING ("quic"): a handshake flood made thousands of lines.  What a peer does wrong is
    counted and logged once by the link layer, so aioquic's own logger is raised to ERROR,
    unless the operator set a level for it on purpose."""
    logger = logging.getLogger("quic")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


class LinkListener(Protocol):
    """What the daemon implements to hear about links (called from the event loop)."""

    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None: ...

    def link_down(self, peer: NodeId, reason: str) -> None: ...

    def datagram_received(self, peer: NodeId, data: bytes) -> None: ...


@dataclass(slots=True)
class _StaticPeer:
    host: str
    port: int
    expect: NodeId | None
    on_learned: Callable[[NodeId], None] | None
    backoff: Backoff
    task: asyncio.Task[None] | None = None
    dialling: bool = False  # a connect attempt is in flight
    attempts: int = 0  # connect attempts made, in all
    last_error: str = ""
    discovered: bool = False  # reported by zeroconf: dialled while advertised, slots bounded


@dataclass(slots=True)
class _Service:
    handler: Callable[[NodeId, Stream], Awaitable[None]]
    max_message: int


@dataclass(slots=True)
class _PeerState:
    active: Connection
    down_event: asyncio.Event = field(default_factory=asyncio.Event)
    pending_down: asyncio.TimerHandle | None = None
    #: the reason the peer gave when it closed the link as refused (set before ``down_event``)
    refused_by_peer: str | None = None


class LinkManager:
    """All QUIC links of one node: listen, connect, datagrams, streams, duplicates, reconnects."""

    def __init__(self, identity: Identity, announcement: Callable[[], Announcement],
                 listener: LinkListener, *, wall_clock: Callable[[], float] = time.time,
                 datagram_queue_max: int = 256, rng: random.Random | None = None,
                 tls_identity_override: Identity | None = None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 admission: AdmissionPolicy | None = None) -> None:
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
        #: server-side handshakes in progress (meshd.links.admission decides on new ones)
        self.pending_handshakes = PendingHandshakes(admission or AdmissionPolicy())
        #: what the admission did with new Initials: accepted, retry-sent, refused-busy, ...
        self.handshake_counts: Counter[str] = Counter()
        self._retry_tokens = RetryTokens(os.urandom(32))
        #: connect attempts to static and discovered peers, by kind ("static", "discovered")
        self.dials: Counter[str] = Counter()
        #: dials and links the far side refused, by the reason it gave (``PEER_REFUSAL_REASONS``)
        self.refused_by_peer: Counter[str] = Counter()
        _quiet_aioquic_loggers()
        self._servers: list[LinkServer] = []
        self._peers: dict[NodeId, _PeerState] = {}
        self._conns: set[Connection] = set()
        self._services: dict[str, _Service] = {}
        self._static: list[_StaticPeer] = []
        self._discovered: dict[NodeId, _StaticPeer] = {}
        self._discovered_dials = asyncio.Semaphore(MAX_DISCOVERED_DIALS)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: True for a peer's Ed25519 key the node refuses links with (a revoked device);
        #: the composition root installs the application's answer (``Node.refuse_keys``)
        self.refuse_key: Callable[[bytes], bool] = lambda key: False

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

        def factory(quic: QuicConnection) -> Connection:
            conn = Connection(quic, self, is_client=False)
            self._conns.add(conn)
            return conn

        server = await serve_links(host, port, configuration=self._config(False),
                                   create_protocol=factory, pending=self.pending_handshakes,
                                   tokens=self._retry_tokens, counts=self.handshake_counts)
        self._servers.append(server)
        transport = server._transport
        assert transport is not None
        limit_receive_size(transport)
        sockname = transport.get_extra_info("sockname")
        return addr_of(sockname)

    async def connect(self, host: str, port: int, expect: NodeId | None) -> NodeId:
        """One attempt to link with ``host:port``; returns the peer's proven NodeId.

        Raises ``VerificationError`` (a ``RemoteProtocolError``) if the peer is
        not ``expect`` or cannot prove its id (``PeerRefusedError`` if the peer
        refused us, ``RemoteProtocolError("revoked")`` if we refuse its key),
        ``ConnectionError``/``OSError`` if it does not answer within the
        handshake timeout.
        """
        conn = await self._connect(host, port, expect)
        assert conn.peer is not None
        return conn.peer.node_id

    async def _connect(self, host: str, port: int, expect: NodeId | None) -> Connection:
        """``connect``, returning the connection (it may be closed again already)."""
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
            lambda: Connection(quic, self, is_client=True, expect=expect),
            local_addr=local, family=family)
        self._conns.add(conn)
        conn.remote = addr_of(addr)
        conn.connect(addr)
        try:
            await asyncio.shield(conn.ready)
        except asyncio.CancelledError:
            conn.close(error_code=ERR_CLOSED, reason_phrase="cancelled")
            raise
        except (RemoteProtocolError, ConnectionError) as exc:
            if conn.refused_by_peer is not None:
                raise PeerRefusedError(conn.refused_by_peer, str(exc)) from exc
            raise
        if conn.refused_here is not None:
            raise RemoteProtocolError(conn.refused_here, f"{conn.label}: we refuse this peer")
        return conn

    def add_static_peer(self, host: str, port: int, expect: NodeId | None,
                        on_learned: Callable[[NodeId], None] | None = None) -> None:
        """Keep a link to ``host:port``: reconnect with backoff + jitter while not linked.

        With ``expect`` None the first successful link learns the NodeId (trust
        on first use, logged) and pins it; ``on_learned`` is told.
        """
        sp = _StaticPeer(host, port, expect, on_learned, Backoff(self._rng))
        self._static.append(sp)
        sp.task = self._spawn(self._static_loop(sp), f"static-peer {host}:{port}")

    def add_discovered_peer(self, node_id: NodeId, host: str, port: int) -> bool:
        """Keep dialling a peer discovery reported at ``host:port`` until it is gone.

        Like a static peer (reconnect with backoff, pinned to ``node_id``) but
        ended by ``remove_discovered_peer`` (the service's goodbye or expiry),
        with a slower backoff, at most ``MAX_DISCOVERED_DIALS`` connect attempts
        to discovered peers at once and at most ``MAX_DISCOVERED_PEERS`` of them
        tracked (more are refused, counted in ``drops``: False).  Reporting a
        known peer again updates its address.
        """
        if self._closing:
            return False
        sp = self._discovered.get(node_id)
        if sp is not None:
            sp.host, sp.port = host, port
            return True
        if len(self._discovered) >= MAX_DISCOVERED_PEERS:
            self.drops.drop("discovered-full", "",
                            f"more than {MAX_DISCOVERED_PEERS} discovered peers to dial")
            return False
        sp = _StaticPeer(host, port, node_id, None,
                         Backoff(self._rng, max_s=DISCOVERED_BACKOFF_MAX_S), discovered=True)
        self._discovered[node_id] = sp
        sp.task = self._spawn(self._static_loop(sp), f"discovered-peer {short_id(node_id)}")
        return True

    def remove_discovered_peer(self, node_id: NodeId) -> None:
        """Stop dialling a discovered peer (an attempt in flight is abandoned; a link stays)."""
        sp = self._discovered.pop(node_id, None)
        if sp is not None and sp.task is not None:
            sp.task.cancel()

    def discovered_peers(self) -> dict[NodeId, tuple[str, int]]:
        """The discovered peers being dialled (or kept), with their addresses."""
        return {nid: (sp.host, sp.port) for nid, sp in self._discovered.items()}

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

    def close_link(self, peer: NodeId, reason: str, *, refused: bool = False) -> None:
        """Close the link to ``peer`` now; ``link_down(peer, reason)`` is reported here.

        ``refused``: we refuse the peer from now on (``reason`` a ``PEER_REFUSAL_REASONS``
        token such as ``revoked``): it is told so and backs off instead of redialling.
        """
        state = self._peers.get(peer)
        if state is None:
            return
        conn = state.active
        self._report_down(peer, reason)
        if refused:
            conn.close(error_code=ERR_REFUSED, reason_phrase=f"refused: {reason}"[:100])
        else:
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

    def set_ack_hold(self, peer: NodeId, ours: bool, theirs: bool) -> None:
        """Quiet-link ACK holding on the link to ``peer`` (``Connection.set_ack_hold``)."""
        state = self._peers.get(peer)
        if state is not None:
            state.active.set_ack_hold(ours, theirs)

    def idle_timeout_s(self, peer: NodeId) -> float | None:
        """The QUIC idle timeout of the link to ``peer`` (None: not linked, or not known)."""
        state = self._peers.get(peer)
        return state.active.idle_timeout_s if state is not None else None

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

    def deliver_datagram(self, conn: Connection, data: bytes) -> None:
        assert conn.peer is not None
        try:
            self.listener.datagram_received(conn.peer.node_id, data)
        except Exception:  # the listener's bug must not break the link
            log.exception("[%s] listener.datagram_received failed", conn.label)
            self.drops.drop("listener-error", conn.label)

    def on_ready(self, conn: Connection) -> None:
        assert conn.peer is not None
        peer = conn.peer.node_id
        known = self.known.get(peer)
        if known is None or conn.peer.seqno >= known.seqno:
            self.known[peer] = conn.peer
        if self._closing:
            conn.close(error_code=ERR_CLOSED, reason_phrase="shutdown")
            return
        if self.refuse_key(conn.peer.ed25519_pub):
            self.drops.drop("revoked", conn.label, "the community revoked this node's key")
            # tell the dialler why, so that it backs off (meshd.links.rules.Backoff.refused)
            conn.refused_here = "revoked"
            conn.close(error_code=ERR_REFUSED, reason_phrase="refused: revoked")
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
            conn.set_ack_hold(*cur.ack_hold)
            state.active = conn
            return
        if cur.terminated:
            conn.set_ack_hold(*cur.ack_hold)
            state.active = conn
            return
        decision = resolve_duplicate(self.identity.node_id, peer,
                                     current_we_initiated=cur.is_client,
                                     new_we_initiated=conn.is_client)
        if decision is Duplicate.TAKE_NEW:
            self._replace(state, conn, cur)
        else:
            self._spawn(self._check_preferred(state, cur, conn), f"liveness {conn.label}")

    def _replace(self, state: _PeerState, keep: Connection, lose: Connection) -> None:
        if keep is not lose:
            keep.set_ack_hold(*lose.ack_hold)
        state.active = keep
        if keep.stats is not None and lose.stats is not None:
            # the link lives on: keep its history
            keep.stats.connected_since = lose.stats.connected_since
        self._supersede(lose)

    def _supersede(self, conn: Connection) -> None:
        log.debug("[%s] closing duplicate connection", conn.label)
        conn.superseded = True
        conn.close(error_code=ERR_DUPLICATE, reason_phrase="duplicate")

    async def _check_preferred(self, state: _PeerState, cur: Connection,
                               new: Connection) -> None:
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

    def on_terminated(self, conn: Connection, why: str) -> None:
        self._conns.discard(conn)
        peer = conn.peer_id
        if peer is None or conn.superseded:
            return
        state = self._peers.get(peer)
        if state is None or state.active is not conn:
            return
        state.refused_by_peer = conn.refused_by_peer
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

    def accept_stream(self, conn: Connection, stream: Stream) -> None:
        self._spawn(self._serve_stream(conn, stream), f"stream {conn.label}/{stream.stream_id}")

    async def _serve_stream(self, conn: Connection, stream: Stream) -> None:
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
            stream.set_max_message(service.max_message)
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

    async def _dial(self, sp: _StaticPeer) -> Connection | None:
        """One connect attempt; a discovered peer waits for one of the bounded dial slots.

        None: a discovered peer dialled us while we waited for a slot.
        """
        if not sp.discovered:
            return await self._dial_now(sp)
        async with self._discovered_dials:
            if sp.expect is not None and sp.expect in self._peers:
                return None  # it dialled us while we waited for a slot
            return await self._dial_now(sp)

    async def _dial_now(self, sp: _StaticPeer) -> Connection:
        sp.dialling = True
        sp.attempts += 1
        self.dials["discovered" if sp.discovered else "static"] += 1
        try:
            return await self._connect(sp.host, sp.port, sp.expect)
        finally:
            sp.dialling = False

    def _peer_label(self, sp: _StaticPeer) -> str:
        kind = "discovered" if sp.discovered else "static"
        who = f" {short_id(sp.expect)}" if sp.expect is not None else ""
        return f"{kind} peer{who} {sp.host}:{sp.port}"

    def _note_refusal(self, sp: _StaticPeer, reason: str, now: float, at: float) -> None:
        """Count a refusal by the far side; log the first of a run (the rest at DEBUG)."""
        self.refused_by_peer[reason] += 1
        level = logging.WARNING if sp.backoff.refusals == 1 else logging.DEBUG
        log.log(level, "refused by %s: %s — will retry in %.1f s",
                self._peer_label(sp), reason, at - now)

    async def _link_ended(self, sp: _StaticPeer, refused: str | None) -> None:
        """The link to ``sp`` went down: redial at once if it stayed up, else back off."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = sp.backoff.link_lost(now)
        if at <= now:
            return
        if refused is not None:
            self._note_refusal(sp, refused, now, at)
        else:
            level = logging.WARNING if sp.backoff.refusals == 1 else logging.DEBUG
            log.log(level, "%s: the link went down soon after it came up — will retry in %.1f s",
                    self._peer_label(sp), at - now)
        await asyncio.sleep(at - now)

    async def _static_loop(self, sp: _StaticPeer) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            state = self._peers.get(sp.expect) if sp.expect is not None else None
            if state is not None:
                # linked (we dialled, or it dialled us): dial again once it is gone
                if sp.backoff.up_since is None:
                    sp.backoff.succeeded(loop.time())
                await state.down_event.wait()
                await self._link_ended(sp, state.refused_by_peer)
                continue
            try:
                conn = await self._dial(sp)
            except Exception as exc:  # refused, unreachable, or our bug: retry all the same
                if not isinstance(exc, MeshError | OSError):
                    log.exception("%s: unexpected error", self._peer_label(sp))
                sp.last_error = str(exc)
                now = loop.time()
                if isinstance(exc, PeerRefusedError):
                    at = sp.backoff.refused(now)
                    self._note_refusal(sp, exc.reason, now, at)
                else:
                    # no answer; or an answer we refuse (a failed proof, a revoked key): the
                    # latter on the slower schedule, it will not change within seconds
                    refusal = isinstance(exc, RemoteProtocolError)
                    at = sp.backoff.refused(now) if refusal else sp.backoff.failed(now)
                    level = logging.WARNING if sp.backoff.failures == 1 else logging.DEBUG
                    log.log(level, "%s: %s (retrying in %.2f s)", self._peer_label(sp), exc,
                            at - now)
                await asyncio.sleep(at - now)
                continue
            if conn is None:
                continue
            assert conn.peer is not None
            peer = conn.peer.node_id
            sp.backoff.succeeded(loop.time())
            if sp.expect is None:
                sp.expect = peer
                log.warning("static peer %s:%s is %s: trusted on first use and pinned",
                            sp.host, sp.port, peer.hex())
                if sp.on_learned is not None:
                    try:
                        sp.on_learned(peer)
                    except Exception:
                        log.exception("on_learned callback failed")
            if peer not in self._peers:
                # the far side closed it before we looked (a refusal right after the handshake)
                await self._link_ended(sp, conn.refused_by_peer)
