"""Compaction, pure: the planner (literal now values) and snapshots in the Library core."""

from __future__ import annotations

import pytest

from library_replica.compaction import DAY_MS, CompactionPolicy, DocStats, plan_compaction
from library_replica.documents import (
    KIND_SNAPSHOT,
    SNAPSHOT_EXPIRY_MS,
    Applied,
    Library,
    PreparedOp,
)
from library_replica.ops import Refused, encode_body
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

NOW = 1_800_000_000_000
POLICY = CompactionPolicy(max_ops=100, max_bytes=10_000, quiet_ms=60_000,
                          horizon_ms=30 * DAY_MS, max_per_round=2)
D1, D2, D3 = b"1" * 16, b"2" * 16, b"3" * 16


def test_planner_compacts_big_quiet_documents_largest_first() -> None:
    stats = [
        DocStats(D1, ops=100, bytes=5_000, changed_ms=NOW - 60_000),  # ops, quiet
        DocStats(D2, ops=5, bytes=20_000, changed_ms=NOW - 120_000),  # bytes, quiet
        DocStats(D3, ops=500, bytes=50_000, changed_ms=NOW - 59_999),  # still being edited
    ]
    tasks = plan_compaction(stats, now_ms=NOW, policy=POLICY)
    assert [(t.doc_id, t.purge, t.why) for t in tasks] == [(D2, False, "bytes"),
                                                          (D1, False, "ops")]
    assert plan_compaction(stats, now_ms=NOW + 1, policy=POLICY)[0].doc_id == D3
    # at most max_per_round, and nothing below the thresholds
    assert len(plan_compaction(stats, now_ms=NOW + 1, policy=POLICY)) == 2
    assert plan_compaction([DocStats(D1, ops=99, bytes=9_999, changed_ms=0)], now_ms=NOW,
                           policy=POLICY) == []


def test_planner_makes_a_tombstone_after_the_horizon_only() -> None:
    deleted = DocStats(D1, ops=3, bytes=300, changed_ms=NOW - 31 * DAY_MS, deleted=True,
                       deleted_ms=NOW - 30 * DAY_MS)
    [t] = plan_compaction([deleted], now_ms=NOW, policy=POLICY)
    assert (t.doc_id, t.purge, t.why) == (D1, True, "tombstone")
    assert plan_compaction([deleted], now_ms=NOW - 1, policy=POLICY) == []
    # a tombstone is not made twice; one with new ops (edits of the deleted document) is
    # compacted again as a tombstone once they reach the threshold
    done = DocStats(D1, ops=0, bytes=0, changed_ms=0, deleted=True, deleted_ms=0, purged=True)
    assert plan_compaction([done], now_ms=NOW, policy=POLICY) == []
    more = DocStats(D1, ops=100, bytes=900, changed_ms=0, deleted=True, deleted_ms=0,
                    purged=True)
    [t] = plan_compaction([more], now_ms=NOW, policy=POLICY)
    assert t.purge and t.why == "ops"


# -- snapshots in the Library core ----------------------------------------------------------

def _submit(lib: Library, author: Author, prepared: list[PreparedOp], doc_id: bytes,
            t: int) -> list[Op]:
    ops = []
    for i, p in enumerate(prepared):
        op = author.op(p.kind, doc_id, p.body, hlc(t, i))
        lib.authorize(op, t)
        assert lib.apply(op) is Applied.APPLIED
        ops.append(op)
    return ops


def _snapshot(lib: Library, author: Author, doc_id: bytes, t: int, *,
              purge: bool = False) -> tuple[Op, int]:
    out = lib.prepare_snapshot(doc_id, purge=purge)
    assert out is not None
    p, n = out
    return author.op(p.kind, doc_id, p.body, hlc(t), expiry_ms=SNAPSHOT_EXPIRY_MS), n


