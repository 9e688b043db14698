"""Deterministic in-memory network simulator for pure protocol cores.

Theory of operation
-------------------
A ``Network`` holds simulated nodes (anything with the ``SimNode`` methods:
``receive(src, data, now)``, ``datagrams_to_send(now)``, ``get_timer()``,
``handle_timer(now)``; optionally ``link_up(peer, now)``, ``link_down(peer,
now)`` and ``next_event()``) and symmetric links between them.  One heap holds
everything that will happen: datagram deliveries, node timers and scheduled
actions (link failures, heals, test callbacks).  The virtual clock jumps to the
earliest entry; nothing sleeps.

Each direction of a link has its own ``random.Random`` seeded from the network
seed and the two NodeIds, and applies loss, duplication, delay + jitter and
reordering (an extra delay for a fraction of datagrams).  A link that *fails*
drops everything silently (a car drove out of range: the link layer notices
nothing, the hello core must); a *heal* lets traffic through again.  ``connect``
and ``disconnect`` model the link layer itself coming and going, and call the
nodes' ``link_up`` / ``link_down``.

Determinism: iteration is always in sorted NodeId order, ties in the heap are
broken by an insertion counter, and all randomness comes from seeded
``random.Random`` instances, so the same seed gives the same event log.

Every event a node emits (``next_event``) is appended to ``log`` as a
``LogEntry(time, node, event)``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

NodeId = bytes

__all__ = [
    "LinkParams",
    "LogEntry",
    "Mobility",
    "Network",
    "SimError",
    "SimNode",
    "pairs_within",
    "sim_id",
    "transit",
]


class SimError(Exception):
    """The simulation itself went wrong (a node busy-looping on its timer, a bad call)."""


class SimNode(Protocol):
    """What the simulator needs from a node: a pure core driven by bytes and time."""

    def receive(self, src: NodeId, data: bytes, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[NodeId, bytes]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...


def sim_id(i: int) -> NodeId:
    """A deterministic 16-byte NodeId for simulated node number ``i``."""
    return hashlib.sha256(b"carmesh-sim" + i.to_bytes(4, "big")).digest()[:16]


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Impairments of one link direction (delays in seconds, rates as fractions)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0  #: fraction of datagrams held back by ``reorder_delay``
    delay: float = 0.005
    jitter: float = 0.0  #: extra uniform delay in [0, jitter]
    reorder_delay: float = 0.03


def transit(p: LinkParams, rng: random.Random) -> list[float]:
    """One datagram crossing a link direction: the delay of each copy that arrives.

    ``[]`` is a loss, two entries a duplicate.  The only place impairments draw from a link's
    random stream, so the virtual-clock ``Network`` and the real-time driver
    (``tests.sim.realtime``) impair identically for the same seed."""
    if p.loss and rng.random() < p.loss:
        return []
    copies = 2 if p.duplicate and rng.random() < p.duplicate else 1
    delays: list[float] = []
    for _ in range(copies):
        delay = p.delay + (rng.uniform(0.0, p.jitter) if p.jitter else 0.0)
        if p.reorder and rng.random() < p.reorder:
            delay += p.reorder_delay
        delays.append(delay)
    return delays


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One event emitted by a node, with the virtual time it was emitted at."""

    time: float
    node: NodeId
    event: Any


@dataclass(slots=True)
class _Link:
    params: LinkParams
    rng: random.Random
    up: bool = True


_ACTION, _DELIVER, _TIMER = 0, 1, 2


@dataclass(slots=True)
class Stats:
    sent: int = 0
    delivered: int = 0
    lost: int = 0
    dropped_down: int = 0
    duplicated: int = 0
    bytes_sent: int = 0
    max_datagram: int = 0
    timers: int = 0


