"""Convergence of real SyncServices + OpStores: 50 nodes, random edits, partitions and heals.

The foundation simulator (``tests.sim``) drives pure cores on a virtual clock;
the sync service is an asyncio adapter over SQLite, so these scenarios take
their topologies from ``tests.sim`` and run the real services over the
in-memory streams of ``tests.sync.memnet`` instead.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import NAMESPACE_PRIORITY, Op
from sync.service import SyncService
from sync.store import OpStore
from tests.sim import components, random_geometric, sim_id
from tests.sync.conftest import WALL_S, allow_all
from tests.sync.helpers import chain
from tests.sync.memnet import MemNet

HLC0 = int(WALL_S * 1000) << 16


async def _open_mem() -> OpStore:
    return await OpStore.open(":memory:", wall_clock=lambda: WALL_S,
                              authorizers={ns: allow_all for ns in NAMESPACE_PRIORITY})


async def materialise(store: OpStore) -> dict[str, Any]:
    """A last-writer-wins view per document, plus the ordered op ids of each namespace."""
    docs: dict[bytes, bytes] = {}
    order: dict[str, list[bytes]] = {}
    for ns in NAMESPACE_PRIORITY:
        async for op in store.iter_namespace(ns):
            docs[op.doc_id] = op.body  # (hlc, op_id) order: the last one wins
            order.setdefault(ns, []).append(op.op_id)
    return {"docs": docs, "order": order}


@pytest.mark.slow
async def test_fifty_nodes_converge_through_partitions_and_heals() -> None:
    rng = random.Random(2026)
    n = 50
    _, edges = random_geometric(n, 0.22, seed=7)
    ids = [sim_id(i) for i in range(n)]
    stores = [await _open_mem() for _ in range(n)]
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    net = MemNet()
    svcs = []
    for i in range(n):
        svc = SyncService(stores[i], open_stream=net.opener(ids[i]), wall_clock=lambda: WALL_S,
                          rng=random.Random(i), interval_s=1.0, push_delay_s=0.02,
                          idle_timeout_s=10.0)
        net.handlers[ids[i]] = svc.handle_stream
        svcs.append(svc)
    runners = [asyncio.create_task(s.run()) for s in svcs]
    await asyncio.sleep(0)

    def link(a: int, b: int, up: bool) -> None:
        pair = frozenset((ids[a], ids[b]))
        if up:
            net.links.add(pair)
            svcs[a].neighbour_up(ids[b])
            svcs[b].neighbour_up(ids[a])
        else:
            net.links.discard(pair)
            svcs[a].neighbour_down(ids[b])
            svcs[b].neighbour_down(ids[a])

    created: list[Op] = []
    author_of: dict[bytes, int] = {}  # op id -> the node that wrote it

    async def edits(nodes: list[int], count: int) -> None:
        for _ in range(count):
            i = rng.choice(nodes)
            ns = rng.choice(("bulletin", "situation", "library"))
            op = await stores[i].add_local(keys[i], kind=f"{ns}.edit",
                                           doc_id=bytes([rng.randrange(8)]) * 16,
                                           body=rng.randbytes(rng.randrange(1, 200)))
            created.append(op)
            author_of[op.op_id] = i
            await asyncio.sleep(rng.random() * 0.01)

    async def converged(within_s: float, want: list[set[bytes]] | None = None) -> bool:
        """Every store holds what it should (``want[i]``; default: every op created)."""
        for _ in range(int(within_s / 0.1)):
            goal = want or [{o.op_id for o in created}] * n
            if all(len(s) == len(g) and all(i in s for i in g)
                   for s, g in zip(stores, goal, strict=True)):
                return True
            await asyncio.sleep(0.1)
        return False

    try:
        for a, b in edges:
            link(a, b, True)
        await edits(list(range(n)), 100)
        assert await converged(60), [len(s) for s in stores]
        # partition: cut every edge across x = the median node, edit on both sides
        west = set(range(n // 2))
        cut = [(a, b) for a, b in edges if (a in west) != (b in west)]
        for a, b in cut:
            link(a, b, False)
        rest = [e for e in edges if e not in cut]
        assert len(components(n, rest)) >= 2
        before = {o.op_id for o in created}
        await edits(sorted(west), 60)
        await edits(sorted(set(range(n)) - west), 60)
        # each component converges on its own ops and nothing from across the cut
        comp_of = {x: frozenset(c) for c in components(n, rest) for x in c}
        within = [before | {o.op_id for o in created if author_of[o.op_id] in comp_of[i]}
                  for i in range(n)]
        assert await converged(60, within), [len(s) for s in stores]
        assert not any(len(s) == len(created) for s in stores)  # really partitioned
        for a, b in cut:  # heal
            link(a, b, True)
        await edits(list(range(n)), 40)
        assert await converged(90), [len(s) for s in stores]
        views = [await materialise(s) for s in stores]
        want = {o.op_id for o in created}
        for s, v in zip(stores, views, strict=True):
            assert {i for ids_ in v["order"].values() for i in ids_} == want
            assert v == views[0]
            assert s.pending_count() == 0 and not s.quarantined() and s.drops.total == 0
    finally:
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await asyncio.gather(*net.tasks, return_exceptions=True)
        for s in stores:
            await s.close()


@pytest.mark.slow
async def test_two_hundred_shuffled_delivery_orders_do_not_diverge() -> None:
    rng = random.Random(99)
    keys = [Ed25519PrivateKey.generate() for _ in range(4)]
    ops: list[Op] = []
    for k, key in enumerate(keys):
        ops += chain(key, 10, start_hlc=HLC0 + k * 3, kind=("library.edit", "situation.set")[k % 2],
                     doc_id=bytes([k % 3]) * 16, body=bytes([k]))
    reference: dict[str, Any] | None = None
    for _ in range(200):
        order = ops[:]
        rng.shuffle(order)
        store = await _open_mem()
        try:
            i = 0
            while i < len(order):  # random batch sizes, some duplicated deliveries
                step = rng.randrange(1, 8)
                batch = [o.raw for o in order[i : i + step]]
                if rng.random() < 0.3:
                    batch.append(rng.choice(batch))
                if rng.random() < 0.3:
                    batch.append(rng.choice(ops).raw)
                await store.apply_remote(batch)
                i += step
            view = await materialise(store)
            assert store.pending_count() == 0 and len(store) == len(ops)
            assert not store.quarantined() and store.drops.total == 0
            if reference is None:
                reference = view
            assert view == reference
        finally:
            await store.close()
