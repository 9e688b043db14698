"""Routing on the town (issue 16): the real routing core on the virtual clock, at scale.

Theory of operation
-------------------
Cars are routers and phones are stubs (``RoutingTable(stub=True)``: they
announce only themselves and reach the mesh through a default route via a car).
Every node runs the real pure routing core (``meshd.routing.table``) with cheap
announcements (``tests.sim.mesh.CheapSigner``); the cores exchange their real
datagrams, which are counted byte for byte, lost with the radio's loss at the
current distance and delayed with its delay.

Built for speed rather than generality (``tests.sim.Network`` keeps one object
per link and direction and ticks over all pairs; this does not):

* positions move once per ``tick`` (``TownMobility.advance``) and the pairs in
  range are found with a spatial grid in numpy (``_pairs``), as sorted int64
  keys ``i * n + j``; pairs of two static phones are found once;
* the neighbour layer is not simulated hello by hello: a pair that comes into
  range is ``neighbour_up`` after ``up_delay`` (hellos heard both ways), one that
  leaves it is ``neighbour_lost`` after ``dead_after`` unless it came back (the
  neighbour core's hello timeout), its cost is the ETX of the radio's loss at
  the current distance (``256 / (1 - loss)^2``), re-reported when it moves by
  more than the neighbour core's hysteresis.  The link layer tells each end the
  peer's role (stub or router), as the link handshake does;
* one heap of events: node timers (one live entry per node, stale ones skipped)
  and datagram deliveries.

Measures: routing control bytes per link per second (every routing datagram,
plus one channel byte, both directions, over the time the link was up, after a
warm-up), as the mean over link-seconds and the p95 over links up at least
``MIN_LINK_S``; and the call connect ratio: at random times, random (caller,
callee) pairs; among pairs with a path at that time in the ground-truth graph
(pairs in range, relayed only by cars: phones relay nothing), a call connects
if following ``next_hop`` from the caller reaches the callee over pairs that are
all in range now.

Determinism: one seed drives the population, the moves, the link delays and
losses and every core's randomness; nodes and pairs are visited in index order.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from meshd.routing.neighbours import COST_HYSTERESIS
from meshd.routing.table import RoutingTable, VerifiedAnnouncement
from tests.sim.mesh import CheapSigner
from tests.sim.network import Network, sim_id
from tests.sim.town import Radio, TownMap, TownMobility, Walker

__all__ = ["RoutingRun", "TownRouting", "routing_population"]

#: share of cars among all nodes, and of phones standing at shelters among the phones
CAR_SHARE = {"town": 0.2, "disaster": 0.3}
SHELTER_PHONES = {"town": 0.25, "disaster": 1.0}
MIN_LINK_S = 10.0  #: links up less than this are left out of the p95 (a rate over 2 s says little)
MAX_HOPS = 64

I64 = npt.NDArray[np.int64]


def routing_population(n: int, scenario: str, town: TownMap,
                       rng: random.Random) -> tuple[list[Walker], int]:
    """Walkers for ``n`` nodes: the first ``n_cars`` are cars, the rest phones (standing
    within 30 m of a shelter, or carried by pedestrians)."""
    n_cars = max(2, round(n * CAR_SHARE[scenario]))
    n_shelter = round((n - n_cars) * SHELTER_PHONES[scenario])
    walkers: list[Walker] = []
    for i in range(n):
        if i < n_cars:
            at = (rng.choice(town.shelters) if scenario == "disaster"
                  else (rng.randrange(town.cols), rng.randrange(town.rows)))
            walkers.append(Walker("car", at, town.point(*at)))
        elif i < n_cars + n_shelter:
            s = rng.choice(town.shelters)
            x, y = town.point(*s)
            r, a = 30.0 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            walkers.append(Walker("phone", s, (x + r * math.cos(a), y + r * math.sin(a)),
                                  static=True))
        else:
            at = (rng.randrange(town.cols), rng.randrange(town.rows))
            walkers.append(Walker("pedestrian", at, town.point(*at)))
    return walkers, n_cars


def _pairs(xy: npt.NDArray[np.float64], radius: float, mask: npt.NDArray[np.bool_] | None
           ) -> I64:
    """Sorted keys ``i * n + j`` (i < j) of the pairs closer than ``radius``; with ``mask``,
    only pairs with at least one end in it."""
    n = len(xy)
    cx = np.floor(xy[:, 0] / radius).astype(np.int64) + 1
    cy = np.floor(xy[:, 1] / radius).astype(np.int64) + 1
    h = int(cy.max()) + 3
    cell = cx * h + cy
    order = np.argsort(cell, kind="stable")
    sc = cell[order]
    keys: list[I64] = []
    r2 = radius * radius
    for dx, dy in ((0, 0), (1, -1), (1, 0), (1, 1), (0, 1)):
        target = sc + dx * h + dy
        lo = np.searchsorted(sc, target, "left")
        hi = np.searchsorted(sc, target, "right")
        if dx == 0 and dy == 0:
            lo = np.arange(n, dtype=np.int64) + 1  # same cell: later entries only
        cnt = np.maximum(hi - lo, 0)
        total = int(cnt.sum())
        if total == 0:
            continue
        a_pos = np.repeat(np.arange(n, dtype=np.int64), cnt)
        starts = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
        b_pos = starts + np.arange(total, dtype=np.int64)
        a, b = order[a_pos], order[b_pos]
        d = xy[a] - xy[b]
        ok = (d[:, 0] ** 2 + d[:, 1] ** 2) <= r2
        if mask is not None:
            ok &= mask[a] | mask[b]
        a, b = a[ok], b[ok]
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not keys:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(keys))


@dataclass
class RoutingRun:
    """What one run measured (``TownRouting.run``)."""

    nodes: int
    cars: int
    duration_s: float
    warmup_s: float
    bytes_total: int = 0
    bytes_measured: int = 0  #: after the warm-up
    datagrams: int = 0
    link_seconds: float = 0.0  #: neighbour-up link time after the warm-up
    per_link: dict[str, list[float]] = field(default_factory=dict)  #: kind -> rates
    per_kind_bytes: dict[str, int] = field(default_factory=dict)
    per_kind_seconds: dict[str, float] = field(default_factory=dict)
    contacts: int = 0  #: pairs coming into range
    calls: int = 0  #: sampled (caller, callee) pairs
    calls_with_path: int = 0
    calls_connected: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    stubs_with_default: float = 0.0  #: phones next to a car that have a default route (mean)
    table_sizes: list[int] = field(default_factory=list)  #: car table sizes at the end
    wall_s: float = 0.0
    cpu_s: float = 0.0
    events: int = 0

    def figures(self) -> dict[str, Any]:
        rates = sorted(r for rs in self.per_link.values() for r in rs)

        def pct(xs: list[float], q: float) -> float | None:
            return xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)] if xs else None

        kinds = {}
        for k in sorted(self.per_kind_seconds):
            rs = sorted(self.per_link.get(k, []))
            kinds[k] = {"bytes_per_link_s_mean": self.per_kind_bytes.get(k, 0)
                        / max(self.per_kind_seconds[k], 1e-9),
                        "bytes_per_link_s_p95": pct(rs, 0.95), "links": len(rs)}
        ts = sorted(self.table_sizes)
        return {
            "nodes": self.nodes, "cars": self.cars, "phones": self.nodes - self.cars,
            "duration_s": self.duration_s, "warmup_s": self.warmup_s,
            "contacts": self.contacts,
            "routing_bytes_per_link_s": {
                "mean": self.bytes_measured / self.link_seconds if self.link_seconds else None,
                "p95": pct(rates, 0.95), "links": len(rates)},
            "routing_by_link_kind": kinds,
            "routing_bytes_total": self.bytes_total, "routing_datagrams": self.datagrams,
            "call_connect": (self.calls_connected / self.calls_with_path
                             if self.calls_with_path else None),
            "calls": {"sampled": self.calls, "with_path": self.calls_with_path,
                      "connected": self.calls_connected,
                      "failures": dict(sorted(self.failures.items()))},
            "stubs_near_a_car_with_default": self.stubs_with_default,
            "car_table_size": {"mean": sum(ts) / len(ts) if ts else None,
                               "p95": pct([float(x) for x in ts], 0.95),
                               "max": ts[-1] if ts else None},
            "events": self.events, "wall_s": round(self.wall_s, 1),
            "cpu_s": round(self.cpu_s, 1),
        }


class TownRouting:
    """Cars routing and phones as stubs on the town (see the module docstring)."""

    def __init__(self, n: int, scenario: str, seed: int, *, town: TownMap | None = None,
                 radio: Radio | None = None, tick: float = 1.0, dead_after: float = 2.0,
                 up_delay: tuple[float, float] = (0.1, 0.6), calls_every_s: float = 10.0,
                 calls_per_sample: int = 400) -> None:
        self.n = n
        self.town = town or TownMap()
        self.radio = radio or Radio()
        self.tick = tick
        self.dead_after = dead_after
        self.up_delay = up_delay
        self.calls_every_s = calls_every_s
        self.calls_per_sample = calls_per_sample
        rng = random.Random(seed)
        walkers, self.n_cars = routing_population(n, scenario, self.town, rng)
        self.ids = [sim_id(i) for i in range(n)]
        self.index = {nid: i for i, nid in enumerate(self.ids)}
        self.mobility = TownMobility(Network(seed), self.town, dict(zip(self.ids, walkers,
                                                                       strict=True)),
                                     rng, radio=self.radio, tick=tick,
                                     car_targets=list(self.town.shelters)
                                     if scenario == "disaster" else None)
        self.walkers = walkers
        self.static = np.array([w.static for w in walkers], dtype=np.bool_)
        self.rng = random.Random(f"{seed}:links")
        self.call_rng = random.Random(f"{seed}:calls")
        signer = CheapSigner()
        self.cores: list[RoutingTable] = []
        for i, nid in enumerate(self.ids):
            def bump(s: int, nid: bytes = nid, i: int = i) -> VerifiedAnnouncement:
                return signer.sign(nid, max(s, self.cores[i].seqno + 1))
            self.cores.append(RoutingTable(
                node_id=nid, announcement=signer.sign(nid, 1), verify=signer.verify,
                on_seqno_request=bump, rng=random.Random(seed * 1_000_003 + i),
                stub=i >= self.n_cars))
        self.xy = np.zeros((n, 2))
        self._heap: list[tuple[float, int, int, int, int, bytes]] = []
        self._seq = 0
        self._timer_at = [math.inf] * n
        self._inrange: I64 = np.zeros(0, dtype=np.int64)
        self._static_pairs: I64 | None = None
        self._up: dict[int, float] = {}  # pair key -> when it went up (or the warm-up start)
        self._cost: dict[int, int] = {}  # pair key -> cost last reported
        self._pending_up: set[int] = set()
        self._pending_lost: set[int] = set()
        self._bytes: dict[int, int] = {}  # pair key -> bytes after the warm-up
        self.now = 0.0

    # -- the event loop ------------------------------------------------------------------

    def _push(self, t: float, kind: int, a: int, b: int, data: bytes = b"") -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, a, b, data))

    def _rearm(self, i: int) -> None:
        t = self.cores[i].get_timer()
        if t is not None and t < self._timer_at[i]:
            self._timer_at[i] = t
            self._push(t, 0, i, 0)

    def _send(self, i: int, now: float, out: RoutingRun) -> None:
        n = self.n
        for peer, data in self.cores[i].datagrams_to_send(now):
            j = self.index[peer]
            size = len(data) + 1  # the channel byte
            out.bytes_total += size
            out.datagrams += 1
            key = min(i, j) * n + max(i, j)
            if now >= out.warmup_s:
                out.bytes_measured += size
                self._bytes[key] = self._bytes.get(key, 0) + size
            d = math.dist(self.walkers[i].pos, self.walkers[j].pos)
            if d > self.radio.range_m:
                continue  # out of range: lost without a trace
            p = self.radio.params(d)
            if self.rng.random() < p.loss:
                continue
            self._push(now + p.delay + self.rng.uniform(0, p.jitter), 1, i, j, data)

    def _run_events(self, until: float, out: RoutingRun) -> None:
        heap, cores = self._heap, self.cores
        while heap and heap[0][0] < until:
            t, _, kind, a, b, data = heapq.heappop(heap)
            self.now = t
            out.events += 1
            if kind == 0:  # node timer
                if self._timer_at[a] != t:
                    continue  # stale
                self._timer_at[a] = math.inf
                self._send(a, t, out)
                self._rearm(a)
            elif kind == 1:  # delivery
                cores[b].receive(self.ids[a], data, t)
                self._rearm(b)
            elif kind == 2:  # hellos heard both ways: neighbour up
                self._link_up(a * self.n + b, t, out)
            else:  # hello timeout: neighbour lost
                self._link_lost(a * self.n + b, t, out)

    # -- links ---------------------------------------------------------------------------

    def _cost_of(self, key: int) -> int:
        return int(self._costs(np.array([key], dtype=np.int64))[0])

    def _link_up(self, key: int, t: float, out: RoutingRun) -> None:
        self._pending_up.discard(key)
        if key in self._up or not self._in_range(key):
            return
        i, j = divmod(key, self.n)
        self._up[key] = max(t, out.warmup_s)
        cost = 256  # two phones: no routing between them, the cost is not used
        if i < self.n_cars or j < self.n_cars:
            cost = self._cost[key] = self._cost_of(key)
        ci, cj = self.cores[i], self.cores[j]
        ci.neighbour_up(self.ids[j], cost, t, stub=cj.stub)
        cj.neighbour_up(self.ids[i], cost, t, stub=ci.stub)
        self._rearm(i)
        self._rearm(j)

    def _link_lost(self, key: int, t: float, out: RoutingRun) -> None:
        self._pending_lost.discard(key)
        if key not in self._up or self._in_range(key):
            return
        self._close(key, t, out)
        i, j = divmod(key, self.n)
        self.cores[i].neighbour_lost(self.ids[j], t)
        self.cores[j].neighbour_lost(self.ids[i], t)
        self._rearm(i)
        self._rearm(j)

    def _close(self, key: int, t: float, out: RoutingRun) -> None:
        since = self._up.pop(key)
        self._cost.pop(key, None)
        i, j = divmod(key, self.n)
        kind = self._kind(i, j)
        if kind == "phone-phone":
            return  # no routing traffic by design: not a routing link
        dur = max(0.0, t - since)
        out.link_seconds += dur
        out.per_kind_seconds[kind] = out.per_kind_seconds.get(kind, 0.0) + dur
        b = self._bytes.pop(key, 0)
        out.per_kind_bytes[kind] = out.per_kind_bytes.get(kind, 0) + b
        if dur >= MIN_LINK_S:
            out.per_link.setdefault(kind, []).append(b / dur)

    def _kind(self, i: int, j: int) -> str:
        a, b = i < self.n_cars, j < self.n_cars
        return "car-car" if a and b else "car-phone" if a or b else "phone-phone"

    def _in_range(self, key: int) -> bool:
        for arr in (self._inrange, self._static_pairs):
            if arr is not None:
                pos = int(np.searchsorted(arr, key))
                if pos < len(arr) and int(arr[pos]) == key:
                    return True
        return False

    def _update_links(self, now: float, out: RoutingRun) -> None:
        self.xy = np.array([w.pos for w in self.walkers], dtype=np.float64)
        r = self.radio.range_m
        if self._static_pairs is None:
            idx = np.flatnonzero(self.static).astype(np.int64)
            self._static_pairs = np.zeros(0, np.int64)
            if len(idx) > 1:
                sp = _pairs(self.xy[idx], r, None)
                a, b = idx[sp // len(idx)], idx[sp % len(idx)]
                self._static_pairs = np.sort(np.minimum(a, b) * self.n + np.maximum(a, b))
            new_static = self._static_pairs.tolist()
        else:
            new_static = []
        # pairs with a moving end (the static ones, two phones at a shelter, never change)
        cur = _pairs(self.xy, r, ~self.static)
        new = np.setdiff1d(cur, self._inrange, assume_unique=True)
        gone = np.setdiff1d(self._inrange, cur, assume_unique=True)
        self._inrange = cur
        out.contacts += len(new) + len(new_static)
        n = self.n
        for key in new_static + new.tolist():
            if key in self._up:
                self._pending_lost.discard(key)  # back in time: the hellos never stopped
            elif key not in self._pending_up:
                self._pending_up.add(key)
                i, j = divmod(key, n)
                self._push(now + self.rng.uniform(*self.up_delay), 2, i, j)
        for key in gone.tolist():
            if key in self._up and key not in self._pending_lost:
                self._pending_lost.add(key)
                i, j = divmod(key, n)
                self._push(now + self.dead_after, 3, i, j)
        # costs follow the distance (the neighbour core's hysteresis); pairs of two phones
        # carry no routing and keep no cost
        if not self._cost:
            return
        keys = np.fromiter(self._cost.keys(), np.int64, len(self._cost))
        old = np.fromiter(self._cost.values(), np.int64, len(self._cost))
        cost = self._costs(keys)
        changed = np.flatnonzero(np.abs(cost - old) > COST_HYSTERESIS * old)
        for k, c in zip(keys[changed].tolist(), cost[changed].tolist(), strict=True):
            if k in self._pending_lost:
                continue  # out of range: the hellos stopped, the cost stays until lost
            i, j = divmod(k, n)
            self._cost[k] = c
            self.cores[i].cost_changed(self.ids[j], c, now)
            self.cores[j].cost_changed(self.ids[i], c, now)
            self._rearm(i)
            self._rearm(j)

    def _costs(self, keys: I64) -> I64:
        """ETX link costs of the pairs ``keys`` at their current distance (``Radio``'s loss)."""
        r = self.radio
        d = self.xy[keys // self.n] - self.xy[keys % self.n]
        f = np.minimum(np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2) / r.range_m, 1.0)
        loss = r.loss_near + (r.loss_far - r.loss_near) * f * f
        return np.minimum(np.round(256 / (1 - loss) ** 2), 0xFFFE).astype(np.int64)

    # -- calls ---------------------------------------------------------------------------

    def _sample_calls(self, out: RoutingRun) -> None:
        """``calls_per_sample`` random pairs; the ground truth from the pairs in range now:
        components of the cars (car-car pairs), a phone in every component of a car in
        range; a pair has a path if in range or sharing a component."""
        n, nc = self.n, self.n_cars
        cur = self._inrange  # every pair with a car in it (cars move)
        a, b = cur // n, cur % n
        cc = (a < nc) & (b < nc)
        parent = list(range(nc))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x
        for x, y in zip(a[cc].tolist(), b[cc].tolist(), strict=True):
            rx, ry = find(x), find(y)
            if rx != ry:
                parent[max(rx, ry)] = min(rx, ry)
        comps: dict[int, set[int]] = {}
        cp = (a < nc) != (b < nc)
        for x, y in zip(a[cp].tolist(), b[cp].tolist(), strict=True):
            car, phone = (x, y) if x < nc else (y, x)
            comps.setdefault(phone, set()).add(find(car))
        for _ in range(self.calls_per_sample):
            src, dst = self.call_rng.sample(range(n), 2)
            out.calls += 1
            cs = {find(src)} if src < nc else comps.get(src, set())
            cd = {find(dst)} if dst < nc else comps.get(dst, set())
            if not (cs & cd or self._in_range(min(src, dst) * n + max(src, dst))):
                continue
            out.calls_with_path += 1
            why = self._follow(src, dst)
            if why is None:
                out.calls_connected += 1
            else:
                out.failures[why] = out.failures.get(why, 0) + 1

    def _follow(self, src: int, dst: int) -> str | None:
        """None if ``src``'s routes lead to ``dst`` over pairs in range now, else why not."""
        cur, target = src, self.ids[dst]
        for _ in range(MAX_HOPS):
            nh = self.cores[cur].next_hop(target)
            if nh is None:
                return "no-route" if cur == src else "no-route-at-relay"
            j = self.index[nh]
            if math.dist(self.walkers[cur].pos, self.walkers[j].pos) > self.radio.range_m:
                return "hop-out-of-range"
            if j == dst:
                return None
            cur = j
        return "loop"

    # -- running -------------------------------------------------------------------------

    def run(self, duration: float, *, warmup: float = 60.0,
            progress: Callable[[dict[str, float]], None] | None = None,
            progress_every_s: float = 10.0) -> RoutingRun:
        t0, c0 = time.perf_counter(), time.process_time()
        out = RoutingRun(self.n, self.n_cars, duration, min(warmup, duration / 2))
        for i in range(self.n):
            self.cores[i].handle_timer(0.0)
            self._rearm(i)
        t = 0.0
        next_calls = out.warmup_s
        default_samples: list[float] = []
        while t < duration:
            self._update_links(t, out)
            if t >= next_calls:
                next_calls += self.calls_every_s
                self._sample_calls(out)
                default_samples.append(self._default_share())
            self._run_events(t + self.tick, out)
            t += self.tick
            self.now = t
            self.mobility.advance(t)
            if progress is not None and t % progress_every_s < self.tick / 2:
                progress(self._progress(out, t0, c0))
        for key in sorted(self._up):
            self._close(key, duration, out)
        out.stubs_with_default = (sum(default_samples) / len(default_samples)
                                  if default_samples else 0.0)
        out.table_sizes = [len(self.cores[i].destinations()) for i in range(self.n_cars)]
        out.wall_s = time.perf_counter() - t0
        out.cpu_s = time.process_time() - c0
        return out

    def _progress(self, out: RoutingRun, t0: float, c0: float) -> dict[str, float]:
        """Figures so far (links still up counted up to now)."""
        nc, n = self.n_cars, self.n
        open_s = sum(max(0.0, self.now - since) for key, since in self._up.items()
                     if key // n < nc or key % n < nc)
        secs = out.link_seconds + open_s
        return {"t": self.now, "cpu_s": time.process_time() - c0,
                "wall_s": time.perf_counter() - t0, "events": out.events,
                "bytes_per_link_s": out.bytes_measured / secs if secs else 0.0,
                "calls_with_path": out.calls_with_path, "calls_connected": out.calls_connected}

    def _default_share(self) -> float:
        """Of the phones with a car neighbour up for a second or more, the share with a
        default route."""
        n, nc = self.n, self.n_cars
        near: set[int] = set()
        for key, since in self._up.items():
            i, j = divmod(key, n)
            if (i < nc) != (j < nc) and self.now - since >= 1.0:
                near.add(j if i < nc else i)
        if not near:
            return 1.0
        return sum(1 for p in near if self.cores[p].default_route() is not None) / len(near)
