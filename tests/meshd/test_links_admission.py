"""Handshake admission with literal counts and times: Retry above a threshold, per-source limits."""

from __future__ import annotations

import pytest

from meshd.links.admission import (
    MAX_TOKEN_LEN,
    AdmissionPolicy,
    InitialBudget,
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


def test_initial_budget_per_source_bucket_refills_at_its_rate() -> None:
    b = InitialBudget(source_rate=2.0, source_burst=3.0, total_rate=100.0, total_burst=100.0)
    assert [b.allow(A, False, 10.0) for _ in range(4)] == [True, True, True, False]
    assert b.allow(B, False, 10.0)  # another source has its own bucket
    assert not b.allow(A, False, 10.25)  # half a token
    assert b.allow(A, False, 10.5)  # one token after 0.5 s at 2/s
    assert not b.allow(A, False, 10.5)
    # the bucket never holds more than its burst, however long the source was quiet
    assert [b.allow(A, False, 1000.0) for _ in range(4)] == [True, True, True, False]


def test_initial_budget_global_buckets_split_tokenless_and_token() -> None:
    b = InitialBudget(source_rate=100.0, source_burst=100.0, total_rate=1.0, total_burst=2.0)
    sources = [(f"10.0.0.{i}", 7420) for i in range(6)]
    # a spoofer varying its source: the global bucket bounds it
    assert [b.allow(s, False, 5.0) for s in sources] == [True, True, False, False, False, False]
    # clients answering a Retry draw from their own bucket, untouched by the tokenless flood
    assert [b.allow(s, True, 5.0) for s in sources[:3]] == [True, True, False]
    assert b.allow(sources[5], False, 6.0)  # refilled at 1/s
    assert not b.allow(sources[5], False, 6.0)


def test_initial_budget_source_table_is_bounded() -> None:
    b = InitialBudget(source_rate=1.0, source_burst=1.0, total_rate=1e6, total_burst=1e6,
                      max_sources=3)
    for port in range(3):
        assert b.allow(("10.0.0.2", port), False, 0.0)
    assert b.sources == 3
    assert not b.allow(("10.0.0.2", 0), False, 0.0)  # its bucket is still there, empty
    assert b.allow(("10.0.0.2", 99), False, 0.0)  # a fourth source empties the table first
    assert b.sources == 1


@pytest.mark.parametrize("kwargs", [{"source_rate": 0.0}, {"total_burst": -1.0},
                                    {"max_sources": 0}])
def test_initial_budget_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        InitialBudget(**kwargs)  # type: ignore[arg-type]
