"""Link certificates and every aioquic internal meshd relies on, after a real in-memory handshake.

These tests fail when an aioquic upgrade moves what meshd.links.aioquic_internals,
meshd.links.connection and meshd.links.server read (the peer certificate, the datagram queue, the stream send
buffer) or changes the DATAGRAM payload limit that MESH_MTU is derived from.
"""

from __future__ import annotations

import asyncio
import ssl
from types import SimpleNamespace

import pytest
from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography.hazmat.primitives.serialization import Encoding

from meshd import ALPN
from meshd.core.errors import LocalProtocolError
from meshd.core.identity import Identity
from meshd.links.aioquic_internals import (
    UDP_RECV_SIZE,
    ack_pending,
    ack_with_next_packet,
    datagrams_pending,
    hold_ack,
    negotiated_idle_timeout,
    peer_certificate,
    peer_certificate_key,
    peer_closed,
    peer_max_ack_delay,
    set_peer_max_ack_delay,
    stream_unacked,
)
from meshd.links.connection import MAX_DATAGRAM_FRAME_SIZE, MESH_MTU
from meshd.links.tlscert import certificate_fingerprint, make_certificate
from tests.meshd.links_helpers import Node

CLIENT_ADDR = ("127.0.0.2", 1234)
SERVER_ADDR = ("127.0.0.3", 4433)


class Pair:
    """Two QuicConnections passing datagrams in memory (no sockets; the addresses are labels)."""

    def __init__(self, server_identity: Identity, client_idle_s: float = 60.0,
                 server_idle_s: float = 60.0) -> None:
        cert, key = make_certificate(server_identity)
        self.cert = cert
        self.now = 1.0
        self.client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE, idle_timeout=client_idle_s))
        self.server = QuicConnection(
            configuration=QuicConfiguration(
                is_client=False, alpn_protocols=[ALPN], certificate=cert, private_key=key,
                max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE, idle_timeout=server_idle_s),
            original_destination_connection_id=self.client.original_destination_connection_id)
        self.client.connect(SERVER_ADDR, now=self.now)
        for _ in range(10):
            self.roundtrip()
        assert self.drain(self.client, events.HandshakeCompleted)
        self.drain(self.server, events.HandshakeCompleted)

    def roundtrip(self) -> None:
        self.now += 0.01
        for data, _ in self.client.datagrams_to_send(now=self.now):
            self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
        for data, _ in self.server.datagrams_to_send(now=self.now):
            self.client.receive_datagram(data, SERVER_ADDR, now=self.now)

    @staticmethod
    def drain(conn: QuicConnection, kind: type) -> list[events.QuicEvent]:
        out = []
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, kind):
                out.append(ev)
        return out


def test_certificate_is_self_signed_with_the_identity_key() -> None:
    ident = Identity.generate()
    cert, key = make_certificate(ident)
    assert key is ident.signing_key
    assert cert.subject == cert.issuer
    assert ident.hex in cert.subject.rfc4514_string()
    assert certificate_fingerprint(cert) == certificate_fingerprint(cert.public_bytes(Encoding.DER))
    assert len(certificate_fingerprint(cert)) == 32


def test_peer_certificate_key_after_real_handshake() -> None:
    ident = Identity.generate()
    pair = Pair(ident)
    # the attribute meshd.links.aioquic_internals reads exists and holds the server's certificate
    assert hasattr(pair.client.tls, "_peer_certificate")
    assert peer_certificate_key(pair.client) == ident.ed25519_pub
    assert certificate_fingerprint(peer_certificate(pair.client)) == \
        certificate_fingerprint(pair.cert)
    # the server saw no client certificate
    with pytest.raises(LocalProtocolError):
        peer_certificate_key(pair.server)


def test_peer_certificate_key_reports_changed_internals() -> None:
    with pytest.raises(LocalProtocolError, match="internals changed"):
        peer_certificate_key(SimpleNamespace(tls=SimpleNamespace()))
    with pytest.raises(LocalProtocolError, match="internals changed"):
        peer_certificate_key(SimpleNamespace())


