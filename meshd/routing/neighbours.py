"""Neighbour state over authenticated links: hello / IHU, link cost, liveness.

Theory of operation
-------------------
The link layer (QUIC, ``meshd.links.manager``) has already proven the peer's NodeId;
this core only measures the link.  Every ``hello_interval`` (jittered by
0.8–1.0 × with the injected ``random.Random``) each end sends one small message on
``Channel.NEIGHBOUR``.  Because a link is point-to-point, Babel's Hello and IHU
(RFC 8966 §4.6.5, §4.6.6) travel in one message:

* the *hello* part: a 16-bit seqno, the sender's 32-bit microsecond timestamp
  and its hello interval, and (optional) its raw wall clock in milliseconds, from
  which the receiver estimates the clock offset between the two
  (``clock_offset``; ``meshd.core.clock`` bounds the node's clock with it);
* the *IHU* part (present once we have heard the peer recently): our rxcost of
  the peer's hellos, the peer's last timestamp echoed back and the time we held
  it (the Babel RTT extension, draft-ietf-babel-rtt-extension: RTT = now -
  echoed - hold, computed on the originator's own clock only, so no clock
  synchronisation is needed).

Link quality follows RFC 8966 Appendix A.2.2 (ETX): a 16-hello history of
received seqnos gives ``beta`` (fraction received), ``rxcost = 256 / beta``; the
peer's IHU gives ``txcost`` (its rxcost of our hellos); the link cost is
``max(txcost, 256) * rxcost / 256`` plus an RTT penalty that grows linearly
between ``RTT_MIN_MS`` and ``RTT_MAX_MS`` and is capped at ``RTT_MAX_PENALTY``.

A neighbour is *up* (usable for routing) while we have had a hello from it and
an IHU from it (it hears us) within ``dead_after`` seconds.  When a peer has
been silent for 1.5 hello intervals we send it an extra hello flagged as a
request; the peer answers at once (rate-limited).  On a lossy link that keeps
a few lost hellos in a row from being taken for a dead link, while a link that
is really gone is still declared lost ``dead_after`` after the last hello.

Quiet links slow down (RFC 8966 §3.4.1 lets the hello interval vary)
------------------------------------------------------------------------
With ``max_hello_interval`` above ``hello_interval``, a link that is up, loss-free
both ways and carries no mesh traffic doubles its hello interval after every
``STABLE_HELLOS`` hellos, up to ``max_hello_interval`` (or the lower cap ``link_up``
was given for that link); every hello carries the
interval it is sent at, and the receiver holds the link for
``max(dead_after, HOLD_INTERVALS × the peer's interval)``.  It goes fast again at
once (and says so in an unscheduled hello) when loss shows (a seqno gap, a
txcost above 256, a hello request from the peer) or when traffic appears.

Such a slow hello says ``ak`` (a table made with ``ack_hold``): the sender lets the QUIC ACK of the
peer's hellos and routing updates wait for its own next packet, and allows the peer the
same (``ack_hold``; ``meshd.links.connection.Connection.set_ack_hold``).  An idle link then
carries one packet per hello instead of two.  A fast hello drops the flag, and the ACKs go
at once again.

Traffic is what keeps the silent-relay reroute fast: the adapter calls
``traffic(peer, now)`` for every mesh packet sent to or received from ``peer``.  A
link with traffic in the last ``TRAFFIC_HOLD_S`` seconds is *busy*: we hello at the
fast interval, probe the peer after 1.5 fast intervals of silence, and declare it
lost ``dead_after`` after the later of its last hello and the start of the busy
period.  So a peer that went silent while the link was quiet is found dead within
``dead_after`` of the first packet that needs it (the first packet wakes a request
that a live peer answers at once; the live peer sees the packet too and goes fast
itself), and one that goes silent while the link is busy, ``dead_after`` after its
last hello, exactly as before.

The core does no I/O and never reads the clock: ``now`` is monotonic seconds.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass

from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import NodeId, short_id

__all__ = [
    "COST_INFINITY",
    "LinkCostChanged",
    "NeighbourEvent",
    "NeighbourLost",
    "NeighbourState",
    "NeighbourStats",
    "NeighbourTable",
    "NeighbourUp",
    "decode_hello",
    "link_cost",
]

logger = logging.getLogger(__name__)

#: cost of an unusable link (Babel's 16-bit infinity)
COST_INFINITY = 0xFFFF
#: largest neighbour message we accept (a full one is about 40 bytes)
MAX_HELLO_SIZE = 96
HISTORY_LEN = 16
_TS_MOD = 2**32  # timestamps are microseconds modulo 2^32 (Babel's RTT extension)
RTT_MIN_MS = 25.0
RTT_MAX_MS = 250.0
RTT_MAX_PENALTY = 128
#: smoothing of RTT samples (like TCP's SRTT)
RTT_ALPHA = 0.125
#: largest RTT sample we believe; anything larger is a stale echo
RTT_SAMPLE_MAX_S = 10.0
#: a cost change smaller than this fraction of the last reported cost is not reported
COST_HYSTERESIS = 0.125
#: hellos sent at one interval on a quiet, loss-free link before the interval doubles
STABLE_HELLOS = 4
#: a peer is held for this many of its advertised hello intervals (never less than dead_after)
HOLD_INTERVALS = 4.0
#: a link with a mesh packet sent or received within this many seconds is busy (fast hellos)
TRAFFIC_HOLD_S = 5.0


class NeighbourState(enum.Enum):
    PENDING = "pending"  #: link up, not yet heard both ways
    UP = "up"  #: heard both ways within dead_after: usable for routing
    LOST = "lost"  #: was up, silent for dead_after (link still there)


@dataclass(frozen=True, slots=True)
class NeighbourUp:
    """The peer became usable for routing (heard both ways), at link cost ``cost``."""

    peer: NodeId
    cost: int


@dataclass(frozen=True, slots=True)
class NeighbourLost:
    """The peer is no longer usable for routing; ``reason`` is "timeout" or "link_down"."""

    peer: NodeId
    reason: str


@dataclass(frozen=True, slots=True)
class LinkCostChanged:
    """The cost of an up neighbour's link changed noticeably (hysteresis applied)."""

    peer: NodeId
    cost: int


