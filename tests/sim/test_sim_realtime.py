"""The real-time driver shares the virtual network's links: same seed, same impairments, same paths."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.sim import LinkParams, Network, sim_id
from tests.sim.realtime import RealtimeNetwork

A, B, C, D = (sim_id(i) for i in range(4))
IMPAIRED = LinkParams(loss=0.3, duplicate=0.2, reorder=0.2, delay=0.001, jitter=0.002,
                      reorder_delay=0.003)


class _Sender:
    def __init__(self, dst: bytes, n: int) -> None:
        self.out = [(dst, i.to_bytes(2, "big")) for i in range(n)]

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        out, self.out = self.out, []
        return out

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass


class _Sink(_Sender):
    def __init__(self) -> None:
        super().__init__(b"", 0)
        self.got: list[bytes] = []

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        self.got.append(data)


class _Collector:
    """Delivered payloads, and an event set once ``want`` have arrived."""

    def __init__(self, want: int) -> None:
        self.got: list[bytes] = []
        self.want = want
        self.done = asyncio.Event()

    def __call__(self, data: bytes) -> None:
        self.got.append(data)
        if len(self.got) >= self.want:
            self.done.set()


async def test_one_impairment_model_for_virtual_and_real_time() -> None:
    n = 300
    virtual = Network(seed=42)
    virtual.connect(A, B, IMPAIRED, notify=False)
    sink = _Sink()
    virtual.add_node(B, sink)
    virtual.add_node(A, _Sender(B, n))
    virtual.run_until(10.0)

    real = RealtimeNetwork(seed=42)
    real.connect(A, B, IMPAIRED)
    expected = len(sink.got)
    got = _Collector(expected)
    for i in range(n):
        assert real.send(A, B, i.to_bytes(2, "big"), got)
    await asyncio.wait_for(got.done.wait(), 10)

    assert 0 < virtual.stats.lost < n and virtual.stats.duplicated > 0
    assert Counter(got.got) == Counter(sink.got)  # the same datagrams lost, the same duplicated
    assert (real.stats.lost, real.stats.duplicated) == (virtual.stats.lost, virtual.stats.duplicated)


async def test_shortest_path_over_up_links_ties_by_node_id() -> None:
    net = RealtimeNetwork(seed=1)
    for x, y in ((A, B), (A, C), (B, D), (C, D)):
        net.connect(x, y)
    first, second = sorted((B, C))
    assert net.path(A, D) == [A, first, D]
    net.set_up(A, first, False)
    assert net.path(A, D) == [A, second, D]
    net.isolate(second)
    assert net.path(A, D) is None
    assert not net.send(A, D, b"x", _Collector(1))
    net.set_up(A, first, True)
    assert net.path(A, D) == [A, first, D]


async def test_packets_cross_hop_by_hop_past_each_relay() -> None:
    net = RealtimeNetwork(seed=3, default=LinkParams(delay=0.001))
    for x, y in ((A, B), (B, C), (C, D)):
        net.connect(x, y)
    relays: list[tuple[bytes, bytes]] = []
    net.on_relay = lambda relay, data: relays.append((relay, data))
    got = _Collector(20)
    for i in range(20):
        assert net.send(A, D, bytes([i]), got)
    await asyncio.wait_for(got.done.wait(), 10)
    assert sorted(got.got) == [bytes([i]) for i in range(20)]
    assert Counter(r for r, _ in relays) == {B: 20, C: 20}
    assert net.stats.sent == 60 and net.stats.delivered == 20


async def test_a_link_failed_in_flight_drops_what_is_on_it() -> None:
    net = RealtimeNetwork(seed=5, default=LinkParams(delay=0.1))
    net.connect(A, B, LinkParams(delay=0.02))
    net.connect(A, C)
    net.connect(C, B)
    got = _Collector(1)
    assert net.send(A, B, b"direct", got)  # on A-B, due in 20 ms
    net.set_up(A, B, False)  # the car drives out of range with it in the air
    assert net.path(A, B) == [A, C, B]
    assert net.send(A, B, b"around", got)  # due in 200 ms: after the first was due
    await asyncio.wait_for(got.done.wait(), 10)
    assert got.got == [b"around"]
    assert net.stats.dropped_down == 1


async def test_a_relay_whose_route_changed_forwards_on_the_new_one() -> None:
    net = RealtimeNetwork(seed=6, default=LinkParams(delay=0.02))
    for x, y in ((A, B), (B, C)):
        net.connect(x, y)
    net.connect(B, D)
    net.connect(D, C, LinkParams(delay=0.001))
    relays: list[bytes] = []
    net.on_relay = lambda relay, data: relays.append(relay)
    got = _Collector(1)
    assert net.send(A, C, b"p", got)  # planned A-B-C
    net.disconnect(B, C)  # before it reaches B
    await asyncio.wait_for(got.done.wait(), 10)
    assert relays == [B, D] and got.got == [b"p"]


async def test_a_packet_of_fragments_is_lost_when_any_fragment_is() -> None:
    outcomes = []
    for fragments in (1, 4):
        net = RealtimeNetwork(seed=8, default=LinkParams(loss=0.2, delay=0.001))
        net.connect(A, B)
        got = _Collector(10**9)
        for i in range(400):
            net.send(A, B, i, got, fragments=fragments)
        assert net.stats.sent == 400 * fragments
        outcomes.append(400 - net.stats.lost)
    # each survives with 0.8 ** fragments: about 320 and 164
    assert 290 < outcomes[0] < 350 and 130 < outcomes[1] < 200