def _largest_datagram(sender: QuicConnection, receiver: QuicConnection, pair: Pair) -> int:
    """Largest DATAGRAM payload that arrives; stops at the first size that jams."""
    largest = 0
    for size in range(MESH_MTU - 10, MESH_MTU + 100):
        sender.send_datagram_frame(b"x" * size)
        for _ in range(3):
            pair.roundtrip()
        got = Pair.drain(receiver, events.DatagramFrameReceived)
        if not got:
            # aioquic keeps the oversize datagram queued for good (why MESH_MTU exists)
            assert datagrams_pending(sender) == 1
            return largest
        largest = size
    return largest


def test_mesh_mtu_fits_aioquic_datagram_limit_both_ways() -> None:
    pair = Pair(Identity.generate())
    up = _largest_datagram(pair.client, pair.server, pair)
    pair2 = Pair(Identity.generate())
    down = _largest_datagram(pair2.server, pair2.client, pair2)
    # measured with aioquic 1.7.2: 1170 both ways; MESH_MTU keeps a margin below
    assert MESH_MTU < up < MESH_MTU + 100
    assert MESH_MTU < down < MESH_MTU + 100
    assert up - MESH_MTU >= 16 and down - MESH_MTU >= 16


def test_stream_send_buffer_internal_is_visible() -> None:
    pair = Pair(Identity.generate())
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"y" * 100_000)
    assert stream_unacked(pair.client, sid) == 100_000
    for _ in range(200):
        pair.roundtrip()
        if stream_unacked(pair.client, sid) == 0:
            break
    assert stream_unacked(pair.client, sid) == 0


async def test_early_traffic_dropped_and_garbage_handshake_refused() -> None:
    """A TLS-complete client that never proves itself gets no datagram or stream through."""
    b = Node("bravo")
    addr = await b.listen()
    loop = asyncio.get_running_loop()
    from aioquic.asyncio.client import connect

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE)
    try:
        async with connect(*addr, configuration=cfg, wait_connected=True) as proto:
            proto._quic.send_datagram_frame(b"\x03early")
            sid = proto._quic.get_next_available_stream_id()
            proto._quic.send_stream_data(sid, b"\x00" * 16)  # stream 0: garbage handshake
            proto._quic.send_stream_data(sid + 4, b"service?")  # another stream: early
            proto.transmit()
            start = loop.time()
            await asyncio.wait_for(proto.wait_closed(), 10)
            assert loop.time() - start < 8
        assert b.rec.datagrams == [] and b.rec.ups == []
        assert b.mgr.drops.counts["early-datagram"] == 1
        assert b.mgr.drops.counts["early-stream"] >= 1
        assert any(k.startswith("refused-") for k in b.mgr.drops.counts)
        assert b.mgr.links() == {}
    finally:
        await b.mgr.close()


@pytest.mark.slow
async def test_silent_client_is_refused_after_handshake_timeout() -> None:
    b = Node("bravo")
    addr = await b.listen()
    from aioquic.asyncio.client import connect

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
                            max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE)
    try:
        async with connect(*addr, configuration=cfg, wait_connected=True) as proto:
            proto._quic.send_datagram_frame(b"\x03early")
            proto.transmit()
            await asyncio.wait_for(proto.wait_closed(), 10)
        assert b.mgr.drops.counts["refused-timeout"] == 1
        assert b.mgr.drops.counts["early-datagram"] == 1
        assert b.rec.ups == []
    finally:
        await b.mgr.close()


def _ack_pending_after_one_datagram(pair: Pair) -> float:
    """The client sends one datagram; the server holds an ACK for it (returns the time)."""
    pair.now += 0.01
    pair.client.send_datagram_frame(b"voice")
    for data, _ in pair.client.datagrams_to_send(now=pair.now):
        pair.server.receive_datagram(data, CLIENT_ADDR, now=pair.now)
    assert Pair.drain(pair.server, events.DatagramFrameReceived)
    ack_at = pair.server._spaces[tls.Epoch.ONE_RTT].ack_at
    assert ack_at is not None and ack_at > pair.now  # aioquic delays it (1 ms in 1.7.2)
    return pair.now


