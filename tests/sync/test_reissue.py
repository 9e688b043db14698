"""Re-issuing own ops stamped in the future (issue 11, item 3): the pure plan and the store.

A node alone with its clock two days ahead stamped its ops then; peers refuse them as
``future`` and every later op of its chain must be stamped higher still.  After its clock
is corrected, the future tail of its chain is signed again at the same positions, stamped
now, unless one of those ops was ever handed to a peer (then that would be a fork).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import MAX_SKEW_MS, hlc_wall_ms
from sync.reissue import ChainOp, ReissuePlan, plan_reissue
from sync.store import OpStore
from tests.sync.conftest import WALL_S

NOW_MS = 1_800_000_000_000
DAY_MS = 86_400_000


def _hlc(ms: int, counter: int = 0) -> int:
    return (ms << 16) | counter


def test_plan_withdraws_the_future_tail() -> None:
    future = [ChainOp(4, b"d", _hlc(NOW_MS + 2 * DAY_MS, 1)),
              ChainOp(3, b"c", _hlc(NOW_MS + 2 * DAY_MS))]
    plan = plan_reissue(future, head_seq=4, now_ms=NOW_MS, max_skew_ms=300_000, shared_hlc=0)
    assert plan == ReissuePlan(3, (b"c", b"d"))
    assert plan_reissue([], head_seq=4, now_ms=NOW_MS, max_skew_ms=300_000, shared_hlc=0) is None


def test_plan_refuses_what_a_peer_may_hold_or_what_is_not_the_tail() -> None:
    future = [ChainOp(3, b"c", _hlc(NOW_MS + DAY_MS)), ChainOp(4, b"d", _hlc(NOW_MS + DAY_MS, 1))]
    # seq 3 was sent to a peer once (stamp at or below the highest stamp sent): a fork risk
    assert plan_reissue(future, head_seq=4, now_ms=NOW_MS, max_skew_ms=300_000,
                        shared_hlc=_hlc(NOW_MS + DAY_MS)) == "shared"
    assert plan_reissue(future, head_seq=5, now_ms=NOW_MS, max_skew_ms=300_000,
                        shared_hlc=0) == "not-tail"
    gap = [future[0], ChainOp(5, b"e", _hlc(NOW_MS + DAY_MS, 2))]
    assert plan_reissue(gap, head_seq=5, now_ms=NOW_MS, max_skew_ms=300_000,
                        shared_hlc=0) == "not-tail"
    # within the tolerance peers take it: nothing to re-issue for it
    near = [ChainOp(4, b"d", _hlc(NOW_MS + 300_000))]
    assert plan_reissue(near, head_seq=4, now_ms=NOW_MS, max_skew_ms=300_000,
                        shared_hlc=0) == "not-future"


async def test_store_reissues_the_future_tail_at_the_same_positions(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    key = Ed25519PrivateKey.generate()
    s: OpStore = await open_store()
    first = await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=b"\x81")
    wall[0] = WALL_S + 2 * 86_400  # the clock runs two days ahead while the node is alone
    ahead = [await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=bytes([0x82 + i]))
             for i in range(2)]
    assert [o.seq for o in ahead] == [2, 3]
    wall[0] = WALL_S + 60  # corrected
    # as it was: the next op would still be stamped two days ahead (the chain's hlc only grows)
    assert hlc_wall_ms(ahead[-1].hlc) > (WALL_S + 60) * 1000 + MAX_SKEW_MS
    # a peer once got seq 1 only: the future tail is not shared
    status, new = await s.reissue_future_own(key, shared_hlc=first.hlc)
    assert status == "reissued"
    assert [(o.seq, o.body) for o in new] == [(2, b"\x82"), (3, b"\x83")]
    assert new[0].prev == first.op_id and new[1].prev == new[0].op_id
    assert all(hlc_wall_ms(o.hlc) <= (WALL_S + 60) * 1000 + MAX_SKEW_MS for o in new)
    assert all(o.op_id not in s for o in ahead) and all(o.op_id in s for o in new)
    assert s.author_head(first.author) == (3, new[1].op_id)
    nxt = await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=b"\x84")
    assert nxt.seq == 4 and nxt.prev == new[1].op_id
    assert hlc_wall_ms(nxt.hlc) <= (WALL_S + 60) * 1000 + MAX_SKEW_MS
    assert [o.seq for o in await s.ops_for_doc(b"S" * 16)] == [1, 2, 3, 4]
    assert await s.reissue_future_own(key, shared_hlc=0) == ("none", [])
    await s.close()
    # durable: a reopened store has the new chain, and a peer fed it in order accepts it
    s = await open_store()
    assert s.author_head(first.author) == (4, nxt.op_id)
    peer: OpStore = await open_store("peer.db")
    r = await peer.apply_remote([first.raw, *(o.raw for o in new), nxt.raw])
    assert [o.seq for o in r.applied] == [1, 2, 3, 4] and not r.refused
    await s.close()
    await peer.close()


async def test_store_leaves_a_tail_a_peer_may_hold(open_store: Callable[..., Any],
                                                   wall: list[float]) -> None:
    key = Ed25519PrivateKey.generate()
    s: OpStore = await open_store()
    wall[0] = WALL_S + 2 * 86_400
    ahead = await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=b"\x81")
    wall[0] = WALL_S
    assert await s.reissue_future_own(key, shared_hlc=ahead.hlc) == ("shared", [])
    assert ahead.op_id in s and s.author_head(ahead.author) == (1, ahead.op_id)
    await s.close()


async def test_sync_never_sends_future_stamped_ops_and_records_own_ops_sent(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    import random

    from sync.service import SyncService

    key = Ed25519PrivateKey.generate()
    s: OpStore = await open_store()
    svc = SyncService(s, open_stream=None, wall_clock=lambda: wall[0],  # type: ignore[arg-type]
                      rng=random.Random(1))
    persisted: list[int] = []
    svc.on_own_sent = persisted.append
    now_op = await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=b"\x81")
    wall[0] = WALL_S + 2 * 86_400
    ahead = await s.add_local(key, kind="situation.set", doc_id=b"S" * 16, body=b"\x82")
    wall[0] = WALL_S  # the node learnt the mesh's time: ``ahead`` is beyond the tolerance
    pairs = [(now_op.op_id, now_op.raw), (ahead.op_id, ahead.raw)]
    assert svc.outgoing(pairs) == [(now_op.op_id, now_op.raw)]
    assert persisted == [now_op.hlc] and svc.own_sent_hlc == now_op.hlc
    assert svc.drops.counts["held-future"] == 1
    # sending it again records nothing new
    assert svc.outgoing(pairs[:1]) == pairs[:1] and persisted == [now_op.hlc]
    # and the held tail is still the node's alone: re-issued
    status, new = await s.reissue_future_own(key, shared_hlc=svc.own_sent_hlc)
    assert status == "reissued" and [o.seq for o in new] == [2]
    await s.close()
