"""Leaves in the routing core: a gateway originates a leaf's route under the leaf's own seqno."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import pytest

from meshd.routing.table import INFINITY, LeafMoved, RouteChanged, RoutingTable
from tests.sim.mesh import CheapSigner

SIGNER = CheapSigner()
A, B, C, L = b"A" * 16, b"B" * 16, b"C" * 16, b"L" * 16


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meshd")


@dataclass(frozen=True)
class LeafAnn:
    node_id: bytes
    seqno: int
    raw: bytes
    gateway: bytes = b"G" * 16  # routing only asks whether there is one


def leaf(seqno: int) -> LeafAnn:
    a = SIGNER.sign(L, seqno)
    return LeafAnn(a.node_id, a.seqno, a.raw)


def verify(raw: bytes) -> Any:
    a = SIGNER.verify(raw)
    return LeafAnn(a.node_id, a.seqno, a.raw) if a.node_id == L else a


def core(nid: bytes) -> RoutingTable:
    return RoutingTable(node_id=nid, announcement=SIGNER.sign(nid, 1), verify=verify,
                        on_seqno_request=lambda s: SIGNER.sign(nid, s), rng=random.Random(1))


def line() -> list[RoutingTable]:
    a, b, c = core(A), core(B), core(C)
    for x, y in ((a, b), (b, c)):
        x.neighbour_up(y.node_id, 256, 0.0)
        y.neighbour_up(x.node_id, 256, 0.0)
    return [a, b, c]


def run(cores: list[RoutingTable], t0: float, t1: float, step: float = 0.05) -> float:
    by_id = {x.node_id: x for x in cores}
    t = t0
    while t < t1:
        for x in cores:
            for peer, data in x.datagrams_to_send(t):
                by_id[peer].receive(x.node_id, data, t)
        t += step
    return t


def drain(rt: RoutingTable) -> list[object]:
    out: list[object] = []
    while (e := rt.next_event()) is not None:
        out.append(e)
    return out


def test_a_leaf_at_c_is_routed_through_c_then_moves_to_a() -> None:
    a, b, c = line()
    t = run([a, b, c], 0.0, 2.0)
    assert c.set_stub(leaf(100), 256, t)
    t = run([a, b, c], t, t + 2.0)
    assert a.next_hop(L) == B and b.next_hop(L) == C
    assert a.metric(L) == 256 * 3 and c.metric(L) == 256
    assert c.next_hop(L) is None  # the gateway delivers itself (the node's job)
    for x in (a, b, c):
        drain(x)
    # the browser re-attaches through a: a newer seqno signed by the leaf
    assert a.set_stub(leaf(101), 256, t)
    t = run([a, b, c], t, t + 2.0)
    assert b.next_hop(L) == A and c.next_hop(L) == B
    assert LeafMoved(L, 101) in drain(c)
    assert c.stubs() == {} and a.stubs() == {L: 101}
    # an older attachment is refused where a newer one is known
    assert not c.set_stub(leaf(100), 256, t)


def test_a_dropped_leaf_is_retracted_and_cannot_be_bumped_by_a_relay() -> None:
    a, b, c = line()
    t = run([a, b, c], 0.0, 2.0)
    c.set_stub(leaf(7), 256, t)
    t = run([a, b, c], t, t + 2.0)
    assert a.next_hop(L) == B
    drain(a)
    c.drop_stub(L, t)
    t = run([a, b, c], t, t + 3.0)
    assert a.next_hop(L) is None and a.metric(L) == INFINITY
    assert RouteChanged(L, None, INFINITY, 7) in drain(a)
    assert c.seqno == 1  # nobody bumped c's own seqno for the leaf


def test_a_request_for_a_newer_leaf_seqno_is_not_answered_by_bumping() -> None:
    a, b, c = line()
    t = run([a, b, c], 0.0, 2.0)
    c.set_stub(leaf(7), 256, t)
    t = run([a, b, c], t, t + 2.0)
    # b asks c for seqno 8 of the leaf (as a starving node would): c cannot sign one
    from meshd.core.codec import pack
    c.receive(B, pack({"v": 1, "iv": 2000, "r": [[L, 8, 10]]}), t)
    assert c.ignored["leaf-seqno"] == 1 and c.stubs() == {L: 7} and c.seqno == 1
