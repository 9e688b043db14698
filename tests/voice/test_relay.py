"""The relay's pure helpers with real STUN from aioice, and RelaySocket latching on loopback UDP."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from aioice import stun

from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError
from voice.relay import (
    HOLD_S,
    DedupeWindow,
    IceCredentials,
    MediaFramer,
    PacketKind,
    Redundancy,
    RelaySocket,
    classify,
    ice_credentials,
    sends_twice,
    strip_and_add_relay,
    stun_binding_request,
)

PWD = "remotepassword0123456789"


def binding(username: str, pwd: str, *, fingerprint: bool = True) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST,
                       transaction_id=os.urandom(12))
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 12345
    msg.add_message_integrity(pwd.encode())
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def response_to(request: bytes) -> bytes:
    parsed = stun.parse_message(request)
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                       transaction_id=parsed.transaction_id)
    msg.add_message_integrity(b"other")
    return bytes(msg)


@pytest.mark.parametrize("fingerprint", [True, False])
def test_real_stun_request_authenticates(fingerprint: bool) -> None:
    data = binding("far:near", PWD, fingerprint=fingerprint)
    req = stun_binding_request(data, PWD)
    assert req.username == "far:near"
    assert req.transaction_id == data[8:20]


def test_wrong_password_or_altered_request_refused() -> None:
    data = binding("far:near", PWD)
    with pytest.raises(DecodeError, match="stun-integrity"):
        stun_binding_request(data, "not-the-password")
    altered = bytearray(data)
    altered[-40] ^= 1  # inside PRIORITY/USERNAME, covered by MESSAGE-INTEGRITY
    with pytest.raises(DecodeError):
        stun_binding_request(bytes(altered), PWD)


@pytest.mark.parametrize("data", [b"", b"\x00\x01", b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"x" * 12,
                                  b"\x17\xfe\xfd" + b"\x00" * 40])
def test_not_an_authenticated_binding_request(data: bytes) -> None:
    with pytest.raises(DecodeError):
        stun_binding_request(data, PWD)


def test_classify_rfc7983() -> None:
    assert classify(b"\x00\x01") is PacketKind.STUN
    assert classify(b"\x16\xfe\xfd") is PacketKind.DTLS_HANDSHAKE
    assert classify(b"\x17\xfe\xfd") is PacketKind.DTLS
    assert classify(b"\x80\x6f") is PacketKind.RTP
    assert classify(b"\xff") is PacketKind.OTHER
    assert sends_twice(PacketKind.STUN) and sends_twice(PacketKind.DTLS_HANDSHAKE)
    assert not sends_twice(PacketKind.RTP) and not sends_twice(PacketKind.DTLS)


SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 10.0.0.1",
    "a=candidate:1 1 udp 2130706431 10.0.0.1 50000 typ host",
    "a=candidate:2 1 udp 2130706431 fd00::1 50001 typ host",
    "a=end-of-candidates", "a=ice-ufrag:abcd", "a=ice-pwd:secretpasswordxyz",
    "a=fingerprint:sha-256 AA:BB", "a=setup:actpass", ""])


def test_strip_and_add_relay_leaves_only_the_relay_before_end_of_candidates() -> None:
    out = strip_and_add_relay(SDP, "127.0.0.1", 4242)
    lines = out.split("\r\n")
    cands = [ln for ln in lines if ln.startswith("a=candidate:")]
    assert cands == ["a=candidate:meshrelay 1 udp 16777215 127.0.0.1 4242 typ relay raddr 0.0.0.0 rport 0"]
    assert lines.index(cands[0]) + 1 == lines.index("a=end-of-candidates")
    assert lines.count("a=end-of-candidates") == 1
    assert "a=fingerprint:sha-256 AA:BB" in lines and out.endswith("\r\n")
    assert ice_credentials(out) == IceCredentials("abcd", "secretpasswordxyz")


def test_strip_and_add_relay_parses_in_aiortc() -> None:
    from aiortc.sdp import SessionDescription
    desc = SessionDescription.parse(strip_and_add_relay(SDP, "127.0.0.1", 4242))
    (media,) = desc.media
    (cand,) = media.ice_candidates
    assert (cand.ip, cand.port, cand.type) == ("127.0.0.1", 4242, "relay")
    assert media.ice_candidates_complete


def test_framer_roundtrip_whole_and_fragmented() -> None:
    f = MediaFramer(1110)
    small = os.urandom(200)
    assert f.split(small) == [b"\x00" + small]
    big = os.urandom(1400)
    parts = f.split(big)
    assert len(parts) == 2 and all(len(p) <= 1110 for p in parts)
    assert f.join(parts[1]) is None
    assert f.join(parts[0]) == big
    assert f.join(b"\x00" + small) == small


@pytest.mark.parametrize("payload", [b"", b"\x07abc", b"\x01\x00", b"\x01\x00\x01\x05\x01x",
                                     b"\x01\x00\x01\x00\x09x"])
def test_framer_refuses_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        MediaFramer(1110).join(payload)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait(data)


async def _udp(host: str = "127.0.0.1") -> tuple[asyncio.DatagramTransport, _Endpoint]:
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(_Endpoint, local_addr=(host, 0))
    return t, p


async def test_relay_latches_only_on_authenticated_request_and_flushes_held() -> None:
    forwarded: list[tuple[bytes, bool]] = []
    drops = DropCounter(logging.getLogger("test"))
    relay = await RelaySocket.open("127.0.0.1", lambda d, twice: forwarded.append((d, twice)),
                                   drops=drops)
    t_ep, ep = await _udp()
    t_bad, bad = await _udp()
    try:
        relay.deliver(b"\x80early-rtp")  # from the mesh before any latch: held
        relay.set_credentials(IceCredentials("far", PWD), "near")
        t_bad.sendto(b"\x80rtp-from-stranger", relay.address)
        t_bad.sendto(binding("far:near", "wrong-password"), relay.address)
        t_bad.sendto(binding("other:near", PWD), relay.address)
        await asyncio.sleep(0.05)
        assert forwarded == [] and relay.latched_at is None
        assert drops.counts["relay-unlatched"] == 3
        req = binding("far:near", PWD)
        t_ep.sendto(req, relay.address)
        held = await asyncio.wait_for(ep.got.get(), 2)
        assert held == b"\x80early-rtp"
        assert forwarded == [(req, True)]
        # a STUN response from the far side goes to the socket that sent the request
        relay.deliver(response_to(req))
        assert (await asyncio.wait_for(ep.got.get(), 2))[:2] == b"\x01\x01"
        t_ep.sendto(b"\x80rtp", relay.address)
        await asyncio.sleep(0.05)
        assert forwarded[-1] == (b"\x80rtp", False)
        relay.deliver(b"\x80from-far")
        assert await asyncio.wait_for(ep.got.get(), 2) == b"\x80from-far"
        assert bad.got.empty()
    finally:
        relay.close()
        t_ep.close()
        t_bad.close()


async def test_relay_holds_early_packets_for_a_bounded_time() -> None:
    now = [100.0]
    drops = DropCounter(logging.getLogger("test"))
    relay = RelaySocket(lambda d, t: None, drops=drops, clock=lambda: now[0])
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: relay, local_addr=("127.0.0.1", 0))
    t_ep, ep = await _udp()
    try:
        relay.deliver(b"\x80old")
        now[0] += HOLD_S + 0.5
        relay.deliver(b"\x80new")
        relay.set_credentials(IceCredentials("far", PWD), None)
        t_ep.sendto(binding("far:anything", PWD), relay.address)
        assert await asyncio.wait_for(ep.got.get(), 2) == b"\x80new"
        await asyncio.sleep(0.05)
        assert ep.got.empty()
        assert drops.counts["relay-hold-expired"] == 1
    finally:
        relay.close()
        t_ep.close()


# ---------------------------------------------------------------- redundancy (two copies on the mesh)

def test_dedupe_window_drops_a_repeat_and_forgets_past_its_size() -> None:
    w = DedupeWindow(3)
    a, b, c, d = b"\x80\x00\x00\x01", b"\x80\x00\x00\x02", b"\x80\x00\x00\x03", b"\x80\x00\x00\x04"
    assert [w.seen(x) for x in (a, a, b, a, c)] == [False, True, False, True, False]
    assert w.seen(d) is False  # a, b, c, d: a falls out of a window of 3
    assert w.seen(a) is False  # forgotten, so delivered again (and remembered, pushing b out)
    assert w.seen(b) is False
    assert w.seen(d) is True and w.seen(a) is True
    with pytest.raises(ValueError):
        DedupeWindow(0)


def test_dedupe_window_bounded_over_many_packets() -> None:
    w = DedupeWindow(64)
    pkts = [b"\x90" + i.to_bytes(4, "big") for i in range(1000)]
    # each packet twice, the copy up to 3 packets later: every copy dropped, every first kept
    order: list[bytes] = []
    for i, p in enumerate(pkts):
        order.append(p)
        if i >= 3:
            order.append(pkts[i - 3])
    firsts = [w.seen(p) for p in order]
    assert firsts.count(False) == 1000 and firsts.count(True) == 997
    assert len(w._order) == 64 and len(w._digests) == 64


def test_redundancy_auto_turns_on_above_the_threshold_and_stays() -> None:
    r = Redundancy("auto", threshold=0.01)
    assert not r.active
    assert r.observe(None) is False and r.observe(0.0) is False and r.observe(0.01) is False
    assert not r.active
    assert r.observe(0.0123) is True and r.active
    assert r.observe(0.0) is False and r.active  # residual loss after redundancy: stays on
    assert Redundancy("on").active and Redundancy("on").observe(0.5) is False
    off = Redundancy("off")
    assert off.observe(0.5) is False and not off.active
    with pytest.raises(ValueError):
        Redundancy("sometimes")
