"""End-to-end sealing and fragmentation (pure, literal times)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from meshd.core.fragment import MAX_FRAGMENTS, Reassembler, split
from meshd.core.identity import Identity
from meshd.core.seal import ReplayCache, open_sealed, seal

NOW_MS = 1_800_000_000_000
A, B, M = Identity.generate(), Identity.generate(), Identity.generate()


def test_seal_roundtrip_and_plaintext_hidden() -> None:
    body = "避難所は体育館です — shelter at the gym".encode()
    sealed = seal(A, B.x25519_pub, B.node_id, body, context=b"msg", timestamp_ms=NOW_MS)
    assert body not in sealed and b"shelter" not in sealed
    opened = open_sealed(B, sealed, source=A.node_id, context=b"msg")
    assert opened.body == body and opened.sender == A.node_id


def test_seal_refuses_wrong_recipient_source_context_and_tamper() -> None:
    sealed = seal(A, B.x25519_pub, B.node_id, b"hi", context=b"msg", timestamp_ms=NOW_MS)
    with pytest.raises(VerificationError):
        open_sealed(M, sealed, source=A.node_id, context=b"msg")  # not for M
    with pytest.raises(VerificationError, match="sender"):
        open_sealed(B, sealed, source=M.node_id, context=b"msg")  # relay claims another source
    with pytest.raises(VerificationError):
        open_sealed(B, sealed, source=A.node_id, context=b"sig")  # another service
    tampered = bytearray(sealed)
    tampered[40] ^= 1
    with pytest.raises(VerificationError):
        open_sealed(B, bytes(tampered), source=A.node_id, context=b"msg")


def test_replay_cache() -> None:
    cache = ReplayCache(window_ms=60_000)
    sealed = seal(A, B.x25519_pub, B.node_id, b"hi", context=b"msg", timestamp_ms=NOW_MS)
    opened = open_sealed(B, sealed, source=A.node_id, context=b"msg")
    cache.check(opened, NOW_MS + 5)
    with pytest.raises(VerificationError, match="replay"):
        cache.check(opened, NOW_MS + 10)
    old = open_sealed(B, seal(A, B.x25519_pub, B.node_id, b"x", context=b"msg",
                              timestamp_ms=NOW_MS - 120_000), source=A.node_id, context=b"msg")
    with pytest.raises(VerificationError, match="stale"):
        cache.check(old, NOW_MS)


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=0, max_size=20_000), st.integers(0, 2**32 - 1), st.randoms())
def test_fragments_reassemble_in_any_order_with_duplicates(data: bytes, mid: int,
                                                           rnd: random.Random) -> None:
    frags = split(2, mid, data, 1000)
    assert all(len(f) <= 1000 for f in frags)
    delivered = frags + rnd.sample(frags, k=min(3, len(frags)))
    rnd.shuffle(delivered)
    r = Reassembler()
    results = [res for f in delivered if (res := r.add(b"s" * 16, f, 0.0)) is not None]
    assert results == [(2, data)]
    assert r.buffered_bytes == 0


def test_reassembly_limits_and_timeout() -> None:
    r = Reassembler(timeout=5.0, max_bytes_per_source=3000)
    frags = split(2, 1, b"x" * 5000, 1000)
    r.add(b"s" * 16, frags[0], 0.0)
    r.add(b"s" * 16, frags[1], 0.0)
    r.add(b"s" * 16, frags[2], 0.0)
    with pytest.raises(RemoteProtocolError, match="quota"):
        r.add(b"s" * 16, frags[3], 0.0)
    assert r.buffered_bytes == 0
    part = split(2, 2, b"y" * 1500, 1000)
    r.add(b"t" * 16, part[0], 0.0)
    assert r.buffered_bytes > 0
    assert r.add(b"t" * 16, part[1], 6.0) is None  # the first half expired meanwhile
    assert r.dropped >= 2
    with pytest.raises(LocalProtocolError):
        split(2, 3, b"z" * (MAX_FRAGMENTS * 1000), 1000)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fragment_and_seal_decoders_only_raise_remote_errors(data: bytes) -> None:
    r = Reassembler()
    for dec in (lambda d: r.add(b"s" * 16, d, 0.0),
                lambda d: open_sealed(B, d, source=A.node_id, context=b"msg")):
        try:
            dec(data)
        except RemoteProtocolError:
            pass
