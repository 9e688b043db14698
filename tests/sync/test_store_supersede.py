"""Snapshots in the op store (``OpStore.supersede``) and evicted ops no longer re-sent."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sync.apply import AuthorState, ChainView, Quotas, merge_ranges, plan_apply, skip_head
from sync.envelope import HLC_COUNTER_BITS, NAMESPACE_PRIORITY, create_op
from sync.errors import SyncLocalError
from sync.service import SyncService
from sync.store import OpStore
from tests.sync.conftest import WALL_S, allow_all
from tests.sync.helpers import chain
from tests.sync.memnet import MemNet

NOW_MS = int(WALL_S * 1000)
HLC0 = NOW_MS << HLC_COUNTER_BITS
BODY = b"\x80" + bytes(200)
D, E = b"D" * 16, b"E" * 16


def pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


async def open_store(path: Path, wall: list[float], quotas: Quotas | None = None) -> OpStore:
    return await OpStore.open(path, wall_clock=lambda: wall[0], quotas=quotas,
                              authorizers={ns: allow_all for ns in NAMESPACE_PRIORITY})


def test_skip_ranges_merge_and_move_heads() -> None:
    i1, i2, i3 = b"1" * 32, b"2" * 32, b"3" * 32
    assert merge_ranges([(1, 5, i1)], [(6, 9, i2), (20, 20, i3)]) == [(1, 9, i2), (20, 20, i3)]
    assert merge_ranges([(1, 9, i2)], [(3, 4, i1)]) == [(1, 9, i2)]
    a = AuthorState(head_seq=3, head_id=b"x" * 32)
    assert skip_head(a, [(1, 9, i2), (10, 12, i3)]) and (a.head_seq, a.head_id) == (12, i3)
    b = AuthorState(head_seq=3, head_id=b"x" * 32)
    assert not skip_head(b, [(5, 9, i2)]) and b.head_seq == 3


def test_planner_refuses_superseded_ops_and_applies_after_a_skip() -> None:
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 10, start_hlc=HLC0)
    view = ChainView({}, set(), {}, set(), skips={pub(key): [(1, 8, ops[7].op_id)]})
    plan = plan_apply([ops[3], ops[8], ops[9]], view, wall_ms=NOW_MS, max_skew_ms=300_000,
                      quotas=Quotas(), authorize=allow_all)
    assert [r.reason for r in plan.refusals] == ["superseded"]
    assert [o.seq for o in plan.apply] == [9, 10] and not plan.evidence


async def test_supersede_drops_the_ops_and_parked_successors_apply(tmp_path: Path) -> None:
    wall = [WALL_S]
    key, snapper = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    ops = chain(key, 12, start_hlc=HLC0, doc_id=D)
    other = chain(key, 1, start_hlc=HLC0 + 100, doc_id=E, first_seq=13, prev=ops[-1].op_id)
    snap = create_op(snapper, kind="library.snapshot", doc_id=D, body=BODY, seq=0, prev=None,
                     hlc=HLC0 + 50, expiry_ms=2**62)
    # a node that held the history
    held = await open_store(tmp_path / "held.db", wall)
    await held.apply_remote([o.raw for o in [*ops, snap]])
    rng = [(pub(key), (1, 12, ops[-1].op_id))]
    ids = [o.op_id for o in ops]
    # ops of another document, or outside the ranges, refuse the whole call
    with pytest.raises(SyncLocalError):
        await held.supersede(snap.op_id, E, rng, ids)
    with pytest.raises(SyncLocalError):
        await held.supersede(snap.op_id, D, [(pub(key), (1, 11, ops[-2].op_id))], ids)
    assert len(held) == 13
    assert await held.supersede(snap.op_id, D, rng, ids) == 12
    assert len(held) == 1 and held.admission_status()["superseded"] == 12
    assert (await held.apply_remote([ops[2].raw])).refused == {"superseded": 1}
    assert held.quarantined() == {}  # not taken for a fork
    assert [await held.get(o.op_id) for o in ops] == [None] * 12
    # a node that joins: the op after the history parks until the snapshot's ranges arrive
    joiner = await open_store(tmp_path / "join.db", wall)
    res = await joiner.apply_remote([other[0].raw, snap.raw])
    assert res.pending == 1
    assert joiner.author_head(pub(key)) is None
    await joiner.supersede(snap.op_id, D, rng)
    assert joiner.author_head(pub(key)) == (13, other[0].op_id)
    # the head of an author whose every op was superseded is the range's end
    lone = Ed25519PrivateKey.generate()
    lone_ops = chain(lone, 3, start_hlc=HLC0, doc_id=D)
    await joiner.supersede(snap.op_id, D, [(pub(lone), (1, 3, lone_ops[-1].op_id))])
    assert joiner.author_head(pub(lone)) == (3, lone_ops[-1].op_id)
    assert joiner.pending_count() == 0 and other[0].op_id in joiner
    # a later snapshot supersedes the first (an unchained op, by id)
    snap2 = create_op(snapper, kind="library.snapshot", doc_id=D, body=BODY + b"2", seq=0,
                      prev=None, hlc=HLC0 + 60, expiry_ms=2**62)
    await joiner.apply_remote([snap2.raw])
    assert await joiner.supersede(snap2.op_id, D, rng, [snap.op_id]) == 1
    assert snap.op_id not in joiner
    await joiner.close()
    joiner = await open_store(tmp_path / "join.db", wall)  # remembered across a restart
    assert (await joiner.apply_remote([snap.raw, ops[0].raw])).refused == {"superseded": 2}
    await joiner.close()
    await held.close()


async def test_evicted_ops_are_not_sent_again_at_every_sync(tmp_path: Path) -> None:
    wall = [WALL_S]
    small = await open_store(tmp_path / "small.db", wall, Quotas(store_quota_bytes=100_000))
    full = await open_store(tmp_path / "full.db", wall)
    ops = [o for k in (Ed25519PrivateKey.generate() for _ in range(4))
           for o in chain(k, 100, start_hlc=HLC0, body=BODY)]
    for s in (small, full):
        for i in range(0, len(ops), 100):
            await s.apply_remote([o.raw for o in ops[i : i + 100]])
    assert small.evicted_total > 0 and len(small) < len(full)
    net = MemNet()
    a, b = b"A" * 16, b"B" * 16
    net.links.add(frozenset((a, b)))
    svcs = {}
    for nid, st in ((a, small), (b, full)):
        svcs[nid] = SyncService(st, open_stream=net.opener(nid), wall_clock=lambda: wall[0],
                                rng=random.Random(nid))
        net.handlers[nid] = svcs[nid].handle_stream
    for _ in range(2):  # a fresh link each time (the peer ledger is cleared)
        svcs[a].neighbour_down(b)
        svcs[a].neighbour_up(b)
        assert await svcs[a].sync_now(b)
        await asyncio.gather(*net.tasks)
        st = svcs[a].status()["peers"][b.hex()]
        assert st["last_difference"] == {"in": 0, "out": 0}, st
    assert svcs[b].totals["ops_out"] == 0 and small.drops.counts.get("duplicate", 0) == 0
    await small.close()
    await full.close()
