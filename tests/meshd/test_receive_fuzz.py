"""The node's whole receive path takes random and mutated datagrams: nothing escapes, memory stays bounded."""

from __future__ import annotations

import asyncio
import functools
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config import Config
from meshd.core.channels import Channel
from meshd.core.codec import pack
from meshd.core.fragment import split
from meshd.core.identity import Announcement, Identity, Role
from meshd.core.packet import MeshPacket, Service
from meshd.node import Node
from meshd.routing.neighbours import LinkCostChanged, NeighbourTable, NeighbourUp
from meshd.routing.table import RoutingTable


def _node(tmp: Path) -> Node:
    return Node(Config(state_dir=tmp, name="fuzz"))


PEER = Identity.generate().node_id


class LinkedPeer:
    """A real peer (its own identity, neighbour and routing cores) linked to ``node``.

    The node's cores and the peer's run on one virtual clock; ``step`` fires due
    timers and carries every datagram both ways, so neighbour and routing input
    from the peer reaches the decoders (an unlinked peer stops at the
    ``no-link``/``not-neighbour`` gates before any decoder runs).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.clock = 1000.0
        node._now = lambda: self.clock  # type: ignore[method-assign]
        node._loop = asyncio.new_event_loop()  # _pump needs a loop; its timers are fired by step
        self.to_peer: list[tuple[int, bytes]] = []
        self.last_sent: dict[Channel, bytes] = {}

        def capture(peer: bytes, channel: Channel, payload: bytes,
                    deadline: float | None = None) -> bool:
            self.to_peer.append((channel, payload))
            return True

        node._send_link = capture  # type: ignore[method-assign]
        ident = Identity.generate()
        self.node_id = ident.node_id
        self.ann = ident.announce(1, time.time(), "peer", Role.CAR)
        self.nt = NeighbourTable(rng=random.Random(1))
        self.rt = RoutingTable(node_id=self.node_id, announcement=self.ann,
                               verify=Announcement.decode, on_seqno_request=lambda s: None,
                               rng=random.Random(2))
        node.link_up(self.node_id, self.ann, ("127.0.0.1", 9), True)
        self.nt.link_up(node.identity.node_id, self.clock)

    def close(self) -> None:
        assert self.node._loop is not None
        self.node._loop.close()

    def _deliver(self, channel: Channel, payload: bytes) -> None:
        self.last_sent[channel] = bytes([channel]) + payload
        self.node.datagram_received(self.node_id, bytes([channel]) + payload)

    def step(self, dt: float = 0.05) -> None:
        self.clock += dt
        now, me, node = self.clock, self.node.identity.node_id, self.node
        node._on_timer()
        for core in (self.nt, self.rt):
            t = core.get_timer()
            if t is not None and t <= now:
                core.handle_timer(now)
        for _peer, payload in self.nt.datagrams_to_send(now):
            self._deliver(Channel.NEIGHBOUR, payload)
        while (ev := self.nt.next_event()) is not None:
            if isinstance(ev, NeighbourUp):
                self.rt.neighbour_up(ev.peer, ev.cost, now)
            elif isinstance(ev, LinkCostChanged):
                self.rt.cost_changed(ev.peer, ev.cost, now)
        for _peer, payload in self.rt.datagrams_to_send(now):
            self._deliver(Channel.ROUTING, payload)
        while self.rt.next_event() is not None:
            pass
        sent, self.to_peer = self.to_peer, []
        for channel, payload in sent:
            if channel == Channel.NEIGHBOUR:
                self.nt.receive(me, payload, now)
            elif channel == Channel.ROUTING:
                self.rt.receive(me, payload, now)

    def linked(self) -> bool:
        """The node holds the peer as a neighbour and routes to it directly."""
        return (self.node_id in self.node.neighbours.peers()
                and self.node.routing.next_hop(self.node_id) == self.node_id)

    def run_until_linked(self, max_s: float = 10.0) -> None:
        for _ in range(int(max_s / 0.05)):
            self.step()
            if self.linked():
                return
        raise AssertionError("the peer never became a neighbour with a route")

    def valid_datagrams(self) -> list[bytes]:
        """The last hello and routing message the peer really sent (channel byte included)."""
        return list(self.last_sent.values())


@functools.cache
def _fuzz_peer() -> LinkedPeer:
    """One node, linked to one real peer, for all Hypothesis examples."""
    peer = LinkedPeer(_node(Path(tempfile.mkdtemp(prefix="cmfz", dir="/tmp"))))
    peer.run_until_linked()
    return peer


def _valid_samples(peer: LinkedPeer) -> list[bytes]:
    me = peer.node.identity.node_id
    ping = MeshPacket(PEER, me, 5, Service.PING, 1, b"\x82\xa1k\xa3req\xa2id\x01").encode()
    frag = MeshPacket(PEER, me, 5, Service.FRAG, 0, split(Service.MSG, 7, b"x" * 3000, 1000)[0]).encode()
    return [bytes([Channel.PACKET]) + ping, bytes([Channel.PACKET]) + frag,
            *peer.valid_datagrams()]


def _gate_counts(node: Node) -> tuple[int, int]:
    return node.neighbours.drops.counts.get("no-link", 0), node.routing.ignored["not-neighbour"]


def test_a_linked_peers_garbage_reaches_the_decoders(tmp_path: Path) -> None:
    peer = LinkedPeer(_node(tmp_path))
    try:
        peer.run_until_linked()
        node = peer.node
        gates = _gate_counts(node)
        nd, rd = sum(node.neighbours.drops.counts.values()), sum(node.routing.drops.counts.values())
        for junk in (b"", b"\x80", b"\xc1", b"\x81\xa1x\x01", bytes(range(40))):
            node.datagram_received(peer.node_id, bytes([Channel.NEIGHBOUR]) + junk)
            node.datagram_received(peer.node_id, bytes([Channel.ROUTING]) + junk)
        assert _gate_counts(node) == gates  # nothing stopped at the gates ...
        assert sum(node.neighbours.drops.counts.values()) == nd + 5  # ... the decoders refused all
        assert sum(node.routing.drops.counts.values()) == rd + 5
        for _ in range(40):  # and the link carries on
            peer.step()
        assert peer.linked()
    finally:
        peer.close()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=1200), flips=st.lists(st.integers(0, 2**16), max_size=4),
       channel=st.sampled_from([Channel.NEIGHBOUR, Channel.ROUTING, Channel.PACKET]))
def test_random_and_mutated_datagrams_never_raise_and_valid_ones_still_pass(
        data: bytes, flips: list[int], channel: Channel) -> None:
    peer = _fuzz_peer()
    node = peer.node
    node.datagram_received(peer.node_id, bytes([channel]) + data)
    node.datagram_received(peer.node_id, data)
    for base in _valid_samples(peer):
        buf = bytearray(base)
        for f in flips:
            buf[f % len(buf)] ^= ((f >> 8) & 0xFF) or 1
        node.datagram_received(peer.node_id, bytes(buf))
    # positive check: the peer's real hellos and updates are still accepted
    gates = _gate_counts(node)
    drops = (dict(node.neighbours.drops.counts), dict(node.routing.drops.counts))
    for _ in range(10):
        peer.step()
    assert (dict(node.neighbours.drops.counts), dict(node.routing.drops.counts)) == drops
    assert _gate_counts(node) == gates
    if not peer.linked():  # a mutated hello may have upset the link estimate: it recovers
        peer.run_until_linked()


def test_memory_stays_bounded_under_a_flood_of_garbage(tmp_path: Path) -> None:
    peer = LinkedPeer(_node(tmp_path))
    peer.run_until_linked()
    node = peer.node
    rng = random.Random(7)
    me = node.identity.node_id
    tracemalloc.start()
    baseline = None
    for i in range(30_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(1, 1100))
        elif kind == 1:  # fragments of never-completed messages from many fake sources
            src = rng.randbytes(16)
            frag = split(Service.MSG, rng.getrandbits(32), rng.randbytes(5000), 1000)[0]
            data = bytes([Channel.PACKET]) + MeshPacket(src, me, 5, Service.FRAG, 0, frag).encode()
        elif kind == 2:
            data = bytes([Channel.ROUTING]) + rng.randbytes(rng.randrange(0, 600))
        else:
            data = bytes([Channel.NEIGHBOUR]) + rng.randbytes(rng.randrange(0, 120))
        node.datagram_received(peer.node_id, data)
        if i == 5_000:
            baseline = tracemalloc.get_traced_memory()[0]
    current = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert baseline is not None
    # the reassembler caps what strangers can make us hold; the rest is dropped and counted
    assert node._reassembler.buffered_bytes <= 4 * 1024 * 1024
    assert current - baseline < 8 * 1024 * 1024, (baseline, current)
    assert sum(node.drop_counts().values()) > 10_000
    # the garbage reached the decoders (past the link gates) and the link survived it
    assert sum(node.routing.drops.counts.values()) > 1_000
    assert sum(node.neighbours.drops.counts.values()) > 1_000
    assert node.neighbours.drops.counts.get("no-link", 0) == 0
    for _ in range(100):
        peer.step()
    assert peer.linked()
    peer.close()


def test_malformed_probe_whose_hop_limit_ran_out_is_dropped_not_raised(tmp_path: Path) -> None:
    """A ping with hop limit 1 addressed elsewhere is answered 'time exceeded' — unless garbage."""
    node = _node(tmp_path)
    elsewhere = bytes(range(16))
    for payload in (b"", b"\xc1", pack({"k": 7}), pack({"k": "req", "id": "x"})):
        pkt = MeshPacket(PEER, elsewhere, 1, Service.PING, 0, payload)
        node.datagram_received(PEER, bytes([Channel.PACKET]) + pkt.encode())
    assert node.drop_counts().get("malformed", 0) + node.drop_counts().get("type", 0) >= 2