NeighbourEvent = NeighbourUp | NeighbourLost | LinkCostChanged


@dataclass(frozen=True, slots=True)
class NeighbourStats:
    """A snapshot of one neighbour's link figures for the admin view and the router."""

    peer: NodeId
    state: NeighbourState
    rtt_ms: float | None  #: smoothed round-trip time, None until measured
    loss: float  #: fraction of the last (up to 16) hellos from the peer that were missed
    hellos_sent: int
    hellos_received: int
    rxcost: int  #: our cost of receiving from the peer (256 = perfect)
    txcost: int  #: the peer's rxcost of our hellos, from its IHU
    etx: float  #: expected transmissions, txcost * rxcost / 256^2
    cost: int  #: link cost used by routing (ETX * 256 + RTT penalty), COST_INFINITY if down
    hello_interval: float = 0.5  #: the interval we hello this peer at now, seconds
    peer_interval: float = 0.5  #: the interval the peer says it hellos us at, seconds


@dataclass(frozen=True, slots=True)
class Hello:
    """A decoded neighbour message: hello plus optional IHU part."""

    seqno: int
    timestamp_us: int
    interval_ms: int
    request: bool
    rxcost: int | None
    echo_us: int | None
    hold_us: int | None
    wall_ms: int | None = None
    ack_hold: bool = False  #: the sender holds its ACKs on this quiet link and allows ours


