"""Babel routing (RFC 8966 semantics) over our own links: a pure core.

Theory of operation
-------------------
Every node is a destination and an *origin*: it announces itself with metric 0
and a sequence number.  That seqno is the seqno of the origin's signed
``meshd.core.identity.Announcement``, so a route to an origin is only believed when
its seqno is covered by a verified announcement of that origin: a relay can
neither claim another node's id nor push a seqno the origin never signed.
Announcements travel with the updates, once per (neighbour, origin, seqno);
a receiver missing one asks the sender for it.  Verification is injected
(``verify``), so the simulator can use real Ed25519 on a few nodes and a cheap
check at a thousand.

The route table keeps, per (origin, neighbour), the last (seqno, metric)
advertised by that neighbour (RFC 8966 §3.2.6).  The metric of a route is the
advertised metric plus the link cost from the neighbour core.  Route selection
(§3.6) picks the smallest metric among *feasible* routes, with hysteresis so
a lossy link's cost noise does not flap routes.  Feasibility (§3.5.1) is
``update_feasible``: the source table holds, per origin, the seqno and
feasibility distance (the smallest metric we advertised with that seqno); a
route is feasible if its seqno is newer, or equal with a strictly smaller
advertised metric.  This is what keeps next hops loop-free at every instant.

When the selected route is lost and only unfeasible routes remain, the node
retracts (sends metric infinity, §3.5.4) and sends a seqno request (§3.8.2)
for seqno+1 towards the origin; intermediate nodes answer from a route that is
new enough or forward it (hop count limited, duplicates suppressed); the origin
bumps its seqno through the ``on_seqno_request`` callback (signing and
persisting the new announcement is the node's job) and the new seqno floods
back as triggered updates.

Updates are sent in full every 16-20 s (jittered) and triggered on change:
changes are collected and flushed together after ``trigger_delay`` and never
more often than ``min_flush_gap`` (damping update storms in dense car parks);
small metric changes wait for the next full update.  Routes to a neighbour's
next hop are poisoned (sent with infinite metric to that next hop).  A route
expires 3.5 update intervals after its last update (§3.5.5 / Appendix B).
Every message fits one link datagram (``max_payload``), updates are packed
together and split as needed.

Stubs (``stub=True``: phones, issue 16) announce only themselves and relay
nothing: a stub sends its own route to its router neighbours and nothing else,
keeps routes only to its neighbours (updates for other origins are ignored),
and reaches everything else through a *default route*, the router neighbour
with the best metric to itself (sticky, with the selection hysteresis).  Its
messages carry ``s``, and the node tells ``neighbour_up`` when a peer is a stub
(its role is known from the link): a router sends a stub only its own route,
not its table, and takes from a stub only the stub's own route; two stubs
exchange no routing messages at all (each reaches the other directly, from the
neighbour layer).  Routers re-announce the stubs' routes as any other, so a stub
is reachable through the car it is attached to, and routing tables carry cars
and the stubs attached to them, never a stub's view of the mesh.

The core does no I/O and never reads the clock: ``now`` is monotonic seconds.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshd.core.codec import DropCounter, pack
from meshd.core.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from meshd.core.identity import NodeId, short_id
from meshd.routing.requests import OutQueue, Starving
from meshd.routing.route import Route, Selected
from meshd.routing.source import Source, update_feasible
from meshd.routing.wire import (
    INFINITY,
    MAX_ROUTING_PAYLOAD,
    OVERHEAD,
    Update,
    decode_message,
    packed_len,
)

__all__ = [
    "INFINITY",
    "MAX_ROUTING_PAYLOAD",
    "LeafMoved",
    "RouteChanged",
    "RouteInfo",
    "RoutingEvent",
    "RoutingTable",
    "SeqnoBump",
    "VerifiedAnnouncement",
    "Verifier",
    "update_feasible",
]

logger = logging.getLogger(__name__)

#: route expiry: this many times the sender's update interval (Babel: 3.5)
HOLD_MULTIPLIER = 3.5
#: a selected route this close to expiry is asked for (a unicast route request, §3.8.1.1)
REFRESH_BEFORE_S = 12.0
#: a source entry unused this long is forgotten (babeld: 3 minutes)
SOURCE_GC_S = 180.0
#: retractions of a lost route are repeated in full updates for this long
RETRACT_HOLD_S = 40.0
#: seqno requests: resend interval, tries, and how long a forwarded one is remembered
REQUEST_RESEND_S = 0.5
REQUEST_RESEND_MAX_S = 2.0
REQUEST_TRIES = 10
REQUEST_REPEAT_S = 0.15
REQUEST_DEDUPE_S = 0.25  # shorter than the resend interval: resends must get through
REQUEST_HOPS = 64
#: how often expiry is checked (routes expire after about a minute: coarse is fine)
SWEEP_INTERVAL_S = 2.0
#: an origin bumps its seqno at most this often in answer to requests
BUMP_MIN_GAP_S = 0.5
#: route selection switches only to a route better by max(this, current metric / 4)
SWITCH_MIN_GAIN = 128
#: triggered updates are sent again this long after the first send (lossy links)
RESEND_DELAYS_S = (0.3, 0.8)
#: links costing more than this (a clean link costs 256) get triggered updates resent
RESEND_COST_THRESHOLD = 272
YOUNG_LINK_S = 10.0
YOUNG_TABLE_DELAYS_S: tuple[float, ...] = (2.0, 6.0)
#: a wildcard request is answered with our table at most this often per neighbour
WILDCARD_GAP_S = 0.25
#: a metric increase smaller than max(this, metric / 8), or a decrease smaller than
#: this, waits for the next full update
TRIGGER_MIN_DELTA = 128
#: minimum interval between "announcement please" requests per (peer, origin)
ANN_REQUEST_GAP_S = 0.5
ANN_REQUEST_TRIES = 6
MAX_ANN_WANTED = 4096


class VerifiedAnnouncement(Protocol):
    """What routing needs of a verified announcement (``meshd.core.identity.Announcement`` is one)."""

    @property
    def node_id(self) -> NodeId: ...

    @property
    def seqno(self) -> int: ...

    @property
    def raw(self) -> bytes: ...


def is_leaf(ann: VerifiedAnnouncement) -> bool:
    """True for a leaf's announcement (``meshd.core.identity.Announcement`` with a gateway)."""
    return getattr(ann, "gateway", None) is not None


