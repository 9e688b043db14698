"""Admission: revoked keys, the pool non-members share, the store's total quota and eviction."""

from __future__ import annotations

import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sync.apply import Admission, ChainView, Quotas, UnknownPool, plan_apply
from sync.envelope import HLC_COUNTER_BITS, NAMESPACE_PRIORITY, Op, create_op
from sync.store import OpStore
from tests.sync.conftest import WALL_S, allow_all
from tests.sync.helpers import chain

NOW_MS = int(WALL_S * 1000)
HLC0 = NOW_MS << HLC_COUNTER_BITS
BODY = b"\x80" + bytes(200)
PROTECTED = frozenset({"trust", "bulletin"})


def pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def keys(n: int, rng: random.Random) -> list[Ed25519PrivateKey]:
    return [Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(n)]


async def open_store(path: Path, wall: list[float], quotas: Quotas) -> OpStore:
    return await OpStore.open(path, wall_clock=lambda: wall[0], quotas=quotas,
                              authorizers={ns: allow_all for ns in NAMESPACE_PRIORITY})


async def test_a_flood_of_fresh_keys_stays_in_its_pool_and_the_store_under_its_quota(
        tmp_path: Path) -> None:
    rng = random.Random(12)
    quotas = Quotas(store_quota_bytes=500_000, unknown_max_ops=400,
                    unknown_max_bytes=120_000, unknown_max_pending=300,
                    unknown_rate_per_min=600, protected_namespaces=PROTECTED)
    wall = [WALL_S]
    store = await open_store(tmp_path / "ops.db", wall, quotas)
    own = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    member_keys = keys(20, rng)
    members = {pub(k) for k in member_keys}
    store.set_admission(member=members.__contains__, revoked=lambda k: False, own=[pub(own)])
    # the car's own records, and trust/bulletin ops from keys it cannot place (carried)
    own_ops = [await store.add_local(own, kind="library.edit", doc_id=b"O" * 16, body=BODY)
               for _ in range(100)]
    carried = [create_op(k, kind=kind, doc_id=b"T" * 16, body=BODY, seq=0, prev=None,
                         hlc=HLC0 + i, expiry_ms=NOW_MS + 86_400_000)
               for i, (k, kind) in enumerate(
                   (k, kind) for k in keys(10, rng) for kind in ("trust.update",
                                                                 "bulletin.publish"))]
    assert (await store.apply_remote([o.raw for o in carried])).refused == {}
    # members: 20 keys x 50 ops; the flood: 1,000 fresh keys x 10 ops (half chained,
    # half ephemeral), 10,000 ops, interleaved with the members' in batches of 500
    member_ops = [o for k in member_keys for o in chain(k, 50, start_hlc=HLC0 + 1000, body=BODY)]
    flood: list[Op] = []
    for i, k in enumerate(keys(1000, rng)):
        if i % 2:
            flood += chain(k, 10, start_hlc=HLC0 + 2000, body=BODY, doc_id=b"F" * 16)
        else:
            flood += [create_op(k, kind="situation.report", doc_id=b"S" * 16, body=BODY, seq=0,
                                prev=None, hlc=HLC0 + 3000 + j, expiry_ms=NOW_MS + 86_400_000)
                      for j in range(10)]
    assert len(flood) == 10_000
    rng.shuffle(flood)
    refused: dict[str, int] = {}
    for b in range(20):
        batch = flood[b * 500:(b + 1) * 500] + member_ops[b * 50:(b + 1) * 50]
        rng.shuffle(batch)
        wall[0] += 6.0  # 60 more tokens a batch at 600 a minute
        res = await store.apply_remote([o.raw for o in batch], peer="p")
        for r, n in res.refused.items():
            refused[r] = refused.get(r, 0) + n
        st = store.admission_status()
        assert st["unknown_ops"] <= quotas.unknown_max_ops
        assert st["unknown_bytes"] <= quotas.unknown_max_bytes
        assert store.bytes_stored <= quotas.store_quota_bytes
        assert store.pending_count() <= quotas.unknown_max_pending
    # every member's op, every op of our own, every carried trust op and bulletin is kept
    lost = [(o.op_id in store._evicted, o.seq, o.author in store._own) for o in member_ops + own_ops + carried
            if o.op_id not in store]
    assert not lost, (len(lost), lost[:3], store.admission_status(), refused,
                      len(member_ops[0].raw), len(own_ops[0].raw), len(carried[0].raw),
                      store.pending_count(), store.quarantined())
    held_flood = sum(o.op_id in store for o in flood)
    st = store.admission_status()
    assert st["unknown_ops"] == held_flood
    assert st["unknown_bytes"] == sum(len(o.raw) for o in flood if o.op_id in store)
    assert 0 < held_flood <= quotas.unknown_max_ops
    assert refused.get("unknown-pool-full", 0) + refused.get("unknown-rate", 0) > 5000
    # the quota forced evictions, and they took only non-members' ops
    assert store.evicted_total > 0, store.admission_status()
    size = store.bytes_stored
    # an evicted op offered again is a duplicate, not a fork, and not stored again
    gone = [o for o in flood if o.op_id not in store and o.seq == 1]
    evicted = [o for o in gone if o.op_id in store._evicted]
    assert evicted
    res = await store.apply_remote([evicted[0].raw])
    assert res.duplicates == 1 and res.refused == {} and not store.quarantined()
    await store.close()
    # a restart keeps the counts and the evicted ids
    store = await open_store(tmp_path / "ops.db", wall, quotas)
    store.set_admission(member=members.__contains__, revoked=lambda k: False, own=[pub(own)])
    assert store.bytes_stored == size
    assert store.admission_status()["unknown_ops"] == held_flood
    assert (await store.apply_remote([evicted[0].raw])).duplicates == 1
    await store.close()


