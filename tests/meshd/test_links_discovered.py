"""Discovered peers (issue 11, item 7): dialled while advertised, a bounded number at once,
never again after their goodbye; at the link layer and through the node's discovery callbacks."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshd.config import Config
from meshd.core.identity import Identity, NodeId
from meshd.discovery import PeerSeen
from meshd.links.connection import Connection
from meshd.links.manager import MAX_DISCOVERED_DIALS, MAX_DISCOVERED_PEERS
from meshd.node import Node as MeshNode
from tests.meshd.links_helpers import Node, eventually


@pytest.fixture
def black_hole() -> Iterator[tuple[str, int]]:
    """A UDP port that takes packets and never answers (a spoofed service's address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()
    sock.close()


class DialCounter:
    """Wraps LinkManager._connect (what the dial loops call): counts attempts and the most
    ever in flight at once."""

    def __init__(self, node: Node) -> None:
        self.calls = 0
        self.inflight = 0
        self.peak = 0
        orig = node.mgr._connect

        async def counting(host: str, port: int, expect: NodeId | None) -> Connection:
            self.calls += 1
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
            try:
                return await orig(host, port, expect)
            finally:
                self.inflight -= 1

        node.mgr._connect = counting  # type: ignore[method-assign]


@pytest.fixture
async def alpha() -> AsyncIterator[Node]:
    a = Node("alpha")
    yield a
    await a.mgr.close()


async def test_discovered_peers_dialled_a_bounded_number_at_once_and_stopped_when_gone(
        alpha: Node, black_hole: tuple[str, int]) -> None:
    dials = DialCounter(alpha)
    ids = [Identity.generate().node_id for _ in range(MAX_DISCOVERED_PEERS + 6)]
    added = [alpha.mgr.add_discovered_peer(nid, *black_hole) for nid in ids]
    # a spoofed zeroconf flood does not become a dial flood
    assert added == [True] * MAX_DISCOVERED_PEERS + [False] * 6
    assert alpha.mgr.drops.counts["discovered-full"] == 6
    assert len(alpha.mgr.discovered_peers()) == MAX_DISCOVERED_PEERS
    # the dial slots are taken: the other peers wait, they do not open sockets
    await eventually(lambda: sum(c.is_client for c in alpha.mgr._conns) == MAX_DISCOVERED_DIALS)
    assert dials.inflight == MAX_DISCOVERED_DIALS
    # all of them say goodbye: no dialling any more, attempts in flight abandoned
    for nid in ids:
        alpha.mgr.remove_discovered_peer(nid)
    assert alpha.mgr.discovered_peers() == {}
    await eventually(lambda: dials.inflight == 0 and not alpha.mgr._tasks)
    calls = dials.calls
    assert dials.peak == MAX_DISCOVERED_DIALS
    await eventually(lambda: not alpha.mgr._conns)
    assert dials.calls == calls  # the loops ended: nothing can dial again


async def test_discovered_peer_links_redials_while_advertised_not_after_goodbye(
        alpha: Node) -> None:
    b = Node("bravo")
    addr = await b.listen()
    try:
        assert alpha.mgr.add_discovered_peer(b.id, "127.0.0.9", 9)  # an old address first
        assert alpha.mgr.add_discovered_peer(b.id, *addr)  # seen again: the address updates
        assert alpha.mgr.discovered_peers() == {b.id: addr}
        await alpha.rec.wait_for(lambda: len(alpha.rec.ups) == 1, timeout=30)
        # still advertised: a lost link is dialled again
        alpha.mgr.close_link(b.id, "hellos stopped")
        await alpha.rec.wait_for(lambda: len(alpha.rec.ups) == 2, timeout=30)
        # goodbye: the link stays (hellos decide about it), the dial loop ends
        alpha.mgr.remove_discovered_peer(b.id)
        await eventually(lambda: not alpha.mgr._tasks)
        assert alpha.mgr.is_linked(b.id)
        alpha.mgr.close_link(b.id, "hellos stopped")
        assert not alpha.mgr._tasks and alpha.mgr.discovered_peers() == {}
        assert len(alpha.rec.ups) == 2
    finally:
        await b.mgr.close()


async def test_node_stops_dialling_a_discovered_peer_on_goodbye(
        black_hole: tuple[str, int]) -> None:
    """Through the callbacks Discovery calls: seen -> dialled, gone -> no longer dialled."""
    with tempfile.TemporaryDirectory(prefix="cmdsc", dir="/tmp") as tmp:
        node = MeshNode(Config(state_dir=Path(tmp), name="dialler", listen=("127.0.0.1:0",)))
        stop = asyncio.Event()
        runner = asyncio.create_task(node.run(stop))
        try:
            await eventually(lambda: node.ready)
            peers = [Identity.generate().node_id for _ in range(10)]
            for nid in peers:
                node._on_peer_seen(PeerSeen(node_id=nid, name="ghost", role="car",
                                            host=black_hole[0], port=black_hole[1]))
            await eventually(lambda: len(node.links.discovered_peers()) == 10)
            # seen again (a TXT or address update) is one peer, not a second dial loop
            node._on_peer_seen(PeerSeen(node_id=peers[0], name="ghost", role="car",
                                        host=black_hole[0], port=black_hole[1]))
            await eventually(lambda: not node._discovery_dials)
            assert len(node.links.discovered_peers()) == 10
            assert len(node.links._tasks) == 10
            await eventually(lambda: sum(c.is_client for c in node.links._conns)
                             == MAX_DISCOVERED_DIALS)
            for nid in peers:
                node._on_peer_gone(nid)
            assert node.links.discovered_peers() == {}
            await eventually(lambda: not node.links._tasks and not node.links._conns)
            # a goodbye before the delayed dial fired cancels the dial
            late = Identity.generate().node_id
            node._on_peer_seen(PeerSeen(node_id=late, name="late", role="car",
                                        host=black_hole[0], port=black_hole[1]))
            node._on_peer_gone(late)
            assert node._discovery_dials == {}
            await asyncio.sleep(0)
            assert node.links.discovered_peers() == {}
        finally:
            stop.set()
            await asyncio.wait_for(runner, 30)
