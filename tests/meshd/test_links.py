"""QUIC neighbour links between LinkManagers on loopback, in one process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import pytest

from meshd.core.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from meshd.core.identity import Identity, NodeId, Role
from meshd.links.connection import MESH_MTU
from meshd.links.stream import LinkBrokenError, Stream
from tests.meshd.links_helpers import Node, eventually, wait_settled


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    a, b = Node("alpha"), Node("bravo")
    await b.listen()
    yield a, b
    await a.mgr.close()
    await b.mgr.close()


async def linked(a: Node, b: Node) -> None:
    assert b.addr is not None
    peer = await a.mgr.connect(*b.addr, b.id)
    assert peer == b.id
    await b.rec.wait_for(lambda: len(b.rec.ups) == 1)


async def test_link_up_both_sides_with_right_ids(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    assert len(a.rec.ups) == 1
    peer, ann, remote, initiator = a.rec.ups[0]
    assert (peer, ann.raw, initiator) == (b.id, b.ann.raw, True)
    assert remote == b.addr
    peer, ann, remote, initiator = b.rec.ups[0]
    assert (peer, ann.raw, initiator) == (a.id, a.ann.raw, False)
    assert remote[0] == "127.0.0.1"
    assert set(a.mgr.links()) == {b.id} and set(b.mgr.links()) == {a.id}
    assert a.mgr.peer_address(b.id) == b.addr
    assert a.mgr.links()[b.id].initiator and not b.mgr.links()[a.id].initiator


async def test_datagrams_both_ways_and_stats(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    for i in range(50):
        assert a.mgr.send_datagram(b.id, b"\x02a->b %d" % i)
        assert b.mgr.send_datagram(a.id, b"\x02b->a %d" % i)
    await b.rec.wait_for(lambda: len(b.rec.datagrams) == 50)
    await a.rec.wait_for(lambda: len(a.rec.datagrams) == 50)
    assert {d for _, d in b.rec.datagrams} == {b"\x02a->b %d" % i for i in range(50)}
    assert all(p == a.id for p, _ in b.rec.datagrams)
    st = a.mgr.links()[b.id]
    assert st.tx_datagrams == 50 and st.rx_datagrams == 50
    assert st.tx_datagram_bytes == sum(len(b"\x02a->b %d" % i) for i in range(50))
    # an MTU-sized datagram goes through
    big = os.urandom(MESH_MTU)
    assert a.mgr.send_datagram(b.id, big)
    await b.rec.wait_for(lambda: b.rec.datagrams[-1][1] == big)
    assert not a.mgr.send_datagram(Identity.generate().node_id, b"x")  # no link


async def test_oversized_datagram_raises_and_link_still_works(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    with pytest.raises(LocalProtocolError):
        a.mgr.send_datagram(b.id, bytes(MESH_MTU + 1))
    with pytest.raises(LocalProtocolError):
        a.mgr.send_datagram(b.id, bytes(5000))
    assert a.mgr.links()[b.id].dropped_oversize == 2
    assert a.mgr.send_datagram(b.id, b"after")
    await b.rec.wait_for(lambda: any(d == b"after" for _, d in b.rec.datagrams))


async def test_stale_queue_entries_are_dropped(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    loop = asyncio.get_running_loop()
    # queued in the same loop iteration: the past deadlines are checked when fed to aioquic
    assert a.mgr.send_datagram(b.id, b"stale-1", deadline=loop.time() - 0.001)
    assert a.mgr.send_datagram(b.id, b"fresh", deadline=loop.time() + 5)
    assert a.mgr.send_datagram(b.id, b"stale-2", deadline=loop.time() - 1)
    assert a.mgr.send_datagram(b.id, b"no-deadline")
    await b.rec.wait_for(lambda: len(b.rec.datagrams) == 2)
    # a later datagram arriving shows nothing else was on its way
    assert a.mgr.send_datagram(b.id, b"marker")
    await b.rec.wait_for(lambda: b.rec.datagrams[-1:] == [(a.id, b"marker")])
    assert [d for _, d in b.rec.datagrams] == [b"fresh", b"no-deadline", b"marker"]
    st = a.mgr.links()[b.id]
    assert st.dropped_stale == 2 and st.tx_datagrams == 3


async def test_bounded_queue_drops_oldest() -> None:
    a, b = Node("alpha", datagram_queue_max=4), Node("bravo")
    await b.listen()
    try:
        await linked(a, b)
        for i in range(10):  # all in one loop iteration: nothing is fed to aioquic in between
            a.mgr.send_datagram(b.id, b"%d" % i)
        await b.rec.wait_for(lambda: len(b.rec.datagrams) == 4)
        assert a.mgr.send_datagram(b.id, b"marker")
        await b.rec.wait_for(lambda: b.rec.datagrams[-1:] == [(a.id, b"marker")])
        assert [d for _, d in b.rec.datagrams] == [b"6", b"7", b"8", b"9", b"marker"]
        assert a.mgr.links()[b.id].dropped_queue_full == 6
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def echo(peer: NodeId, stream: Stream) -> None:
    while (msg := await stream.recv()) is not None:
        await stream.send(msg)


async def test_stream_echo_both_ways_with_1mib(pair: tuple[Node, Node]) -> None:
    a, b = pair
    a.mgr.register_stream_service("echo", echo, max_message=2 << 20)
    b.mgr.register_stream_service("echo", echo, max_message=2 << 20)
    await linked(a, b)
    big = os.urandom(1 << 20)
    for src, dst in ((a, b), (b, a)):
        s = await src.mgr.open_stream(dst.id, "echo", max_message=2 << 20)
        await s.send(b"hello")
        assert await s.recv() == b"hello"
        await s.send(big)
        assert await s.recv() == big
        await s.send(b"")
        assert await s.recv() == b""
        await s.close()
        assert await s.recv() is None  # the echo handler ended its side too
    st = a.mgr.links()[b.id]
    assert st.tx_stream_bytes > 2 << 20 and st.rx_stream_bytes > 2 << 20
    assert st.streams_opened == 1 and st.streams_accepted == 1
    # both ends sent FIN on both streams: neither connection still holds them
    for node in (a, b):
        await eventually(lambda node=node: all(not c._streams for c in node.mgr._conns), 5.0)


async def test_stream_message_over_max_is_refused(pair: tuple[Node, Node]) -> None:
    a, b = pair
    got: list[bytes] = []

    async def sink(peer: NodeId, stream: Stream) -> None:
        while (msg := await stream.recv()) is not None:
            got.append(msg)

    b.mgr.register_stream_service("sink", sink, max_message=1000)
    await linked(a, b)
    s = await a.mgr.open_stream(b.id, "sink")
    await s.send(bytes(1000))
    await s.send(bytes(1001))
    await eventually(lambda: b.mgr.drops.counts["oversize"] == 1)
    assert got == [bytes(1000)]
    with pytest.raises(LinkBrokenError):  # b reset the stream
        await asyncio.wait_for(s.recv(), 5)
    # the link is fine
    s2 = await a.mgr.open_stream(b.id, "sink")
    await s2.send(b"ok")
    await eventually(lambda: got[-1] == b"ok")


async def test_unknown_service_stream_is_reset(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    s = await a.mgr.open_stream(b.id, "nope")
    with pytest.raises(LinkBrokenError):
        await asyncio.wait_for(s.recv(), 5)
    assert b.mgr.drops.counts["unknown-service"] == 1


async def test_static_peer_pinned_to_another_node_is_refused(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert b.addr is not None
    other = Identity.generate().node_id
    with pytest.raises(VerificationError) as err:
        await a.mgr.connect(*b.addr, other)
    assert err.value.reason == "identity"
    # both ends closed the refused connection
    await eventually(lambda: not a.mgr._conns and not b.mgr._conns)
    assert a.rec.ups == [] and b.rec.ups == []
    assert a.mgr.links() == {} and b.mgr.links() == {}


async def test_certificate_of_another_key_is_refused() -> None:
    """A node presenting a certificate that is not its announced key cannot link."""
    a = Node("alpha")
    forger = Node("mallory", tls_identity_override=Identity.generate())
    await forger.listen()
    assert forger.addr is not None
    try:
        for expect in (forger.id, None):
            with pytest.raises(VerificationError) as err:
                await a.mgr.connect(*forger.addr, expect)
            assert err.value.reason == "cert-key"
        await eventually(lambda: not a.mgr._conns and not forger.mgr._conns)
        assert a.rec.ups == [] and forger.rec.ups == []
        assert a.mgr.drops.counts["refused-cert-key"] == 2
    finally:
        await a.mgr.close()
        await forger.mgr.close()


async def test_tofu_learns_and_pins_the_id(pair: tuple[Node, Node]) -> None:
    a, b = pair
    assert b.addr is not None
    learned: list[NodeId] = []
    a.mgr.add_static_peer(*b.addr, None, learned.append)
    await a.rec.wait_for(lambda: len(a.rec.ups) == 1)
    await eventually(lambda: learned == [b.id])
    assert a.rec.ups[0][0] == b.id
    # one link, not a reconnect loop: the static peer waits on the link
    await eventually(lambda: len(b.rec.ups) == 1)
    await wait_settled(a, b)
    sp = a.mgr._static[0]
    assert sp.expect == b.id and sp.backoff.failures == 0
    assert len(a.mgr._conns) == 1 and len(a.rec.ups) == 1 and len(b.rec.ups) == 1


async def test_simultaneous_connect_ends_with_one_link(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await a.listen()
    assert a.addr is not None and b.addr is not None
    for _ in range(3):
        r1, r2 = await asyncio.gather(a.mgr.connect(*b.addr, b.id), b.mgr.connect(*a.addr, a.id))
        assert (r1, r2) == (b.id, a.id)
        await wait_settled(a, b)
        assert set(a.mgr.links()) == {b.id} and set(b.mgr.links()) == {a.id}
        # both kept the connection initiated by the smaller NodeId
        small_is_a = a.id < b.id
        assert a.mgr.links()[b.id].initiator == small_is_a
        assert b.mgr.links()[a.id].initiator == (not small_is_a)
        assert len(a.rec.ups) == 1 and len(b.rec.ups) == 1
        assert a.rec.downs == [] and b.rec.downs == []
        assert a.mgr.send_datagram(b.id, b"still")
        await b.rec.wait_for(lambda: b.rec.datagrams[-1:] == [(a.id, b"still")])
        b.rec.datagrams.clear()
        a.mgr.close_link(b.id, "test round")
        await b.rec.wait_for(lambda: len(b.rec.downs) == 1)
        for rec in (a.rec, b.rec):
            rec.ups.clear()
            rec.downs.clear()


async def test_close_link_reports_down_on_both_sides(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    a.mgr.close_link(b.id, "hellos stopped")
    assert a.rec.downs == [(b.id, "hellos stopped")]
    await b.rec.wait_for(lambda: len(b.rec.downs) == 1)
    assert b.rec.downs[0][0] == a.id and "hellos stopped" in b.rec.downs[0][1]
    assert a.mgr.links() == {} and b.mgr.links() == {}
    assert not a.mgr.send_datagram(b.id, b"x")
    with pytest.raises(LinkBrokenError):
        await a.mgr.open_stream(b.id, "echo")


async def test_reconnect_with_backoff_after_peer_restarts() -> None:
    a, b = Node("alpha"), Node("bravo")
    addr = await b.listen()
    try:
        a.mgr.add_static_peer(*addr, b.id)
        await a.rec.wait_for(lambda: len(a.rec.ups) == 1)
        await b.mgr.close()  # the peer goes away
        await a.rec.wait_for(lambda: len(a.rec.downs) == 1)
        # a few refused attempts while it is away
        await eventually(lambda: a.mgr._static[0].backoff.failures >= 2, timeout=20)
        b.restart_manager()
        await b.listen(*addr)  # back on the same port
        await a.rec.wait_for(lambda: len(a.rec.ups) == 2, timeout=20)
        await b.rec.wait_for(lambda: len(b.rec.ups) == 1)
        assert set(a.mgr.links()) == {b.id}
        assert a.mgr.send_datagram(b.id, b"back")
        await b.rec.wait_for(lambda: b.rec.datagrams == [(a.id, b"back")])
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def test_ipv6_loopback() -> None:
    a, b = Node("alpha"), Node("bravo")
    try:
        addr = await b.listen("::1", 0)
        assert await a.mgr.connect(*addr, b.id) == b.id
        assert a.mgr.send_datagram(b.id, b"v6")
        await b.rec.wait_for(lambda: b.rec.datagrams == [(a.id, b"v6")])
        big = os.urandom(MESH_MTU)  # the same MTU holds over IPv6
        assert b.mgr.send_datagram(a.id, big)
        await a.rec.wait_for(lambda: a.rec.datagrams == [(b.id, big)])
        assert a.mgr.peer_address(b.id) == addr
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def test_listener_exceptions_do_not_break_the_link(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await linked(a, b)
    calls: list[bytes] = []

    def boom(peer: NodeId, data: bytes) -> None:
        calls.append(data)
        raise RuntimeError("listener bug")

    b.rec.datagram_received = boom  # type: ignore[method-assign]
    a.mgr.send_datagram(b.id, b"1")
    a.mgr.send_datagram(b.id, b"2")
    await eventually(lambda: len(calls) == 2)
    assert b.mgr.drops.counts["listener-error"] == 2
    assert set(b.mgr.links()) == {a.id}


@pytest.mark.slow
async def test_connect_to_nothing_fails_with_connection_error() -> None:
    a = Node("alpha")
    b = Node("bravo")
    addr = await b.listen()
    await b.mgr.close()  # nothing listens there now
    try:
        with pytest.raises((ConnectionError, OSError, RemoteProtocolError)):
            await a.mgr.connect(*addr, None)
    finally:
        await a.mgr.close()


async def test_peer_with_a_clock_hours_ahead_still_links() -> None:
    """Issue 11 item 3: a wrong clock is normal in a disaster; the link handshake does not
    check announcement freshness (TLS and the nonce challenge prove liveness), so the node
    links and can learn its clock offset from the neighbours' hellos."""
    a = Node("alpha")
    b = Node("bravo")
    b.ann = b.identity.announce(1, time.time() + 2 * 3600, "bravo", Role.CAR)  # 2 h ahead
    addr = await b.listen()
    try:
        assert await a.mgr.connect(*addr, b.id) == b.id
        await eventually(lambda: len(a.rec.ups) == 1 and len(b.rec.ups) == 1)
        assert "refused-stale" not in b.mgr.drops.counts
    finally:
        await a.mgr.close()
        await b.mgr.close()