def decode_hello(data: bytes) -> Hello:
    """Parse one neighbour message (without the channel byte); raises ``DecodeError``."""
    obj = unpack(data, MAX_HELLO_SIZE, max_items=16)
    f = Fields(obj)
    if f.int("v", 0, 255) != 1:
        raise DecodeError("version", "neighbour message version")
    rq = obj.get("rq", False)
    if type(rq) is not bool:
        raise DecodeError("field", "rq: bool")
    ak = obj.get("ak", False)
    if type(ak) is not bool:
        raise DecodeError("field", "ak: bool")
    rx = f.opt_int("rx", 1, COST_INFINITY)
    echo = f.opt_int("et", 0, _TS_MOD - 1)
    hold = f.opt_int("hd", 0, _TS_MOD - 1)
    wall = f.opt_int("w", 0, 2**53)
    if rx is not None and (echo is None) != (hold is None):
        raise DecodeError("field", "et and hd go together")
    return Hello(seqno=f.int("s", 0, 0xFFFF), timestamp_us=f.int("ts", 0, _TS_MOD - 1),
                 interval_ms=f.int("iv", 10, 60_000), request=rq, rxcost=rx,
                 echo_us=echo if rx is not None else None,
                 hold_us=hold if rx is not None else None, wall_ms=wall, ack_hold=ak)


def link_cost(rxcost: int, txcost: int, rtt_ms: float | None) -> int:
    """Babel ETX link cost (RFC 8966 A.2.2) plus a capped RTT penalty, in [256, COST_INFINITY]."""
    if rxcost >= COST_INFINITY or txcost >= COST_INFINITY:
        return COST_INFINITY
    cost = max(txcost, 256) * rxcost // 256
    if rtt_ms is not None and rtt_ms > RTT_MIN_MS:
        frac = min(1.0, (rtt_ms - RTT_MIN_MS) / (RTT_MAX_MS - RTT_MIN_MS))
        cost += round(RTT_MAX_PENALTY * frac)
    return min(cost, COST_INFINITY - 1)


def _ts_us(now: float) -> int:
    return round(now * 1_000_000) % _TS_MOD


class _Neighbour:
    __slots__ = (
        "busy_since",
        "clock_offset",
        "echo_rx_at",
        "echo_ts",
        "emitted_cost",
        "hellos_received",
        "hellos_sent",
        "history",
        "history_len",
        "interval",
        "last_hello",
        "last_ihu",
        "last_reply",
        "last_seqno",
        "last_traffic",
        "max_interval",
        "next_hello",
        "next_probe",
        "peer",
        "peer_ack_hold",
        "peer_interval",
        "rtt_ms",
        "stable",
        "state",
        "tx_seqno",
        "txcost",
        "want_reply",
    )

    def __init__(self, peer: NodeId, next_hello: float, tx_seqno: int, interval: float,
                 max_interval: float) -> None:
        self.peer = peer
        self.interval = interval  # our hello interval on this link now
        self.max_interval = max_interval  # what a quiet, stable link slows down to
        self.stable = 0  # hellos sent at ``interval`` while quiet and loss-free
        self.last_traffic = float("-inf")  # last mesh packet sent to / received from the peer
        self.busy_since = float("-inf")  # start of the current busy period
        self.tx_seqno = tx_seqno
        self.state = NeighbourState.PENDING
        self.next_hello = next_hello
        self.next_probe: float | None = None
        self.last_hello: float | None = None
        self.last_ihu: float | None = None
        self.last_seqno: int | None = None
        self.history = 0
        self.history_len = 0
        self.hellos_sent = 0
        self.hellos_received = 0
        self.echo_ts: int | None = None  # the peer's last timestamp, to echo back
        self.echo_rx_at = 0.0  # when we received it (for the hold time)
        self.txcost = COST_INFINITY
        self.rtt_ms: float | None = None
        self.peer_interval = 0.5
        self.peer_ack_hold = False  # the peer's last hello said it holds ACKs (and allows ours)
        self.emitted_cost = COST_INFINITY
        self.want_reply = False
        self.last_reply = float("-inf")
        self.clock_offset: float | None = None  # the peer's wall clock minus ours, seconds


