"""Op envelopes: strict signature checks (libsodium) and the canonical wire form."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.core.codec import pack
from meshd.core.errors import DecodeError, VerificationError
from sync.envelope import create_op, decode_op
from tests.sync.conftest import WALL_S

HLC0 = int(WALL_S * 1000) << 16
#: order of the Ed25519 base point (RFC 8032 section 5.1)
L = 2**252 + 27742317777372353535851937790883648493


def _fields(author: bytes) -> list[object]:
    return [1, "library.edit", b"D" * 16, author, 1, None, HLC0, None, b"\x80"]


def test_op_signed_with_cryptography_verifies_and_round_trips() -> None:
    op = create_op(Ed25519PrivateKey.generate(), kind="library.edit", doc_id=b"D" * 16,
                   body=b"\x80" * 50, seq=1, prev=None, hlc=HLC0)
    assert decode_op(op.raw) == op


def test_small_order_key_with_trivial_signature_is_refused() -> None:
    # the identity point as "key" and R = identity, S = 0 satisfy the cofactorless
    # equation for every message (OpenSSL accepts it): anyone could write as that author
    identity = bytes([1]) + bytes(31)
    raw = pack([*_fields(identity), identity + bytes(32)])
    with pytest.raises(VerificationError):
        decode_op(raw)


def test_malleated_signature_scalar_is_refused() -> None:
    op = create_op(Ed25519PrivateKey.generate(), kind="library.edit", doc_id=b"D" * 16,
                   body=b"\x80", seq=1, prev=None, hlc=HLC0)
    s = int.from_bytes(op.sig[32:], "little") + L  # same point, non-canonical scalar
    raw = pack([*_fields(op.author), op.sig[:32] + s.to_bytes(32, "little")])
    with pytest.raises(VerificationError):
        decode_op(raw)


def test_non_minimal_encoding_is_refused() -> None:
    op = create_op(Ed25519PrivateKey.generate(), kind="library.edit", doc_id=b"D" * 16,
                   body=b"\x80", seq=1, prev=None, hlc=HLC0)
    # seq 1 as a uint8 (0xcc 0x01) instead of a positive fixint: same values, another id
    i = op.raw.index(op.author) + len(op.author)
    assert op.raw[i] == 0x01
    raw = op.raw[:i] + b"\xcc\x01" + op.raw[i + 1:]
    with pytest.raises(DecodeError) as exc:
        decode_op(raw)
    assert exc.value.reason == "noncanonical"
