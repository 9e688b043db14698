"""Range-based reconciliation finds exactly the symmetric difference."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.core.errors import DecodeError
from sync.envelope import NAMESPACE_PRIORITY
from sync.reconcile import OPENING_BUDGET, OPENING_TAIL_IDS, RangeSet, Reconciler
from tests.sync.helpers import Outcome, all_ids, make_items, run_session


def _check(items_a: list[tuple[int, bytes]], items_b: list[tuple[int, bytes]], **kw: int) -> None:
    out = run_session(items_a, items_b, **kw)
    ids_a = {i for _, i in items_a}
    ids_b = {i for _, i in items_b}
    for side, mine, theirs in ((out.a, ids_a, ids_b), (out.b, ids_b, ids_a)):
        have, need = all_ids(side, "have"), all_ids(side, "need")
        assert len(have) == len(set(have)), "an id to push was reported twice"
        assert len(need) == len(set(need)), "an id to fetch was reported twice"
        assert set(have) == mine - theirs
        assert set(need) <= {i[:16] for i in theirs - mine}
        assert side.incoming() == len(theirs - mine)
        assert side.outgoing() == len(mine - theirs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(common=st.integers(0, 10_000), only_a=st.integers(0, 10_000),
       only_b=st.integers(0, 10_000), hlc_span=st.sampled_from([1, 7, 1000, 2**40]),
       buckets=st.sampled_from([2, 3, 16]), threshold=st.sampled_from([1, 8, 32]),
       seed=st.integers(0, 2**32))
def test_symmetric_difference_random_sets(common: int, only_a: int, only_b: int, hlc_span: int,
                                          buckets: int, threshold: int, seed: int) -> None:
    rng = random.Random(seed)
    # the sizes are bounded to 10,000 per side overall
    only_a = min(only_a, 10_000 - min(common, 10_000))
    only_b = min(only_b, 10_000 - min(common, 10_000))
    shared = make_items(rng, common, tag=b"c", hlc_span=hlc_span)
    a = shared + make_items(rng, only_a, tag=b"a", hlc_span=hlc_span)
    b = shared + make_items(rng, only_b, tag=b"b", hlc_span=hlc_span)
    rng.shuffle(a)
    _check(a, b, buckets=buckets, idlist_threshold=threshold)


@pytest.mark.parametrize(("na", "nb"), [(0, 0), (0, 1), (1, 0), (0, 5000), (5000, 0)])
def test_edge_sizes(na: int, nb: int) -> None:
    rng = random.Random(1)
    _check(make_items(rng, na, tag=b"a", hlc_span=100), make_items(rng, nb, tag=b"b", hlc_span=100))


def test_no_difference_is_one_round_trip_and_small() -> None:
    items = make_items(random.Random(2), 20_000, tag=b"x", hlc_span=2**40)
    out = run_session(items, list(items))
    assert out.round_trips == 1
    assert out.bytes_a_to_b + out.bytes_b_to_a <= 512
    assert all_ids(out.a, "have") == [] and all_ids(out.b, "need") == []


def test_recent_differences_take_at_most_three_round_trips() -> None:
    rng = random.Random(3)
    base = sorted(make_items(rng, 20_000, tag=b"x", hlc_span=2**40))
    newer = [(2**40 + i, h) for i, (_, h) in enumerate(make_items(rng, 1000, tag=b"n", hlc_span=1))]
    out = run_session(base, base + newer)
    assert out.round_trips <= 3
    assert set(all_ids(out.b, "have")) == {h for _, h in newer}
    assert out.a.incoming() == len(newer)


def test_namespaces_reconcile_in_one_exchange() -> None:
    rng = random.Random(4)
    bul = make_items(rng, 10, tag=b"b", hlc_span=100)
    lib = make_items(rng, 100, tag=b"l", hlc_span=100)
    a = Reconciler({"bulletin": RangeSet(bul), "library": RangeSet(lib)})
    b = Reconciler({"library": RangeSet(lib[:50])})
    reply = b.receive(a.initiate())
    while reply is not None:
        reply = a.receive(reply)
        if reply is not None:
            reply = b.receive(reply)
    assert b.incoming() == len(bul) + 50
    assert set(a.have["library"]) == {h for _, h in lib[50:]}


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x61\x05libra", b"\x61\x07library\x01\x00\x00\x09",
                                 b"\x61\x07library\x01\x00\x00\x02\xff\xff\xff\xff\x0f",
                                 b"\x61\x07library\x02\x05\x00\x00"])
def test_malformed_messages_raise_decode_error(bad: bytes) -> None:
    r = Reconciler({"library": RangeSet(make_items(random.Random(5), 100, tag=b"x", hlc_span=9))})
    with pytest.raises(DecodeError):
        r.receive(bad)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    r = Reconciler({"library": RangeSet(make_items(random.Random(6), 50, tag=b"x", hlc_span=9))})
    try:
        r.receive(b"\x61" + data)
    except DecodeError:
        pass


# --- recency-aware opening -------------------------------------------------------------------

def _newest_first(n: int, seed: int) -> list[tuple[int, bytes]]:
    """``n`` items with distinct, realistic hlcs ((ms << 16) | counter), sorted oldest first."""
    rng = random.Random(seed)
    ms, out = 1_800_000_000_000, []
    for i in range(n):
        ms += rng.randrange(1, 60_000)
        out.append(((ms << 16) | rng.randrange(4), hashlib.sha256(b"r%d" % i).digest()))
    return out


def _total(out: Outcome) -> int:
    return out.bytes_a_to_b + out.bytes_b_to_a


@pytest.mark.parametrize("missing_at", ["initiator", "responder"])
@pytest.mark.parametrize("depth", [1, 2, OPENING_TAIL_IDS])
def test_one_recent_difference_is_one_round_trip_and_under_64_bytes(missing_at: str,
                                                                     depth: int) -> None:
    items = _newest_first(20_000, seed=10)
    lacking = items[:-depth] + items[len(items) - depth + 1:]
    a, b = (lacking, items) if missing_at == "initiator" else (items, lacking)
    none = run_session(items, list(items))
    one = run_session(a, b)
    assert one.round_trips == 1
    assert _total(one) - _total(none) <= 64
    _check(a, b)


def test_a_hundred_recent_differences_cost_under_64_bytes_each() -> None:
    items = _newest_first(20_000, seed=11)
    newest = items[-200:]
    pick = random.Random(12).sample(range(200), 100)
    only_a = {newest[j] for j in pick[:50]}
    only_b = {newest[j] for j in pick[50:]}
    a = [i for i in items if i not in only_b]
    b = [i for i in items if i not in only_a]
    none = run_session(items, list(items))
    out = run_session(a, b)
    assert out.round_trips <= 2
    assert (_total(out) - _total(none)) / 100 <= 64
    _check(a, b)


@pytest.mark.parametrize("depth", [9, 30, 100, 1000, 5000, 19_000])
def test_a_single_older_difference_is_found_in_three_round_trips(depth: int) -> None:
    items = _newest_first(20_000, seed=13)
    lacking = items[:-depth] + items[len(items) - depth + 1:]
    out = run_session(items, lacking)
    assert out.round_trips <= 3
    assert all_ids(out.a, "have") == [items[-depth][1]]


def test_catch_up_of_the_newest_ops_is_one_round_trip() -> None:
    # the dealer-visit shape: the initiator lacks the newest 1,000 ops of the responder
    items = _newest_first(20_000, seed=14)
    out = run_session(items[:-1000], items)
    assert out.round_trips == 1
    assert len(all_ids(out.b, "have")) == 1000
    assert out.a.incoming() == 1000
    assert _total(out) <= 2 * OPENING_BUDGET


def test_opening_fits_the_budget_with_every_namespace_full() -> None:
    items = {ns: sorted(make_items(random.Random(i), 5000, tag=ns.encode(), hlc_span=2**50))
             for i, ns in enumerate(NAMESPACE_PRIORITY)}
    sets = {ns: RangeSet(v) for ns, v in items.items()}
    opening = Reconciler(sets).initiate()
    assert len(opening) <= OPENING_BUDGET
    assert Reconciler(sets).receive(opening) is None  # no difference: one message
    # a difference at the newest end of any namespace still settles in one round trip
    for ns, v in items.items():
        initiator = Reconciler(sets)
        peer = Reconciler({**sets, ns: RangeSet(v[:-1])})
        reply = peer.receive(initiator.initiate())
        assert reply is not None
        assert initiator.receive(reply) is None
        assert all_ids(initiator, "have") == [v[-1][1]]
        assert peer.incoming() == 1
