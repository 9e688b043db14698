"""Sync's session core and apply planner on the simulator's virtual clock (no real time).

Each node is a ``tests.sync.simsync.SyncSimNode``: the pure ``SyncSession`` per
stream, the pure ``plan_apply`` behind an in-memory store, reliable streams
over the seeded lossy links of ``tests.sim``.  Keys come from the seed too, so
a seed fixes every op id and the whole run.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.sim import LinkParams, Network, components, random_geometric, sim_id
from tests.sync.simsync import Durable, MemOpStore, SessionEnded, SyncSimNode

LOSSY = LinkParams(loss=0.05, duplicate=0.02, reorder=0.05, delay=0.005, jitter=0.003)
NAMESPACES = ("bulletin", "situation", "library")


def _key(rng: random.Random) -> Ed25519PrivateKey:
    # simulation keys from the seed, so op ids (and the transfer order) repeat by seed
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))


class World:
    """A network of SyncSimNodes over a random geometric graph, with seeded edits."""

    def __init__(self, seed: int, n: int, *, params: LinkParams = LOSSY,
                 radius: float = 0.25, **node_kw: Any) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.net = Network(seed, default=params)
        self.ids = [sim_id(i) for i in range(n)]
        _, self.edges = random_geometric(n, radius, seed=seed)
        self.keys = [_key(self.rng) for _ in range(n)]
        self.node_kw = node_kw
        self.nodes: dict[bytes, SyncSimNode] = {}
        for i, nid in enumerate(self.ids):
            self.nodes[nid] = SyncSimNode(nid, MemOpStore(), random.Random(seed * 1000 + i),
                                          **node_kw)
            self.net.add_node(nid, self.nodes[nid])
        for a, b in self.edges:
            self.net.connect(self.ids[a], self.ids[b])
        self.created: set[bytes] = set()
        self.planned = 0

    def edits(self, among: list[int], count: int, start: float, span_s: float) -> None:
        """Schedule ``count`` edits at random nodes of ``among`` within ``span_s`` from ``start``."""
        self.planned += count
        for _ in range(count):
            i = self.rng.choice(among)
            ns = self.rng.choice(NAMESPACES)
            doc = bytes([self.rng.randrange(8)]) * 16
            body = self.rng.randbytes(self.rng.randrange(1, 200))
            at = start + self.rng.random() * span_s

            def edit(i: int = i, ns: str = ns, doc: bytes = doc, body: bytes = body) -> None:
                node = self.nodes[self.ids[i]]
                op = node.edit(self.keys[i], self.net.now, kind=f"{ns}.edit", doc_id=doc,
                               body=body)
                self.created.add(op.op_id)
                self.net.replace_node(self.ids[i], node)  # (re-reads its timer and output)

            self.net.schedule(at, edit)

    def converged(self) -> bool:
        # (the counts first: this runs after every simulated event)
        return (len(self.created) == self.planned
                and all(len(node.store) == len(self.created) for node in self.nodes.values())
                and all(node.store.ids() == self.created for node in self.nodes.values()))

    def run_until_converged(self, limit_s: float) -> float:
        """Run until every node holds every op created; the virtual time that took."""
        start = self.net.now
        self.net.run_until(start + limit_s, stop=self.converged)
        assert self.converged(), sorted(len(n.store) for n in self.nodes.values())
        return self.net.now - start

    def views(self) -> list[dict[bytes, bytes]]:
        """A last-writer-wins view per document, as an application would build it."""
        out = []
        for node in self.nodes.values():
            docs: dict[bytes, bytes] = {}
            for op in sorted(node.store.durable.ops.values(), key=lambda o: (o.hlc, o.op_id)):
                docs[op.doc_id] = op.body
            out.append(docs)
        return out

    def check_clean(self) -> None:
        for node in self.nodes.values():
            d = node.store.durable
            assert not d.pending and not d.evidence and not node.store.refused


def _outcomes(w: World) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in w.net.log:
        assert isinstance(e.event, SessionEnded)
        out[e.event.outcome] = out.get(e.event.outcome, 0) + 1
    return out


def test_fifty_nodes_converge_under_seeded_loss() -> None:
    # (pushes gathered for 0.5 s, not the daemon's 0.05: a tenth of the sessions, as fast)
    w = World(2026, 50, push_delay_s=0.5)
    w.edits(list(range(50)), 100, start=0.5, span_s=5.0)
    took = w.run_until_converged(60.0)
    assert len(w.created) == 100
    views = w.views()
    assert all(v == views[0] for v in views)
    w.check_clean()
    assert w.net.stats.lost > 100 and w.net.stats.duplicated > 0  # the loss was real
    assert took < 30.0
    # every op crossed each link about once (pushes race on the way back): no flood
    ops_in = sum(e.event.ops_in for e in w.net.log)
    assert ops_in <= 1.5 * len(w.edges) * len(w.created)


def test_partition_and_heal() -> None:
    n = 30
    w = World(7, n, radius=0.3, interval_s=2.0, push_delay_s=0.5)
    west = set(range(n // 2))
    cut = [(a, b) for a, b in w.edges if (a in west) != (b in west)]
    rest = [e for e in w.edges if e not in cut]
    assert cut and len(components(n, rest)) >= 2
    w.edits(list(range(n)), 40, start=0.2, span_s=2.0)
    w.run_until_converged(30.0)
    t_cut = w.net.now
    for a, b in cut:  # the cars drive apart: the links fail silently
        w.net.set_up(w.ids[a], w.ids[b], False)
    w.edits(sorted(west), 30, start=t_cut + 0.1, span_s=3.0)
    w.edits(sorted(set(range(n)) - west), 30, start=t_cut + 0.1, span_s=3.0)
    w.net.run_until(t_cut + 20.0)
    held = []
    for part in components(n, rest):  # each side of the cut converged on its own
        sets = [w.nodes[w.ids[i]].store.ids() for i in part]
        assert all(s == sets[0] for s in sets)
        held.append(sets[0])
    assert all(h != held[0] for h in held[1:]) and set().union(*held) == w.created
    # sessions across the cut were abandoned on the idle timer, not left hanging
    assert _outcomes(w).get("timeout", 0) > 0
    for a, b in cut:
        w.net.set_up(w.ids[a], w.ids[b], True)
    took = w.run_until_converged(60.0)
    assert took < 20.0
    views = w.views()
    assert all(v == views[0] for v in views)
    w.check_clean()


def _crash_and_replay(seed: int) -> dict[str, Any]:
    """Two nodes: A holds 3,000 ops of 5 authors; B catches up, crashes between receiving a
    batch and committing it, restarts from its store and catches up the rest."""
    w = World(seed, 2, radius=2.0, params=LinkParams(loss=0.05, duplicate=0.02, reorder=0.05),
              commit_delay_s=0.02)
    a_id, b_id = w.ids
    a, b = w.nodes[a_id], w.nodes[b_id]
    keys = [_key(w.rng) for _ in range(5)]
    w.planned = 3000
    for j in range(3000):
        op = a.edit(keys[j % 5], 0.0, kind="library.edit", doc_id=bytes([j % 7]) * 16,
                    body=w.rng.randbytes(w.rng.randrange(20, 300)))
        w.created.add(op.op_id)
    w.net.replace_node(a_id, a)
    # run until A has seen part of the catch-up acknowledged and B holds a batch uncommitted
    known = a.peers[b_id].ledger.known

    def received() -> set[bytes]:
        ids = {hashlib.sha256(r).digest() for s in b.slots.values() for c in s.commits
               for r in c[2]}
        return ids - b.store.ids()

    w.net.run_until(30.0, stop=lambda: len(known) > 0 and b.uncommitted() > 0
                    and bool(received()))
    assert len(b.store) < 3000 and received()
    lost = received()
    # what A saw acknowledged: the ops it now counts as held by B
    acknowledged = set(a.peers[b_id].ledger.known)
    t_crash = w.net.now
    # the crash: everything but the committed rows is gone; the link layer notices
    durable: Durable = b.store.durable
    w.net.disconnect(a_id, b_id)
    stored = set(durable.ops) | {o.op_id for o in durable.pending.values()}
    restarted = SyncSimNode(b_id, MemOpStore(durable), random.Random(seed), commit_delay_s=0.02)
    restarted_with = restarted.store.ids()
    w.nodes[b_id] = restarted
    w.net.replace_node(b_id, restarted)
    w.net.schedule(w.net.now + 1.0, lambda: w.net.connect(a_id, b_id))
    took = w.run_until_converged(30.0)
    return {"world": w, "b": restarted, "received": lost, "acknowledged": acknowledged,
            "stored": stored, "restarted_with": restarted_with, "t_crash": t_crash,
            "took": took}


def test_crash_between_receive_and_commit_is_replayed_from_the_store() -> None:
    r = _crash_and_replay(11)
    # nothing acknowledged was lost; what was received but not committed is not there
    assert r["acknowledged"] and r["acknowledged"] <= r["stored"]
    assert r["received"] and not r["received"] & r["stored"]
    # the restart rebuilt its indexes from the rows
    assert r["restarted_with"] == r["stored"]
    # and a new session brought the rest, the lost batch among it, exactly once each
    b: SyncSimNode = r["b"]
    assert r["received"] <= b.store.ids() and len(b.store) == 3000
    d = b.store.durable
    assert not d.pending and not d.evidence and not b.store.refused
    w: World = r["world"]
    w.net.run_for(5.0)  # the sessions end
    assert sum(e.ops_in for e in b.ended) == 3000 - len(r["stored"])


def test_runs_are_deterministic_by_seed() -> None:
    def run(seed: int) -> tuple[Any, ...]:
        r = _crash_and_replay(seed)
        w: World = r["world"]
        log = [(e.time, e.node, e.event) for e in w.net.log]
        return (log, r["t_crash"], r["took"], sorted(r["acknowledged"]), w.net.stats)

    first, again, other = run(5), run(5), run(6)
    assert first[0] and first == again
    assert first != other


# -- the digest gossip (SyncSimNode(digests=True)) ---------------------------------------------


def test_digest_gossip_converges_under_seeded_loss_with_each_op_once_per_link() -> None:
    w = World(2026, 50, digests=True)
    w.edits(list(range(50)), 100, start=0.5, span_s=5.0)
    took = w.run_until_converged(60.0)
    views = w.views()
    assert all(v == views[0] for v in views)
    w.check_clean()
    assert w.net.stats.lost > 100  # the loss was real
    assert took < 30.0
    ops_in = sum(e.event.ops_in for e in w.net.log)
    assert ops_in <= 1.5 * len(w.edges) * len(w.created)


def test_converged_neighbours_stay_silent_on_either_schedule() -> None:
    def idle(digests: bool) -> tuple[int, int]:
        w = World(3, 20, interval_s=5.0, digests=digests)
        w.edits(list(range(20)), 30, start=0.5, span_s=2.0)
        w.run_until_converged(60.0)
        w.net.run_for(10.0)  # (the last notes and ENDs)
        sessions, sent = len(w.net.log), w.net.stats.bytes_sent
        w.net.run_for(120.0)
        return len(w.net.log) - sessions, w.net.stats.bytes_sent - sent

    # digests: nothing differs, nothing is said; periodic (every ~5 s here): nothing
    # committed since the last reconciliation that the peer does not hold, no session
    assert idle(True) == (0, 0)
    assert idle(False) == (0, 0)


def test_digest_gossip_partition_and_heal_without_link_events() -> None:
    n = 30
    w = World(7, n, radius=0.3, digests=True)
    west = set(range(n // 2))
    cut = [(a, b) for a, b in w.edges if (a in west) != (b in west)]
    rest = [e for e in w.edges if e not in cut]
    assert cut and len(components(n, rest)) >= 2
    w.edits(list(range(n)), 40, start=0.2, span_s=2.0)
    w.run_until_converged(30.0)
    t_cut = w.net.now
    for a, b in cut:  # silent failure: no link_down, no link_up after
        w.net.set_up(w.ids[a], w.ids[b], False)
    w.edits(sorted(west), 30, start=t_cut + 0.1, span_s=3.0)
    w.edits(sorted(set(range(n)) - west), 30, start=t_cut + 0.1, span_s=3.0)
    w.net.run_until(t_cut + 20.0)
    held = [w.nodes[w.ids[min(part)]].store.ids() for part in components(n, rest)]
    assert all(h != held[0] for h in held[1:])
    for a, b in cut:
        w.net.set_up(w.ids[a], w.ids[b], True)
    # the unanswered questions across the cut are repeated (1, 2, 4, ... 30 s apart)
    took = w.run_until_converged(60.0)
    assert took <= 31.0
    views = w.views()
    assert all(v == views[0] for v in views)
    w.check_clean()