def _ordered_pair(small_first: bool) -> tuple[Identity, Identity]:
    x, y = Identity.generate(), Identity.generate()
    lo, hi = (x, y) if x.node_id < y.node_id else (y, x)
    return (lo, hi) if small_first else (hi, lo)


@pytest.mark.parametrize("a_is_smaller", [True, False])
async def test_crashed_peer_redials_and_replaces_dead_connection(a_is_smaller: bool) -> None:
    """The peer crashed (no CONNECTION_CLOSE) and dials us again: no wait for the idle timeout."""
    ida, idb = _ordered_pair(a_is_smaller)
    a, b = Node("alpha", ida), Node("bravo", idb)
    a_addr = await a.listen()
    b_addr = await b.listen()
    try:
        assert await a.mgr.connect(*b_addr, b.id) == b.id
        await b.rec.wait_for(lambda: len(b.rec.ups) == 1)
        # crash b: its sockets vanish without a word
        for server in b.mgr._servers:
            assert server._transport is not None
            server._transport.close()
        for conn in list(b.mgr._conns):
            conn.shutdown()
        b.ann = b.identity.announce(2, time.time(), "bravo", b.ann.role)
        b.restart_manager()
        start = asyncio.get_running_loop().time()
        assert await b.mgr.connect(*a_addr, a.id) == a.id
        await eventually(lambda: b.id in a.mgr.links() and not a.mgr.links()[b.id].initiator,
                         timeout=5)
        assert asyncio.get_running_loop().time() - start < 4  # idle timeout is 8 s
        assert a.rec.downs == []  # the link lived on: only its connection changed
        assert a.mgr.send_datagram(b.id, b"hi again")
        await b.rec.wait_for(lambda: b.rec.datagrams == [(a.id, b"hi again")])
        assert b.mgr.send_datagram(a.id, b"back")
        await a.rec.wait_for(lambda: a.rec.datagrams[-1:] == [(b.id, b"back")])
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def test_datagrams_sent_from_link_up_arrive(pair: tuple[Node, Node]) -> None:
    """The accepting side sends in link_up (as the hello core will): nothing is lost."""
    a, b = pair
    orig = b.rec.link_up

    def up_and_send(peer: NodeId, ann: object, remote: tuple[str, int], initiator: bool) -> None:
        orig(peer, ann, remote, initiator)  # type: ignore[arg-type]
        for i in range(5):
            b.mgr.send_datagram(peer, b"hello %d" % i)

    b.rec.link_up = up_and_send  # type: ignore[method-assign,assignment]
    await linked(a, b)
    await a.rec.wait_for(lambda: len(a.rec.datagrams) == 5)
    assert a.mgr.drops.counts["early-datagram"] == 0


