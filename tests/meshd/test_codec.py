"""Codec limits and strict types; Hypothesis feeds random and mutated bytes to the decoders."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import DecodeError, RemoteProtocolError
from meshd.core.identity import Announcement, Identity, Role
from meshd.core.packet import (
    HEADER_LEN,
    MeshPacket,
    Service,
    decrement_hop_limit,
    max_payload,
    peek_header,
)

T0 = 1_800_000_000.0


def test_oversize_refused_before_parsing() -> None:
    data = pack({"x": b"a" * 100})
    with pytest.raises(DecodeError, match="oversize"):
        unpack(data, 50)


def test_trailing_truncated_and_ext_refused() -> None:
    with pytest.raises(DecodeError):
        unpack(pack(1) + pack(2), 100)
    with pytest.raises(DecodeError):
        unpack(pack({"a": "bcd"})[:-1], 100)
    with pytest.raises(DecodeError):
        unpack(b"\xd4\x01\x00", 100)  # fixext 1


def test_container_and_depth_limits() -> None:
    with pytest.raises(DecodeError):
        unpack(pack(list(range(10))), 1000, max_items=5)
    deep: object = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(DecodeError):
        unpack(pack(deep), 1000)


def test_fields_are_strict() -> None:
    f = Fields({"i": 5, "b": True, "s": "x", "y": b"12", "n": None})
    assert f.int("i", 0, 10) == 5
    with pytest.raises(DecodeError):
        f.int("b")  # a bool is not an int
    with pytest.raises(DecodeError):
        f.bytes("s")  # a str is not bytes
    with pytest.raises(DecodeError):
        f.bytes("y", size=3)
    with pytest.raises(DecodeError):
        f.int("i", 6, 10)
    with pytest.raises(DecodeError, match="missing"):
        f.str("absent")
    assert f.opt_int("n") is None
    with pytest.raises(DecodeError):
        Fields([1, 2])


def test_drop_counter_logs_once_per_reason_and_peer(caplog: pytest.LogCaptureFixture) -> None:
    d = DropCounter(logging.getLogger("t"))
    with caplog.at_level(logging.WARNING):
        for _ in range(100):
            d.drop("malformed", "peer1")
        d.drop("malformed", "peer2")
    assert d.counts["malformed"] == 101
    assert len(caplog.records) == 2


def test_packet_roundtrip_and_mtu_arithmetic() -> None:
    p = MeshPacket(b"a" * 16, b"b" * 16, 32, Service.PING, 0xDEADBEEF, b"payload")
    assert MeshPacket.decode(p.encode()) == p
    assert len(p.encode()) == HEADER_LEN + 7
    assert p.forwarded().hop_limit == 31
    assert max_payload(1100) == 1100 - 1 - HEADER_LEN
    with pytest.raises(DecodeError):
        MeshPacket.decode(p.encode()[: HEADER_LEN - 1])
    with pytest.raises(DecodeError):
        MeshPacket.decode(b"\x09" + p.encode()[1:])


_ANN = Identity.generate().announce(3, T0, "car", Role.CAR).raw
_PKT = MeshPacket(b"a" * 16, b"b" * 16, 32, 1, 7, b"x" * 20).encode()


def _mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    return bytes(buf[: max(0, len(buf) - cut)])


DECODERS = [
    lambda b: unpack(b, 2048),
    Announcement.decode,
    MeshPacket.decode,
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_remote_errors(data: bytes) -> None:
    for dec in DECODERS:
        try:
            dec(data)
        except RemoteProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
       st.integers(0, 40), st.sampled_from([_ANN, _PKT]))
def test_mutated_messages_only_raise_remote_errors(flips: list[tuple[int, int]], cut: int,
                                                   base: bytes) -> None:
    data = _mutate(base, flips, cut)
    for dec in DECODERS:
        try:
            dec(data)
        except RemoteProtocolError:
            pass


@given(hop=st.integers(2, 255), svc=st.integers(0, 255), flow=st.integers(0, 2**32 - 1),
       payload=st.binary(max_size=200), prefix=st.binary(max_size=3))
def test_relay_fast_path_equals_decode_forward_encode(hop: int, svc: int, flow: int,
                                                      payload: bytes, prefix: bytes) -> None:
    p = MeshPacket(b"s" * 16, b"d" * 16, hop, svc, flow, payload)
    data = prefix + p.encode()
    assert peek_header(data, len(prefix)) == (hop, svc, p.source, p.destination, flow)
    assert decrement_hop_limit(data, len(prefix)) == prefix + p.forwarded().encode()


@given(data=st.binary(max_size=80), offset=st.integers(0, 3))
def test_peek_header_fails_exactly_as_decode(data: bytes, offset: int) -> None:
    try:
        pkt = MeshPacket.decode(data[offset:], 60)
    except DecodeError as exc:
        with pytest.raises(DecodeError) as peeked:
            peek_header(data, offset, 60)
        assert peeked.value.reason == exc.reason
    else:
        assert peek_header(data, offset, 60) == (pkt.hop_limit, pkt.service, pkt.source,
                                                 pkt.destination, pkt.flow_id)