class NeighbourTable:
    """Pure hello/IHU core for all links of one node (see the module docstring)."""

    def __init__(self, *, hello_interval: float = 0.5, dead_after: float = 2.0,
                 rng: random.Random, max_hello_interval: float | None = None,
                 ack_hold: bool = False) -> None:
        if not 0.0 < hello_interval < dead_after:
            raise LocalProtocolError("need 0 < hello_interval < dead_after")
        if max_hello_interval is not None and not hello_interval <= max_hello_interval <= 60.0:
            raise LocalProtocolError("need hello_interval <= max_hello_interval <= 60")
        self.hello_interval = hello_interval
        #: quiet stable links slow their hellos down to this (= hello_interval: never)
        self.max_hello_interval = max_hello_interval or hello_interval
        #: slow hellos say "ak": we hold our ACKs on this quiet link and allow the peer's
        self.hold_acks = ack_hold
        self.dead_after = dead_after
        self._rng = rng
        self._nbrs: dict[NodeId, _Neighbour] = {}
        self._events: list[NeighbourEvent] = []
        self.drops = DropCounter(logger)

    # -- link layer inputs -------------------------------------------------

    def link_up(self, peer: NodeId, now: float, max_interval: float | None = None) -> None:
        """An authenticated link to ``peer`` exists: start sending it hellos at once.

        ``max_interval`` caps how far this link's hellos slow down when quiet (below
        ``max_hello_interval``; e.g. half the link's idle timeout, which an older peer may
        hold shorter than ours)."""
        if peer not in self._nbrs:
            cap = self.max_hello_interval
            if max_interval is not None:
                cap = max(self.hello_interval, min(cap, max_interval))
            self._nbrs[peer] = _Neighbour(peer, now, self._rng.randrange(0x10000),
                                          self.hello_interval, cap)

    def link_down(self, peer: NodeId, now: float) -> None:
        """The link to ``peer`` is gone; emits ``NeighbourLost(peer, "link_down")`` if it was up."""
        n = self._nbrs.pop(peer, None)
        if n is not None and n.state is NeighbourState.UP:
            self._events.append(NeighbourLost(peer, "link_down"))

    def receive(self, peer: NodeId, data: bytes, now: float, wall: float | None = None) -> None:
        """Feed one neighbour datagram (no channel byte); malformed input is counted and dropped.

        ``wall`` is our raw wall clock (unix seconds) at receipt: with it, a hello that carries
        the peer's wall clock updates ``clock_offset(peer)``.
        """
        n = self._nbrs.get(peer)
        if n is None:
            self.drops.drop("no-link", short_id(peer) if len(peer) else "?")
            return
        try:
            h = decode_hello(data)
        except DecodeError as exc:
            self.drops.drop(exc.reason, short_id(peer), exc.detail)
            return
        self._on_hello(n, h, now)
        if wall is not None and h.wall_ms is not None:
            one_way = (n.rtt_ms or 0.0) / 2000
            n.clock_offset = h.wall_ms / 1000 + one_way - wall
        self._update_state(n, now)

    def traffic(self, peer: NodeId, now: float) -> bool:
        """A mesh packet was sent to or received from ``peer`` (the relay's hot path: cheap).

        Returns True when this woke a quiet link (fast hellos again, a request to a slow
        peer, a tighter liveness deadline): the adapter should then send and re-arm its
        timer.
        """
        n = self._nbrs.get(peer)
        if n is None:
            return False
        quiet = now >= n.last_traffic + TRAFFIC_HOLD_S
        n.last_traffic = now
        if not quiet:
            return False
        n.busy_since = now
        woke = False
        if n.interval > self.hello_interval:
            self._go_fast(n, now)
            woke = True
        if n.state is NeighbourState.UP and n.peer_interval > self.hello_interval:
            n.next_probe = now  # ask the slow peer for a hello now: a dead one is found in time
            woke = True
        return woke

    # -- outputs -------------------------------------------------------------

    def datagrams_to_send(self, now: float,
                          wall: float | None = None) -> list[tuple[NodeId, bytes]]:
        """Hellos due by ``now``, as (peer, payload without the channel byte), in peer order.

        ``wall`` (our raw wall clock, unix seconds) goes into each hello for the peer's clock
        offset estimate.
        """
        out: list[tuple[NodeId, bytes]] = []
        for peer in sorted(self._nbrs):
            n = self._nbrs[peer]
            request = n.next_probe is not None and now >= n.next_probe
            if now >= n.next_hello or n.want_reply or request:
                scheduled = now >= n.next_hello
                if scheduled:
                    self._adapt(n, now)
                out.append((peer, self._hello_for(n, now, request, wall)))
                if scheduled:
                    n.next_hello = now + self._jittered(n.interval)
                n.want_reply = False
                if request:
                    n.next_probe = now + self.hello_interval / 2
        return out

    def get_timer(self) -> float | None:
        """The earliest time at which ``handle_timer``/``datagrams_to_send`` have work."""
        if not self._nbrs:
            return None
        best = float("inf")
        dead_after = self.dead_after
        for n in self._nbrs.values():  # (hot in large simulations: no calls in the common case)
            t = n.next_hello
            if n.want_reply and n.last_reply < t:
                t = n.last_reply
            probe = n.next_probe
            if probe is not None and probe < t:
                t = probe
            if n.state is NeighbourState.UP:
                assert n.last_hello is not None and n.last_ihu is not None
                # the deadline is monotonic in the time heard: the older of hello and IHU decides
                heard = n.last_hello if n.last_hello < n.last_ihu else n.last_ihu
                if HOLD_INTERVALS * n.peer_interval <= dead_after and n.busy_since <= heard:
                    dead = heard + dead_after  # = _deadline(n, heard), without the call
                else:
                    dead = self._deadline(n, heard)
                t = min(t, dead)
            best = min(best, t)
        return best

    def handle_timer(self, now: float) -> None:
        """Expire silent neighbours and schedule probes; hellos go out in ``datagrams_to_send``."""
        for peer in sorted(self._nbrs):
            n = self._nbrs[peer]
            self._update_state(n, now)

    def next_event(self) -> NeighbourEvent | None:
        """Pop the oldest pending event, or None."""
        return self._events.pop(0) if self._events else None

    # -- queries -------------------------------------------------------------

    def peers(self) -> list[NodeId]:
        """Peers that are up (usable for routing), sorted."""
        return sorted(p for p, n in self._nbrs.items() if n.state is NeighbourState.UP)

    def ack_hold(self, peer: NodeId, now: float) -> tuple[bool, bool]:
        """(ours, theirs): may we hold the link's ACKs of hellos and routing for our next packet,
        and may the peer.  The peer may while its last hello said "ak" (it is slow and quiet);
        we may while our hellos say so too (our interval is slow: a quiet, clean link; any
        traffic or loss makes it fast at once) and the peer's last hello allowed it."""
        n = self._nbrs.get(peer)
        if n is None:
            return False, False
        ours = (self.hold_acks and n.peer_ack_hold and n.interval > self.hello_interval
                and n.state is NeighbourState.UP and now >= n.last_traffic + TRAFFIC_HOLD_S)
        return ours, n.peer_ack_hold

    def clock_offset(self, peer: NodeId) -> float | None:
        """``peer``'s wall clock minus ours in seconds, from its last hello (None: not known)."""
        n = self._nbrs.get(peer)
        return n.clock_offset if n is not None else None

    def links(self) -> list[NodeId]:
        """All peers with a link, whatever their state, sorted."""
        return sorted(self._nbrs)

    def stats(self, peer: NodeId) -> NeighbourStats:
        """Current figures of ``peer``; raises ``LocalProtocolError`` for a peer with no link."""
        n = self._nbrs.get(peer)
        if n is None:
            raise LocalProtocolError(f"no link to {short_id(peer)}")
        rx = self._rxcost(n)
        tx = n.txcost
        etx = (tx * rx) / 65536 if rx < COST_INFINITY and tx < COST_INFINITY else float("inf")
        received = bin(n.history).count("1")
        loss = 1.0 - received / n.history_len if n.history_len else 1.0
        return NeighbourStats(
            peer=peer, state=n.state, rtt_ms=n.rtt_ms, loss=loss, hellos_sent=n.hellos_sent,
            hellos_received=n.hellos_received, rxcost=rx, txcost=tx, etx=etx,
            cost=self._cost(n) if n.state is NeighbourState.UP else COST_INFINITY,
            hello_interval=n.interval, peer_interval=n.peer_interval,
        )

    # -- internals -------------------------------------------------------------

    def _jittered(self, interval: float) -> float:
        # jitter only downwards: a gap never exceeds the interval, so a live link is not lost early
        return interval * self._rng.uniform(0.8, 1.0)

    def _hold(self, n: _Neighbour) -> float:
        """How long the peer may stay silent at the interval it advertises."""
        return max(self.dead_after, HOLD_INTERVALS * n.peer_interval)

    def _deadline(self, n: _Neighbour, heard: float) -> float:
        """When a peer last heard (hello or IHU) at ``heard`` is lost.

        Held for ``_hold``; but on a busy link, ``dead_after`` after the later of ``heard``
        and the start of the busy period, if that falls while the link is still busy.  A pure
        function of the state, so ``get_timer`` and ``_update_state`` agree exactly.
        """
        loose = heard + self._hold(n)
        tight = max(heard, n.busy_since) + self.dead_after
        return tight if tight < loose and tight < n.last_traffic + TRAFFIC_HOLD_S else loose

    def _go_fast(self, n: _Neighbour, now: float) -> None:
        """Back to the fast interval; a slow link says so at once (an unscheduled hello)."""
        n.stable = 0
        if n.interval > self.hello_interval:
            n.interval = self.hello_interval
            n.next_hello = min(n.next_hello, now)

    def _adapt(self, n: _Neighbour, now: float) -> None:
        """Before a scheduled hello: double the interval on a quiet, stable link."""
        if n.max_interval <= self.hello_interval:
            return
        received = bin(n.history).count("1")
        quiet_and_clean = (n.state is NeighbourState.UP
                           and now >= n.last_traffic + TRAFFIC_HOLD_S
                           and n.history_len >= STABLE_HELLOS and received == n.history_len
                           and n.txcost <= 256)
        if not quiet_and_clean:
            n.interval = self.hello_interval
            n.stable = 0
            return
        n.stable += 1
        if n.stable > STABLE_HELLOS and n.interval < n.max_interval:
            n.interval = min(n.max_interval, n.interval * 2)
            n.stable = 0

    def _hello_for(self, n: _Neighbour, now: float, request: bool,
                   wall: float | None = None) -> bytes:
        # one seqno space per link: the peer counts gaps in it as lost hellos (RFC 8966 A.1)
        n.tx_seqno = (n.tx_seqno + 1) & 0xFFFF
        msg: dict[str, object] = {"v": 1, "s": n.tx_seqno, "ts": _ts_us(now),
                                  "iv": max(10, round(n.interval * 1000))}
        if request:
            msg["rq"] = True
        if self.hold_acks and n.interval > self.hello_interval:
            msg["ak"] = True
        if wall is not None and wall >= 0:
            msg["w"] = round(wall * 1000)
        if n.last_hello is not None and now < n.last_hello + self._hold(n):
            msg["rx"] = self._rxcost(n)
            if n.echo_ts is not None:
                msg["et"] = n.echo_ts
                msg["hd"] = min(_TS_MOD - 1, max(0, round((now - n.echo_rx_at) * 1_000_000)))
        n.hellos_sent += 1
        return pack(msg)

    def _on_hello(self, n: _Neighbour, h: Hello, now: float) -> None:
        n.hellos_received += 1
        # RFC 8966 A.1: hello history, shifted by the seqno gap; reordered hellos fill their bit.
        fresh = True
        if n.last_seqno is None:
            n.history, n.history_len = 1, 1
            n.last_seqno = h.seqno
        else:
            gap = (h.seqno - n.last_seqno) & 0xFFFF
            if gap == 0:
                pass  # duplicate
            elif gap < 0x8000:
                if gap > 1:
                    self._go_fast(n, now)  # hellos were lost: measure the link closely again
                if gap > HISTORY_LEN:
                    n.history, n.history_len = 1, 1
                else:
                    n.history = ((n.history << gap) | 1) & ((1 << HISTORY_LEN) - 1)
                    n.history_len = min(HISTORY_LEN, n.history_len + gap)
                n.last_seqno = h.seqno
            else:
                fresh = False  # reordered: fill its bit, but echo only the newest timestamp
                back = 0x10000 - gap
                if back < n.history_len:
                    n.history |= 1 << back
        n.last_hello = now
        n.peer_interval = h.interval_ms / 1000
        n.peer_ack_hold = h.ack_hold
        if fresh:
            n.echo_ts = h.timestamp_us
            n.echo_rx_at = now
        n.next_probe = None
        if h.rxcost is None and n.state is not NeighbourState.UP \
                and now - n.last_reply >= self.hello_interval / 4:
            # first contact: the peer does not hear us yet; tell it at once that we hear it
            # (our hello carries the IHU) rather than at our next scheduled hello
            n.want_reply = True
            n.last_reply = now
        if h.request:
            self._go_fast(n, now)  # the peer missed our hellos
            if now - n.last_reply >= self.hello_interval / 4:
                n.want_reply = True
                n.last_reply = now
        if h.rxcost is not None:
            n.last_ihu = now
            n.txcost = h.rxcost
            if h.rxcost > 256:
                self._go_fast(n, now)  # the peer misses some of our hellos
            if h.echo_us is not None and h.hold_us is not None:
                rtt_us = (_ts_us(now) - h.echo_us - h.hold_us) % _TS_MOD
                rtt_s = rtt_us / 1_000_000
                if rtt_s <= RTT_SAMPLE_MAX_S:
                    ms = rtt_s * 1000
                    n.rtt_ms = ms if n.rtt_ms is None else n.rtt_ms + RTT_ALPHA * (ms - n.rtt_ms)

    def _rxcost(self, n: _Neighbour) -> int:
        received = bin(n.history).count("1")
        if received == 0 or n.history_len == 0:
            return COST_INFINITY
        return min(COST_INFINITY, 256 * n.history_len // received)

    def _cost(self, n: _Neighbour) -> int:
        return link_cost(self._rxcost(n), n.txcost, n.rtt_ms)

    def _update_state(self, n: _Neighbour, now: float) -> None:
        # compare against the very deadline get_timer reports (no float round-off gap)
        heard = n.last_hello is not None and now < self._deadline(n, n.last_hello)
        ihu = n.last_ihu is not None and now < self._deadline(n, n.last_ihu)
        if heard and ihu:
            if n.state is not NeighbourState.UP:
                n.state = NeighbourState.UP
                n.want_reply = True  # and the peer may not know yet that we hear it: say so now
                n.last_reply = now
                n.emitted_cost = self._cost(n)
                self._events.append(NeighbourUp(n.peer, n.emitted_cost))
            else:
                cost = self._cost(n)
                old = n.emitted_cost
                if abs(cost - old) > old * COST_HYSTERESIS:
                    n.emitted_cost = cost
                    self._events.append(LinkCostChanged(n.peer, cost))
            if n.next_probe is None:
                # silent for 1.5 intervals: ask for a hello (an unscheduled one, RFC 8966 §3.4.1)
                start = min(n.last_hello or now, n.last_ihu or now)
                n.next_probe = start + 1.5 * max(self.hello_interval, n.peer_interval)
                if now < n.last_traffic + TRAFFIC_HOLD_S:  # busy: the fast rhythm
                    n.next_probe = min(n.next_probe,
                                       max(start, n.busy_since) + 1.5 * self.hello_interval)
        elif n.state is NeighbourState.UP:
            n.state = NeighbourState.LOST
            n.next_probe = None
            self._go_fast(n, now)
            self._events.append(NeighbourLost(n.peer, "timeout"))