async def test_peer_flooding_an_unread_stream_gets_it_reset(pair: tuple[Node, Node]) -> None:
    a, b = pair
    hold = asyncio.Event()

    async def never_reads(peer: NodeId, stream: Stream) -> None:
        await hold.wait()

    b.mgr.register_stream_service("slow", never_reads, max_message=10_000)
    await linked(a, b)
    s = await a.mgr.open_stream(b.id, "slow")
    with pytest.raises(LinkBrokenError):
        for _ in range(200):  # 2 MB into a stream whose reader buffers at most ~100 kB
            await asyncio.wait_for(s.send(bytes(10_000)), 5)
            await asyncio.sleep(0)
        await asyncio.wait_for(s.recv(), 5)
    assert b.mgr.drops.counts["stream-overflow"] == 1
    hold.set()
    assert a.mgr.send_datagram(b.id, b"fine")
    await b.rec.wait_for(lambda: b.rec.datagrams[-1:] == [(a.id, b"fine")])


def test_links_run_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        a, b = Node("alpha"), Node("bravo")
        b.mgr.register_stream_service("echo", echo)
        try:
            addr = await b.listen()
            assert await a.mgr.connect(*addr, b.id) == b.id
            assert a.mgr.send_datagram(b.id, b"uv")
            await b.rec.wait_for(lambda: b.rec.datagrams == [(a.id, b"uv")])
            s = await a.mgr.open_stream(b.id, "echo")
            await s.send(b"x" * 100_000)
            assert await s.recv() == b"x" * 100_000
        finally:
            await a.mgr.close()
            await b.mgr.close()

    uvloop.run(scenario())