#: checks announcement bytes; raises ``RemoteProtocolError`` (Decode/Verification) if refused
Verifier = Callable[[bytes], VerifiedAnnouncement]
#: asks the node to sign and persist an announcement with seqno >= the argument; may
#: return it at once, or return None and call ``RoutingTable.set_announcement`` later
SeqnoBump = Callable[[int], VerifiedAnnouncement | None]


@dataclass(frozen=True, slots=True)
class RouteChanged:
    """The selected next hop to ``destination`` changed; ``next_hop`` None means unreachable."""

    destination: NodeId
    next_hop: NodeId | None
    metric: int
    seqno: int


@dataclass(frozen=True, slots=True)
class LeafMoved:
    """A leaf we originated a route for is attached elsewhere now (a newer signed seqno
    arrived from a neighbour): we no longer originate it."""

    leaf: NodeId
    seqno: int


RoutingEvent = RouteChanged | LeafMoved


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """One route of the table, for the admin view (``routes()``)."""

    destination: NodeId
    next_hop: NodeId
    metric: int  #: advertised metric + link cost, INFINITY if retracted
    seqno: int
    age: float  #: seconds since the last update for it
    feasible: bool
    selected: bool


class RoutingTable:
    """Pure Babel-style routing core of one node (see the module docstring)."""

    def __init__(self, *, node_id: NodeId, announcement: VerifiedAnnouncement,
                 verify: Verifier, on_seqno_request: SeqnoBump, rng: random.Random,
                 update_interval: tuple[float, float] = (16.0, 20.0),
                 trigger_delay: float = 0.005, min_flush_gap: float = 0.02,
                 slow_flush_gap: float = 0.25,
                 max_payload: int = MAX_ROUTING_PAYLOAD, stub: bool = False) -> None:
        if announcement.node_id != node_id:
            raise LocalProtocolError("own announcement is not for this node")
        self.node_id = node_id
        #: stub mode (see the module docstring): announce only ourselves, relay nothing
        self.stub = stub
        self._verify = verify
        self._bump = on_seqno_request
        self._rng = rng
        self._interval = update_interval
        self._trigger_delay = trigger_delay
        self._min_flush_gap = min_flush_gap
        self._slow_gap = slow_flush_gap
        self._max_payload = max_payload
        self.drops = DropCounter(logger)
        #: benign things ignored (old seqnos during a seqno change, duplicates): counted only
        self.ignored: Counter[str] = Counter()
        self._own_seqno = announcement.seqno
        self._anns: dict[NodeId, tuple[int, bytes]] = {node_id: (announcement.seqno,
                                                                 announcement.raw)}
        self._held_raw: dict[bytes, NodeId] = {}  # raw form of every held announcement
        self._nbr_cost: dict[NodeId, int] = {}
        self._nbr_since: dict[NodeId, float] = {}  # when each neighbour came up
        self._stub_peers: set[NodeId] = set()  # neighbours that are stubs
        self._default: NodeId | None = None  # stub mode: the router we send everything to
        self._heard: dict[NodeId, float] = {}  # last table answer from each neighbour
        self._table_sent: dict[NodeId, float] = {}  # last full table sent on a wildcard
        self._routes: dict[NodeId, dict[NodeId, Route]] = {}
        #: leaves attached here (browsers, docs/protocols.md "Leaves"): we originate their
        #: routes with their own signed seqno, leaf -> (seqno, metric)
        self._stubs: dict[NodeId, tuple[int, int]] = {}
        #: origins whose announcement names a gateway (leaves): for them the newest seqno
        #: wins route selection (an older seqno leads to a gateway the leaf has left)
        self._leaves: set[NodeId] = set()
        self._sources: dict[NodeId, Source] = {}
        self._selected: dict[NodeId, Selected] = {}
        self._retracted: dict[NodeId, tuple[int, float]] = {}  # origin -> (seqno, until)
        self._starving: dict[NodeId, Starving] = {}
        self._seen_requests: dict[tuple[NodeId, int], float] = {}
        self._ann_sent: dict[NodeId, dict[NodeId, int]] = {}
        # origin -> (seqno wanted, next ask, asks so far, neighbour to ask)
        self._ann_wanted: dict[NodeId, tuple[int, float, int, NodeId]] = {}
        self._ann_due = float("inf")  # earliest "due" in _ann_wanted
        self._out: dict[NodeId, OutQueue] = {}
        self._events: list[RoutingEvent] = []
        self._flush_at: float | None = None
        # slow queue: improvements and repetitions, merged and sent every slow_flush_gap
        self._slow: dict[NodeId, OutQueue] = {}
        self._slow_at: float | None = None
        self._last_slow = float("-inf")
        self._last_flush = float("-inf")
        self._next_full: float | None = None
        self._next_sweep: float | None = None
        self._last_bump = float("-inf")
        self._resends: list[tuple[float, int, NodeId, list[NodeId], set[NodeId], int,
                                  bool]] = []
        self._resend_seq = 0
        self._deferred: list[tuple[float, int, Callable[[float], None]]] = []
        self._earliest_expiry = float("inf")  # a lower bound: refreshes only push expiry later
        self._now = 0.0

    # -- inputs from the node ---------------------------------------------------

    def set_announcement(self, announcement: VerifiedAnnouncement, now: float) -> None:
        """Our own new (higher-seqno) signed announcement: advertise it to everyone."""
        if announcement.node_id != self.node_id:
            raise LocalProtocolError("own announcement is not for this node")
        if announcement.seqno <= self._own_seqno:
            return
        self._own_seqno = announcement.seqno
        self._anns[self.node_id] = (announcement.seqno, announcement.raw)
        self._queue_all(self.node_id, now)

    def set_stub(self, announcement: VerifiedAnnouncement, metric: int, now: float) -> bool:
        """Originate the route to a leaf attached here, under the leaf's own signed seqno.

        ``announcement`` is the leaf's (verified by the caller, naming us as its gateway);
        ``metric`` is what we advertise for it.  False (nothing changes) when we hold a newer
        announcement of the leaf: it attached elsewhere since.
        """
        leaf = announcement.node_id
        if leaf == self.node_id:
            raise LocalProtocolError("a node is not its own leaf")
        if self.stub:
            raise LocalProtocolError("a stub relays nothing: it has no leaves")
        self._tick(now)
        held = self._anns.get(leaf)
        if held is not None and held[0] > announcement.seqno:
            return False
        if held is None or announcement.seqno > held[0]:
            if held is not None:
                self._held_raw.pop(held[1], None)
            self._anns[leaf] = (announcement.seqno, announcement.raw)
            self._held_raw[announcement.raw] = leaf
        old = self._stubs.get(leaf)
        self._leaves.add(leaf)
        self._stubs[leaf] = (announcement.seqno, min(max(metric, 0), INFINITY - 1))
        self._selected.pop(leaf, None)
        self._retracted.pop(leaf, None)
        self._starving.pop(leaf, None)
        self._ann_wanted.pop(leaf, None)
        if old != self._stubs[leaf]:
            self._queue_all(leaf, now, news=old is None or old[0] != announcement.seqno)
        return True

    def drop_stub(self, leaf: NodeId, now: float) -> None:
        """Stop originating ``leaf`` (it detached, or its attachment went stale): retract it."""
        self._tick(now)
        stub = self._stubs.pop(leaf, None)
        if stub is None:
            return
        self._retracted[leaf] = (stub[0], now + RETRACT_HOLD_S)
        self._queue_all(leaf, now)
        self._reselect(leaf, now)  # a route learned from elsewhere, if any

    def stubs(self) -> dict[NodeId, int]:
        """Leaves we originate, with their seqno."""
        return {leaf: seqno for leaf, (seqno, _) in self._stubs.items()}

    def neighbour_up(self, peer: NodeId, cost: int, now: float, *, stub: bool = False) -> None:
        """``peer`` became usable at link cost ``cost``: send it our whole table soon.

        ``stub``: the peer is a stub (a phone; its role is known from the link): it gets
        only our own route, and a stub neighbour of a stub gets nothing."""
        self._tick(now)
        self._nbr_cost[peer] = min(max(cost, 1), INFINITY)
        self._nbr_since[peer] = now
        self._ann_sent[peer] = {}
        if stub:
            self._stub_peers.add(peer)
        else:
            self._stub_peers.discard(peer)
        if self.stub and stub:
            return  # two stubs: each reaches the other directly, nothing to say
        out = self._outq(peer)
        for origin in self._table_for(peer):
            out.add(origin, resend=False)
        # and ask for its table (Babel's wildcard route request, RFC 8966 §3.8.1.1); the
        # request is repeated until something arrives from the peer
        out.wildcard = True
        self._heard[peer] = float("-inf")
        self._schedule_flush(now)
        # a new link's first tables cross a lossy link once or twice: send ours again a
        # little later, so a few lost datagrams do not wait for the next full update
        since = now
        for delay in YOUNG_TABLE_DELAYS_S:
            self._later(now + delay, lambda t: self._send_table(peer, since, t))

    def _send_table(self, peer: NodeId, since: float, now: float) -> None:
        if self._nbr_since.get(peer) != since:
            return  # lost (and maybe back) since: that link has its own schedule
        out = self._slowq(peer)
        for origin in self._table_for(peer):
            out.add(origin, resend=False)
        self._schedule_slow(now)

    def neighbour_lost(self, peer: NodeId, now: float) -> None:
        """``peer`` is unusable: every route through it is gone at once."""
        self._tick(now)
        if self._nbr_cost.pop(peer, None) is None:
            return
        self._out.pop(peer, None)
        self._slow.pop(peer, None)
        self._ann_sent.pop(peer, None)
        self._heard.pop(peer, None)
        self._table_sent.pop(peer, None)
        self._nbr_since.pop(peer, None)
        self._stub_peers.discard(peer)
        for origin in sorted(self._routes):
            if self._routes[origin].pop(peer, None) is not None:
                if not self._routes[origin]:
                    del self._routes[origin]
                self._reselect(origin, now)
        if self.stub:
            self._update_default()

    def cost_changed(self, peer: NodeId, cost: int, now: float) -> None:
        """The link cost to ``peer`` changed: reconsider the routes through it."""
        self._tick(now)
        if peer not in self._nbr_cost:
            return
        self._nbr_cost[peer] = min(max(cost, 1), INFINITY)
        for origin in sorted(self._routes):
            if peer in self._routes[origin]:
                self._reselect(origin, now)

    def receive(self, peer: NodeId, data: bytes, now: float) -> None:
        """Feed one routing datagram (no channel byte); refused input is counted and dropped."""
        self._tick(now)
        if peer not in self._nbr_cost:
            # usual at link start: the peer heard us both ways before we heard it
            self.ignored["not-neighbour"] += 1
            return
        try:
            msg = decode_message(data, self._max_payload)
        except DecodeError as exc:
            self.drops.drop(exc.reason, short_id(peer), exc.detail)
            return
        if msg.stub and peer not in self._stub_peers:
            self._stub_peers.add(peer)  # it says so itself: send it only our own route
        for raw in msg.anns:
            self._learn_announcement(peer, raw)
        hold = HOLD_MULTIPLIER * msg.interval_cs / 100
        for u in msg.updates:
            self._handle_update(peer, u, hold, now)
        for origin, seqno, hops in msg.requests:
            self._handle_request(peer, origin, seqno, hops, now)
        if msg.table_answer:
            self._heard[peer] = now
        if msg.wildcard and now - self._table_sent.get(peer, float("-inf")) >= WILDCARD_GAP_S:
            self._table_sent[peer] = now
            out = self._outq(peer)
            for origin in self._table_for(peer):
                out.add(origin)  # urgent: resent on a lossy link
            out.table_answer = True
            self._schedule_flush(now)
        for origin in msg.ann_requests:  # "send me this route, with its announcement"
            if origin in self._anns:
                out = self._outq(peer)
                out.give_ann.add(origin)
                if self._advertisable_to(origin, peer) and self._wants(peer, origin):
                    out.add(origin, resend=False)
                self._schedule_flush(now)

    # -- outputs ------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[NodeId, bytes]]:
        """Messages due by ``now`` as (peer, payload without the channel byte)."""
        self._tick(now)
        self._run_timers(now)
        fast_due = self._flush_at is not None and now >= self._flush_at
        slow_due = self._slow_at is not None and now >= self._slow_at
        if not (fast_due or slow_due):
            return []
        if fast_due:
            self._flush_at = None
            self._last_flush = now
        if slow_due:
            self._slow_at = None
            self._last_slow = now
            for peer in sorted(self._slow):
                self._outq(peer).merge(self._slow[peer])
            self._slow = {}
        out: list[tuple[NodeId, bytes]] = []
        for peer in sorted(self._out):
            q = self._out[peer]
            if peer in self._nbr_cost and q:
                msgs, attached = self._build(peer, q)
                out.extend((peer, d) for d in msgs)
                # resend only on links that lose hellos (cost above a clean link's 256)
                # (a young link's cost says little yet: treat it as lossy for a while)
                lossy = self._nbr_cost[peer] > RESEND_COST_THRESHOLD or \
                    now - self._nbr_since.get(peer, now) < YOUNG_LINK_S
                urgent = [o for o, u in q.updates.items() if u] if lossy else []
                if (urgent or q.wildcard) and RESEND_DELAYS_S:
                    self._push_resend(now + RESEND_DELAYS_S[0], peer, urgent, attached, 1,
                                      q.wildcard)
        self._out = {}
        return out

    def get_timer(self) -> float | None:
        """The earliest time this core has something to do."""
        ts = [t for t in (self._flush_at, self._slow_at, self._next_full, self._next_sweep)
              if t is not None]
        ts.extend(s.next_send for s in self._starving.values())
        if self._resends:
            ts.append(self._resends[0][0])
        if self._deferred:
            ts.append(self._deferred[0][0])
        if self._ann_wanted:
            ts.append(self._ann_due)
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> None:
        """Run what is due: full updates, expiry, request resends (sends go via datagrams_to_send)."""
        self._tick(now)
        self._run_timers(now)

    def next_event(self) -> RoutingEvent | None:
        """Pop the oldest pending event, or None."""
        return self._events.pop(0) if self._events else None

    # -- queries --------------------------------------------------------------------

    def next_hop(self, destination: NodeId) -> NodeId | None:
        """The neighbour to forward to for ``destination``, or None if unreachable.

        A stub sends to a neighbour directly and everything else along its default route."""
        sel = self._selected.get(destination)
        if sel is not None:
            return sel.next_hop
        if self.stub:
            return destination if destination in self._nbr_cost else self._default
        return None

    def default_route(self) -> NodeId | None:
        """Stub mode: the router neighbour everything not adjacent goes through (else None)."""
        return self._default

    def stub_peers(self) -> list[NodeId]:
        """Neighbours known to be stubs, sorted."""
        return sorted(self._stub_peers)

    def metric(self, destination: NodeId) -> int:
        """Metric of the selected route to ``destination`` (0 for ourselves, else INFINITY)."""
        if destination == self.node_id:
            return 0
        if destination in self._stubs:
            return self._stubs[destination][1]
        sel = self._selected.get(destination)
        return sel.metric if sel is not None else INFINITY

    def routes(self, now: float | None = None) -> list[RouteInfo]:
        """Every route we hold (selected or not), sorted by destination then next hop."""
        t = self._now if now is None else now
        out = []
        for origin in sorted(self._routes):
            sel = self._selected.get(origin)
            src = self._sources.get(origin)
            for nbr in sorted(self._routes[origin]):
                r = self._routes[origin][nbr]
                out.append(RouteInfo(
                    destination=origin, next_hop=nbr, metric=self._route_metric(nbr, r),
                    seqno=r.seqno, age=max(0.0, t - r.updated),
                    feasible=update_feasible(
                        (src.seqno, src.metric) if src else None, r.seqno, r.refmetric),
                    selected=sel is not None and sel.next_hop == nbr,
                ))
        return out

    def destinations(self) -> list[NodeId]:
        """Destinations with a selected route, sorted."""
        return sorted(self._selected)

    @property
    def seqno(self) -> int:
        """Our own current (signed) seqno."""
        return self._own_seqno

    # -- receiving ------------------------------------------------------------------

    def _learn_announcement(self, peer: NodeId, raw: bytes) -> None:
        # the same announcement arrives from every neighbour: verify it once
        if raw in self._held_raw:
            self.ignored["duplicate-announcement"] += 1
            return
        try:
            ann = self._verify(raw)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(peer), exc.detail)
            return
        if ann.node_id == self.node_id:
            return  # ours: we know our seqno better than anyone
        if is_leaf(ann) and len(self._leaves) < MAX_ANN_WANTED:
            self._leaves.add(ann.node_id)
        held = self._anns.get(ann.node_id)
        if held is None or ann.seqno > held[0]:
            if held is not None:
                self._held_raw.pop(held[1], None)
            self._anns[ann.node_id] = (ann.seqno, ann.raw)
            self._held_raw[ann.raw] = ann.node_id
        elif ann.seqno < held[0]:
            self.ignored["old-announcement"] += 1

    def _handle_update(self, peer: NodeId, u: Update, hold: float, now: float) -> None:
        origin = u.origin
        if origin == self.node_id:
            return
        if origin != peer and (self.stub or peer in self._stub_peers):
            # a stub keeps routes to its neighbours only; a stub relays nothing
            self.ignored["stub-not-origin"] += 1
            return
        routes = self._routes.get(origin)
        if u.metric >= INFINITY:
            # a retraction needs no signature: a neighbour may always withdraw its own route
            gone = routes.get(peer) if routes is not None else None
            if gone is not None:
                self._earliest_expiry = min(self._earliest_expiry, now + hold)
                gone.refmetric = INFINITY
                gone.updated = now
                gone.expires = now + hold
                self._reselect(origin, now)
            return
        held = self._anns.get(origin)
        if held is None or u.seqno > held[0]:
            # not covered by an announcement we hold: ask the sender for it (if it has none,
            # the seqno was never signed and the update stays refused)
            self.ignored["unsigned-seqno"] += 1
            want = self._ann_wanted.get(origin)
            if (want is None or want[0] < u.seqno) and len(self._ann_wanted) < MAX_ANN_WANTED:
                # asked in _ask_announcements, of one neighbour at a time
                self._ann_wanted[origin] = (u.seqno, now, 0, peer)
                self._ann_due = min(self._ann_due, now)
            return
        if u.seqno < held[0]:
            self.ignored["old-seqno"] += 1  # a replay, or a neighbour not yet caught up
            return
        stub = self._stubs.get(origin)
        if stub is not None:
            if u.seqno <= stub[0]:
                self.ignored["own-leaf"] += 1  # we originate it: we know better
                return
            # the leaf signed a newer attachment through another gateway: it moved there
            del self._stubs[origin]
            self._events.append(LeafMoved(origin, u.seqno))
        if routes is None:
            routes = self._routes[origin] = {}
        r = routes.get(peer)
        if r is None:
            routes[peer] = Route(u.seqno, u.metric, now + hold, now)
            self._earliest_expiry = min(self._earliest_expiry, now + hold)
        elif r.seqno == u.seqno and r.refmetric == u.metric:
            r.expires, r.updated = now + hold, now  # nothing new: no reselection
            if origin not in self._selected:
                self._start_request(origin, now)  # still starving: ask again (rate-limited)
            return
        else:
            sel = self._selected.get(origin)
            src = self._sources.get(origin)
            if sel is not None and sel.next_hop == peer and src is not None and \
                    not update_feasible((src.seqno, src.metric), u.seqno, u.metric):
                # RFC 8966 §3.5.4: an unfeasible update of the selected route may be
                # ignored; keep the route (its old metric is still a valid fact) and ask the
                # origin for a new seqno (§3.8.2.2), so cost noise does not drop routes
                # The neighbour still has a route, so the entry does not expire: keeping an
                # old fact about a neighbour is loop-free (its FD for this seqno only shrinks).
                self.ignored["unfeasible-selected"] += 1
                r.expires, r.updated = now + hold, now
                if u.metric - r.refmetric >= max(TRIGGER_MIN_DELTA, r.refmetric // 8):
                    self._start_request(origin, now)  # clearly worse, not just cost noise
                return
            r.seqno, r.refmetric, r.expires, r.updated = u.seqno, u.metric, now + hold, now
        self._reselect(origin, now)

    def _handle_request(self, peer: NodeId, origin: NodeId, seqno: int, hops: int,
                        now: float) -> None:
        # RFC 8966 §3.8.1.2
        stub = self._stubs.get(origin)
        if stub is not None:
            # a leaf's seqno is signed by the leaf, never by us: answer with what we have
            if seqno <= stub[0]:
                self._queue(peer, origin, now)
            else:
                self.ignored["leaf-seqno"] += 1
            return
        if self.stub and origin != self.node_id:
            self.ignored["stub-no-relay"] += 1  # a stub forwards no requests
            return
        if origin == self.node_id:
            if seqno > self._own_seqno and now - self._last_bump >= BUMP_MIN_GAP_S:
                self._last_bump = now
                ann = self._bump(seqno)
                if ann is not None:
                    self.set_announcement(ann, now)
            else:
                self._queue(peer, origin, now)
            return
        sel = self._selected.get(origin)
        if sel is not None and sel.next_hop == peer:
            # Our next hop asks for a newer seqno: it has no route itself (a forwarded request
            # goes towards the origin, never back along a loop-free path), so this is an
            # implicit retraction; it makes repair independent of a lost retraction.
            r = self._routes[origin][peer]
            r.refmetric = INFINITY
            self.ignored["implicit-retraction"] += 1
            self._reselect(origin, now)
            sel = self._selected.get(origin)
        if sel is not None and sel.seqno >= seqno:
            if sel.next_hop != peer:
                self._queue(peer, origin, now)
            return
        if hops < 2:
            return
        key = (origin, seqno)
        if key in self._seen_requests:
            self.ignored["duplicate-request"] += 1
            return
        self._seen_requests[key] = now + REQUEST_DEDUPE_S
        # towards the origin: our next hop, or (if that is the requester, which has not
        # seen our retraction yet) the best other neighbour offering a route (§3.8.1.2)
        target = sel.next_hop if sel is not None and sel.next_hop != peer else \
            self._best_any(origin, exclude=peer)
        if target is None or target == peer:
            return
        self._outq(target).requests[(origin, seqno)] = hops - 1
        self._schedule_flush(now)
        # a request crosses many lossy hops: each forwarder sends it twice; the next
        # forwarder's duplicate suppression absorbs the copy if both arrive
        self._later(now + REQUEST_REPEAT_S, lambda t: self._forward_again(target, origin,
                                                                          seqno, hops - 1, t))

    def _forward_again(self, target: NodeId, origin: NodeId, seqno: int, hops: int,
                       now: float) -> None:
        sel = self._selected.get(origin)
        if target in self._nbr_cost and (sel is None or sel.seqno < seqno):
            self._outq(target).requests[(origin, seqno)] = hops
            self._schedule_flush(now, immediate=True)

    def _later(self, t: float, fn: Callable[[float], None]) -> None:
        self._resend_seq += 1
        heapq.heappush(self._deferred, (t, self._resend_seq, fn))

    # -- selection --------------------------------------------------------------

    def _route_metric(self, nbr: NodeId, r: Route) -> int:
        cost = self._nbr_cost.get(nbr, INFINITY)
        return min(INFINITY, r.refmetric + cost)

    def _reselect(self, origin: NodeId, now: float) -> None:
        if origin in self._stubs:
            return  # we originate it
        self._select(origin, now)
        if self.stub:
            self._update_default()

    def _update_default(self) -> None:
        # the router neighbour with the best route to itself; switch only to a clearly
        # better one (the selection's hysteresis)
        best: tuple[int, NodeId] | None = None
        current: int | None = None
        for peer in self._nbr_cost:
            if peer in self._stub_peers:
                continue
            sel = self._selected.get(peer)
            if sel is None or sel.next_hop != peer:
                continue
            if best is None or (sel.metric, peer) < best:
                best = (sel.metric, peer)
            if peer == self._default:
                current = sel.metric
        if best is not None and current is not None and \
                best[0] > current - max(SWITCH_MIN_GAIN, current // 4):
            return  # keep the current default
        self._default = best[1] if best is not None else None

    def _select(self, origin: NodeId, now: float) -> None:
        src = self._sources.get(origin)
        source = (src.seqno, src.metric) if src is not None else None
        best: tuple[int, NodeId, Route] | None = None
        current: tuple[int, NodeId, Route] | None = None
        old = self._selected.get(origin)
        has_unfeasible = False
        cost = self._nbr_cost
        newest = -1
        if origin in self._leaves:  # only routes with the leaf's newest seqno (its gateway)
            newest = max((r.seqno for r in self._routes.get(origin, {}).values()
                          if r.refmetric < INFINITY), default=-1)
        for nbr, r in self._routes.get(origin, {}).items():
            m = r.refmetric + cost.get(nbr, INFINITY)
            if m >= INFINITY or r.seqno < newest:
                continue
            if not update_feasible(source, r.seqno, r.refmetric):
                has_unfeasible = True
                continue
            if best is None or m < best[0] or (m == best[0] and nbr < best[1]):
                best = (m, nbr, r)
            if old is not None and nbr == old.next_hop:
                current = (m, nbr, r)
        # hysteresis (§3.6): keep a usable current route unless the best is clearly better
        if best is not None and current is not None and best[1] != current[1]:
            cm = current[0]
            if best[0] > cm - max(SWITCH_MIN_GAIN, cm // 4):
                best = current
        if best is None:
            if old is not None:
                del self._selected[origin]
                self._events.append(RouteChanged(origin, None, INFINITY, old.seqno))
                self._retracted[origin] = (old.seqno, now + RETRACT_HOLD_S)
                self._queue_all(origin, now)
            if has_unfeasible or old is not None:
                self._start_request(origin, now)
            return
        metric, nbr, r = best
        was_lost = self._retracted.pop(origin, None) is not None
        self._starving.pop(origin, None)
        # the feasibility distance never exceeds what we advertise (§3.7.3)
        if src is None or r.seqno > src.seqno or (r.seqno == src.seqno and metric < src.metric):
            self._sources[origin] = Source(r.seqno, metric, now)
        else:
            src.used = now
        if old is None:
            self._selected[origin] = Selected(nbr, r.seqno, metric)
            self._events.append(RouteChanged(origin, nbr, metric, r.seqno))
            newer = src is None or r.seqno > src.seqno
            renewed = newer and src is not None
            self._queue_all(origin, now, urgent=was_lost or renewed, news=renewed)
            return
        hop_changed = old.next_hop != nbr
        seq_changed = old.seqno != r.seqno
        delta = metric - old.metric
        # better routes spread at once (fast convergence); worse ones only when clearly worse
        big_change = delta <= -TRIGGER_MIN_DELTA or delta >= max(TRIGGER_MIN_DELTA,
                                                                 old.metric // 8)
        prev_hop = old.next_hop
        old.next_hop, old.seqno, old.metric = nbr, r.seqno, metric
        if hop_changed:
            self._events.append(RouteChanged(origin, nbr, metric, r.seqno))
        if seq_changed:
            self._queue_all(origin, now, news=True)
        elif big_change:
            self._queue_all(origin, now, urgent=False)
        elif hop_changed:
            # poison towards the new next hop, the real metric to the old one
            for p in (prev_hop, nbr):
                if p in self._nbr_cost and self._wants(p, origin):
                    self._outq(p).add(origin)
            self._schedule_flush(now, slow=True)

    def _best_any(self, origin: NodeId, exclude: NodeId) -> NodeId | None:
        best: tuple[int, NodeId] | None = None
        for nbr, r in sorted(self._routes.get(origin, {}).items()):
            m = self._route_metric(nbr, r)
            if nbr != exclude and m < INFINITY and (best is None or m < best[0]):
                best = (m, nbr)
        return best[1] if best else None

    def _start_request(self, origin: NodeId, now: float) -> None:
        # §3.8.2.1: ask for a newer seqno when only unfeasible routes are left
        if self.stub:
            return  # a stub's routes are to its neighbours: the neighbour layer repairs them
        src = self._sources.get(origin)
        held = self._anns.get(origin)
        base = max(src.seqno if src else 0, held[0] if held else 0)
        s = self._starving.get(origin)
        if s is None or s.seqno <= base:
            self._starving[origin] = Starving(base + 1, now)

    def _send_requests(self, now: float) -> None:
        for origin in sorted(self._starving):
            s = self._starving[origin]
            if s.next_send > now:
                continue
            if origin in self._selected or s.tries >= REQUEST_TRIES or not self._nbr_cost:
                del self._starving[origin]
                continue
            s.tries += 1
            s.next_send = now + min(REQUEST_RESEND_MAX_S, REQUEST_RESEND_S * (1 + s.tries // 4))
            self._seen_requests[(origin, s.seqno)] = now + REQUEST_DEDUPE_S
            for peer in sorted(self._nbr_cost):
                if peer not in self._stub_peers or peer == origin:
                    self._outq(peer).requests[(origin, s.seqno)] = REQUEST_HOPS
            self._schedule_flush(now)

    # -- sending -----------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._now = now
        if self._next_full is None:
            self._next_full = now + self._rng.uniform(*self._interval)
            self._next_sweep = now + SWEEP_INTERVAL_S

    def _run_timers(self, now: float) -> None:
        if self._next_full is not None and now >= self._next_full:
            self._next_full = now + self._rng.uniform(*self._interval)
            adv = self._advertisable()
            for peer in sorted(self._nbr_cost):
                table = adv if not (self.stub or peer in self._stub_peers) else \
                    self._table_for(peer)
                if table:
                    out = self._outq(peer)
                    for origin in table:
                        out.add(origin, resend=False)
            self._schedule_flush(now, immediate=True)
        if self._next_sweep is not None and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            self._sweep(now)
        if any(s.next_send <= now for s in self._starving.values()):
            self._send_requests(now)
        if self._resends and self._resends[0][0] <= now:
            self._run_resends(now)
        if self._ann_wanted and now >= self._ann_due:
            self._ask_announcements(now)
        while self._deferred and self._deferred[0][0] <= now:
            heapq.heappop(self._deferred)[2](now)

    def _ask_announcements(self, now: float) -> None:
        # ask the neighbour that sent an update we could not verify for the announcement
        # (and the route again), until it arrives: the answer may be lost
        next_due = float("inf")
        for origin in sorted(self._ann_wanted):
            seqno, due, asks, peer = self._ann_wanted[origin]
            if due > now:
                next_due = min(next_due, due)
                continue
            held = self._anns.get(origin)
            if (held is not None and held[0] >= seqno) or asks >= ANN_REQUEST_TRIES \
                    or peer not in self._nbr_cost:
                del self._ann_wanted[origin]
                continue
            self._ann_wanted[origin] = (seqno, now + ANN_REQUEST_GAP_S, asks + 1, peer)
            next_due = min(next_due, now + ANN_REQUEST_GAP_S)
            self._outq(peer).ann_requests[origin] = None
            self._schedule_flush(now, immediate=True)
        self._ann_due = next_due

    def _push_resend(self, t: float, peer: NodeId, origins: list[NodeId], anns: set[NodeId],
                     step: int, wildcard: bool) -> None:
        self._resend_seq += 1
        heapq.heappush(self._resends, (t, self._resend_seq, peer, origins, anns, step, wildcard))

    def _run_resends(self, now: float) -> None:
        # datagrams are unreliable: triggered updates go out again (babeld's "urgent" resends)
        while self._resends and self._resends[0][0] <= now:
            sent_at, _, peer, origins, anns, step, wildcard = heapq.heappop(self._resends)
            if peer not in self._nbr_cost:
                continue
            first_sent = sent_at - RESEND_DELAYS_S[step - 1]
            if wildcard and self._heard.get(peer, float("-inf")) > first_sent:
                wildcard = False  # the peer's table answer arrived
            if not origins and not wildcard:
                continue
            out = self._slowq(peer)  # a repetition can wait to be merged
            out.wildcard_repeat = out.wildcard_repeat or wildcard
            for origin in origins:
                out.add(origin, resend=False)
            out.force_ann |= anns
            self._schedule_slow(now)
            if step < len(RESEND_DELAYS_S):
                self._push_resend(now + RESEND_DELAYS_S[step] - RESEND_DELAYS_S[step - 1],
                                  peer, origins, anns, step + 1, wildcard)

    def _sweep(self, now: float) -> None:
        if now >= self._earliest_expiry - REFRESH_BEFORE_S:
            # a selected route close to expiry: ask its next hop for it (full updates are
            # not resent and can be lost several times in a row on a lossy link)
            for origin in sorted(self._selected):
                sel = self._selected[origin]
                r = self._routes[origin][sel.next_hop]
                if r.expires - now < REFRESH_BEFORE_S:
                    self._outq(sel.next_hop).ann_requests[origin] = None
                    self._schedule_flush(now)
        if now >= self._earliest_expiry:
            earliest = float("inf")
            for origin in sorted(self._routes):
                routes = self._routes[origin]
                expired = [n for n, r in routes.items() if r.expires <= now]
                for n in expired:
                    del routes[n]
                if not routes:
                    del self._routes[origin]
                else:
                    earliest = min(earliest, *(r.expires for r in routes.values()))
                if expired:
                    self._reselect(origin, now)
            self._earliest_expiry = earliest
        for origin in [o for o, (_, until) in self._retracted.items() if until <= now]:
            del self._retracted[origin]
        for origin in [o for o, s in self._sources.items()
                       if now - s.used > SOURCE_GC_S and o not in self._selected]:
            del self._sources[origin]
        for key in [k for k, t in self._seen_requests.items() if t <= now]:
            del self._seen_requests[key]

    def _advertisable(self) -> list[NodeId]:
        if self.stub:
            return [self.node_id]
        return [self.node_id, *sorted(self._stubs), *sorted(self._selected),
                *sorted(self._retracted)]

    def _wants(self, peer: NodeId, origin: NodeId) -> bool:
        """Whether updates for ``origin`` go to ``peer``: a stub sends only its own route
        and only to routers; a router sends a stub only its own route."""
        if self.stub or peer in self._stub_peers:
            return origin == self.node_id and not (self.stub and peer in self._stub_peers)
        return True

    def _table_for(self, peer: NodeId) -> list[NodeId]:
        if self.stub or peer in self._stub_peers:
            return [self.node_id] if self._wants(peer, self.node_id) else []
        return self._advertisable()

    def _advertisable_to(self, origin: NodeId, peer: NodeId) -> bool:
        if origin == self.node_id or origin in self._stubs:
            return True
        sel = self._selected.get(origin)
        return sel is not None and sel.next_hop != peer

    def _outq(self, peer: NodeId) -> OutQueue:
        q = self._out.get(peer)
        if q is None:
            q = self._out[peer] = OutQueue()
        return q

    def _queue(self, peer: NodeId, origin: NodeId, now: float) -> None:
        if peer in self._nbr_cost and self._wants(peer, origin):
            self._outq(peer).add(origin)
            self._schedule_flush(now)

    def _queue_all(self, origin: NodeId, now: float, *, urgent: bool = True,
                   news: bool = False) -> None:
        own = origin == self.node_id
        for peer in self._nbr_cost:
            if (self.stub or peer in self._stub_peers) and not (own and self._wants(peer, origin)):
                continue
            out = self._outq(peer)
            out.add(origin)  # triggered: resent on lossy links, whether urgent or not
            if news:
                out.news.add(origin)
        # not urgent: goes out with the next flush, at the latest after slow_flush_gap
        self._schedule_flush(now, slow=not urgent)

    def _slowq(self, peer: NodeId) -> OutQueue:
        q = self._slow.get(peer)
        if q is None:
            q = self._slow[peer] = OutQueue()
        return q

    def _schedule_slow(self, now: float) -> None:
        # what only improves routes (new routes while converging, metric changes, repeats)
        # is merged and sent every slow_flush_gap: a storm of such changes in a dense car
        # park costs a few datagrams per neighbour and second
        if self._slow_at is None:
            self._slow_at = max(now + self._slow_gap, self._last_slow + self._slow_gap)

    def _schedule_flush(self, now: float, *, immediate: bool = False, slow: bool = False) -> None:
        # Damping: what repairs routes (retractions, new seqnos, requests, answers) goes out
        # within trigger_delay, flushes min_flush_gap apart (slow: see _schedule_slow).
        if slow:
            t = max(now + self._slow_gap, self._last_flush + self._slow_gap)
        else:
            t = max(now if immediate else now + self._trigger_delay,
                    self._last_flush + self._min_flush_gap)
        if self._flush_at is None or t < self._flush_at:
            self._flush_at = t

    def _entry_for(self, peer: NodeId, origin: NodeId) -> Update | None:
        if origin == self.node_id:
            return Update(origin, self._own_seqno, 0)
        stub = self._stubs.get(origin)
        if stub is not None:
            return Update(origin, stub[0], stub[1])
        sel = self._selected.get(origin)
        if sel is not None:
            # poisoned reverse: our next hop must not route back through us
            metric = INFINITY if sel.next_hop == peer else sel.metric
            return Update(origin, sel.seqno, metric)
        ret = self._retracted.get(origin)
        if ret is not None:
            return Update(origin, ret[0], INFINITY)
        return None

    def _build(self, peer: NodeId, q: OutQueue) -> tuple[list[bytes], set[NodeId]]:
        """The datagrams for ``q``, and the origins whose announcement went with them."""
        interval_cs = round(self._interval[1] * 100)
        sent = self._ann_sent.setdefault(peer, {})
        budget = self._max_payload - OVERHEAD
        msgs: list[bytes] = []
        cur: dict[str, list[object]] = {}
        size = 0

        def flush() -> None:
            nonlocal cur, size
            if cur:
                if self.stub:
                    cur["s"] = True  # type: ignore[assignment]
                data = pack({"v": 1, "iv": interval_cs, **cur})
                if len(data) > self._max_payload:
                    raise LocalProtocolError(f"routing message of {len(data)} bytes")
                msgs.append(data)
            cur, size = {}, 0

        def add(items: list[tuple[str, object]]) -> None:
            nonlocal size
            need = sum(packed_len(v) for _, v in items)
            if size + need > budget:
                flush()
            for k, v in items:
                cur.setdefault(k, []).append(v)
            size += need

        attached: set[NodeId] = set()
        for origin, seqno in sorted(q.requests):
            add([("r", [origin, seqno, q.requests[(origin, seqno)]])])
        for origin in q.ann_requests:
            add([("q", origin)])
        for origin in sorted(q.give_ann - set(q.updates)):
            held = self._anns.get(origin)
            if held is not None:
                add([("a", held[1])])
                sent[origin] = held[0]
        if q.table_answer:
            cur["t"] = True  # type: ignore[assignment]
            size += 3
        if q.wildcard or q.wildcard_repeat:
            cur["w"] = True  # type: ignore[assignment]
            size += 3
        only_own = self.stub or peer in self._stub_peers
        for origin in q.updates:
            if only_own and not self._wants(peer, origin):
                continue  # queued before we knew the peer is a stub
            e = self._entry_for(peer, origin)
            if e is None:
                continue
            items: list[tuple[str, object]] = []
            if e.metric < INFINITY:
                held = self._anns.get(origin)
                if held is None:
                    continue
                # Announcements travel on request (each node fetches each one about once),
                # except our own, urgent news (a new seqno) and what was asked for.
                fresh = sent.get(origin) != held[0]
                if origin in q.force_ann or origin in q.give_ann or \
                        (fresh and (origin == self.node_id or origin in q.news)):
                    items.append(("a", held[1]))
                    sent[origin] = held[0]
                    attached.add(origin)
            items.append(("u", [e.origin, e.seqno, e.metric]))
            add(items)
        flush()
        return msgs, attached
