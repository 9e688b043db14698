"""Reconciliation messages are untrusted input: every wire limit refuses, and refusing changes nothing.

The messages here are built by a small encoder of the test's own, from the grammar in the
``sync.reconcile`` docstring, so these tests also pin the wire format.
"""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import DecodeError
from sync.reconcile import (
    MAX_ANNOUNCED_PUSH,
    MAX_MESSAGE_SIZE,
    MAX_NAMESPACES,
    RangeSet,
    Reconciler,
)
from tests.sync.helpers import make_items

VERSION = b"\x61"
SKIP, FINGERPRINT, IDLIST, IDLIST_REPLY = 0, 1, 2, 3
INF = None


def v(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def section(ns: str, *ranges: tuple[tuple[int, bytes] | None, int, bytes]) -> bytes:
    """One section; a bound is ``(ts, prefix)`` or ``INF``; timestamps are delta-coded here."""
    out = v(len(ns)) + ns.encode() + v(len(ranges))
    last = 0
    for bound, mode, payload in ranges:
        if bound is None:
            out += b"\x00\x00"
        else:
            ts, prefix = bound
            out += v(1 + ts - last) + v(len(prefix)) + prefix
            last = ts
        out += v(mode) + payload
    return out


def idlist(ids: list[bytes]) -> bytes:
    return v(len(ids)) + b"".join(ids)


ITEMS = sorted(make_items(random.Random(1), 100, tag=b"x", hlc_span=1000))


def fresh() -> Reconciler:
    return Reconciler({"library": RangeSet(ITEMS)})


def state(r: Reconciler) -> tuple[object, ...]:
    return (r.have, r.need, r.expected, r.rounds, r.incoming(), r.outgoing())


def test_the_test_encoder_speaks_the_protocol() -> None:
    # a stranger's id in an id list over the whole set: we lack it and push all of ours
    stranger = b"\xee" * 16
    r = fresh()
    reply = r.receive(VERSION + section("library", (INF, IDLIST, idlist([stranger]))))
    assert reply is not None
    assert r.need == {"library": [stranger]}
    assert len(r.have["library"]) == len(ITEMS)
    assert reply == VERSION + section("library", (INF, IDLIST_REPLY, v(1) + b"\x01" + v(100)))


def lib(*ranges: tuple[tuple[int, bytes] | None, int, bytes]) -> bytes:
    """A message of one ``library`` section."""
    return VERSION + section("library", *ranges)


NO_BITS = b"\x00" * 13  # a bitmap over our 100 ids
#: name: (message, what the refusal says)
REFUSED: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "version"),
    "wrong version": (b"\x62" + section("library", (INF, SKIP, b"")), "version"),
    "no section": (VERSION, "no namespace"),
    "namespace name too long": (VERSION + section("l" * 33, (INF, SKIP, b"")), "too long"),
    "namespace not an identifier": (VERSION + section("lib-rary", (INF, SKIP, b"")),
                                    "bad namespace"),
    "namespace not ascii": (VERSION + v(2) + "é".encode() + v(1) + b"\x00\x00\x00",
                            "namespace name"),
    "namespace twice": (VERSION + 2 * section("library", (INF, SKIP, b"")), "duplicate"),
    "too many namespaces": (VERSION + b"".join(section(f"ns{i}", (INF, IDLIST, v(0)))
                                               for i in range(MAX_NAMESPACES + 1)),
                            "too many namespaces"),
    "no range": (VERSION + v(7) + b"library" + v(0), "range count"),
    "more ranges than bytes": (VERSION + v(7) + b"library" + v(5) + b"\x00" * 3, "range count"),
    "varint over 64 bits": (VERSION + v(7) + b"library" + b"\xff" * 10 + b"\x01", "bad varint"),
    "bound prefix over 32 bytes": (lib(((5, b"p" * 33), SKIP, b"")), "bound prefix"),
    "infinite bound with a prefix": (VERSION + v(7) + b"library" + v(1) + b"\x00\x01p\x00",
                                     "infinite bound"),
    "timestamp past 2**64": (lib(((2**64, b""), SKIP, b"")), "bound timestamp"),
    "bound at zero": (lib(((0, b""), SKIP, b"")), "not ascending"),
    "bounds repeated": (lib(((5, b""), SKIP, b""), ((5, b""), SKIP, b"")), "not ascending"),
    "range after infinity": (lib((INF, SKIP, b""), (INF, SKIP, b"")), "not ascending"),
    "unknown mode": (lib((INF, 4, b"")), "range mode"),
    "fingerprint truncated": (lib((INF, FINGERPRINT, b"\x00" * 15)), "truncated"),
    "id count over the bytes": (lib((INF, IDLIST, v(3) + b"i" * 32)), "id count"),
    "id repeated": (lib((INF, IDLIST, idlist([b"i" * 16, b"i" * 16]))), "repeated id"),
    "reply count is not ours": (lib((INF, IDLIST_REPLY, v(99) + NO_BITS + v(0))),
                                "does not match"),
    "reply padding bits set": (lib((INF, IDLIST_REPLY, v(100) + NO_BITS[:-1] + b"\x10" + v(0))),
                               "padding"),
    "announced push count": (lib((INF, IDLIST_REPLY, v(100) + NO_BITS + v(MAX_ANNOUNCED_PUSH + 1))),
                             "announced"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_message_is_refused(name: str) -> None:
    msg, says = REFUSED[name]
    r = fresh()
    before = state(r)
    with pytest.raises(DecodeError, match=re.escape(says)):
        r.receive(msg)
    assert state(r) == before


def test_oversize_message_is_refused_before_parsing() -> None:
    with pytest.raises(DecodeError) as e:
        fresh().receive(VERSION + b"\x00" * MAX_MESSAGE_SIZE)
    assert e.value.reason == "oversize"


def test_limits_themselves_are_accepted() -> None:
    r = fresh()
    longest = "l" * 32
    assert r.receive(VERSION + section(longest, (INF, IDLIST, v(0)))) is None
    many = VERSION + b"".join(section(f"ns{i}", (INF, IDLIST, v(0)))
                              for i in range(MAX_NAMESPACES))
    assert fresh().receive(many) is None
    # a 32-byte prefix, a timestamp just under 2**64
    top = VERSION + section("library", ((2**64 - 1, b"\xff" * 32), SKIP, b""))
    assert fresh().receive(top) is None


def test_a_refused_message_teaches_nothing_even_after_a_good_section() -> None:
    r = fresh()
    good = section("library", (INF, IDLIST, idlist([b"\xee" * 16])))
    with pytest.raises(DecodeError):
        r.receive(VERSION + good + section("bulletin", (INF, 9, b"")))
    assert r.need == {} and r.have == {} and r.rounds == 0


def test_a_session_that_goes_on_too_long_is_refused() -> None:
    r = fresh()
    # a peer that keeps re-listing one range: honest peers never do, each answer is accepted
    msg = VERSION + section("library", (INF, IDLIST, idlist([b"\xee" * 16])))
    for _ in range(r.max_rounds):
        assert r.receive(msg) is not None
    with pytest.raises(DecodeError):
        r.receive(msg)
    assert 8 <= Reconciler({}).max_rounds <= 20  # the default (16 buckets)


def _honest_messages() -> list[bytes]:
    rng = random.Random(3)
    shared = make_items(rng, 300, tag=b"s", hlc_span=50)
    a = Reconciler({"library": RangeSet(shared + make_items(rng, 40, tag=b"a", hlc_span=50))},
                   buckets=4, idlist_threshold=4)
    b = Reconciler({"library": RangeSet(shared + make_items(rng, 40, tag=b"b", hlc_span=50)),
                    "bulletin": RangeSet(make_items(rng, 3, tag=b"u", hlc_span=50))},
                   buckets=4, idlist_threshold=4)
    out = [a.initiate()]
    sides = [b, a]
    while True:
        reply = sides[len(out) % 2 - 1].receive(out[-1])
        if reply is None:
            return out
        out.append(reply)


HONEST = _honest_messages()


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(HONEST) - 1), cuts=st.lists(
    st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.binary(max_size=4)), max_size=4))
def test_mutated_honest_messages_never_raise_anything_but_decode_error(
        which: int, cuts: list[tuple[int, int, bytes]]) -> None:
    msg = bytearray(HONEST[which])
    for pos, op, data in cuts:
        pos %= len(msg) + 1
        if op == 0:
            msg[pos:pos] = data  # insert
        elif op == 1:
            del msg[pos : pos + len(data) + 1]  # delete
        elif op == 2:
            msg[pos : pos + len(data)] = data  # overwrite
        else:
            del msg[pos:]  # truncate
    for side in (fresh(), Reconciler({"library": RangeSet(ITEMS[:50])}, buckets=4,
                                     idlist_threshold=4)):
        before = state(side)
        try:
            side.receive(bytes(msg))
        except DecodeError:
            assert state(side) == before
