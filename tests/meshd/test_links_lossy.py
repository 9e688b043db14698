"""Links over a terrible loopback path: a seeded UDP relay that drops, duplicates and reorders."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshd.core.identity import NodeId
from meshd.links.stream import Stream
from tests.meshd.links_helpers import Node, eventually


class LossyRelay:
    """Relays UDP between one client and ``upstream`` on 127.0.0.1 with seeded misbehaviour."""

    def __init__(self, upstream: tuple[str, int], *, loss: float, dup: float, reorder: float,
                 seed: int) -> None:
        self.upstream = upstream
        self.loss, self.dup, self.reorder = loss, dup, reorder
        self.rng = random.Random(seed)
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None
        self.dropped = self.duplicated = self.delayed = 0
        self.in_flight = 0  # packets held back (delayed) and not sent yet
        self._loop = asyncio.get_running_loop()

    async def start(self) -> tuple[str, int]:
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.client = addr
                relay._forward(data, relay.back, None)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if relay.client is not None:
                    relay._forward(data, relay.front, relay.client)

        self.front, _ = await self._loop.create_datagram_endpoint(
            Front, local_addr=("127.0.0.1", 0))
        self.back, _ = await self._loop.create_datagram_endpoint(
            Back, remote_addr=self.upstream)
        addr = self.front.get_extra_info("sockname")
        return (addr[0], addr[1])

    def _forward(self, data: bytes, transport: asyncio.DatagramTransport | None,
                 addr: tuple[str, int] | None) -> None:
        if transport is None:
            return
        r = self.rng.random()
        if r < self.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            if self.rng.random() < self.reorder:
                # held back a little: later packets overtake it
                self.delayed += 1
                self.in_flight += 1
                self._loop.call_later(0.002 + self.rng.random() * 0.01, self._send_held,
                                      transport, data, addr)
            else:
                self._send(transport, data, addr)

    def _send_held(self, transport: asyncio.DatagramTransport, data: bytes,
                   addr: tuple[str, int] | None) -> None:
        self.in_flight -= 1
        self._send(transport, data, addr)

    @staticmethod
    def _send(transport: asyncio.DatagramTransport, data: bytes,
              addr: tuple[str, int] | None) -> None:
        if not transport.is_closing():
            if addr is None:
                transport.sendto(data)
            else:
                transport.sendto(data, addr)

    def close(self) -> None:
        for t in (self.front, self.back):
            if t is not None:
                t.close()


async def echo(peer: NodeId, stream: Stream) -> None:
    while (msg := await stream.recv()) is not None:
        await stream.send(msg)


@pytest.fixture
async def lossy() -> AsyncIterator[tuple[Node, Node, LossyRelay, tuple[str, int]]]:
    a, b = Node("alpha"), Node("bravo")
    b.mgr.register_stream_service("echo", echo)
    addr = await b.listen()
    relay = LossyRelay(addr, loss=0.10, dup=0.05, reorder=0.10, seed=1234)
    front = await relay.start()
    yield a, b, relay, front
    await a.mgr.close()
    await b.mgr.close()
    relay.close()


async def test_handshake_streams_and_datagrams_survive_a_terrible_path(
        lossy: tuple[Node, Node, LossyRelay, tuple[str, int]]) -> None:
    a, b, relay, front = lossy
    # the handshake completes despite loss (QUIC retransmits the proof exchange)
    assert await asyncio.wait_for(a.mgr.connect(*front, b.id), 30) == b.id
    await b.rec.wait_for(lambda: len(b.rec.ups) == 1, timeout=30)
    # a stream arrives whole and in order
    s = await a.mgr.open_stream(b.id, "echo")
    payloads = [os.urandom(n) for n in (1, 1000, 64 * 1024, 256 * 1024)]
    for p in payloads:
        await s.send(p)
    for p in payloads:
        assert await asyncio.wait_for(s.recv(), 60) == p
    # datagrams are unreliable: some are lost, none corrupted, duplicates are QUIC's to drop
    sent = [b"\x02dg %d" % i for i in range(200)]
    for d in sent:
        assert a.mgr.send_datagram(b.id, d)
        # one QUIC packet each (the link transmits once per loop turn): 200 packets through
        # 10 % loss; in bursts of 20 they shared ~10 packets, all of which got through at
        # times, and the "some are lost" check below failed
        await asyncio.sleep(0)

    async def marker_through(tag: bytes) -> None:
        """Send marker datagrams (some get lost) until one arrives at b."""
        def arrived() -> bool:
            return any(d.startswith(tag) for _, d in b.rec.datagrams)
        for i in range(100):
            assert a.mgr.send_datagram(b.id, tag + b" %d" % i)
            try:
                await b.rec.wait_for(arrived, timeout=0.1)
                return
            except TimeoutError:
                continue
        raise AssertionError(f"no {tag!r} marker got through in 100 tries")

    # a marker through: every datagram sent before it has left a; the relay holding nothing
    # back: every one not dropped went on to b; a second marker through: b has read them all
    await marker_through(b"\x02end1")
    await eventually(lambda: relay.in_flight == 0, timeout=5)
    await marker_through(b"\x02end2")
    got = [d for _, d in b.rec.datagrams if not d.startswith(b"\x02end")]
    assert set(got) <= set(sent)
    assert len(got) == len(set(got))  # QUIC drops duplicated packets
    assert 100 < len(got) < 200
    assert relay.dropped > 0 and relay.duplicated > 0 and relay.delayed > 0
