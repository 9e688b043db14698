"""Compaction through real op stores and real sync sessions (SyncService over in-memory streams).

A document edited 5,000 times is compacted; a node that joins afterwards gets the same text for
a fraction of the bytes; a deleted document stays deleted for a node offline past the horizon.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

from library_replica.compaction import DAY_MS
from library_replica.documents import KIND_SNAPSHOT, SNAPSHOT_EXPIRY_MS, Library
from library_replica.ops import encode_body, sync_authorizers
from library_replica.text import yjs_client_id
from sync.envelope import Op
from sync.service import SyncService
from sync.store import OpStore
from tests.library_replica.factory import Author, hlc
from tests.sync.memnet import MemNet

WALL_S = 1_800_000_000.0
DOC = b"d" * 16


class Replica:
    """One node: an op store, the library materialised from it, a sync service."""

    def __init__(self, store: OpStore, members: set[bytes]) -> None:
        self.store = store
        self.lib = Library(may_compact=members.__contains__)
        for ns, fn in sync_authorizers({"library": self.lib.authorize}).items():
            store.register_authorizer(ns, fn)
        store.subscribe(self._on_commit)

    async def _on_commit(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if op.namespace == "library":
                self.lib.apply(op)
        for snap_id, doc_id, ranges, prior in self.lib.take_superseded():
            await self.store.supersede(snap_id, doc_id, ranges, prior)

    async def compact(self, author: Author, *, purge: bool = False) -> Op:
        out = self.lib.prepare_snapshot(DOC, purge=purge)
        assert out is not None
        return await self.store.add_local(author.key, kind=KIND_SNAPSHOT, doc_id=DOC,
                                          body=out[0].body, expiry_ms=SNAPSHOT_EXPIRY_MS)

    async def library_bytes(self) -> int:
        return sum([len(o.raw) async for o in self.store.iter_namespace("library")])


async def _open(tmp: Path, name: str, wall: list[float], members: set[bytes]) -> Replica:
    store = await OpStore.open(tmp / name, wall_clock=lambda: wall[0])
    return Replica(store, members)


async def _sync(net: MemNet, reps: dict[bytes, Replica], wall: list[float], a: bytes,
                b: bytes) -> int:
    """One reconciliation session from ``a`` to ``b``; returns the bytes it moved."""
    net.links.add(frozenset((a, b)))
    svcs = {nid: SyncService(r.store, open_stream=net.opener(nid), wall_clock=lambda: wall[0],
                             rng=random.Random(nid)) for nid, r in reps.items()}
    for nid, s in svcs.items():
        net.handlers[nid] = s.handle_stream
    before = net.bytes_total()
    assert await svcs[a].sync_now(b)
    await asyncio.gather(*net.tasks)
    return net.bytes_total() - before


def _history(n: int, writer: Author) -> list[Op]:
    """A document created and edited ``n`` times by ``writer``: small inserts and deletions
    here and there, as people edit (signed ops in the library's edit format)."""
    from pycrdt import Doc, Text

    lib = Library()
    t = int(WALL_S * 1000) - 10 * DAY_MS
    out = [writer.op(p.kind, DOC, p.body, hlc(t, j)) for j, p in enumerate(
        lib.prepare_create(writer.pub, collection="work", title="minutes", body="start"))]
    for op in out:
        lib.apply(op)
    ydoc: Doc[Text] = Doc(client_id=yjs_client_id(writer.pub))
    ydoc.apply_update(lib._docs[DOC].ydoc.get_update())
    text = ydoc.get("body", type=Text)
    rng = random.Random(5)
    for i in range(n):
        sv = ydoc.get_state()
        if i % 50 == 49 and len(text) > 200:  # a correction in the last paragraph
            pos = len(text) - rng.randrange(8, 200)
            del text[pos : pos + 4]
        else:  # typing on
            text.insert(len(text), f" w{i % 100}")
        body = encode_body({"sv": sv, "u": ydoc.get_update(sv)})
        out.append(writer.op("library.edit", DOC, body, hlc(t + 1 + i)))
    return out


async def _feed(rep: Replica, ops: list[Op]) -> None:
    for i in range(0, len(ops), 500):
        res = await rep.store.apply_remote([o.raw for o in ops[i : i + 500]])
        assert not res.refused, res.refused


async def test_edited_5000_times_compacts_and_a_late_joiner_gets_a_fraction_of_the_bytes(
        tmp_path: Path) -> None:
    wall = [WALL_S]
    member, writer = Author(), Author()
    members = {member.pub}
    reps = {b"A" * 16: await _open(tmp_path, "a.db", wall, members),
            b"O" * 16: await _open(tmp_path, "o.db", wall, members),
            b"J" * 16: await _open(tmp_path, "j.db", wall, members)}
    A, OLD, J = reps[b"A" * 16], reps[b"O" * 16], reps[b"J" * 16]
    history = _history(5_000, writer)
    await _feed(A, history)
    net = MemNet()
    # a node that synced before the compaction fetched the whole history
    history_bytes = await _sync(net, {b"A" * 16: A, b"O" * 16: OLD}, wall, b"O" * 16, b"A" * 16)
    assert len(OLD.store) == 5_001
    text = A.lib.get(DOC)
    assert text is not None and OLD.lib.get(DOC) == text
    stored_before = await A.library_bytes()

    snap = await A.compact(member)
    assert len(A.store) == 1 and snap.op_id in A.store
    assert await A.library_bytes() * 5 < stored_before
    assert A.lib.get(DOC) == text
    # the node that held the history takes the snapshot and drops the history too
    await _sync(net, {b"A" * 16: A, b"O" * 16: OLD}, wall, b"A" * 16, b"O" * 16)
    assert len(OLD.store) == 1 and OLD.lib.get(DOC) == text
    assert OLD.store.admission_status()["superseded"] == 5_001

    # the writer goes on editing on top of the snapshot (its chain goes on)
    [more] = [writer.op(p.kind, DOC, p.body, hlc(int(WALL_S * 1000), 0))
              for p in A.lib.prepare_edit(DOC, writer.pub, body=text.body + " after")]
    await _feed(A, [more])
    # a node that joins now gets the snapshot and the new edit, not the history
    join_bytes = await _sync(net, {b"A" * 16: A, b"J" * 16: J}, wall, b"J" * 16, b"A" * 16)
    assert J.lib.get(DOC) == A.lib.get(DOC)
    assert J.lib.get(DOC).body.endswith(" after")  # type: ignore[union-attr]
    assert len(J.store) == 2 and J.store.pending_count() == 0
    assert join_bytes * 5 < history_bytes, (join_bytes, history_bytes)
    # an old op offered again (by a node that missed the snapshot) is refused as superseded
    res = await J.store.apply_remote([history[100].raw, history[-1].raw])
    assert res.refused == {"superseded": 2}
    assert J.store.drops.counts["superseded"] == 2
    # a restart keeps the skip ranges: old ops still refused, new ones still apply
    await J.store.close()
    J2 = await _open(tmp_path, "j.db", wall, members)
    assert (await J2.store.apply_remote([history[7].raw])).refused == {"superseded": 1}
    [again] = [writer.op(p.kind, DOC, p.body, hlc(int(WALL_S * 1000) + 1, 0))
               for p in A.lib.prepare_edit(DOC, writer.pub, body="last")]
    assert len((await J2.store.apply_remote([again.raw])).applied) == 1
    for r in (A, OLD, J2):
        await r.store.close()


async def test_a_deleted_document_stays_deleted_for_a_node_offline_past_the_horizon(
        tmp_path: Path) -> None:
    wall = [WALL_S]
    member, writer = Author(), Author()
    members = {member.pub}
    A = await _open(tmp_path, "a.db", wall, members)
    C = await _open(tmp_path, "c.db", wall, members)
    reps = {b"A" * 16: A, b"C" * 16: C}
    history = _history(200, writer)
    await _feed(A, history)
    net = MemNet()
    await _sync(net, reps, wall, b"C" * 16, b"A" * 16)
    assert C.lib.get(DOC) == A.lib.get(DOC)
    # C goes away; the document is deleted and, past the horizon, compacted to a tombstone
    delete = writer.op("library.delete", DOC, A.lib.prepare_delete().body, hlc(int(WALL_S * 1000)))
    await _feed(A, [delete])
    wall[0] += 31 * DAY_MS / 1000
    await A.compact(member, purge=True)
    gone = A.lib.get(DOC)
    assert gone is not None and gone.deleted and gone.body == ""
    assert len(A.store) == 1
    # C comes back after 31 days and syncs: its old ops are refused as superseded at A,
    # it takes the tombstone, and the document stays deleted at both
    await _sync(net, reps, wall, b"C" * 16, b"A" * 16)
    assert A.store.drops.counts["superseded"] == len(history)
    for r in (A, C):
        d = r.lib.get(DOC)
        assert d is not None and d.deleted and d.body == ""
        assert list(r.lib.documents()) == []
        assert len(r.store) == 1
    # and nothing goes back and forth any more
    assert await _sync(net, reps, wall, b"A" * 16, b"C" * 16) < 512
    for r in (A, C):
        await r.store.close()
