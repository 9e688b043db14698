"""A town for the simulator: a street grid, cars and pedestrians on it, a ~100 m radio.

Theory of operation
-------------------
``TownMap`` is a Manhattan street grid in the spirit of the ONE simulator's
Helsinki scenario (about 4.5 x 3.4 km, one street every ~250 m), with shelters
and a dealer at fixed intersections.  Every mobile node walks a path along the
streets: from an intersection to a destination intersection (x leg then y leg,
or y then x), pauses there, and picks the next.  Cars drive 10-50 km/h and go
anywhere (in the disaster variant: from shelter to shelter); pedestrians walk
0.5-1.5 m/s a few blocks at a time; phones at a shelter and the dealer stand
still (``Walker.static``).

``TownMobility`` moves every node each ``tick`` and turns distance into links
on a ``tests.sim.Network``: a pair closer than ``radio.range_m`` is
``connect``-ed (``link_up``); one that drifts out of range fails silently at
once and is ``disconnect``-ed (``link_down``) after ``idle_timeout`` unless it
came back.  Each tick the impairments of every link follow the distance
(``Radio.params``: delay and loss grow with it), in 10 m steps.  ``on_tick``
callbacks see the pairs in range, which is all an observer needs for ideal
(zero-transfer-time) reachability.

Determinism: every choice comes from one seeded ``random.Random`` and nodes are
visited in sorted NodeId order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.sim.network import LinkParams, Network, NodeId, pairs_within

__all__ = ["Radio", "TownMap", "TownMobility", "Walker"]

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Radio:
    """About 100 m of Wi-Fi: delay and loss grow with distance."""

    range_m: float = 100.0
    delay_near_s: float = 0.002
    delay_far_s: float = 0.012
    loss_near: float = 0.01
    loss_far: float = 0.30

    def params(self, distance_m: float) -> LinkParams:
        f = min(max(distance_m / self.range_m, 0.0), 1.0)
        return LinkParams(loss=self.loss_near + (self.loss_far - self.loss_near) * f * f,
                          delay=self.delay_near_s + (self.delay_far_s - self.delay_near_s) * f,
                          jitter=0.002)


@dataclass(frozen=True)
class TownMap:
    """A street grid ``cols`` x ``rows`` intersections over ``width_m`` x ``height_m``."""

    width_m: float = 4500.0
    height_m: float = 3400.0
    cols: int = 19
    rows: int = 14
    shelters: tuple[tuple[int, int], ...] = ((3, 3), (9, 2), (15, 3), (2, 10), (9, 7),
                                             (16, 10), (6, 12), (12, 12))
    dealer: tuple[int, int] = (9, 6)

    def point(self, ix: int, iy: int) -> Point:
        return (ix * self.width_m / (self.cols - 1), iy * self.height_m / (self.rows - 1))

    def shelter_points(self) -> list[Point]:
        return [self.point(*s) for s in self.shelters]

    def dealer_point(self) -> Point:
        return self.point(*self.dealer)


@dataclass
class Walker:
    """One node's motion: a position, the intersections ahead, a speed, a pause."""

    kind: str  # "car", "pedestrian", "phone", "dealer"
    at: tuple[int, int]  # the last intersection reached (or where it stands)
    pos: Point
    static: bool = False
    path: list[tuple[int, int]] = field(default_factory=list)
    speed: float = 0.0
    pause_until: float = 0.0


