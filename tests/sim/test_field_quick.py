"""The town model and a small field run (``bench/field.py``) on the simulator's virtual clock.

The field run spreads two bulletins through 60 nodes in a small town for ten
simulated minutes with the real sync session core and apply planner, beside
epidemic flooding and the ideal over the same contacts; the thresholds fail
when dissemination breaks (coverage, delay against epidemic) or when sync's
cost runs away (bytes per link-second in range, bytes against epidemic).
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from bench.field import run
from tests.sim import Network, Radio, TownMap, TownMobility, Walker, sim_id

SMALL = TownMap(width_m=1500, height_m=1200, cols=7, rows=6,
                shelters=((1, 1), (5, 1), (1, 4), (5, 4)), dealer=(3, 3))


class _Quiet:
    """A node that sends nothing and records its link events."""

    def __init__(self) -> None:
        self.ups = 0
        self.downs = 0

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def link_up(self, peer: bytes, now: float) -> None:
        self.ups += 1

    def link_down(self, peer: bytes, now: float) -> None:
        self.downs += 1


def test_town_moves_along_streets_at_their_speeds_and_links_follow_range() -> None:
    rng = random.Random(3)
    net = Network(3)
    walkers: dict[bytes, Walker] = {}
    nodes: dict[bytes, _Quiet] = {}
    for i in range(40):
        kind = ("car", "pedestrian", "phone")[i % 3]
        at = (rng.randrange(SMALL.cols), rng.randrange(SMALL.rows))
        nid = sim_id(i)
        walkers[nid] = Walker(kind, at, SMALL.point(*at), static=kind == "phone")
        nodes[nid] = _Quiet()
        net.add_node(nid, nodes[nid])
    mob = TownMobility(net, SMALL, walkers, rng)
    xs = {round(SMALL.point(i, 0)[0], 6) for i in range(SMALL.cols)}
    ys = {round(SMALL.point(0, j)[1], 6) for j in range(SMALL.rows)}
    last: dict[bytes, tuple[float, float]] = {n: w.pos for n, w in walkers.items()}
    fastest = {"car": 0.0, "pedestrian": 0.0, "phone": 0.0}

    def check(now: float, pairs: list[tuple[bytes, bytes]]) -> None:
        for n, w in walkers.items():
            x, y = w.pos
            assert round(x, 6) in xs or round(y, 6) in ys, (w.kind, w.pos)  # on a street
            fastest[w.kind] = max(fastest[w.kind], math.dist(last[n], w.pos))
            last[n] = w.pos
        in_range = set(pairs)
        for a, wa in walkers.items():
            for b, wb in walkers.items():
                if a < b:
                    close = math.dist(wa.pos, wb.pos) <= Radio().range_m
                    assert ((a, b) in in_range) == close
                    assert net.link_is_up(a, b) == close
    mob.on_tick.append(check)
    mob.start()
    net.run_until(900.0)
    assert fastest["phone"] == 0.0
    assert 0.0 < fastest["pedestrian"] <= 1.5 + 1e-9
    assert 1.5 < fastest["car"] <= 50 / 3.6 + 1e-9
    ups = sum(n.ups for n in nodes.values())
    downs = sum(n.downs for n in nodes.values())
    assert ups == 2 * mob.contacts and mob.contacts > 20
    assert downs > 0  # contacts close as nodes move apart


def _figures(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["coverage"], r["bytes_vs_epidemic"], r["delay_p95_vs_epidemic"],
            r["sync"]["bytes"], r["epidemic"]["bytes"], r["contacts"], r["coverage_curve"])


def test_field_is_deterministic_by_seed() -> None:
    a = run(30, "disaster", 5, 240.0, SMALL)
    b = run(30, "disaster", 5, 240.0, SMALL)
    c = run(30, "disaster", 6, 240.0, SMALL)
    assert _figures(a) == _figures(b)
    assert _figures(a) != _figures(c)


@pytest.fixture(scope="module")
def field() -> dict[str, Any]:
    return run(60, "town", 1, 600.0, SMALL)


def test_bulletins_reach_the_ever_connected_nodes(field: dict[str, Any]) -> None:
    assert field["coverage"] >= 0.9  # measured 0.958 (epidemic 0.967, the ideal 0.975)
    assert field["sync"]["coverage_of_ideal"] >= 0.95  # measured 0.983
    assert field["epidemic"]["coverage"] >= 0.9
    assert field["ideal"]["coverage"] >= field["sync"]["coverage"]
    assert field["call_connect"] is None  # calls are not simulated (yet)
    curve = field["coverage_curve"]
    assert curve["sync"][-1] > curve["sync"][0] == 0  # nobody holds both before the posts


def test_bulletins_are_as_fast_as_flooding(field: dict[str, Any]) -> None:
    assert field["delay_p95_vs_epidemic"] <= 1.5  # measured 1.00


def test_sync_cost_stays_below_flooding(field: dict[str, Any]) -> None:
    # The epidemic baseline is honest: it sends its summary vector at every contact.
    assert field["epidemic"]["vector_bytes"] > 0
    # Measured 0.64 x epidemic (bulletins and mail; 0.84 x for the bulletins alone) and
    # ~22 B/s per link in range; a reconciliation storm or blind pushes break these bounds
    # (the previous schedule, reconcile every 30 s and push on commit: 2.8 x epidemic for
    # the bulletins alone).
    assert field["bytes_vs_epidemic"] <= 1.0
    assert field["sync"]["bytes_per_link_second"] <= 40
    assert field["sync"]["sessions_moved"] > 0
    # sessions open only where the digests differ: few find nothing to move
    assert field["sync"]["sessions_idle"] <= field["sync"]["sessions_moved"] / 2


def test_mail_goes_by_custody_not_flooding(field: dict[str, Any]) -> None:
    m = field["mail"]
    assert m["messages"] == 10 and m["deliverable_ideal"] >= 5
    # Sync forwards mail by binary spray-and-wait (sync.custody, 8 copies), not to every
    # node: it delivers at least what the spray-and-wait baseline (8 copies) delivers, and
    # what it carries stays far below flooding: each copy handed at most about twice (a
    # transfer the link cut off is sent again).
    assert m["sync"]["delivered"] >= m["spray"]["delivered"] > 0
    assert m["sync"]["ratio_of_ideal"] >= 0.4
    assert 0 < m["sync"]["op_bytes"] < m["epidemic"]["op_bytes"] / 2
    assert m["sync"]["op_bytes"] <= m["sync_copies"] * m["bytes_each"] * m["messages"] * 2
    assert field["mail_delivery"] == m["sync"]["ratio"]
