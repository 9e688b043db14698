"""A spoofable QUIC Initial flood (issue 11, item 4) against a listener on loopback.

The flood is ``carmesh.dev.initial_flood`` in a subprocess: Initials with random
connection ids, bounded in count and time, never answering a Retry (as a
spoofer cannot).  While it runs, a genuine neighbour must link and an existing
link must keep carrying pings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator

import pytest

from meshd.core.identity import NodeId
from meshd.links.admission import RETRY_ABOVE
from meshd.links.server import FLOOD_LOG_INTERVAL_S
from tests.meshd.links_helpers import Node, eventually

FLOOD_RATE = 3000
FLOOD_MAX_PACKETS = 90_000
FLOOD_MAX_SECONDS = 30


def echoing(node: Node) -> None:
    """The node sends every datagram it receives back to its sender."""
    orig = node.rec.datagram_received

    def echo(peer: NodeId, data: bytes) -> None:
        orig(peer, data)
        node.mgr.send_datagram(peer, data)

    node.rec.datagram_received = echo  # type: ignore[method-assign]


async def start_flood(port: int, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "carmesh.dev.initial_flood", f"127.0.0.1:{port}",
        "--rate", str(FLOOD_RATE), "--count", str(FLOOD_MAX_PACKETS),
        "--seconds", str(FLOOD_MAX_SECONDS), *extra,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ))


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[Node, Node, Node]]:
    a, b, c = Node("alpha"), Node("bravo"), Node("charlie")
    yield a, b, c
    for n in (a, b, c):
        await n.mgr.close()


@pytest.mark.parametrize(("valid", "sources"), [(False, 1), (True, 1), (False, 64)],
                         ids=["garbage-initials", "real-clienthellos", "garbage-from-64-ports"])
async def test_genuine_peer_links_and_existing_link_pings_during_initial_flood(
        nodes: tuple[Node, Node, Node], valid: bool, sources: int,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="meshd")  # whatever an earlier test file left there
    a, b, c = nodes
    addr = await b.listen()
    assert await a.mgr.connect(*addr, b.id) == b.id
    echoing(b)
    loop = asyncio.get_running_loop()
    rtts: list[float] = []
    lost: list[int] = []
    stop_pinging = asyncio.Event()

    async def pinger() -> None:
        """Ping over the existing link all along (as hellos would).

        Datagrams are unreliable: a flood beyond what the machine can read drops some in the
        kernel, before any QUIC code sees them.  A ping not answered in 3 s counts as lost.
        """
        i = 0
        while not stop_pinging.is_set():
            ping = b"\x02ping %d" % i
            sent_at = loop.time()
            assert a.mgr.send_datagram(b.id, ping), "the existing link went down"
            try:
                await a.rec.wait_for(lambda p=ping: (b.id, p) in a.rec.datagrams,  # type: ignore[misc]
                                     timeout=3)
                rtts.append(loop.time() - sent_at)
            except TimeoutError:
                lost.append(i)
            i += 1
            await asyncio.sleep(0.05)

    pings = asyncio.create_task(pinger())
    flood = await start_flood(addr[1], "--sources", str(sources), *(["--valid"] if valid else []))
    counts = b.mgr.handshake_counts
    try:
        # the flood is on: Initials beyond the budget are dropped unparsed, those within it
        # are asked to prove their address
        await eventually(lambda: counts["dropped-over-budget"] >= 200 and counts["retry-sent"] >= 1,
                         timeout=30)
        pings_before = len(rtts)
        # a genuine neighbour (a static peer, dialling as the daemon does) links all the same,
        # through a Retry; on a loaded machine the flood may cost it a redial, never the link
        t0 = loop.time()
        c.mgr.add_static_peer(*addr, b.id)
        await c.rec.wait_for(lambda: len(c.rec.ups) == 1, timeout=60)
        link_s = loop.time() - t0
        await b.rec.wait_for(lambda: any(up[0] == c.id for up in b.rec.ups))
        assert counts["accepted-validated"] >= 1
        redials = c.mgr._static[0].attempts - 1
        # the existing link carried pings while Initials kept being dropped and Retries sent
        retries_before, dropped_before = counts["retry-sent"], counts["dropped-over-budget"]
        await eventually(lambda: len(rtts) >= pings_before + 20, timeout=60)
        await eventually(lambda: counts["retry-sent"] > retries_before, timeout=10)
        assert counts["dropped-over-budget"] > dropped_before
        assert flood.returncode is None  # the flood was still on
        stop_pinging.set()
        await asyncio.wait_for(pings, 20)
        # spoofed Initials never hold more than the unvalidated pool
        assert b.mgr.pending_handshakes.unvalidated <= RETRY_ABOVE
        assert b.mgr.links().keys() == {a.id, c.id}
        # the existing link never went down, at either end
        assert a.rec.downs == [] and all(p != a.id for p, _ in b.rec.downs), b.rec.downs
        # on a loaded machine a retransmission of c's first Initial may open a second
        # handshake beside the one through the Retry; it idles out, c stays linked
        assert all(p == c.id for p, _ in b.rec.downs), b.rec.downs
        during = sorted(rtts[pings_before:])
        print(f"\nflood ({'valid' if valid else 'garbage'}): genuine link in {link_s * 1000:.0f} ms "
              f"({redials} failed dials); ping rtt during flood median "
              f"{during[len(during) // 2] * 1000:.2f} ms, max {during[-1] * 1000:.2f} ms "
              f"({len(during)} pings, {len(lost)} lost); admission {dict(counts)}")
    finally:
        stop_pinging.set()
        pings.cancel()
        if flood.returncode is None:
            flood.terminate()
        out, _ = await flood.communicate()
    if out:
        json.loads(out)  # the flooder's own summary (when it ended by itself)
    # the log stays readable: no aioquic chatter, one admission line per interval at most
    assert [r for r in caplog.records if r.name == "quic"] == []
    server_lines = [r for r in caplog.records if r.name == "meshd.links.server"]
    assert 1 <= len(server_lines) <= 1 + FLOOD_MAX_SECONDS // FLOOD_LOG_INTERVAL_S
    assert len(caplog.records) < 50
