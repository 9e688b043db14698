"""Hostile op bodies: every core refuses (counts) them and never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from library_replica.bulletins import (
    Authority,
    AuthorityRole,
    BulletinBoard,
    TrustConfig,
    TrustStore,
)
from library_replica.documents import KIND_CREATE, KIND_EDIT, Applied, Library
from library_replica.ops import encode_body, new_doc_id
from library_replica.situation import SituationBoard, record_id
from meshd.core.codec import pack
from tests.library_replica.factory import Author, hlc

AUTHOR = Author()
DOC = new_doc_id(b"hostile")

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                     st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=40))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=12)
_keys = st.sampled_from(["c", "t", "g", "l", "u", "sv", "r", "k", "f", "b", "i", "x", "sig", "v",
                         "a", "zz"])
_bodies = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(_keys, _values, max_size=8).map(pack),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["library.create", "library.edit", "library.delete", "library.restore",
                        "library.other"]), _bodies)
def test_library_never_raises(kind: str, body: bytes) -> None:
    lib = Library()
    [p] = lib.prepare_create(AUTHOR.pub, collection="work", title="t", body="本文")
    assert lib.apply(AUTHOR.op(KIND_CREATE, DOC, p.body, hlc(1))) is Applied.APPLIED
    result = lib.apply(AUTHOR.op(kind, DOC, body, hlc(2)))
    assert isinstance(result, Applied)
    v = lib.get(DOC)
    assert v is not None and v.body == "本文"


@settings(max_examples=200, deadline=None)
@given(_bodies, st.binary(max_size=60))
def test_library_update_bytes_never_raise(sv: bytes, update: bytes) -> None:
    lib = Library()
    [p] = lib.prepare_create(AUTHOR.pub, collection="work", title="t", body="避難所")
    lib.apply(AUTHOR.op(KIND_CREATE, DOC, p.body, hlc(1)))
    for body in (encode_body({"sv": sv, "u": update}), encode_body({"sv": b"\x00", "u": update})):
        assert isinstance(lib.apply(AUTHOR.op(KIND_EDIT, DOC, body, hlc(2))), Applied)
    v = lib.get(DOC)
    assert v is not None


@settings(max_examples=200, deadline=None)
@given(_bodies)
def test_situation_and_bulletins_never_raise(body: bytes) -> None:
    board = SituationBoard()
    assert board.apply(AUTHOR.op("situation.set", record_id(AUTHOR.pub, "person"), body,
                                 hlc(1))) in (True, False)
    trust = TrustStore(TrustConfig(AUTHOR.pub, 1, {AUTHOR.pub: Authority(
        AUTHOR.pub, AuthorityRole.CITY, "c")}))
    bulletins = BulletinBoard(trust)
    assert bulletins.apply(AUTHOR.op("bulletin.publish", DOC, body, hlc(1), expiry_ms=10**13),
                           10**12) in (True, False)
    assert trust.apply(AUTHOR.op("trust.update", DOC, body, hlc(1))) in (True, False)
