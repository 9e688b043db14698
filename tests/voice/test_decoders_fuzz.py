"""Every voice decoder takes untrusted bytes: anything but a valid input raises DecodeError, nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import pack
from meshd.core.errors import DecodeError
from voice.relay import MediaFramer, classify, stun_binding_request
from voice.signalling import SigMessage

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=6),
    max_leaves=12)


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_sig_decode_random_bytes(data: bytes) -> None:
    try:
        SigMessage.decode(data)
    except DecodeError:
        pass


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["k", "c", "n", "sdp", "g", "f", "a", "pk", "ps", "ns", "x"]), _values,
                       max_size=8))
def test_sig_decode_wrong_shapes(m: dict[str, object]) -> None:
    try:
        SigMessage.decode(pack(m))
    except DecodeError:
        pass


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=1200), max_size=12))
def test_framer_join_random_payloads(payloads: list[bytes]) -> None:
    framer = MediaFramer(1110, max_pending=4)
    for p in payloads:
        try:
            out = framer.join(p)
        except DecodeError:
            continue
        assert out is None or len(out) <= 1500


@settings(max_examples=300)
@given(st.binary(max_size=1600), st.text(max_size=30))
def test_stun_random_bytes(data: bytes, pwd: str) -> None:
    classify(data)
    try:
        stun_binding_request(data, pwd)
    except DecodeError:
        pass


@given(st.binary(min_size=1, max_size=1500))
def test_framer_split_join_roundtrip(datagram: bytes) -> None:
    tx, rx = MediaFramer(1110), MediaFramer(1110)
    parts = tx.split(datagram)
    outs = [rx.join(p) for p in parts]
    assert outs[-1] == datagram and all(o is None for o in outs[:-1])