async def test_link_close_breaks_pending_stream_operations(pair: tuple[Node, Node]) -> None:
    a, b = pair
    accepted: list[Stream] = []
    release = asyncio.Event()

    async def park(peer: NodeId, stream: Stream) -> None:
        accepted.append(stream)
        await release.wait()

    b.mgr.register_stream_service("park", park)
    await linked(a, b)
    s = await a.mgr.open_stream(b.id, "park")
    await s.send(b"x")
    await eventually(lambda: len(accepted) == 1)
    reader = asyncio.ensure_future(s.recv())
    far_reader = asyncio.ensure_future(accepted[0].recv())
    await asyncio.sleep(0.05)
    assert not reader.done()
    a.mgr.close_link(b.id, "test")
    with pytest.raises(LinkBrokenError):
        await asyncio.wait_for(reader, 5)
    with pytest.raises(LinkBrokenError):
        await asyncio.wait_for(s.send(b"more"), 5)
    # the far side hears the close too; its read breaks
    assert await asyncio.wait_for(far_reader, 5) == b"x"
    with pytest.raises(LinkBrokenError):
        await asyncio.wait_for(accepted[0].recv(), 5)
    release.set()


async def test_idle_link_times_out_on_both_sides() -> None:
    """With no traffic (no hellos) the QUIC idle timeout ends the link on both sides."""
    a, b = Node("alpha", idle_timeout_s=1.0), Node("bravo", idle_timeout_s=1.0)
    addr = await b.listen()
    try:
        await a.mgr.connect(*addr, b.id)
        await a.rec.wait_for(lambda: len(a.rec.downs) == 1, timeout=10)
        await b.rec.wait_for(lambda: len(b.rec.downs) == 1, timeout=10)
        assert a.mgr.links() == {} and b.mgr.links() == {}
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def test_mutual_static_peers_settle_on_one_link() -> None:
    """Both daemons list each other as static peers (the usual setup): one link, no flapping."""
    a, b = Node("alpha"), Node("bravo")
    a_addr, b_addr = await a.listen(), await b.listen()
    try:
        a.mgr.add_static_peer(*b_addr, b.id)
        b.mgr.add_static_peer(*a_addr, a.id)
        await a.rec.wait_for(lambda: len(a.rec.ups) == 1)
        await b.rec.wait_for(lambda: len(b.rec.ups) == 1)
        await wait_settled(a, b)
        assert len(a.rec.ups) == 1 and len(b.rec.ups) == 1
        assert a.rec.downs == [] and b.rec.downs == []
        assert a.mgr.links()[b.id].initiator == (a.id < b.id)
        assert b.mgr.links()[a.id].initiator == (b.id < a.id)
        # the link breaks: the static peers bring it back
        a.mgr.close_link(b.id, "hellos stopped")
        await a.rec.wait_for(lambda: len(a.rec.ups) == 2, timeout=15)
        await b.rec.wait_for(lambda: len(b.rec.ups) == 2, timeout=15)
        await wait_settled(a, b)
        assert set(a.mgr.links()) == {b.id} and set(b.mgr.links()) == {a.id}
        assert len(a.rec.downs) == 1 and len(b.rec.downs) == 1
    finally:
        await a.mgr.close()
        await b.mgr.close()