def test_a_held_ack_rides_on_our_next_packet_and_the_peer_does_not_probe() -> None:
    """Quiet-link ACK holding (meshd.links.connection.Connection.set_ack_hold) on real aioquic."""
    pair = Pair(Identity.generate())
    assert peer_max_ack_delay(pair.client) == 0.025  # what the server advertised
    sent = pair.now + 0.01
    pair.now = sent
    assert not ack_pending(pair.server)
    # without holding: an ACK-only packet 1 ms later, and the client's probe timer is short
    pair.client.send_datagram_frame(b"\x01hello")
    for data, _ in pair.client.datagrams_to_send(now=sent):
        pair.server.receive_datagram(data, CLIENT_ADDR, now=sent)
    assert ack_pending(pair.server)
    client_timer = pair.client.get_timer()
    assert client_timer is not None and client_timer < sent + 1.0
    # the client allows the server 9 s more; the server holds its ACK for 8 s
    assert set_peer_max_ack_delay(pair.client, 0.025 + 9.0)
    assert peer_max_ack_delay(pair.client) == 9.025
    pto = pair.client.get_timer()
    assert pto is not None and pto > sent + 9.0
    hold_ack(pair.server, sent + 8.0)
    assert pair.server.datagrams_to_send(now=sent + 0.1) == []  # no ACK on its own
    timer = pair.server.get_timer()
    assert timer is not None and timer >= sent + 8.0 - 1e-9
    # the server's next hello, 5 s later, carries the ACK: one packet, nothing pending after it
    later = sent + 5.0
    pair.server.send_datagram_frame(b"\x01hello back")
    ack_with_next_packet(pair.server, later)
    out = pair.server.datagrams_to_send(now=later)
    assert len(out) == 1 and not ack_pending(pair.server)
    for data, _ in out:
        pair.client.receive_datagram(data, SERVER_ADDR, now=later)
    assert Pair.drain(pair.client, events.DatagramFrameReceived)
    # the client's RTT sample allowed for the 5 s held (it is not 5 s) ...
    assert pair.client._loss._rtt_smoothed < 1.0
    # back to the advertised delay: a held ACK would now be probed for at once
    assert set_peer_max_ack_delay(pair.client, 0.025)
    assert not set_peer_max_ack_delay(SimpleNamespace(), 1.0)  # type: ignore[arg-type]
    assert peer_max_ack_delay(SimpleNamespace()) is None  # type: ignore[arg-type]
    assert not ack_pending(SimpleNamespace())  # type: ignore[arg-type]
    hold_ack(SimpleNamespace(), 1.0)  # type: ignore[arg-type]


def test_negotiated_idle_timeout_is_the_shorter_of_both_ends() -> None:
    """meshd.node caps a quiet link's hello interval at half of it (an older peer: 8 s)."""
    pair = Pair(Identity.generate(), client_idle_s=20.0, server_idle_s=8.0)
    assert negotiated_idle_timeout(pair.client) == 8.0
    assert negotiated_idle_timeout(pair.server) == 8.0
    pair = Pair(Identity.generate(), client_idle_s=20.0, server_idle_s=20.0)
    assert negotiated_idle_timeout(pair.client) == 20.0
    assert negotiated_idle_timeout(SimpleNamespace()) is None  # type: ignore[arg-type]


def test_pending_ack_rides_on_the_next_datagram() -> None:
    pair = Pair(Identity.generate())
    now = _ack_pending_after_one_datagram(pair)
    # without the helper, aioquic sends the reply datagram and keeps the ACK for later
    pair.server.send_datagram_frame(b"reply")
    assert len(pair.server.datagrams_to_send(now=now)) == 1
    assert pair.server._spaces[tls.Epoch.ONE_RTT].ack_at is not None
    # with it, the next packet carries the ACK: none is left to send on its own
    pair2 = Pair(Identity.generate())
    now = _ack_pending_after_one_datagram(pair2)
    pair2.server.send_datagram_frame(b"reply")
    ack_with_next_packet(pair2.server, now)
    assert len(pair2.server.datagrams_to_send(now=now)) == 1
    assert pair2.server._spaces[tls.Epoch.ONE_RTT].ack_at is None
    ack_with_next_packet(SimpleNamespace(), now)  # type: ignore[arg-type]


