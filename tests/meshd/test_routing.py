"""The routing core driven directly with literal times, its codec limits, and fuzzing."""

from __future__ import annotations

import logging
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import pack
from meshd.routing.table import (
    INFINITY,
    MAX_ROUTING_PAYLOAD,
    RouteChanged,
    RoutingTable,
    decode_message,
    update_feasible,
)
from tests.sim.mesh import CheapSigner

SIGNER = CheapSigner()
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    # restored after each test: later test files in this worker read meshd's logs
    caplog.set_level(logging.ERROR, logger="meshd")


def core(nid: bytes, bumps: list[int] | None = None) -> RoutingTable:
    def bump(seqno: int):  # type: ignore[no-untyped-def]
        if bumps is not None:
            bumps.append(seqno)
        return SIGNER.sign(nid, seqno)

    return RoutingTable(node_id=nid, announcement=SIGNER.sign(nid, 1), verify=SIGNER.verify,
                        on_seqno_request=bump, rng=random.Random(1))


def deliver(src: RoutingTable, dst: RoutingTable, now: float) -> int:
    """Move what src sends at `now` to dst (src's only neighbour); return the datagram count."""
    n = 0
    for peer, data in src.datagrams_to_send(now):
        if peer == dst.node_id:
            assert len(data) <= MAX_ROUTING_PAYLOAD
            dst.receive(src.node_id, data, now)
            n += 1
    return n


def events(rt: RoutingTable) -> list[RouteChanged]:
    out = []
    while (e := rt.next_event()) is not None:
        out.append(e)
    return out


def test_update_feasible_is_rfc_8966_3_5_1() -> None:
    assert update_feasible(None, 5, 100)
    assert update_feasible((5, 300), 5, INFINITY)  # retractions always
    assert update_feasible((5, 300), 6, 10_000)  # newer seqno
    assert update_feasible((5, 300), 5, 299)  # same seqno, strictly smaller
    assert not update_feasible((5, 300), 5, 300)
    assert not update_feasible((5, 300), 4, 1)  # older seqno never


def test_two_nodes_learn_each_other_then_lose() -> None:
    a, b = core(A), core(B)
    a.neighbour_up(B, 256, 0.0)
    b.neighbour_up(A, 256, 0.0)
    for t in (0.01, 0.02, 0.3, 0.6, 1.0):
        deliver(a, b, t)
        deliver(b, a, t)
    assert a.next_hop(B) == B and a.metric(B) == 256
    assert b.next_hop(A) == A
    assert events(a) == [RouteChanged(B, B, 256, 1)]
    a.neighbour_lost(B, 2.0)
    assert a.next_hop(B) is None
    assert events(a) == [RouteChanged(B, None, INFINITY, 1)]


def test_line_of_three_and_poisoned_reverse() -> None:
    a, b, c = core(A), core(B), core(C)
    a.neighbour_up(B, 300, 0.0)
    b.neighbour_up(A, 300, 0.0)
    b.neighbour_up(C, 256, 0.0)
    c.neighbour_up(B, 256, 0.0)
    nodes = {n.node_id: n for n in (a, b, c)}
    t = 0.0
    for _ in range(20):
        t += 0.1
        for x in (a, b, c):
            for peer, data in x.datagrams_to_send(t):
                nodes[peer].receive(x.node_id, data, t)
    assert a.next_hop(C) == B and a.metric(C) == 556
    assert c.next_hop(A) == B
    # b learned A through a, so what b tells a about A is a retraction (poison)
    info = {(r.destination, r.next_hop): r for r in a.routes()}
    assert (A, B) not in info
    assert info[(C, B)].selected and info[(C, B)].feasible and info[(C, B)].seqno == 1


def test_seqno_request_reaches_origin_and_bumps() -> None:
    bumps: list[int] = []
    a, b = core(A, bumps), core(B)
    a.neighbour_up(B, 256, 0.0)
    b.neighbour_up(A, 256, 0.0)
    deliver(a, b, 0.1)
    deliver(b, a, 0.1)
    b.receive(A, pack({"v": 1, "iv": 2000, "r": [[A, 5, 10]]}), 1.0)  # wrong direction: ignored
    a.receive(B, pack({"v": 1, "iv": 2000, "r": [[A, 5, 10]]}), 1.0)
    assert bumps == [5]
    assert a.seqno == 5
    deliver(a, b, 1.1)
    assert [r.seqno for r in b.routes() if r.destination == A] == [5]