async def test_timer_that_fires_early_does_what_was_due(pair: tuple[Node, Node]) -> None:
    """uvloop fires timers up to a millisecond early (its clock ticks in milliseconds): the
    work a timer was armed for (here an ACK) is done when it fires, not re-armed again."""
    from aioquic import tls

    a, b = pair
    await linked(a, b)
    assert a.mgr.send_datagram(b.id, b"x")
    await b.rec.wait_for(lambda: len(b.rec.datagrams) == 1)
    conn = b.mgr._peers[a.id].active
    space = conn._quic._spaces[tls.Epoch.ONE_RTT]
    # an ACK due a little later, and its timer firing before the clock got there
    space.ack_at = time.monotonic() + 0.5
    if conn._timer is not None:
        conn._timer.cancel()
    conn._timer, conn._timer_at = None, space.ack_at
    conn._handle_timer()
    assert space.ack_at is None  # sent now


async def test_a_refused_key_gets_no_link(pair: tuple[Node, Node]) -> None:
    # the composition root installs the community's revoked keys (a lost or stolen device)
    a, b = pair
    b.mgr.refuse_key = lambda key: key == a.identity.ed25519_pub
    assert b.addr is not None
    try:  # b closes the connection as it comes up: a's connect may or may not see it
        await a.mgr.connect(*b.addr, b.id)
    except (OSError, ConnectionError, LinkBrokenError, RemoteProtocolError, TimeoutError):
        pass
    await eventually(lambda: b.mgr.drops.counts.get("revoked", 0) >= 1)
    await eventually(lambda: not a.mgr.is_linked(b.id))
    assert b.rec.ups == [] and not b.mgr.is_linked(a.id)
    # another key still links
    b.mgr.refuse_key = lambda key: False
    await linked(a, b)