async def test_asyncio_protocol_methods_replaced_by_links_exist() -> None:
    """Connection replaces these (aioquic's own read loop.time()) and uses their state."""
    for name in ("connect", "datagram_received", "transmit", "_handle_timer",
                 "_process_events", "_transmit_soon"):
        assert callable(getattr(QuicConnectionProtocol, name))
    proto = QuicConnectionProtocol(Pair(Identity.generate()).client)
    assert (proto._timer, proto._timer_at, proto._transmit_task) == (None, None, None)
    calls: list[None] = []
    proto.transmit = lambda: calls.append(None)  # type: ignore[method-assign]
    proto._transmit_soon()
    proto._transmit_soon()  # coalesced: one transmit per loop iteration
    assert proto._transmit_task is not None
    await asyncio.sleep(0)
    assert calls == [None]


def test_peer_close_is_visible_before_draining_ends() -> None:
    pair = Pair(Identity.generate())
    assert peer_closed(pair.server) is None
    pair.client.close(error_code=0x101, reason_phrase="refused: test")
    pair.roundtrip()
    closed = peer_closed(pair.server)
    assert closed is not None
    assert (closed.error_code, closed.reason_phrase) == (0x101, "refused: test")
    # aioquic itself reports it only when draining ends (three PTOs later)
    assert Pair.drain(pair.server, events.ConnectionTerminated) == []


async def test_udp_reads_use_a_small_buffer_on_stock_asyncio() -> None:
    a, b = Node("alpha"), Node("bravo")
    addr = await b.listen()
    try:
        await a.mgr.connect(*addr, b.id)
        server_transport = b.mgr._servers[0]._transport
        client_conn = next(iter(a.mgr._conns))
        for transport in (server_transport, client_conn._client_transport):
            assert getattr(transport, "max_size", None) == UDP_RECV_SIZE
        assert UDP_RECV_SIZE >= 1500  # above any QUIC packet aioquic sends (1,200 bytes)
    finally:
        await a.mgr.close()
        await b.mgr.close()


async def test_liveness_ping_uses_aioquic_ping_waiters() -> None:
    a, b = Node("alpha"), Node("bravo")
    addr = await b.listen()
    try:
        await a.mgr.connect(*addr, b.id)
        conn = next(iter(a.mgr._conns))
        assert isinstance(conn._ping_waiters, dict)
        assert await conn.answers_ping(5.0)
        assert conn._ping_waiters == {}
        # a peer that went silent does not answer (and nothing is left behind)
        for server in b.mgr._servers:
            assert server._transport is not None
            server._transport.close()
        assert not await conn.answers_ping(0.3)
        assert conn._ping_waiters == {}
    finally:
        await a.mgr.close()
        await b.mgr.close()


def test_aioquic_checks_certificate_verify_even_without_ca_checks() -> None:
    """A server showing a victim's certificate without its private key cannot finish TLS.

    The link handshake relies on this: with ``verify_mode=CERT_NONE`` aioquic
    skips only the CA chain, not the CertificateVerify signature.
    """
    victim, thief = Identity.generate(), Identity.generate()
    victim_cert, _ = make_certificate(victim)
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE))
    server = QuicConnection(
        configuration=QuicConfiguration(
            is_client=False, alpn_protocols=[ALPN], certificate=victim_cert,
            private_key=thief.signing_key),
        original_destination_connection_id=client.original_destination_connection_id)
    now = 1.0
    client.connect(SERVER_ADDR, now=now)
    for _ in range(10):
        now += 0.01
        for data, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(data, CLIENT_ADDR, now=now)
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, SERVER_ADDR, now=now)
    client_events = Pair.drain(client, events.QuicEvent)
    assert not any(isinstance(e, events.HandshakeCompleted) for e in client_events)
    assert client._close_event is not None  # the client aborted the handshake


# --- the listening side: LinkServer on aioquic's QuicServer (meshd.links.server) ----------------


def test_retry_packet_is_byte_for_byte_aioquics() -> None:
    from aioquic.quic.packet import QuicProtocolVersion, encode_quic_retry

    from meshd.links.server import encode_retry

    for version in (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2):
        args = dict(version=version, source_cid=b"\x01" * 8, destination_cid=b"\x02" * 8,
                    original_destination_cid=b"\x03" * 8)
        assert encode_retry(**args, token=b"tok") == encode_quic_retry(**args, retry_token=b"tok")  # type: ignore[arg-type]