class TownMobility:
    """Moves ``walkers`` on ``town`` and keeps ``net``'s links in step (see module docstring)."""

    def __init__(self, net: Network, town: TownMap, walkers: dict[NodeId, Walker],
                 rng: random.Random, *, radio: Radio | None = None, tick: float = 1.0,
                 idle_timeout: float = 3.0, car_targets: list[tuple[int, int]] | None = None,
                 pedestrian_blocks: int = 3) -> None:
        self.net = net
        self.town = town
        self.walkers = walkers
        self.rng = rng
        self.radio = radio or Radio()
        self.tick = tick
        self.idle_timeout = idle_timeout
        self.car_targets = car_targets
        self.pedestrian_blocks = pedestrian_blocks
        self.on_tick: list[Callable[[float, list[tuple[NodeId, NodeId]]], None]] = []
        self.contacts = 0  #: link_up events (contacts opened)
        self.link_seconds = 0.0  #: pairs in range x time, summed over ticks
        self._down_since: dict[tuple[NodeId, NodeId], float] = {}
        self._params: dict[int, LinkParams] = {}
        self._order = sorted(walkers)
        self._running = False
        #: pairs of static nodes in range (they never change: found once, linked once)
        self._static_pairs: list[tuple[NodeId, NodeId]] | None = None
        self._static_set: frozenset[tuple[NodeId, NodeId]] = frozenset()

    # -- moving ---------------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._update_links()
        self.net.schedule(self.net.now + self.tick, self._step)

    def stop(self) -> None:
        self._running = False

    def _pick(self, w: Walker) -> None:
        t = self.town
        if w.kind == "car":
            if self.car_targets:
                dest = self.rng.choice([c for c in self.car_targets if c != w.at]
                                       or self.car_targets)
            else:
                dest = (self.rng.randrange(t.cols), self.rng.randrange(t.rows))
            w.speed = self.rng.uniform(10.0, 50.0) / 3.6
        else:
            b = self.pedestrian_blocks
            dest = (min(max(w.at[0] + self.rng.randint(-b, b), 0), t.cols - 1),
                    min(max(w.at[1] + self.rng.randint(-b, b), 0), t.rows - 1))
            w.speed = self.rng.uniform(0.5, 1.5)
        (x0, y0), (x1, y1) = w.at, dest
        xs = [(x, y0) for x in _steps(x0, x1)]
        ys = [(x1, y) for y in _steps(y0, y1)]
        if self.rng.random() < 0.5:  # y first instead
            ys = [(x0, y) for y in _steps(y0, y1)]
            xs = [(x, y1) for x in _steps(x0, x1)]
            w.path = ys + xs
        else:
            w.path = xs + ys

    def _move(self, w: Walker, now: float) -> None:
        budget = self.tick
        while budget > 0:
            if not w.path:
                if now < w.pause_until:
                    return
                if w.speed > 0:  # arrived: pause, then pick anew
                    w.speed = 0.0
                    w.pause_until = now + self.rng.uniform(0.0, 60.0)
                    return
                self._pick(w)
                if not w.path:
                    return
            tx, ty = self.town.point(*w.path[0])
            x, y = w.pos
            d = math.hypot(tx - x, ty - y)
            step = w.speed * budget
            if step >= d:
                w.pos, w.at = (tx, ty), w.path.pop(0)
                budget -= d / w.speed if w.speed else budget
                if not w.path:
                    return
            else:
                w.pos = (x + (tx - x) * step / d, y + (ty - y) * step / d)
                return

    def advance(self, now: float) -> None:
        """Move every mobile walker by one ``tick`` (without touching links)."""
        for n in self._order:
            w = self.walkers[n]
            if not w.static:
                self._move(w, now)

    def _step(self) -> None:
        if not self._running:
            return
        now = self.net.now
        self.advance(now)
        self._update_links()
        self.net.schedule(now + self.tick, self._step)

    # -- links ----------------------------------------------------------------------------

    def _link_params(self, d: float) -> LinkParams:
        bucket = int(d // 10)
        p = self._params.get(bucket)
        if p is None:
            p = self._params[bucket] = self.radio.params(bucket * 10 + 5.0)
        return p

    def _pairs_in_range(self, positions: dict[NodeId, Point]) -> tuple[
            list[tuple[NodeId, NodeId]], frozenset[tuple[NodeId, NodeId]]]:
        """Every pair in range, sorted, and the static pairs among them.  The static pairs
        are found once (static nodes never move); each tick only pairs with a moving node
        are looked for, through a grid of range-sized cells."""
        r = self.radio.range_m
        if self._static_pairs is None:
            fixed = {n: w.pos for n, w in self.walkers.items() if w.static}
            self._static_pairs = sorted(pairs_within(fixed, r))
            self._static_set = frozenset(self._static_pairs)
        cells: dict[tuple[int, int], list[NodeId]] = {}
        for n, (x, y) in positions.items():
            cells.setdefault((int(x // r), int(y // r)), []).append(n)
        walkers, r2 = self.walkers, r * r
        moving: list[tuple[NodeId, NodeId]] = []
        for a in self._order:
            if walkers[a].static:
                continue
            ax, ay = positions[a]
            cx, cy = int(ax // r), int(ay // r)
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    for b in cells.get((cx + dx, cy + dy), ()):
                        if b == a or (b < a and not walkers[b].static):
                            continue  # (a pair of moving nodes: once, from its lower id)
                        bx, by = positions[b]
                        if (ax - bx) ** 2 + (ay - by) ** 2 <= r2:
                            moving.append((a, b) if a < b else (b, a))
        moving.sort()
        return sorted(self._static_pairs + moving), self._static_set

    def _update_links(self) -> None:
        net, now = self.net, self.net.now
        links = net.links
        positions = {n: w.pos for n, w in self.walkers.items()}
        in_range, static = self._pairs_in_range(positions)
        in_set = set(in_range)
        self.link_seconds += len(in_range) * self.tick
        down_since = self._down_since
        for a, b in in_range:
            link = links.get((a, b))
            if link is not None and (a, b) in static:
                continue  # (linked at the first tick; never moves, never fails)
            p = self._link_params(math.dist(positions[a], positions[b]))
            if link is None:
                net.connect(a, b, p)
                self.contacts += 1
            else:
                if not link.up:
                    net.set_up(a, b, True)
                if link.params is not p:
                    net.set_params(a, b, p)
            if down_since:
                down_since.pop((a, b), None)
        for a, b in sorted(k for k in net.links if k[0] < k[1] and k not in in_set):
            if net.link_is_up(a, b):
                net.set_up(a, b, False)
                self._down_since[(a, b)] = now
            elif now - self._down_since.get((a, b), now) >= self.idle_timeout:
                self._down_since.pop((a, b), None)
                net.disconnect(a, b)
        for fn in self.on_tick:
            fn(now, in_range)


def _steps(a: int, b: int) -> list[int]:
    """The grid indices after ``a`` up to and including ``b``."""
    if a == b:
        return []
    s = 1 if b > a else -1
    return list(range(a + s, b + s, s))