async def test_a_peer_refusing_our_key_is_redialled_with_backoff(
        pair: tuple[Node, Node], caplog: pytest.LogCaptureFixture) -> None:
    """b refuses a's (revoked) key right after the handshake and says why: a, dialling b as a
    static peer, counts each refusal by its reason, logs the first one only and backs off
    (1 s, 2 s, ...: one dial per refusal) instead of redialling each link as it closes."""
    a, b = pair
    b.mgr.refuse_key = lambda key: key == a.identity.ed25519_pub
    assert b.addr is not None
    caplog.set_level("DEBUG", logger="meshd.links.manager")
    a.mgr.add_static_peer(*b.addr, b.id)
    await eventually(lambda: a.mgr.refused_by_peer["revoked"] >= 3, timeout=20)
    sp = a.mgr._static[0]
    assert sp.backoff.refusals >= 3 and sp.backoff.refused_delay >= 8.0
    # each dial was refused and counted (one more may be in flight); none was taken for a link
    assert a.mgr.dials["static"] - a.mgr.refused_by_peer["revoked"] in (0, 1)
    assert set(a.mgr.refused_by_peer) == {"revoked"}
    assert b.rec.ups == [] and b.mgr.drops.counts["revoked"] >= 3
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "refused by" in r.message]
    assert len(warned) == 1 and "revoked — will retry in" in warned[0].message


async def test_a_peer_whose_key_we_refuse_is_redialled_with_backoff(
        pair: tuple[Node, Node]) -> None:
    """a itself refuses b's key (revoked here) and b is one of a's static peers: a's dials
    fail as refusals on the slower schedule, not as links that come up and go at once."""
    a, b = pair
    a.mgr.refuse_key = lambda key: key == b.identity.ed25519_pub
    assert b.addr is not None
    a.mgr.add_static_peer(*b.addr, b.id)
    sp = a.mgr._static[0]
    await eventually(lambda: sp.backoff.refusals >= 3, timeout=20)
    assert sp.backoff.refused_delay >= 8.0
    assert a.mgr.dials["static"] - sp.backoff.refusals in (0, 1)
    assert a.mgr.drops.counts["revoked"] >= 3 and a.rec.ups == []
    assert "revoked" in sp.last_error
    assert not a.mgr.refused_by_peer  # we refused it: not counted as refused by the peer