class Network:
    """A virtual clock, nodes, and impaired links between them (see module docstring)."""

    def __init__(self, seed: int, *, default: LinkParams | None = None,
                 log_filter: Callable[[Any], bool] | None = None) -> None:
        self.seed = seed
        self.default = default or LinkParams()
        self.now = 0.0
        self.nodes: dict[NodeId, SimNode] = {}
        self.links: dict[tuple[NodeId, NodeId], _Link] = {}
        self.log: list[LogEntry] = []
        self.stats = Stats()
        self.max_datagram_size: int | None = None
        self._log_filter = log_filter
        self._heap: list[tuple[float, int, int, Any]] = []
        self._counter = 0
        self._timer_at: dict[NodeId, float | None] = {}
        self._busy: dict[NodeId, tuple[float, int]] = {}
        self._observers: list[Callable[[LogEntry], None]] = []

    # -- building ----------------------------------------------------------------

    def add_node(self, node_id: NodeId, node: SimNode) -> None:
        """Add a node; its timer is consulted at once."""
        if node_id in self.nodes:
            raise SimError("duplicate node")
        self.nodes[node_id] = node
        self._timer_at[node_id] = None
        self._touch(node_id)

    def replace_node(self, node_id: NodeId, node: SimNode) -> None:
        """Put a new object in a node's place (a crash and restart: it starts from what it
        reads from its durable state); its timer is consulted at once.  Datagrams in flight
        to it are delivered to the new object, as they would be to the restarted process."""
        if node_id not in self.nodes:
            raise SimError("no such node")
        self.nodes[node_id] = node
        self._timer_at[node_id] = None
        self._touch(node_id)

    def connect(self, a: NodeId, b: NodeId, params: LinkParams | None = None, *,
                notify: bool = True) -> None:
        """Create the link a<->b now (both directions, same impairments); calls ``link_up``."""
        if a == b or (a, b) in self.links:
            raise SimError("bad or duplicate link")
        p = params or self.default
        for x, y in ((a, b), (b, a)):
            self.links[(x, y)] = _Link(p, random.Random(f"{self.seed}:{x.hex()}:{y.hex()}"))
        if notify:
            for x, y in ((a, b), (b, a)):
                hook = getattr(self.nodes[x], "link_up", None)
                if hook is not None:
                    hook(y, self.now)
                    self._touch(x)

    def disconnect(self, a: NodeId, b: NodeId, *, notify: bool = True) -> None:
        """Remove the link a<->b now; calls ``link_down`` on both ends."""
        self.links.pop((a, b), None)
        self.links.pop((b, a), None)
        if notify:
            for x, y in ((a, b), (b, a)):
                hook = getattr(self.nodes[x], "link_down", None)
                if hook is not None:
                    hook(y, self.now)
                    self._touch(x)

    def set_params(self, a: NodeId, b: NodeId, params: LinkParams) -> None:
        """Change the impairments of both directions of an existing link."""
        for k in ((a, b), (b, a)):
            self.links[k].params = params

    def set_up(self, a: NodeId, b: NodeId, up: bool) -> None:
        """Fail (silently drop everything) or heal the link a<->b now."""
        for k in ((a, b), (b, a)):
            self.links[k].up = up

    def fail_link(self, a: NodeId, b: NodeId, at: float) -> None:
        """Schedule a silent failure of a<->b at virtual time ``at``."""
        self.schedule(at, lambda: self.set_up(a, b, False))

    def heal_link(self, a: NodeId, b: NodeId, at: float) -> None:
        """Schedule the heal of a<->b at virtual time ``at``."""
        self.schedule(at, lambda: self.set_up(a, b, True))

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        """Run ``action()`` at virtual time ``at`` (before deliveries and timers due then)."""
        self._push(max(at, self.now), _ACTION, action)

    def observe(self, fn: Callable[[LogEntry], None]) -> None:
        """Call ``fn`` for every log entry as it is emitted."""
        self._observers.append(fn)

    def neighbours_of(self, a: NodeId) -> list[NodeId]:
        """Nodes with a link (up or failed) from ``a``, sorted."""
        return sorted(y for (x, y) in self.links if x == a)

    def link_is_up(self, a: NodeId, b: NodeId) -> bool:
        link = self.links.get((a, b))
        return link is not None and link.up

    # -- running -----------------------------------------------------------------

    def run_until(self, end: float, *, stop: Callable[[], bool] | None = None) -> None:
        """Process everything due up to virtual time ``end`` (or until ``stop()`` is true)."""
        while self._heap and self._heap[0][0] <= end:
            t, _, kind, payload = heapq.heappop(self._heap)
            if kind == _TIMER:
                node_id, when = payload
                if self._timer_at.get(node_id) != when:
                    continue  # superseded
                self._timer_at[node_id] = None
            self.now = max(self.now, t)
            if kind == _ACTION:
                payload()
            elif kind == _DELIVER:
                dst, src, data = payload
                link = self.links.get((src, dst))
                if link is None or not link.up:
                    self.stats.dropped_down += 1
                    continue
                self.stats.delivered += 1
                self.nodes[dst].receive(src, data, self.now)
                self._touch(dst)
            else:
                node_id = payload[0]
                self._check_busy(node_id)
                self.stats.timers += 1
                self.nodes[node_id].handle_timer(self.now)
                self._touch(node_id)
            if stop is not None and stop():
                return
        self.now = max(self.now, end)

    def run_for(self, duration: float, *, stop: Callable[[], bool] | None = None) -> None:
        """``run_until(now + duration)``."""
        self.run_until(self.now + duration, stop=stop)

    # -- internals ---------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (t, self._counter, kind, payload))

    def _check_busy(self, node_id: NodeId) -> None:
        last_t, n = self._busy.get(node_id, (-1.0, 0))
        n = n + 1 if last_t == self.now else 1
        self._busy[node_id] = (self.now, n)
        if n > 10_000:
            raise SimError(f"node {node_id.hex()[:8]} keeps asking for a timer at {self.now}")

    def _touch(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        for dst, data in node.datagrams_to_send(self.now):
            self._send(node_id, dst, data)
        next_event = getattr(node, "next_event", None)
        if next_event is not None:
            while (ev := next_event()) is not None:
                if self._log_filter is None or self._log_filter(ev):
                    entry = LogEntry(self.now, node_id, ev)
                    self.log.append(entry)
                    for fn in self._observers:
                        fn(entry)
        t = node.get_timer()
        if t is not None:
            t = max(t, self.now)
        if t != self._timer_at.get(node_id):
            self._timer_at[node_id] = t
            if t is not None:
                self._push(t, _TIMER, (node_id, t))

    def _send(self, src: NodeId, dst: NodeId, data: bytes) -> None:
        self.stats.sent += 1
        self.stats.bytes_sent += len(data)
        self.stats.max_datagram = max(self.stats.max_datagram, len(data))
        if self.max_datagram_size is not None and len(data) > self.max_datagram_size:
            raise SimError(f"datagram of {len(data)} bytes > {self.max_datagram_size}")
        link = self.links.get((src, dst))
        if link is None or not link.up:
            self.stats.dropped_down += 1
            return
        delays = transit(link.params, link.rng)
        if not delays:
            self.stats.lost += 1
            return
        self.stats.duplicated += len(delays) - 1
        for delay in delays:
            self._push(self.now + delay, _DELIVER, (dst, src, data))


@dataclass
class Mobility:
    """Nodes moving in a square; links form within ``radius`` and fail beyond it.

    Every ``tick`` seconds each node moves by its velocity (bouncing off the
    walls).  A pair coming into range for the first time is ``connect``-ed
    (the link layer connects: ``link_up``); a pair leaving range has its link
    fail silently; coming back heals it; a link failed for ``idle_timeout``
    is ``disconnect``-ed (the link layer gives up: ``link_down``).
    """

    net: Network
    positions: dict[NodeId, tuple[float, float]]
    radius: float
    speed: float = 1.0
    size: float = 100.0
    tick: float = 0.25
    idle_timeout: float = 10.0
    params: LinkParams | None = None
    velocities: dict[NodeId, tuple[float, float]] = field(default_factory=dict)
    _down_since: dict[tuple[NodeId, NodeId], float] = field(default_factory=dict)
    _running: bool = False

    def stop(self) -> None:
        """Stop moving (links stay as they are)."""
        self._running = False

    def start(self, rng: random.Random) -> None:
        """Give every node a random heading and begin ticking at the current time."""
        for n in sorted(self.positions):
            angle = rng.uniform(0, 2 * math.pi)
            self.velocities[n] = (self.speed * math.cos(angle), self.speed * math.sin(angle))
        self._update_links()
        self._running = True
        self.net.schedule(self.net.now + self.tick, self._step)

    def _step(self) -> None:
        if not self._running:
            return
        for n in sorted(self.positions):
            (x, y), (vx, vy) = self.positions[n], self.velocities[n]
            x, y = x + vx * self.tick, y + vy * self.tick
            if not 0 <= x <= self.size:
                vx, x = -vx, min(max(x, 0.0), self.size)
            if not 0 <= y <= self.size:
                vy, y = -vy, min(max(y, 0.0), self.size)
            self.positions[n], self.velocities[n] = (x, y), (vx, vy)
        self._update_links()
        self.net.schedule(self.net.now + self.tick, self._step)

    def _update_links(self) -> None:
        in_range = set(pairs_within(self.positions, self.radius))
        now = self.net.now
        for a, b in sorted(in_range):
            if (a, b) not in self.net.links:
                self.net.connect(a, b, self.params)
            elif not self.net.link_is_up(a, b):
                self.net.set_up(a, b, True)
            self._down_since.pop((a, b), None)
        for a, b in sorted(k for k in self.net.links if k[0] < k[1]):
            if (a, b) in in_range:
                continue
            if self.net.link_is_up(a, b):
                self.net.set_up(a, b, False)
                self._down_since[(a, b)] = now
            elif now - self._down_since.get((a, b), now) >= self.idle_timeout:
                self._down_since.pop((a, b), None)
                self.net.disconnect(a, b)


def pairs_within(positions: dict[NodeId, tuple[float, float]],
                 radius: float) -> Iterable[tuple[NodeId, NodeId]]:
    """All pairs (a < b) closer than ``radius``, found through a grid of radius-sized cells."""
    cells: dict[tuple[int, int], list[NodeId]] = {}
    for n in sorted(positions):
        x, y = positions[n]
        cells.setdefault((int(x // radius), int(y // radius)), []).append(n)
    r2 = radius * radius
    for (cx, cy) in sorted(cells):
        for a in cells[(cx, cy)]:
            ax, ay = positions[a]
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for b in cells.get((cx + dx, cy + dy), ()):
                        if a < b:
                            bx, by = positions[b]
                            if (ax - bx) ** 2 + (ay - by) ** 2 <= r2:
                                yield a, b
