"""The hello/IHU core driven with literal times, plus fuzzing of its decoder."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import pack, unpack
from meshd.routing.neighbours import (
    COST_INFINITY,
    NeighbourLost,
    NeighbourState,
    NeighbourTable,
    NeighbourUp,
    decode_hello,
    link_cost,
)

A = b"A" * 16
B = b"B" * 16


def pair() -> tuple[NeighbourTable, NeighbourTable]:
    a = NeighbourTable(rng=random.Random(1))
    b = NeighbourTable(rng=random.Random(2))
    a.link_up(B, 0.0)
    b.link_up(A, 0.0)
    return a, b


def exchange(src: NeighbourTable, dst: NeighbourTable, src_id: bytes, t_send: float,
             t_recv: float) -> int:
    out = src.datagrams_to_send(t_send)
    for _, data in out:
        dst.receive(src_id, data, t_recv)
    return len(out)


def drain(t: NeighbourTable) -> list[object]:
    evs = []
    while (e := t.next_event()) is not None:
        evs.append(e)
    return evs


def test_comes_up_after_both_directions_heard() -> None:
    a, b = pair()
    assert a.get_timer() == 0.0
    assert exchange(a, b, A, 0.0, 0.01) == 1
    b.handle_timer(0.01)
    assert drain(b) == []  # b heard a, but a has not yet said it hears b
    assert exchange(b, a, B, 0.01, 0.02) == 1  # b's hello carries an IHU for a
    a.handle_timer(0.02)
    assert drain(a) == [NeighbourUp(B, a.stats(B).cost)]
    assert a.peers() == [B]
    assert exchange(a, b, A, 0.5, 0.51) == 1
    assert [type(e) for e in drain(b)] == [NeighbourUp]


def test_hello_schedule_and_rtt_without_synchronised_clocks() -> None:
    a, b = pair()
    # b's clock is 1000 s ahead of a's: RTT must not care
    exchange(a, b, A, 0.0, 1000.030)
    out = b.datagrams_to_send(1000.050)  # held 20 ms
    for _, d in out:
        a.receive(B, d, 0.080)
    st_a = a.stats(B)
    assert st_a.rtt_ms is not None and abs(st_a.rtt_ms - 60.0) < 0.01
    nxt = a.get_timer()
    assert nxt is not None and 0.4 <= nxt <= 0.5


def test_lost_exactly_dead_after_the_last_hello() -> None:
    a, b = pair()
    exchange(a, b, A, 0.0, 0.0)
    exchange(b, a, B, 0.0, 0.1)
    a.handle_timer(0.1)
    drain(a)
    a.datagrams_to_send(0.5)
    a.handle_timer(2.09)
    assert a.peers() == [B]
    t = a.get_timer()
    assert t is not None and t <= 2.1
    a.handle_timer(2.1)
    assert drain(a) == [NeighbourLost(B, "timeout")]
    assert a.stats(B).state is NeighbourState.LOST
    assert a.stats(B).cost == COST_INFINITY


def test_silence_triggers_a_hello_request_that_the_peer_answers_at_once() -> None:
    a, b = pair()
    exchange(a, b, A, 0.0, 0.0)
    exchange(b, a, B, 0.0, 0.0)
    a.handle_timer(0.0)
    b.handle_timer(0.0)
    # b is silent; at 1.5 intervals a asks for a hello
    a.handle_timer(0.75)
    probe = [d for p, d in a.datagrams_to_send(0.75) if p == B]
    assert probe and decode_hello(probe[0]).request
    b.receive(A, probe[0], 0.76)
    reply = b.datagrams_to_send(0.76)
    assert len(reply) == 1 and not decode_hello(reply[0][1]).request


def test_etx_from_hello_history() -> None:
    a, b = pair()
    # b sends 17 hellos, a hears every other one: the last 16 hold 8 heard
    t = 0.0
    for i in range(17):
        t = i * 0.5
        out = b.datagrams_to_send(t)
        if i % 2 == 0:
            for _, d in out:
                a.receive(B, d, t)
    stats = a.stats(B)
    assert stats.rxcost == 512
    assert stats.loss == 0.5


def test_link_cost_formula() -> None:
    assert link_cost(256, 256, None) == 256
    assert link_cost(512, 256, None) == 512
    assert link_cost(512, 512, None) == 1024
    assert link_cost(256, 256, 10.0) == 256
    assert link_cost(256, 256, 1000.0) == 256 + 128
    assert link_cost(COST_INFINITY, 256, None) == COST_INFINITY


def test_malformed_and_unknown_peer_are_counted_not_raised() -> None:
    a, _ = pair()
    a.receive(B, b"\xff\x00garbage", 0.0)
    a.receive(B, pack({"v": 1, "s": 1}), 0.0)
    a.receive(B, pack({"v": 1, "s": 1, "ts": 5, "iv": 500, "rq": 1}), 0.0)
    a.receive(B, pack({"v": 1, "s": 1, "ts": 5, "iv": 500, "rx": 300, "et": 1}), 0.0)
    a.receive(B, b"x" * 500, 0.0)
    a.receive(b"C" * 16, pack({"v": 1, "s": 1, "ts": 5, "iv": 500}), 0.0)
    assert a.drops.total == 6
    assert a.stats(B).hellos_received == 0


def test_link_down_removes_the_neighbour() -> None:
    a, b = pair()
    exchange(a, b, A, 0.0, 0.0)
    exchange(b, a, B, 0.0, 0.0)
    a.handle_timer(0.0)
    drain(a)
    a.link_down(B, 1.0)
    assert drain(a) == [NeighbourLost(B, "link_down")]
    assert a.links() == [] and a.get_timer() is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    a, _ = pair()
    a.receive(B, data, 1.0)
    a.handle_timer(1.0)
    a.datagrams_to_send(1.0)


def _valid_hello() -> bytes:
    _, b = pair()
    b.receive(A, pack({"v": 1, "s": 7, "ts": 1234, "iv": 500}), 0.0)
    return b.datagrams_to_send(0.1)[0][1]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_hellos(data: st.DataObject) -> None:
    base = bytearray(_valid_hello())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(base) - 1))
        base[pos] = data.draw(st.integers(0, 255))
    a, _ = pair()
    a.receive(B, bytes(base), 1.0)
    a.handle_timer(3.0)
    a.datagrams_to_send(3.0)
    for p, d in a.datagrams_to_send(3.6):
        assert p == B
        unpack(d, 96)
