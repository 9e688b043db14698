"""Quiet-link ACK holding over real QUIC on loopback (``Connection.set_ack_hold``).

meshd.node turns it on when both ends' slow hellos say ``ak`` (tests/meshd/test_neighbours.py);
here the link layer alone: which ACKs wait, what releases them, and the peer's allowance.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aioquic import tls

from meshd.core.identity import NodeId
from meshd.links import connection
from meshd.links.aioquic_internals import ack_pending, peer_max_ack_delay
from meshd.links.connection import ACK_HOLD_S, ACK_HOLD_SLACK_S, Connection
from meshd.links.stream import Stream
from tests.meshd.links_helpers import Node, eventually, wait_settled


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node("alpha"), Node("bravo")
    await b.listen()
    assert b.addr is not None
    await a.mgr.connect(*b.addr, b.id)
    await b.rec.wait_for(lambda: len(b.rec.ups) == 1)
    await wait_settled(a, b)
    yield a, b
    await a.mgr.close()
    await b.mgr.close()


def conn(node: Node, peer: Node) -> Connection:
    return node.mgr._peers[peer.id].active


def ack_at(c: Connection) -> float | None:
    return c._quic._spaces[tls.Epoch.ONE_RTT].ack_at


async def received(node: Node, data: bytes) -> None:
    await node.rec.wait_for(lambda: any(d == data for _, d in node.rec.datagrams))


async def test_quiet_link_acks_ride_on_the_next_hello(pair: tuple[Node, Node]) -> None:
    a, b = pair
    ca, cb = conn(a, b), conn(b, a)
    await eventually(lambda: not ack_pending(cb._quic) and not ack_pending(ca._quic))
    advertised = peer_max_ack_delay(ca._quic)
    assert advertised == 0.025
    for x, y in ((a, b), (b, a)):
        x.mgr.set_ack_hold(y.id, True, True)
    assert peer_max_ack_delay(ca._quic) == pytest.approx(advertised + ACK_HOLD_S + ACK_HOLD_SLACK_S)
    # a hello: b's ACK waits (up to ACK_HOLD_S) instead of leaving 1 ms later
    t = time.monotonic()
    assert a.mgr.send_datagram(b.id, b"\x01hello 1")
    await received(b, b"\x01hello 1")
    await asyncio.sleep(0.2)
    held = ack_at(cb)
    assert held is not None and held >= t + ACK_HOLD_S - 0.5
    # b's own hello carries it: nothing pending once that is out
    assert b.mgr.send_datagram(a.id, b"\x01hello 2")
    await received(a, b"\x01hello 2")
    assert not ack_pending(cb._quic)
    # a's ACK of that hello is held on a's side the same way
    await asyncio.sleep(0.1)
    assert ack_pending(ca._quic)
    # a mesh packet is acknowledged at once, holding or not
    assert a.mgr.send_datagram(b.id, b"\x03packet")
    await received(b, b"\x03packet")
    await eventually(lambda: not ack_pending(cb._quic), timeout=1.0)
    # turning holding off (the link went fast) sends what was held at once
    assert b.mgr.send_datagram(a.id, b"\x02routing")
    await received(a, b"\x02routing")
    assert ack_pending(ca._quic)
    a.mgr.set_ack_hold(b.id, False, False)
    await eventually(lambda: not ack_pending(ca._quic), timeout=1.0)
    assert peer_max_ack_delay(ca._quic) == advertised
    assert ca.ack_hold == (False, False)


async def test_no_holding_unless_asked(pair: tuple[Node, Node]) -> None:
    a, b = pair
    cb = conn(b, a)
    assert cb.ack_hold == (False, False)
    assert a.mgr.send_datagram(b.id, b"\x01hello")
    await received(b, b"\x01hello")
    await eventually(lambda: not ack_pending(cb._quic), timeout=1.0)
    b.mgr.set_ack_hold(a.id, True, False)  # we may hold: the peer's allowance is not ours
    assert peer_max_ack_delay(cb._quic) == 0.025
    a.mgr.set_ack_hold(b.id, True, True)
    a.mgr.set_ack_hold(b"\x07" * 16, True, True)  # no such link: nothing happens


async def test_no_holding_while_streams_carry_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync session's packets are probed for at the usual pace: holding waits for its end."""
    monkeypatch.setattr(connection, "STREAM_QUIET_S", 0.3)
    a, b = Node("alpha"), Node("bravo")
    got: list[bytes] = []

    async def sink(peer: NodeId, stream: Stream) -> None:
        while (msg := await stream.recv()) is not None:
            got.append(msg)

    b.mgr.register_stream_service("sink", sink, max_message=1000)
    await b.listen()
    assert b.addr is not None
    try:
        await a.mgr.connect(*b.addr, b.id)
        await b.rec.wait_for(lambda: len(b.rec.ups) == 1)
        await wait_settled(a, b)
        ca, cb = conn(a, b), conn(b, a)
        for x, y in ((a, b), (b, a)):
            x.mgr.set_ack_hold(y.id, True, True)
        assert ca.ack_hold_in_force == (True, True)
        s = await a.mgr.open_stream(b.id, "sink")
        await s.send(b"x" * 100)
        assert peer_max_ack_delay(ca._quic) == 0.025  # our probes: the usual pace
        await eventually(lambda: got == [b"x" * 100])
        assert cb.ack_hold_in_force == (False, False)  # b saw the stream's bytes too
        assert a.mgr.send_datagram(b.id, b"\x01hello during")
        await received(b, b"\x01hello during")
        await eventually(lambda: not ack_pending(cb._quic), timeout=1.0)  # not held
        assert cb.ack_hold == (True, True)  # still asked for: back once the streams are quiet
        await s.close()
        await asyncio.sleep(0.5)
        assert a.mgr.send_datagram(b.id, b"\x01hello after")
        await received(b, b"\x01hello after")
        await asyncio.sleep(0.1)
        assert ack_pending(cb._quic) and cb.ack_hold_in_force == (True, True)
        assert peer_max_ack_delay(cb._quic) > 1.0
        assert b.mgr.send_datagram(a.id, b"\x01hello back")
        await received(a, b"\x01hello back")
        assert ca.ack_hold_in_force == (True, True) and peer_max_ack_delay(ca._quic) > 1.0
    finally:
        await a.mgr.close()
        await b.mgr.close()
