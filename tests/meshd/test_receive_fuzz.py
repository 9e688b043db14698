"""The node's whole receive path takes random and mutated datagrams: nothing escapes, memory stays bounded."""

from __future__ import annotations

import functools
import random
import tempfile
import tracemalloc
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config import Config
from meshd.core.channels import Channel
from meshd.core.codec import pack
from meshd.core.fragment import split
from meshd.core.identity import Identity
from meshd.core.packet import MeshPacket, Service
from meshd.node import Node


def _node(tmp: Path) -> Node:
    return Node(Config(state_dir=tmp, name="fuzz"))


PEER = Identity.generate().node_id


@functools.cache
def _fuzz_node() -> Node:
    """One node for all Hypothesis examples (a Node needs a state directory)."""
    return _node(Path(tempfile.mkdtemp(prefix="cmfz", dir="/tmp")))


def _valid_samples(node: Node) -> list[bytes]:
    me = node.identity.node_id
    ping = MeshPacket(PEER, me, 5, Service.PING, 1, b"\x82\xa1k\xa3req\xa2id\x01").encode()
    frag = MeshPacket(PEER, me, 5, Service.FRAG, 0, split(Service.MSG, 7, b"x" * 3000, 1000)[0]).encode()
    return [bytes([Channel.PACKET]) + ping, bytes([Channel.PACKET]) + frag,
            bytes([Channel.NEIGHBOUR]) + b"\x80", bytes([Channel.ROUTING]) + b"\x80"]


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=1200), flips=st.lists(st.integers(0, 2**16), max_size=4))
def test_random_and_mutated_datagrams_never_raise(data: bytes, flips: list[int]) -> None:
    node = _fuzz_node()
    node.datagram_received(PEER, data)
    for base in _valid_samples(node):
        buf = bytearray(base)
        for f in flips:
            buf[f % len(buf)] ^= ((f >> 8) & 0xFF) or 1
        node.datagram_received(PEER, bytes(buf))


def test_memory_stays_bounded_under_a_flood_of_garbage(tmp_path: Path) -> None:
    node = _node(tmp_path)
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
        node.datagram_received(PEER, data)
        if i == 5_000:
            baseline = tracemalloc.get_traced_memory()[0]
    current = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert baseline is not None
    # the reassembler caps what strangers can make us hold; the rest is dropped and counted
    assert node._reassembler.buffered_bytes <= 4 * 1024 * 1024
    assert current - baseline < 8 * 1024 * 1024, (baseline, current)
    assert sum(node.drop_counts().values()) > 10_000


def test_malformed_probe_whose_hop_limit_ran_out_is_dropped_not_raised(tmp_path: Path) -> None:
    """A ping with hop limit 1 addressed elsewhere is answered 'time exceeded' — unless garbage."""
    node = _node(tmp_path)
    elsewhere = bytes(range(16))
    for payload in (b"", b"\xc1", pack({"k": 7}), pack({"k": "req", "id": "x"})):
        pkt = MeshPacket(PEER, elsewhere, 1, Service.PING, 0, payload)
        node.datagram_received(PEER, bytes([Channel.PACKET]) + pkt.encode())
    assert node.drop_counts().get("malformed", 0) + node.drop_counts().get("type", 0) >= 2