def test_unsigned_seqno_is_refused_and_the_announcement_requested() -> None:
    a, b = core(A), core(B)
    a.neighbour_up(B, 256, 0.0)
    b.neighbour_up(A, 256, 0.0)
    a.receive(B, pack({"v": 1, "iv": 2000, "u": [[C, 4, 0]]}), 0.5)  # no announcement for C
    assert a.next_hop(C) is None
    assert a.ignored["unsigned-seqno"] == 1
    out = [decode_message(d) for p, d in a.datagrams_to_send(0.6) if p == B]
    assert any(C in m.ann_requests for m in out)
    # with C's real (cheap-signed) announcement the same update is accepted
    a.receive(B, pack({"v": 1, "iv": 2000, "a": [SIGNER.sign(C, 4).raw], "u": [[C, 4, 0]]}), 0.7)
    assert a.next_hop(C) == B


def test_a_full_table_is_split_into_datagrams_under_the_mtu() -> None:
    a, b = core(A), core(B)
    a.neighbour_up(B, 256, 0.0)
    b.neighbour_up(A, 256, 0.0)
    # 300 destinations learned from a third neighbour, all with announcements
    a.neighbour_up(C, 256, 0.0)
    origins = [bytes([i % 256, i // 256]) * 8 for i in range(300)]
    anns = [SIGNER.sign(o, 3).raw for o in origins]
    for i in range(0, 300, 10):
        a.receive(C, pack({"v": 1, "iv": 2000, "a": anns[i:i + 10],
                           "u": [[o, 3, 512] for o in origins[i:i + 10]]}), 0.1)
    assert len(a.destinations()) == 300
    sent = [d for p, d in a.datagrams_to_send(0.5) if p == B]
    assert len(sent) > 5
    assert all(len(d) <= MAX_ROUTING_PAYLOAD for d in sent)
    for d in sent:
        b.receive(A, d, 0.5)
    got = {u.origin for d in sent for u in decode_message(d).updates}
    assert set(origins) <= got


def test_not_a_neighbour_and_malformed_are_counted_never_raised() -> None:
    a = core(A)
    a.receive(B, pack({"v": 1, "iv": 2000}), 0.0)
    assert a.ignored["not-neighbour"] == 1
    a.neighbour_up(B, 256, 0.0)
    for bad in (b"", b"\xc1", pack([1, 2]), pack({"v": 2, "iv": 1}),
                pack({"v": 1, "iv": 2000, "u": [[b"short", 1, 0]]}),
                pack({"v": 1, "iv": 2000, "u": [[C, -1, 0]]}),
                pack({"v": 1, "iv": 2000, "u": [[C, 1, 70000]]}),
                pack({"v": 1, "iv": 2000, "a": ["text"]}),
                pack({"v": 1, "iv": 2000, "w": 1}),
                b"\x00" * (MAX_ROUTING_PAYLOAD + 1)):
        a.receive(B, bad, 0.1)
    assert a.drops.total == 10


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    a = core(A)
    a.neighbour_up(B, 256, 0.0)
    a.receive(B, data, 0.1)
    a.handle_timer(0.2)
    a.datagrams_to_send(0.2)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_messages(data: st.DataObject) -> None:
    base = bytearray(pack({"v": 1, "iv": 2000, "a": [SIGNER.sign(C, 2).raw],
                           "u": [[C, 2, 300], [B, 1, 0]], "r": [[C, 3, 5]], "q": [C],
                           "w": True}))
    for _ in range(data.draw(st.integers(1, 5))):
        base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
    a = core(A)
    a.neighbour_up(B, 256, 0.0)
    a.receive(B, bytes(base), 0.1)
    a.handle_timer(1.0)
    for _, d in a.datagrams_to_send(1.0):
        decode_message(d)
