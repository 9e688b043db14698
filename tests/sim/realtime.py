"""The simulator's network on asyncio's clock: mesh packets forwarded hop by hop over ``Network`` links.

Some tests cannot run on the virtual clock: a voice call runs real aiortc
endpoints whose ICE, DTLS and RTP timers read the event loop's time.  They still
belong on the one network the routing and sync simulations use, so
``RealtimeNetwork`` keeps a ``Network`` for everything but time: the topology
and link state (``connect`` / ``disconnect``, silent ``set_up(False)`` failures
and heals, ``set_params``) and the impairments (``LinkParams``: loss,
duplication, delay + jitter, reordering), drawn by ``transit`` from the same
per-direction random streams seeded from the network seed and the two NodeIds.
Only the heap is replaced: each hop of a packet is a ``loop.call_later``.

What crosses it is a whole mesh packet, source to destination.  The path is a
routing oracle (routing converged): the shortest path over links that are up,
ties broken by NodeId order, chosen again at every hop, so a link failed while a
packet is in flight drops it (it is checked on arrival, as ``Network`` does) and
a packet reaching a relay whose route changed follows the new one.  A packet
sent as several fragments crosses each hop once per fragment and is lost when
any fragment is (a duplicated fragment is absorbed by reassembly).  Each relay a
packet reaches is reported to ``on_relay`` before it forwards it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.sim.network import LinkParams, Network, NodeId, Stats, transit

__all__ = ["RealtimeNetwork", "RealtimeStats"]


@dataclass(slots=True)
class RealtimeStats(Stats):
    """``Network``'s counters per hop transmission (``sent``, ``lost``, ``duplicated``,
    ``dropped_down``), plus end-to-end outcomes: ``delivered`` packets, ``no_route`` drops."""

    no_route: int = 0


class RealtimeNetwork:
    """A ``Network``'s links and impairments, with packets delivered in real time (see module doc)."""

    def __init__(self, seed: int, *, default: LinkParams | None = None) -> None:
        #: topology, link state and per-direction seeded impairments; its heap is never run
        self.net = Network(seed, default=default)
        self.stats = RealtimeStats()
        #: called as ``on_relay(relay, data)`` when a packet reaches a relay, before it forwards it
        self.on_relay: Callable[[NodeId, Any], None] | None = None

    # -- topology (the link layer: no node hooks, nothing here is a SimNode) ------------

    @property
    def default(self) -> LinkParams:
        return self.net.default

    def connect(self, a: NodeId, b: NodeId, params: LinkParams | None = None) -> None:
        """Create the link a<->b (both directions; ``params`` or the network default)."""
        self.net.connect(a, b, params, notify=False)

    def disconnect(self, a: NodeId, b: NodeId) -> None:
        """Remove the link a<->b (no-op if there is none); packets on it are dropped on arrival."""
        self.net.disconnect(a, b, notify=False)

    def isolate(self, a: NodeId) -> None:
        """Remove every link of ``a`` (the node died)."""
        for b in self.net.neighbours_of(a):
            self.disconnect(a, b)

    def set_up(self, a: NodeId, b: NodeId, up: bool) -> None:
        """Fail (silently drop everything, in flight too) or heal the link a<->b."""
        self.net.set_up(a, b, up)

    def set_params(self, a: NodeId, b: NodeId, params: LinkParams) -> None:
        self.net.set_params(a, b, params)

    def set_default(self, params: LinkParams) -> None:
        """New impairments for every link, present and future."""
        self.net.default = params
        for a, b in sorted(k for k in self.net.links if k[0] < k[1]):
            self.net.set_params(a, b, params)

    def has_link(self, a: NodeId, b: NodeId) -> bool:
        return (a, b) in self.net.links

    def path(self, src: NodeId, dst: NodeId) -> list[NodeId] | None:
        """The shortest path src..dst over links that are up (ties by NodeId order), or None."""
        prev: dict[NodeId, NodeId | None] = {src: None}
        queue = deque([src])
        while queue and dst not in prev:
            u = queue.popleft()
            for v in self.net.neighbours_of(u):
                if v not in prev and self.net.link_is_up(u, v):
                    prev[v] = u
                    queue.append(v)
        if dst not in prev:
            return None
        out = [dst]
        while (p := prev[out[-1]]) is not None:
            out.append(p)
        return out[::-1]

    # -- traffic -------------------------------------------------------------------

    def send(self, src: NodeId, dst: NodeId, data: Any, deliver: Callable[[Any], None], *,
             fragments: int = 1) -> bool:
        """Send ``data`` from ``src`` towards ``dst``; ``deliver(data)`` runs on arrival.

        False when there is no path now (nothing sent); True when it left ``src``, whether or
        not it arrives.  Must be called with a running event loop."""
        route = self.path(src, dst)
        if route is None or len(route) < 2:
            return False
        self._hop(src, route[1], dst, data, deliver, fragments)
        return True

    def _hop(self, u: NodeId, v: NodeId, dst: NodeId, data: Any, deliver: Callable[[Any], None],
             fragments: int) -> None:
        link = self.net.links[(u, v)]
        self.stats.sent += fragments
        copies = [transit(link.params, link.rng) for _ in range(fragments)]
        if not all(copies):
            self.stats.lost += 1
            return
        delays = copies[0] if fragments == 1 else [max(c[0] for c in copies)]
        self.stats.duplicated += len(delays) - 1
        loop = asyncio.get_running_loop()
        for delay in delays:
            loop.call_later(delay, self._arrive, u, v, dst, data, deliver, fragments)

    def _arrive(self, u: NodeId, v: NodeId, dst: NodeId, data: Any, deliver: Callable[[Any], None],
                fragments: int) -> None:
        if not self.net.link_is_up(u, v):
            self.stats.dropped_down += 1
            return
        if v == dst:
            self.stats.delivered += 1
            deliver(data)
            return
        if self.on_relay is not None:
            self.on_relay(v, data)
        route = self.path(v, dst)
        if route is None:
            self.stats.no_route += 1
            return
        self._hop(v, route[1], dst, data, deliver, fragments)