async def test_quic_server_internals_link_server_relies_on() -> None:
    """LinkServer reuses aioquic's connection-id table and callbacks: they must still exist."""
    from aioquic.asyncio.server import QuicServer

    for name in ("_connection_id_issued", "_connection_id_retired", "_connection_terminated"):
        assert callable(getattr(QuicServer, name))
    server = QuicServer(configuration=QuicConfiguration(is_client=False))
    assert server._protocols == {} and server._transport is None
    assert server._configuration.connection_id_length == 8
    proto = QuicConnectionProtocol(Pair(Identity.generate()).client)
    for hook in ("_connection_id_issued_handler", "_connection_id_retired_handler",
                 "_connection_terminated_handler"):
        assert callable(getattr(proto, hook))


async def test_link_through_a_retry_and_a_stateless_refusal() -> None:
    """retry_above=0: every client proves its address first, and still links; with no room
    left at all a validated client is refused at once (CONNECTION_REFUSED), not left waiting."""
    from meshd.core.errors import RemoteProtocolError
    from meshd.links.admission import AdmissionPolicy

    a = Node("alpha")
    b = Node("bravo", admission=AdmissionPolicy(retry_above=0))
    full = Node("full", admission=AdmissionPolicy(retry_above=0, max_pending=0))
    try:
        addr = await b.listen()
        assert await a.mgr.connect(*addr, b.id) == b.id
        counts = b.mgr.handshake_counts
        assert (counts["retry-sent"], counts["accepted-validated"], counts["accepted"]) == (1, 1, 0)
        assert b.mgr.pending_handshakes.total == 0
        assert a.mgr.send_datagram(b.id, b"validated")
        await b.rec.wait_for(lambda: b.rec.datagrams == [(a.id, b"validated")])
        full_addr = await full.listen()
        with pytest.raises((ConnectionError, RemoteProtocolError)) as err:
            await a.mgr.connect(*full_addr, full.id)
        assert "closed during the handshake" in str(err.value)
        assert full.mgr.handshake_counts["retry-sent"] == 1
        assert full.mgr.handshake_counts["refused-busy"] == 1
        assert full.mgr._conns == set()  # nothing was kept for it
    finally:
        for n in (a, b, full):
            await n.mgr.close()


async def test_known_connections_dispatched_before_the_initial_budget() -> None:
    """Beyond its Initial budget the listener drops unknown Initials unparsed, but the packets
    of a link it has keep flowing (dispatched by connection id before any budget check)."""
    from carmesh.dev.initial_flood import InitialFactory
    from meshd.links.admission import InitialBudget

    a, b = Node("alpha"), Node("bravo")
    try:
        addr = await b.listen()
        assert await a.mgr.connect(*addr, b.id) == b.id
        server = b.mgr._servers[0]
        # exhaust a tiny budget for the address the flood comes from
        server._budget = InitialBudget(source_rate=0.001, source_burst=1.0, total_rate=0.001,
                                       total_burst=1.0)
        flood = InitialFactory(valid=False)
        spoofed = ("127.0.0.1", 9)
        counts = b.mgr.handshake_counts
        accepted_before = counts["accepted"]
        for _ in range(50):
            server.datagram_received(flood.make(), spoofed)
        assert counts["dropped-over-budget"] == 49
        assert counts["accepted"] + counts["retry-sent"] == accepted_before + 1
        assert a.mgr.send_datagram(b.id, b"still here")
        await b.rec.wait_for(lambda: (a.id, b"still here") in b.rec.datagrams)
        # runts and truncated headers are dropped before the budget, without an exception
        for runt in (b"", b"\x40", b"\xc3\x00\x00\x00\x01\x08", b"\xc3" + b"\x00" * 1000):
            server.datagram_received(runt, spoofed)
        assert counts["dropped-over-budget"] == 49
        # a full-size one of unknown version would cost a version negotiation: rationed too
        server.datagram_received(b"\xc3" + b"\x00" * 1199, spoofed)
        assert counts["dropped-over-budget"] == 50
    finally:
        for n in (a, b):
            await n.mgr.close()