async def test_a_revoked_key_is_refused_and_a_member_becomes_one_after_a_change(
        tmp_path: Path) -> None:
    rng = random.Random(5)
    wall = [WALL_S]
    store = await open_store(tmp_path / "ops.db", wall,
                             Quotas(unknown_max_ops=3, protected_namespaces=PROTECTED))
    lost, visitor = keys(2, rng)
    members: set[bytes] = {pub(lost)}
    revoked: set[bytes] = set()
    store.set_admission(member=members.__contains__, revoked=revoked.__contains__)
    ops = chain(lost, 4, start_hlc=HLC0, body=BODY)
    assert (await store.apply_remote([ops[0].raw])).refused == {}
    revoked.add(pub(lost))  # the owner revoked the phone's key
    res = await store.apply_remote([o.raw for o in ops[1:]])
    assert res.refused == {"revoked": 3} and len(store) == 1
    # a visitor writes into the pool; enrolled, it leaves the pool
    vops = chain(visitor, 5, start_hlc=HLC0, body=BODY)
    res = await store.apply_remote([o.raw for o in vops[:4]])
    assert res.refused == {"unknown-pool-full": 1}
    assert store.admission_status()["unknown_ops"] == 3
    members.add(pub(visitor))
    store.membership_changed()
    assert store.admission_status()["unknown_ops"] == 0
    res = await store.apply_remote([o.raw for o in vops[3:]])
    assert res.refused == {} and all(o.op_id in store for o in vops)
    await store.close()


def test_the_pool_rate_is_a_token_bucket() -> None:
    rng = random.Random(1)
    ks = keys(5, rng)
    ops = [create_op(k, kind="situation.report", doc_id=b"S" * 16, body=b"\x80", seq=0,
                     prev=None, hlc=HLC0, expiry_ms=NOW_MS + 60_000) for k in ks]
    view = ChainView({}, set(), {}, set())
    adm = Admission(member=lambda k: k == pub(ks[0]), revoked=lambda k: False,
                    pool=UnknownPool(tokens=2.5))
    plan = plan_apply(ops, view, wall_ms=NOW_MS, max_skew_ms=1000, quotas=Quotas(),
                      authorize=allow_all, admission=adm)
    # the member is outside the pool; two of the four others find a token
    assert len(plan.apply) == 3 and pub(ks[0]) in {o.author for o in plan.apply}
    assert [r.reason for r in plan.refusals] == ["unknown-rate", "unknown-rate"]
    assert plan.pool == UnknownPool(2, sum(len(o.raw) for o in plan.apply
                                           if o.author != pub(ks[0])), 0.5)
    full = Admission(adm.member, adm.revoked, UnknownPool(tokens=9.0), full=True)
    plan = plan_apply(ops, view, wall_ms=NOW_MS, max_skew_ms=1000, quotas=Quotas(),
                      authorize=allow_all, admission=full)
    assert len(plan.apply) == 1 and {r.reason for r in plan.refusals} == {"store-full"}