def _edit_history(n: int) -> tuple[Library, Author, Author, list[Op]]:
    a, b = Author(), Author()
    lib = Library(may_compact={a.pub}.__contains__)
    doc = D1
    ops = _submit(lib, a, lib.prepare_create(a.pub, collection="work", title="t", body="x"),
                  doc, 1_000)
    for i in range(n):
        who = a if i % 3 else b
        body = lib.get(doc).body + f" {i}"  # type: ignore[union-attr]
        if i % 7 == 0:
            body = body[len(body) // 2:]  # deletions too
        ops += _submit(lib, who, lib.prepare_edit(doc, who.pub, body=body), doc, 2_000 + i)
    return lib, a, b, ops


def test_snapshot_replaces_history_and_a_joiner_gets_the_same_document() -> None:
    lib, a, b, ops = _edit_history(120)
    before = lib.get(D1)
    assert before is not None
    snap, n = _snapshot(lib, a, D1, 10_000)
    assert n == len(ops)
    lib.authorize(snap, 10_000)
    assert lib.apply(snap) is Applied.APPLIED
    [(sid, doc, ranges, ids)] = lib.take_superseded()
    assert (sid, doc) == (snap.op_id, D1)
    assert sorted(ids) == sorted(o.op_id for o in ops)  # what the op store drops
    # one range per author here: a's and b's chains are this document only
    assert sorted((r[0], r[1][0], r[1][1]) for r in ranges) == sorted(
        [(a.pub, 1, a.seq), (b.pub, 1, b.seq)])
    assert lib.get(D1) == before
    assert [h.kind for h in lib.history(D1)] == [KIND_SNAPSHOT]
    # a later edit builds on the snapshot; a joiner takes the snapshot and that edit
    [edit] = _submit(lib, b, lib.prepare_edit(D1, b.pub, body="after " + before.body), D1,
                     11_000)
    joiner = Library(may_compact={a.pub}.__contains__)
    assert joiner.apply(edit) is Applied.PENDING
    assert joiner.apply(snap) is Applied.APPLIED
    assert joiner.get(D1) == lib.get(D1)
    assert joiner.get(D1).body.startswith("after ")  # type: ignore[union-attr]
    # the old ops are superseded there, and at the compactor: never applied again
    assert joiner.apply(ops[5]) is Applied.SUPERSEDED
    assert joiner.drops.counts["superseded"] == 1
    assert joiner.get(D1) == lib.get(D1)
    # a second snapshot supersedes the first and keeps its ranges
    snap2, n2 = _snapshot(lib, a, D1, 12_000)
    assert n2 == 1
    assert lib.apply(snap2) is Applied.APPLIED
    [(_, _, ranges2, ids2)] = lib.take_superseded()
    assert sorted(ids2) == sorted([snap.op_id, edit.op_id])
    assert (a.pub, (1, a.seq, a.prev)) in ranges2
    assert joiner.apply(snap2) is Applied.APPLIED
    fresh = Library(may_compact={a.pub}.__contains__)
    assert fresh.apply(snap2) is Applied.APPLIED
    assert fresh.apply(snap) is Applied.SUPERSEDED
    assert fresh.get(D1) == joiner.get(D1) == lib.get(D1)


def test_only_members_make_snapshots_and_receivers_check_the_state() -> None:
    lib, a, b, ops = _edit_history(10)
    snap, _ = _snapshot(lib, b, D1, 10_000)  # b is no member
    with pytest.raises(Refused) as exc:
        lib.authorize(snap, 10_000)
    assert exc.value.reason == "not_member"
    # a member's snapshot whose state lacks the text of an op it claims to supersede
    fake = Library(may_compact={a.pub}.__contains__)
    for op in ops[:3]:
        fake.apply(op)
    out = fake.prepare_snapshot(D1)
    assert out is not None
    body = out[0].body
    import msgpack  # the ranges of the full history, the state of three ops

    full = msgpack.unpackb(lib.prepare_snapshot(D1)[0].body)  # type: ignore[index]
    forged_body = msgpack.unpackb(body)
    forged_body["k"], forged_body["n"], forged_body["h"] = full["k"], full["n"], full["h"]
    forged = a.op(KIND_SNAPSHOT, D1, encode_body(forged_body), hlc(10_001),
                  expiry_ms=SNAPSHOT_EXPIRY_MS)
    text = lib.get(D1)
    assert lib.apply(forged) is Applied.REFUSED
    assert lib.drops.counts["snapshot_mismatch"] == 1
    assert lib.get(D1) == text and lib.take_superseded() == []


def test_a_deleted_document_stays_deleted_for_a_node_offline_past_the_horizon() -> None:
    lib, a, b, ops = _edit_history(20)
    offline = Library(may_compact={a.pub}.__contains__)
    for op in ops:  # it had the whole document, then went away
        offline.apply(op)
    [delete] = _submit(lib, a, [lib.prepare_delete()], D1, 20_000)
    tombstone, _ = _snapshot(lib, a, D1, 20_000 + 31 * DAY_MS, purge=True)
    lib.authorize(tombstone, 0)
    assert lib.apply(tombstone) is Applied.APPLIED
    d = lib.get(D1)
    assert d is not None and d.deleted and d.body == ""
    # a node that never saw the document, nor the delete, gets only the tombstone...
    joiner = Library(may_compact={a.pub}.__contains__)
    assert joiner.apply(tombstone) is Applied.APPLIED
    # ...and the offline node's old ops, offered later, are superseded there
    assert [joiner.apply(op) for op in ops] == [Applied.SUPERSEDED] * len(ops)
    assert joiner.get(D1).deleted and joiner.get(D1).body == ""  # type: ignore[union-attr]
    assert list(joiner.documents()) == []
    # the offline node itself takes the tombstone: the document is deleted there too,
    # and an edit it made while offline does not bring it back
    [late] = _submit(offline, b, offline.prepare_edit(D1, b.pub, body="still here"), D1, 3_000)
    assert offline.apply(tombstone) is Applied.APPLIED
    assert offline.apply(delete) is Applied.SUPERSEDED
    v = offline.get(D1)
    assert v is not None and v.deleted and "still" not in v.body
    assert joiner.apply(late) in (Applied.APPLIED, Applied.PENDING)
    assert joiner.get(D1).deleted and list(joiner.documents()) == []  # type: ignore[union-attr]


# -- situation records: the owner purges superseded values --------------------------------

def test_an_owner_snapshot_of_its_situation_record_supersedes_its_updates() -> None:
    from library_replica.situation import (
        KIND_SET,
        RecordKind,
        SituationBoard,
        authorize_situation,
        prepare_set,
        record_id,
    )
    from library_replica.situation import KIND_SNAPSHOT as SIT_SNAPSHOT

    owner, other = Author(), Author()
    board = SituationBoard()
    ops = []
    for i in range(20):
        fields: dict[str, object] = {"people": i + 1, "note": f"update {i}"}
        if i == 19:
            fields["note"] = None  # a cleared field stays cleared
        doc_id, body = prepare_set(owner.pub, "household", fields)
        op = owner.op(KIND_SET, doc_id, body, hlc(1_000 + i))
        assert board.apply(op)
        ops.append(op)
    assert board.snapshot_due(owner.pub, 20) == [RecordKind.HOUSEHOLD]
    assert board.snapshot_due(owner.pub, 21) == []
    snap_body = board.prepare_snapshot(owner.pub, "household")
    assert snap_body is not None
    doc = record_id(owner.pub, "household")
    snap = owner.op(SIT_SNAPSHOT, doc, snap_body, hlc(5_000), expiry_ms=SNAPSHOT_EXPIRY_MS)
    authorize_situation(snap, 0)
    # only the owner snapshots its record
    forged = other.op(SIT_SNAPSHOT, doc, snap_body, hlc(5_000), expiry_ms=SNAPSHOT_EXPIRY_MS)
    with pytest.raises(Refused):
        authorize_situation(forged, 0)
    assert board.apply(snap)
    [(sid, d, ranges, ids)] = board.take_superseded()
    assert (sid, d, ids) == (snap.op_id, doc, tuple(o.op_id for o in ops))
    assert ranges == ((owner.pub, (1, 20, ops[-1].op_id)),)
    assert board.snapshot_due(owner.pub, 1) == []
    fresh = SituationBoard()
    assert fresh.apply(snap)
    assert fresh.get(owner.pub, "household") == board.get(owner.pub, "household")
    rec = fresh.get(owner.pub, "household")
    assert rec is not None and rec.fields == {"people": 20}
    # an old update arriving late changes nothing (last writer wins by order key)
    assert fresh.apply(ops[3])
    assert fresh.get(owner.pub, "household") == board.get(owner.pub, "household")


def test_a_blocked_members_snapshot_is_hidden_and_supersedes_nothing() -> None:
    lib, a, _, ops = _edit_history(10)
    before = lib.get(D1)
    snap, _ = _snapshot(lib, a, D1, 10_000)
    lib.set_blocked({a.pub})
    assert lib.apply(snap) is Applied.HIDDEN
    assert lib.take_superseded() == []
    assert lib.apply(ops[-1]) is Applied.DUPLICATE  # the history is still here
    lib.set_blocked(())
    assert lib.get(D1) == before
