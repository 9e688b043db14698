"""The hello/IHU core driven with literal times, plus fuzzing of its decoder."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import pack, unpack
from meshd.core.errors import DecodeError, LocalProtocolError
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
    evs: list[object] = []
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
    # a came up: it tells b at once that it hears it (b is still pending), off schedule
    assert a.get_timer() == 0.080
    assert [p for p, _ in a.datagrams_to_send(0.080)] == [B]
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


# -- quiet links slow their hellos down (issue 16 item 5, issue 18 item 4) --------------------


class Wire:
    """Two adaptive tables on one virtual clock, stepped every ``STEP`` seconds.

    Datagrams arrive ``DELAY`` after they are sent unless ``cut`` (both directions) or
    ``drop(src, seqno)`` says otherwise; ``sent[x]`` logs (time, hello) of what x sent.
    """

    STEP = 0.005
    DELAY = 0.002

    def __init__(self, max_interval: float | None = 4.0,
                 link_caps: tuple[float | None, float | None] = (None, None),
                 ack_hold: tuple[bool, bool] = (False, False)) -> None:
        self.t = {A: NeighbourTable(rng=random.Random(1), max_hello_interval=max_interval,
                                    ack_hold=ack_hold[0]),
                  B: NeighbourTable(rng=random.Random(2), max_hello_interval=max_interval,
                                    ack_hold=ack_hold[1])}
        self.now = 0.0
        self.cut = False
        self.drop: set[tuple[bytes, int]] = set()
        self.sent: dict[bytes, list[tuple[float, Any]]] = {A: [], B: []}
        self.events: dict[bytes, list[tuple[float, object]]] = {A: [], B: []}
        self._queue: list[tuple[float, bytes, bytes]] = []
        for (me, other), cap in zip(((A, B), (B, A)), link_caps, strict=True):
            self.t[me].link_up(other, 0.0, cap)

    def other(self, me: bytes) -> bytes:
        return B if me == A else A

    def run_until(self, end: float, traffic_every: float | None = None) -> None:
        next_traffic = self.now
        while self.now < end:
            self.now = round(self.now + self.STEP, 6)
            now = self.now
            if traffic_every is not None and now >= next_traffic:
                next_traffic = now + traffic_every
                self.packet(A, now)  # a sends, b receives: both note the traffic
            due = [q for q in self._queue if q[0] <= now]
            self._queue = [q for q in self._queue if q[0] > now]
            for _, dst, data in due:
                self.t[dst].receive(self.other(dst), data, now)
            for me, tab in self.t.items():
                timer = tab.get_timer()
                if timer is not None and timer <= now:
                    tab.handle_timer(now)
                for _, data in tab.datagrams_to_send(now):
                    h = decode_hello(data)
                    self.sent[me].append((now, h))
                    if not self.cut and (me, h.seqno) not in self.drop:
                        self._queue.append((now + self.DELAY, self.other(me), data))
                while (ev := tab.next_event()) is not None:
                    self.events[me].append((now, ev))

    def packet(self, src: bytes, now: float) -> bool:
        woke = self.t[src].traffic(self.other(src), now)
        if not self.cut:
            self.t[self.other(src)].traffic(src, now + self.DELAY)
        return woke

    def intervals(self, me: bytes, since: float) -> list[float]:
        times = [t for t, _ in self.sent[me] if t >= since]
        return [round(y - x, 3) for x, y in itertools.pairwise(times)]

    def lost(self, me: bytes) -> list[float]:
        return [t for t, e in self.events[me] if isinstance(e, NeighbourLost)]


def test_a_quiet_stable_link_slows_its_hellos_to_the_cap_and_stays_up() -> None:
    w = Wire()
    w.run_until(60.0)
    for me in (A, B):
        st = w.t[me].stats(w.other(me))
        assert st.state is NeighbourState.UP and st.hello_interval == 4.0
        assert st.peer_interval == 4.0 and st.loss == 0.0
        gaps = w.intervals(me, 40.0)
        assert gaps and all(3.2 <= g <= 4.0 for g in gaps), gaps  # jittered 0.8-1.0 x
        assert w.lost(me) == []
    # each hello says the interval it was sent at; the first minute grew 0.5 -> 1 -> 2 -> 4
    ivs = [h.interval_ms for _, h in w.sent[A]]
    assert ivs[0] == 500 and ivs[-1] == 4000
    assert sorted(set(ivs)) == [500, 1000, 2000, 4000] and ivs == sorted(ivs)


def test_a_link_capped_lower_slows_down_only_to_its_cap() -> None:
    """An older peer's shorter QUIC idle timeout: that link's hellos stay below half of it."""
    w = Wire(max_interval=8.0, link_caps=(4.0, None))
    w.run_until(90.0)
    assert w.t[A].stats(B).hello_interval == 4.0
    assert all(3.2 <= g <= 4.0 for g in w.intervals(A, 70.0))
    assert w.t[B].stats(A).hello_interval == 8.0  # the other end has no such cap here
    assert all(6.4 <= g <= 8.0 for g in w.intervals(B, 70.0))
    assert w.lost(A) == [] and w.lost(B) == []
    # a cap below the fast interval never slows the link at all; one above the table's is moot
    t = NeighbourTable(rng=random.Random(3), max_hello_interval=8.0)
    t.link_up(A, 0.0, 0.1)
    t.link_up(B, 0.0, 30.0)
    assert t.stats(A).hello_interval == 0.5


def test_slow_hellos_say_ak_and_quiet_links_may_hold_acks_until_traffic() -> None:
    w = Wire(max_interval=8.0, ack_hold=(True, True))
    w.run_until(1.0)
    assert w.t[A].ack_hold(B, w.now) == (False, False)  # fast hellos: no ak yet
    assert not any(h.ack_hold for _, h in w.sent[A])
    w.run_until(60.0)
    # every hello sent slow says so, every fast one does not
    assert all(h.ack_hold == (h.interval_ms > 500) for me in (A, B) for _, h in w.sent[me])
    assert w.t[A].ack_hold(B, w.now) == (True, True)
    assert w.t[B].ack_hold(A, w.now) == (True, True)
    # traffic: a goes fast at once and stops holding; its fast hello drops the flag, so b
    # stops holding too (and stops allowing for a's holds)
    t0 = w.now
    w.packet(A, t0)
    assert w.t[A].ack_hold(B, t0)[0] is False
    out = w.t[A].datagrams_to_send(t0)
    assert out and not decode_hello(out[0][1]).ack_hold
    w.t[B].receive(A, out[0][1], t0 + 0.002)
    assert w.t[B].ack_hold(A, t0 + 0.002) == (False, False)


def test_ack_holding_needs_both_ends() -> None:
    """An older peer (no ``ak``) gets every ACK at once; we still allow for nothing."""
    w = Wire(max_interval=8.0, ack_hold=(True, False))
    w.run_until(60.0)
    assert any(h.ack_hold for _, h in w.sent[A])
    assert not any(h.ack_hold for _, h in w.sent[B])
    assert w.t[A].ack_hold(B, w.now) == (False, False)
    assert w.t[B].ack_hold(A, w.now) == (False, True)  # b (no holding itself) is told
    assert w.t[A].ack_hold(b"\x09" * 16, w.now) == (False, False)  # no such link
    with pytest.raises(DecodeError):
        decode_hello(pack({"v": 1, "s": 1, "ts": 1, "iv": 500, "ak": 1}))


def test_without_a_cap_the_interval_never_grows() -> None:
    w = Wire(max_interval=None)
    w.run_until(30.0)
    assert {h.interval_ms for _, h in w.sent[A]} == {500}
    assert all(g <= 0.5 for g in w.intervals(A, 5.0))


def test_traffic_on_a_quiet_link_makes_both_ends_fast_at_once() -> None:
    w = Wire()
    w.run_until(60.0)
    t0 = w.now
    assert w.packet(A, t0) is True  # woke the link: the adapter sends now
    out = w.t[A].datagrams_to_send(t0)
    assert len(out) == 1
    h = decode_hello(out[0][1])
    assert h.interval_ms == 500 and h.request  # fast again, and asks the slow peer for a hello
    assert w.packet(A, t0 + 0.01) is False  # already busy: the hot path does nothing more
    w.run_until(t0 + 4.0, traffic_every=0.1)
    for me in (A, B):
        assert w.t[me].stats(w.other(me)).hello_interval == 0.5
        assert all(g <= 0.5 for g in w.intervals(me, t0 + 0.5))
    # the traffic stops: the link slows down again
    w.run_until(t0 + 60.0)
    assert w.t[A].stats(B).hello_interval == 4.0


def test_a_peer_that_went_silent_on_a_quiet_link_is_lost_within_dead_after_of_traffic() -> None:
    w = Wire()
    w.run_until(60.0)
    w.cut = True  # b drives away; nobody sends anything to say so
    w.run_until(61.0)
    assert w.lost(A) == []
    start = w.now
    w.run_until(start + 3.0, traffic_every=0.05)  # a has packets for b
    lost = w.lost(A)
    assert len(lost) == 1 and start < lost[0] <= start + 2.0 + Wire.STEP


def test_a_peer_that_goes_silent_on_a_busy_link_is_lost_dead_after_its_last_hello() -> None:
    w = Wire()
    w.run_until(60.0)
    w.run_until(70.0, traffic_every=0.1)
    last_from_b = w.sent[B][-1][0]
    cut = w.now
    w.cut = True
    w.run_until(cut + 3.0, traffic_every=0.1)
    lost = w.lost(A)
    assert len(lost) == 1
    assert lost[0] - last_from_b <= 2.0 + Wire.STEP + Wire.DELAY
    assert lost[0] - cut <= 2.0 + Wire.STEP


def test_a_lost_hello_on_a_slow_link_makes_both_ends_fast_again() -> None:
    w = Wire()
    w.run_until(60.0)
    assert w.t[A].stats(B).hello_interval == 4.0
    nxt = (w.sent[B][-1][1].seqno + 1) & 0xFFFF
    w.drop.add((B, nxt))  # b's next hello is lost
    w.run_until(w.now + 10.0)
    # a saw the seqno gap at b's hello after the lost one and went fast at once; b learnt from
    # a's IHU (txcost above 256) and went fast too
    gap_seen = next(t for t, h in w.sent[B] if h.seqno == ((nxt + 1) & 0xFFFF))
    assert any(t >= gap_seen and h.interval_ms == 500 for t, h in w.sent[A])
    assert any(t >= gap_seen and h.interval_ms == 500 for t, h in w.sent[B])
    assert w.lost(A) == [] and w.lost(B) == []


def test_hello_interval_cap_is_checked() -> None:
    with pytest.raises(LocalProtocolError):
        NeighbourTable(rng=random.Random(1), max_hello_interval=0.2)


def test_both_ends_up_within_two_round_trips_not_a_hello_interval() -> None:
    """First contact is answered at once with an IHU, and coming up is announced at once."""
    a = NeighbourTable(rng=random.Random(1))
    b = NeighbourTable(rng=random.Random(2))
    a.link_up(B, 0.0)
    exchange(a, b, A, 0.0, 0.01)  # b's link is not up yet: dropped, counted
    b.link_up(A, 0.01)
    t = 0.01
    for _ in range(4):  # messages bounce with 10 ms of delay, each sent as soon as due
        for src, dst, sid in ((a, b, A), (b, a, B)):
            exchange(src, dst, sid, t, t + 0.01)
            dst.handle_timer(t + 0.01)
        t += 0.02
    assert a.peers() == [B] and b.peers() == [A]
    assert t < 0.4  # the next scheduled hello (0.4-0.5 s after the first) was not needed
