"""Handshake admission with literal counts and times: Retry above a threshold, per-source limits."""

from __future__ import annotations

import pytest

from meshd.links.admission import (
    MAX_TOKEN_LEN,
    AdmissionPolicy,
    PendingHandshakes,
    RetryTokens,
    Verdict,
)

A = ("10.0.0.2", 7420)
B = ("10.0.0.3", 7420)
ODCID = bytes.fromhex("0011223344556677")
SCID = bytes.fromhex("8899aabbccddeeff")


def test_unvalidated_accepted_until_retry_threshold_then_retry() -> None:
    p = PendingHandshakes(AdmissionPolicy(retry_above=2, per_source=1, max_pending=4))
    assert p.admit("10.0.0.2", validated=False) is Verdict.ACCEPT
    p.add(1, "10.0.0.2", validated=False)
    # unvalidated handshakes are not held against their (spoofable) source
    assert p.admit("10.0.0.2", validated=False) is Verdict.ACCEPT
    p.add(2, "10.0.0.2", validated=False)
    assert p.admit("10.0.0.9", validated=False) is Verdict.RETRY
    # a client that proved its address still gets in
    assert p.admit("10.0.0.2", validated=True) is Verdict.ACCEPT
    p.done(1)
    assert p.admit("10.0.0.9", validated=False) is Verdict.ACCEPT
    assert (p.total, p.unvalidated) == (1, 1)


def test_validated_limited_per_source_and_in_all() -> None:
    p = PendingHandshakes(AdmissionPolicy(retry_above=1, per_source=2, max_pending=4))
    p.add(1, "10.0.0.2", validated=True)
    p.add(2, "10.0.0.2", validated=True)
    assert p.validated_from("10.0.0.2") == 2
    assert p.admit("10.0.0.2", validated=True) is Verdict.REFUSE  # per source
    assert p.admit("10.0.0.3", validated=True) is Verdict.ACCEPT
    p.add(3, "10.0.0.3", validated=True)
    p.add(4, "10.0.0.4", validated=False)
    assert p.total == 4
    assert p.admit("10.0.0.5", validated=True) is Verdict.REFUSE  # in all
    assert p.admit("10.0.0.5", validated=False) is Verdict.RETRY
    p.done(2)
    assert p.admit("10.0.0.2", validated=True) is Verdict.ACCEPT
    p.done(2)  # twice is harmless
    p.add(3, "10.0.0.3", validated=True)  # a key added twice counts once
    assert p.validated_from("10.0.0.3") == 1
    for key in (1, 3, 4):
        p.done(key)
    assert (p.total, p.unvalidated, p.validated_from("10.0.0.2")) == (0, 0, 0)


def test_policy_consistency() -> None:
    AdmissionPolicy(retry_above=0)  # Retry always: allowed
    with pytest.raises(ValueError):
        AdmissionPolicy(retry_above=10, max_pending=5)
    with pytest.raises(ValueError):
        AdmissionPolicy(per_source=0)


def test_retry_token_round_trip_and_lifetime() -> None:
    t = RetryTokens(b"k" * 32, lifetime_s=10.0)
    token = t.create(A, ODCID, SCID, now=100.0)
    assert len(token) <= MAX_TOKEN_LEN
    assert t.validate(A, SCID, token, now=100.0) == ODCID
    assert t.validate(A, SCID, token, now=110.0) == ODCID
    with pytest.raises(ValueError, match="expired"):
        t.validate(A, SCID, token, now=110.5)
    with pytest.raises(ValueError, match="expired"):
        t.validate(A, SCID, token, now=99.0)  # issued in the future


def test_retry_token_bound_to_address_cid_and_key() -> None:
    t = RetryTokens(b"k" * 32)
    token = t.create(A, ODCID, SCID, now=100.0)
    with pytest.raises(ValueError, match="mac"):
        t.validate(B, SCID, token, now=101.0)  # another host
    with pytest.raises(ValueError, match="mac"):
        t.validate(("10.0.0.2", 7421), SCID, token, now=101.0)  # another port
    with pytest.raises(ValueError, match="mac"):
        t.validate(A, ODCID, token, now=101.0)  # not the cid our Retry gave
    with pytest.raises(ValueError, match="mac"):
        RetryTokens(b"x" * 32).validate(A, SCID, token, now=101.0)  # another listener's key
    forged = bytearray(token)
    forged[10] ^= 1  # inside the odcid
    with pytest.raises(ValueError, match="mac"):
        t.validate(A, SCID, bytes(forged), now=101.0)


@pytest.mark.parametrize("token", [b"", b"\x00" * 5, b"\x00" * (MAX_TOKEN_LEN + 1),
                                   b"\x00" * 8 + b"\x05" + b"\x00" * 16])
def test_malformed_tokens_are_value_errors(token: bytes) -> None:
    with pytest.raises(ValueError):
        RetryTokens(b"k" * 32).validate(A, SCID, token, now=0.0)


def test_retry_token_key_and_cid_limits() -> None:
    with pytest.raises(ValueError):
        RetryTokens(b"short")
    with pytest.raises(ValueError):
        RetryTokens(b"k" * 32).create(A, bytes(21), SCID, now=0.0)
