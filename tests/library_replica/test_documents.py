"""Library documents from ops: merge, causal order, history, revert, block list."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from library_replica.documents import (
    KIND_CREATE,
    KIND_DELETE,
    KIND_EDIT,
    KIND_RESTORE,
    Applied,
    Library,
    decode_state_vector,
    update_clock_ranges,
)
from library_replica.ops import LibraryError, encode_body, new_doc_id
from library_replica.text import TextEdit, apply_edits, yjs_client_id
from meshd.core.codec import unpack
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

T0 = 1_790_000_000_000


class Node:
    """One replica: a Library plus the ops it holds (what sync would store)."""

    def __init__(self) -> None:
        self.lib = Library()
        self.ops: dict[bytes, Op] = {}

    def receive(self, op: Op) -> Applied:
        self.ops[op.op_id] = op
        return self.lib.apply(op)

    def author(self, who: Author, kind: str, doc_id: bytes, body: bytes, t: int) -> Op:
        op = who.op(kind, doc_id, body, hlc(t))
        assert self.receive(op) is Applied.APPLIED
        return op

    def heal(self, other: Node) -> None:
        for op in list(self.ops.values()):
            if op.op_id not in other.ops:
                other.receive(op)
        for op in list(other.ops.values()):
            if op.op_id not in self.ops:
                self.receive(op)


def _create(node: Node, who: Author, body: str, t: int = T0) -> bytes:
    doc_id = new_doc_id(os.urandom(16))
    [p] = node.lib.prepare_create(who.pub, collection="know-how", title="避難所の案内",
                                  body=body, tags=["避難", "shelter"], lang="ja")
    node.author(who, p.kind, doc_id, p.body, t)
    return doc_id


def _edit(node: Node, who: Author, doc_id: bytes, t: int, **kw: object) -> Op:
    [p] = node.lib.prepare_edit(doc_id, who.pub, **kw)  # type: ignore[arg-type]
    return node.author(who, p.kind, doc_id, p.body, t)


def test_create_edit_and_view() -> None:
    n, alice = Node(), Author()
    d = _create(n, alice, "避難所は小学校の体育館です。")
    _edit(n, alice, d, T0 + 1, body="避難所は中学校の体育館です。", tags=["避難", "学校"])
    v = n.lib.get(d)
    assert v is not None
    assert v.body == "避難所は中学校の体育館です。"
    assert v.title == "避難所の案内" and v.collection == "know-how" and v.lang == "ja"
    assert v.tags == ("避難", "学校")
    assert v.authors == {alice.pub}
    h = n.lib.history(d)
    assert [e.kind for e in h] == [KIND_CREATE, KIND_EDIT]
    assert h[1].inserted == 1 and h[1].deleted == 1 and h[1].fields == ("tags",)
    assert h[1].author == alice.pub and h[1].hlc == hlc(T0 + 1)


def test_partitioned_nodes_edit_same_japanese_document_and_merge() -> None:
    a, b = Node(), Node()
    alice, bob = Author(), Author()
    d = _create(a, alice, "給水所：公民館。充電：駐車場。")
    a.heal(b)
    # partition: both edit the same sentence region concurrently
    _edit(a, alice, d, T0 + 10, body="給水所：公民館（九時から）。充電：駐車場。")
    _edit(b, bob, d, T0 + 11, body="給水所：公民館。充電：駐車場の🚗EV三台。")
    _edit(b, bob, d, T0 + 12, body="給水所：北公民館。充電：駐車場の🚗EV三台。")
    a.heal(b)
    va, vb = a.lib.get(d), b.lib.get(d)
    assert va is not None and vb is not None
    assert va.body == vb.body
    assert "（九時から）" in va.body and "🚗EV三台" in va.body and "北公民館" in va.body
    assert a.lib.state_vector(d) == b.lib.state_vector(d)
    assert va.authors == vb.authors == {alice.pub, bob.pub}


def _conversation() -> tuple[list[Op], str]:
    """Ops of three authors editing one document, some concurrently, some building on others."""
    n1, n2, n3 = Node(), Node(), Node()
    a, b, c = Author(), Author(), Author()
    d = _create(n1, a, "避難所の一覧")
    n1.heal(n2)
    n1.heal(n3)
    _edit(n1, a, d, T0 + 1, body="避難所の一覧：小学校")
    _edit(n2, b, d, T0 + 2, body="避難所の一覧（更新）")
    n1.heal(n2)
    _edit(n2, b, d, T0 + 3, body="避難所の一覧（更新）：小学校、中学校", title="避難所")
    _edit(n3, c, d, T0 + 4, body="🏫避難所の一覧", tags=["避難"])
    n2.heal(n3)
    _edit(n3, c, d, T0 + 5, body="🏫避難所の一覧（更新）：小学校、中学校、公民館")
    _edit(n1, a, d, T0 + 6, title="避難所リスト")
    n1.heal(n3)
    n1.heal(n2)
    v = n1.lib.get(d)
    assert v is not None
    ops = sorted(n1.ops.values(), key=lambda o: o.op_id)
    return ops, v.body


def test_200_shuffled_delivery_orders_give_the_same_text() -> None:
    ops, reference = _conversation()
    assert "公民館" in reference and "🏫" in reference
    rng = random.Random(5)
    for _ in range(200):
        order = ops[:]
        rng.shuffle(order)
        lib = Library()
        for op in order:
            assert lib.apply(op) in (Applied.APPLIED, Applied.PENDING)
        assert lib.pending_count() == 0
        v = lib.get(ops[0].doc_id)
        assert v is not None and v.body == reference
        assert v.title == "避難所リスト"


def test_edit_waits_for_create_and_duplicates_are_ignored() -> None:
    n, alice = Node(), Author()
    d = _create(n, alice, "充電")
    e = _edit(n, alice, d, T0 + 1, body="充電スポット")
    other = Library()
    assert other.apply(e) is Applied.PENDING
    assert other.get(d) is None
    create = next(op for op in n.ops.values() if op.kind == KIND_CREATE)
    assert other.apply(create) is Applied.APPLIED
    v = other.get(d)
    assert v is not None and v.body == "充電スポット"
    assert other.apply(create) is Applied.DUPLICATE


def test_update_with_another_authors_client_id_is_refused() -> None:
    n, alice, mallory = Node(), Author(), Author()
    d = _create(n, alice, "本文")
    forged: Doc = Doc(client_id=yjs_client_id(alice.pub))  # mallory writes as alice's client
    forged.apply_update(n.lib._docs[d].ydoc.get_update())
    sv0 = forged.get_state()
    forged.get("body", type=Text).insert(0, "偽")
    body = encode_body({"sv": sv0, "u": forged.get_update(sv0)})
    op = mallory.op(KIND_EDIT, d, body, hlc(T0 + 1))
    assert n.lib.apply(op) is Applied.REFUSED
    assert n.lib.drops.counts["update"] == 1
    v = n.lib.get(d)
    assert v is not None and v.body == "本文"


def test_lying_state_vector_is_refused_and_document_rebuilt() -> None:
    a, b = Node(), Node()
    alice, bob = Author(), Author()
    d = _create(a, alice, "一")
    a.heal(b)
    _edit(a, alice, d, T0 + 1, body="一二")
    # bob edits on top of alice's second edit, which b has seen, but claims an empty base
    a.heal(b)
    [real] = b.lib.prepare_edit(d, bob.pub, body="一二三")

    fields = unpack(real.body, 1 << 20)
    fields["sv"] = b"\x00"
    lie = bob.op(KIND_EDIT, d, encode_body(fields), hlc(T0 + 2))
    fresh = Library()
    create = next(op for op in a.ops.values() if op.kind == KIND_CREATE)
    assert fresh.apply(create) is Applied.APPLIED
    assert fresh.apply(lie) is Applied.REFUSED  # alice's "二" is missing here
    assert fresh.drops.counts["sv_mismatch"] == 1
    v = fresh.get(d)
    assert v is not None and v.body == "一"
    assert not fresh.relayable(lie)


def test_delete_restore_and_revert_are_new_ops_in_history() -> None:
    n, alice, bob = Node(), Author(), Author()
    d = _create(n, alice, "正しい情報")
    vandal = _edit(n, bob, d, T0 + 1, body="誤った情報", title="???")
    [revert] = n.lib.prepare_revert(d, alice.pub, vandal.op_id)
    n.author(alice, revert.kind, d, revert.body, T0 + 2)
    v = n.lib.get(d)
    assert v is not None and v.body == "正しい情報" and v.title == "避難所の案内"
    n.author(bob, KIND_DELETE, d, n.lib.prepare_delete().body, T0 + 3)
    v = n.lib.get(d)
    assert v is not None and v.deleted
    assert list(n.lib.documents()) == []
    restore = n.lib.prepare_delete(restore=True)
    assert restore.kind == KIND_RESTORE
    n.author(alice, restore.kind, d, restore.body, T0 + 4)
    v = n.lib.get(d)
    assert v is not None and not v.deleted
    h = n.lib.history(d)
    assert [e.kind for e in h] == [KIND_CREATE, KIND_EDIT, KIND_EDIT, KIND_DELETE, KIND_RESTORE]
    assert h[2].reverts == vandal.op_id and h[2].author == alice.pub
    assert [e.author for e in h][3] == bob.pub


def test_blocked_author_is_hidden_not_relayed_and_unblock_restores() -> None:
    n, alice, troll = Node(), Author(), Author()
    d = _create(n, alice, "集合場所：駅前")
    spam = _edit(n, troll, d, T0 + 1, body="集合場所：駅前 広告広告")
    after_spam = _edit(n, alice, d, T0 + 2, title="集合")  # builds on the troll's text
    n.lib.set_blocked([troll.pub])
    v = n.lib.get(d)
    assert v is not None and v.body == "集合場所：駅前" and v.title == "避難所の案内"
    assert not n.lib.relayable(spam) and n.lib.relayable(after_spam)
    assert n.lib.apply(spam) is Applied.DUPLICATE
    n.lib.set_blocked([])
    v = n.lib.get(d)
    assert v is not None and v.body.endswith("広告広告") and v.title == "集合"


def test_malformed_bodies_are_counted_and_dropped() -> None:
    lib, m = Library(), Author()
    d = new_doc_id(b"x")
    bad = [
        m.op(KIND_CREATE, d, b"\xc1", hlc(T0)),
        m.op(KIND_CREATE, d, encode_body({"t": "x"}), hlc(T0)),
        m.op(KIND_CREATE, d, encode_body({"c": "BAD NAME", "t": "x", "sv": b"\x00"}), hlc(T0)),
        m.op(KIND_EDIT, d, encode_body({"sv": b"\x05\x01"}), hlc(T0)),
        m.op(KIND_EDIT, d, encode_body({"sv": b"\x00", "u": b"junk"}), hlc(T0)),
        m.op("library.nuke", d, encode_body({}), hlc(T0)),
        # (sync refuses such an envelope; the library holds its ground on its own too)
        dataclasses.replace(m.op(KIND_EDIT, d, encode_body({"sv": b"\x00"}), hlc(T0)),
                            doc_id=b"short"),
    ]
    for op in bad:
        assert lib.apply(op) is Applied.REFUSED
    assert lib.drops.total == len(bad)
    assert list(lib.documents(include_deleted=True)) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3),
                          st.sampled_from(["", "避難", "a", "🚗", "e\u0301", "給水所へ"])),
                min_size=1, max_size=8))
def test_update_clock_ranges_match_pycrdt(raw: list[tuple[int, int, str]]) -> None:
    cid = yjs_client_id(b"p" * 32)
    doc: Doc = Doc(client_id=cid)
    text = doc.get("body", type=Text)
    current = ""
    for pos, length, ins in raw:
        sv0 = doc.get_state()
        before = decode_state_vector(sv0).get(cid, 0)
        pos = min(pos, len(current))
        length = min(length, len(current) - pos)
        try:
            with doc.transaction():
                current = apply_edits(text, current, [TextEdit(pos, length, ins)])
        except LibraryError:
            continue  # would split a character: refused before touching the text
        ranges = update_clock_ranges(doc.get_update(sv0))
        after = decode_state_vector(doc.get_state()).get(cid, 0)
        if after > before:
            assert ranges == {cid: (before, after)}
        else:
            assert ranges == {}
    end = decode_state_vector(doc.get_state()).get(cid, 0)
    assert update_clock_ranges(doc.get_update()) == ({cid: (0, end)} if end else {})


def test_long_bodies_are_split_into_ops_that_fit_syncs_limit() -> None:
    from library_replica.ops import MAX_BODY_SIZE

    n, alice = Node(), Author()
    d = new_doc_id(b"long")
    body = ("避難所の運営記録👩\u200d👧。" * 6000)[:59_000]
    ops = n.lib.prepare_create(alice.pub, collection="history", title="記録", body=body)
    assert len(ops) >= 4 and ops[0].kind == KIND_CREATE
    assert all(len(p.body) <= MAX_BODY_SIZE for p in ops)
    signed = [alice.op(p.kind, d, p.body, hlc(T0, i)) for i, p in enumerate(ops)]
    for op in signed:
        assert n.receive(op) is Applied.APPLIED
    v = n.lib.get(d)
    assert v is not None and v.body == body
    # a replacement of most of the text is split as well
    new = "改訂版：" + body[::-1].replace("\u200d👩", "👩\u200d")
    edits = n.lib.prepare_edit(d, alice.pub, body=new)
    assert len(edits) >= 2 and all(len(p.body) <= MAX_BODY_SIZE for p in edits)
    signed += [alice.op(p.kind, d, p.body, hlc(T0 + 1, i)) for i, p in enumerate(edits)]
    rng = random.Random(3)
    for _ in range(3):
        order = signed[:]
        rng.shuffle(order)
        lib = Library()
        for op in order:
            lib.apply(op)
        got = lib.get(d)
        assert got is not None and lib.pending_count() == 0
        assert got.body == new


def test_a_pycrdt_panic_on_a_hostile_update_is_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    n, alice, mallory = Node(), Author(), Author()
    d = _create(n, alice, "本文")
    [p] = n.lib.prepare_edit(d, mallory.pub, body="本文X")
    real_apply = Doc.apply_update
    poisoned = unpack(p.body, 1 << 20)["u"]

    def apply_update(self: Doc, update: bytes) -> None:
        if update == poisoned:
            raise PanicException("byte index is not a char boundary")
        real_apply(self, update)

    monkeypatch.setattr(Doc, "apply_update", apply_update)
    assert n.lib.apply(mallory.op(KIND_EDIT, d, p.body, hlc(T0 + 1))) is Applied.REFUSED
    v = n.lib.get(d)
    assert v is not None and v.body == "本文"
    assert n.lib.drops.counts["update"] == 1


def _seeded(who: Author, doc_id: bytes, body: str, t: int) -> list[Op]:
    return [who.op(p.kind, doc_id, p.body, hlc(t, i)) for i, p in enumerate(
        Library.prepare_seeded_create(doc_id, collection="work", title="案内", body=body))]


def test_seeded_bodies_of_the_same_text_are_one_copy_in_any_order() -> None:
    doc_id = new_doc_id(b"seeded")
    body = "避難所は北小学校です。🇯🇵\n" * 3000  # several chunks
    a, b = _seeded(Author(), doc_id, body, T0), _seeded(Author(), doc_id, body, T0 + 5)
    assert len(a) > 1 and a[0].kind == KIND_CREATE and a[1].kind == KIND_EDIT
    results = set()
    rng = random.Random(7)
    for _ in range(5):
        ops = a + b
        rng.shuffle(ops)
        lib = Library()
        for op in ops:
            lib.apply(op)
        d = lib.get(doc_id)
        assert d is not None and d.body == body and len(d.authors) == 2
        results.add(tuple(sorted(lib.version().items())))
    assert len(results) == 1


def test_the_latest_seed_wins_and_edits_on_it_survive() -> None:
    doc_id = new_doc_id(b"two seeds")
    town, dealer = Author(), Author()
    old = _seeded(town, doc_id, "古い案内\n", T0)
    new = _seeded(dealer, doc_id, "新しい案内\n", T0 + 10)
    n1 = Node()
    for op in new:
        n1.receive(op)
    edit = _edit(n1, dealer, doc_id, T0 + 20, body="新しい案内\n追記\n")
    for order in ([*old, *new, edit], [edit, *new, *old], [*new, edit, *old]):
        lib = Library()
        for op in order:
            lib.apply(op)
        got = lib.get(doc_id)
        assert got is not None and got.body == "新しい案内\n追記\n", order


def test_a_seeded_body_carrying_its_own_update_is_refused() -> None:
    who = Author()
    doc_id = new_doc_id(b"forged seed")
    [p] = Library.prepare_seeded_create(doc_id, collection="work", title="t", body="本文")
    fields = unpack(p.body, 100_000)
    scratch: Doc = Doc(client_id=yjs_client_id(who.pub))
    scratch.get("body", type=Text).insert(0, "別の本文")
    forged = encode_body({**fields, "u": scratch.get_update()})
    lib = Library()
    assert lib.apply(who.op(KIND_CREATE, doc_id, forged, hlc(T0))) is Applied.REFUSED
    # a later chunk without its create's seed offset rule
    bad = encode_body({**fields, "o": 3})
    assert lib.apply(who.op(KIND_CREATE, doc_id, bad, hlc(T0 + 1))) is Applied.REFUSED
    assert lib.get(doc_id) is None
