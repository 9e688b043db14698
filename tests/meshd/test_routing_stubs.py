"""Stubs in the routing core (issue 16): phones announce only themselves, relay nothing,
and reach the mesh through a default route via their car(s)."""

from __future__ import annotations

import logging
import random

import pytest

from meshd.core.codec import pack
from meshd.core.errors import LocalProtocolError
from meshd.routing.table import RoutingTable
from meshd.routing.wire import decode_message
from tests.sim.mesh import CheapSigner

SIGNER = CheapSigner()
A, B, C, P, Q, R = (bytes([c]) * 16 for c in b"ABCPQR")
STUBS = {P, Q, R}


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meshd")


def core(nid: bytes) -> RoutingTable:
    return RoutingTable(node_id=nid, announcement=SIGNER.sign(nid, 1), verify=SIGNER.verify,
                        on_seqno_request=lambda s: SIGNER.sign(nid, s), rng=random.Random(1),
                        stub=nid in STUBS)


Sent = list[tuple[bytes, bytes, bytes]]  # (from, to, payload)


def link(x: RoutingTable, y: RoutingTable, cost: int = 256, t: float = 0.0, *,
         tell: bool = True) -> None:
    """Bring a link up at both ends; ``tell``: the link layer knows the roles."""
    x.neighbour_up(y.node_id, cost, t, stub=tell and y.stub)
    y.neighbour_up(x.node_id, cost, t, stub=tell and x.stub)


def run(cores: list[RoutingTable], t0: float, t1: float, sent: Sent | None = None,
        step: float = 0.05) -> float:
    by_id = {x.node_id: x for x in cores}
    t = t0
    while t < t1:
        for x in cores:
            for peer, data in x.datagrams_to_send(t):
                if sent is not None:
                    sent.append((x.node_id, peer, data))
                by_id[peer].receive(x.node_id, data, t)
        t += step
    return t


def origins(sent: Sent, src: bytes, dst: bytes) -> set[bytes]:
    return {u.origin for s, d, data in sent if (s, d) == (src, dst)
            for u in decode_message(data).updates}


def town() -> tuple[dict[bytes, RoutingTable], float]:
    """Routers A - B - C in a line; phone P at C, phone Q at A, phone R beside P."""
    n = {x: core(x) for x in (A, B, C, P, Q, R)}
    link(n[A], n[B])
    link(n[B], n[C])
    link(n[C], n[P])
    link(n[A], n[Q])
    link(n[P], n[R])
    link(n[R], n[C])
    return n, run(list(n.values()), 0.0, 3.0)


def test_stubs_are_reached_through_their_car_and_route_through_a_default() -> None:
    n, _ = town()
    assert n[A].next_hop(P) == B and n[B].next_hop(P) == C and n[C].next_hop(P) == P
    assert n[C].next_hop(Q) == B and n[A].next_hop(Q) == Q
    # a stub keeps routes to its routers only, and sends everything else to its default
    assert n[P].destinations() == [C] and n[P].default_route() == C
    assert n[P].next_hop(Q) == C and n[P].next_hop(A) == C
    assert n[P].next_hop(R) == R  # another stub in range: directly
    assert n[Q].next_hop(P) == A
    # the routers' tables carry routers and the stubs attached to them
    assert n[A].destinations() == sorted([B, C, P, Q, R])
    assert n[A].default_route() is None


def test_a_stub_sends_only_itself_and_hears_only_its_cars() -> None:
    n, t = town()
    sent: Sent = []
    run(list(n.values()), t, t + 45.0, sent)  # two full update rounds at least
    assert origins(sent, P, C) == {P}
    assert origins(sent, C, P) == {C}  # not C's table: C knows A, B, Q, R
    assert origins(sent, B, C) >= {A, B, Q}
    assert not [x for x in sent if {x[0], x[1]} == {P, R}]  # two stubs: silent
    assert all(decode_message(d).stub for s, _, d in sent if s in STUBS)
    assert not any(decode_message(d).stub for s, _, d in sent if s not in STUBS)
    assert n[C].stub_peers() == [P, R]


def test_a_router_not_told_learns_from_the_message_flag() -> None:
    c, p, b = core(C), core(P), core(B)
    link(c, b)
    t = run([c, b], 0.0, 1.0)
    link(c, p, t=t, tell=False)  # the link layer did not say P is a phone
    sent: Sent = []
    run([c, p, b], t, t + 45.0, sent)
    assert c.stub_peers() == [P]
    late = [x for x in sent if x[0] == C and x[1] == P][3:]  # after the first exchange
    assert late and origins(late, C, P) == {C}
    assert b.next_hop(P) == C and p.default_route() == C


def test_the_default_moves_to_the_other_car_when_one_leaves_and_sticks() -> None:
    n, t = town()
    p = n[P]
    link(n[B], p, cost=300, t=t)
    t = run(list(n.values()), t, t + 2.0)
    assert p.default_route() == C  # B is not clearly better: the default sticks
    n[C].neighbour_lost(P, t)
    p.neighbour_lost(C, t)
    assert p.default_route() == B
    t = run(list(n.values()), t, t + 3.0)
    assert n[A].next_hop(P) == B and n[B].next_hop(P) == P
    p.neighbour_lost(B, t)
    assert p.default_route() is None and p.next_hop(A) is None and p.next_hop(R) == R


def test_a_stub_relays_nothing() -> None:
    c, p = core(C), core(P)
    link(c, p)
    t = run([c, p], 0.0, 1.0)
    # a router that sends a stub another origin's route (an old version): ignored
    a_ann = SIGNER.sign(A, 1)
    p.receive(C, pack({"v": 1, "iv": 2000, "a": [a_ann.raw], "u": [[A, 1, 256]]}), t)
    assert p.ignored["stub-not-origin"] == 1 and p.next_hop(A) == C  # by default only
    assert A not in p.destinations()
    # a seqno request for someone else is neither answered nor forwarded
    p.receive(C, pack({"v": 1, "iv": 2000, "r": [[A, 5, 10]]}), t)
    assert p.ignored["stub-no-relay"] == 1
    assert not [d for _, d in p.datagrams_to_send(t + 0.5) if decode_message(d).requests]
    # a stub claiming to relay another origin is refused by the router
    c.receive(P, pack({"v": 1, "iv": 2000, "s": True, "a": [a_ann.raw],
                       "u": [[A, 1, 0]]}), t)
    assert c.ignored["stub-not-origin"] == 1 and c.next_hop(A) is None
    with pytest.raises(LocalProtocolError):
        p.set_stub(SIGNER.sign(Q, 3), 256, t)


def test_a_stub_answers_a_seqno_request_for_itself() -> None:
    n, t = town()
    before = n[P].seqno
    n[P].receive(C, pack({"v": 1, "iv": 2000, "r": [[P, before + 1, 10]]}), t)
    assert n[P].seqno == before + 1
    t = run(list(n.values()), t, t + 1.0)
    assert n[A].routes()[0].seqno >= 1
    assert any(r.destination == P and r.seqno == before + 1 and r.selected
               for r in n[A].routes())
