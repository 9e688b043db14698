"""Trust benchmark: how long a ``trust.update`` and a key revocation take to reach every node
of the 50-node simulation, beside a bulletin published at the same moment.

Run: ``.venv/bin/python bench/trust.py [--quick] [--seeds N] [--backlog N] [--json]``

The sync simulation of ``tests/sync/test_sim_sync.py`` on its virtual clock: 50
``tests.sync.simsync.SyncSimNode`` nodes (the pure session core and apply planner,
the daemon's per-neighbour schedule) over a seeded random geometric graph with lossy
links (5 % loss, duplicates, reordering).  A backlog of library ops (200 B to 4 kB)
is written at random nodes during the first two seconds, so links are busy; at 1 s one node
(a dealer's desk) publishes three real ops at once: a root-signed ``trust.update``,
a ``trust.revoke`` statement (an owner's revocation of a lost phone), an
authority's ``bulletin.publish``, and a library edit (the reference: what waits).  Each node records when it first holds each op;
the figure is the virtual time from publication until the last node holds it.
One more car is out of range until 4 s (its links come up then, after the
backlog): the second figure is the time from its link-up until it holds each op,
fetched by reconciliation behind the whole backlog.
Sync sends namespaces in ``NAMESPACE_PRIORITY`` order (trust before bulletin
before library), so the target is: no later than the bulletin.  ``--json`` prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.library import _cpu
from library_replica.bulletins import (
    KIND_PUBLISH,
    KIND_TRUST_UPDATE,
    TRUST_UPDATE_LIFETIME_MS,
    Authority,
    AuthorityRole,
    prepare_bulletin,
    prepare_trust_update,
)
from library_replica.keycerts import KIND_REVOKE, STATEMENT_LIFETIME_MS, prepare_key_statement
from library_replica.ops import new_doc_id
from sync.envelope import Op, create_op
from tests.sim import LinkParams, Network, components, random_geometric, sim_id
from tests.sync.simsync import WALL0_MS, MemOpStore, SyncSimNode

LOSSY = LinkParams(loss=0.05, duplicate=0.02, reorder=0.05, delay=0.005, jitter=0.003)
PUBLISH_AT_S = 1.0
KINDS = ("trust.update", "revocation", "bulletin", "library")
#: the backlog is written from 0 s until this (links are busy when the trust ops come)
BACKLOG_UNTIL_S = 2.0
#: when the car that was away (out of range from the start) drives into range
LATE_AT_S = 4.0


class TimedNode(SyncSimNode):
    """A SyncSimNode that notes when it first holds each watched op."""

    def __init__(self, *args: Any, watched: dict[bytes, str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.watched = watched  # shared by the nodes of a run, filled at publication
        self.arrived: dict[str, float] = {}

    def _committed(self, ops: Sequence[Op], now: float) -> None:
        for op in ops:
            name = self.watched.get(op.op_id)
            if name is not None and name not in self.arrived:
                self.arrived[name] = now
        super()._committed(ops, now)


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _ops(rng: random.Random, wall_ms: int) -> dict[str, Op]:
    """The three real ops published together: root's update, an owner's revocation, a
    bulletin by the authority the update names."""
    def key() -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))

    root, city, phone, relay = key(), key(), key(), key()
    hlc = wall_ms << 16
    doc_id, body = prepare_trust_update(root.sign, _pub(root), 2,
                                        [Authority(_pub(city), AuthorityRole.CITY, "City")],
                                        revoked=[_pub(phone)], community="Town")
    update = create_op(root, kind=KIND_TRUST_UPDATE, doc_id=doc_id, body=body, seq=0,
                       prev=None, hlc=hlc, expiry_ms=wall_ms + TRUST_UPDATE_LIFETIME_MS)
    doc_id, body = prepare_key_statement(phone.sign, _pub(phone), _pub(phone),
                                         successor=_pub(key()), made_ms=wall_ms - 86_400_000)
    revoke = create_op(relay, kind=KIND_REVOKE, doc_id=doc_id, body=body, seq=0, prev=None,
                       hlc=hlc, expiry_ms=wall_ms + STATEMENT_LIFETIME_MS)
    expires = wall_ms + 6 * 3600_000
    doc_id = new_doc_id(rng.randbytes(16))
    body = prepare_bulletin(city.sign, _pub(city), doc_id, title="Water", text="At nine",
                            issued_ms=wall_ms, expires_ms=expires, root=_pub(root),
                            trust_version=2)
    bulletin = create_op(city, kind=KIND_PUBLISH, doc_id=doc_id, body=body, seq=0, prev=None,
                         hlc=hlc, expiry_ms=expires)
    lib = create_op(relay, kind="library.edit", doc_id=new_doc_id(rng.randbytes(16)),
                    body=rng.randbytes(600), seq=1, prev=None, hlc=hlc)
    return {"trust.update": update, "revocation": revoke, "bulletin": bulletin,
            "library": lib}


def run(seed: int, n: int, backlog: int, limit_s: float) -> dict[str, Any]:
    """One seeded run: seconds from publication until every node holds each op."""
    rng = random.Random(seed)
    net = Network(seed, default=LOSSY)
    ids = [sim_id(i) for i in range(n)]
    _, edges = random_geometric(n, 0.25, seed=seed)  # joined into one component
    assert len(components(n, edges)) == 1  # the figure is "every node"
    # the car that is away: one whose absence leaves the others connected
    late = next(i for i in rng.sample(range(n), n)
                if len(components(n, [e for e in edges if i not in e])) == 2)
    writers = [Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)) for _ in range(n)]
    watched: dict[bytes, str] = {}
    nodes = [TimedNode(nid, MemOpStore(), random.Random(seed * 1000 + i), push_delay_s=0.05,
                       watched=watched) for i, nid in enumerate(ids)]
    for nid, node in zip(ids, nodes, strict=True):
        net.add_node(nid, node)
    for a, b in edges:
        if late in (a, b):
            def drive_in(a: int = a, b: int = b) -> None:
                net.connect(ids[a], ids[b])

            net.schedule(LATE_AT_S, drive_in)
        else:
            net.connect(ids[a], ids[b])

    for _ in range(backlog):  # library edits: every link has a queue when the trust op comes
        i = rng.randrange(n)
        doc = bytes([rng.randrange(64)]) * 16
        body = rng.randbytes(rng.randrange(200, 4000))

        def edit(i: int = i, doc: bytes = doc, body: bytes = body) -> None:
            nodes[i].edit(writers[i], net.now, kind="library.edit", doc_id=doc, body=body)
            net.replace_node(ids[i], nodes[i])

        net.schedule(rng.random() * BACKLOG_UNTIL_S, edit)

    origin = rng.choice([i for i in range(n) if i != late])
    ops = _ops(rng, WALL0_MS + int(PUBLISH_AT_S * 1000))
    watched.update({op.op_id: name for name, op in ops.items()})

    def publish() -> None:
        node = nodes[origin]
        applied, _ = node.store.apply_remote([op.raw for op in ops.values()],
                                             WALL0_MS + int(net.now * 1000))
        assert len(applied) == len(ops), node.store.refused
        node._committed(applied, net.now)
        net.replace_node(ids[origin], node)

    net.schedule(PUBLISH_AT_S, publish)

    def everywhere() -> bool:
        return all(len(node.arrived) == len(KINDS) for node in nodes)

    net.run_until(LATE_AT_S + limit_s, stop=everywhere)
    out: dict[str, Any] = {"seed": seed, "edges": len(edges), "origin": origin}
    for name in KINDS:
        times = [node.arrived.get(name) for i, node in enumerate(nodes) if i != late]
        reached = [t - PUBLISH_AT_S for t in times if t is not None]
        t_late = nodes[late].arrived.get(name)
        out[name] = {"reached": len(reached),
                     "all_s": round(max(reached), 3) if len(reached) == n - 1 else None,
                     "p50_s": round(statistics.median(reached), 3) if reached else None,
                     "late_car_s": round(t_late - LATE_AT_S, 3) if t_late else None}
    out["late_car_ops"] = len(nodes[late].store)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in KINDS:
        alls = [r[name]["all_s"] for r in runs]
        done = [a for a in alls if a is not None]
        lates = [r[name]["late_car_s"] for r in runs if r[name]["late_car_s"] is not None]
        out[name] = {"runs_reaching_all": len(done),
                     "all_median_s": round(statistics.median(done), 3) if done else None,
                     "all_max_s": round(max(done), 3) if done else None,
                     "late_car_median_s": round(statistics.median(lates), 3) if lates
                     else None,
                     "late_car_max_s": round(max(lates), 3) if lates else None}
    # per run: the trust op against the bulletin of the same run
    for name in ("trust.update", "revocation"):
        pairs = [(r[name][f], r["bulletin"][f]) for r in runs for f in ("all_s", "late_car_s")
                 if r[name][f] is not None and r["bulletin"][f] is not None]
        out[name]["no_later_than_bulletin"] = sum(t <= b for t, b in pairs)
        out[name]["compared"] = len(pairs)  # every node, and the late car, per run
        out[name]["ratio_to_bulletin_max"] = round(max(t / b for t, b in pairs), 3) \
            if pairs else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="3 seeds, a 300-op backlog")
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=None, help="runs (default 5; --quick 3)")
    ap.add_argument("--backlog", type=int, default=None,
                    help="library ops written during the first two seconds (default "
                         "1000; --quick 300)")
    ap.add_argument("--limit", type=float, default=120.0, help="simulated seconds per run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (3 if args.quick else 5)
    backlog = args.backlog if args.backlog is not None else (300 if args.quick else 1000)
    t0 = time.perf_counter()
    runs = [run(2026 + s, args.nodes, backlog, args.limit) for s in range(seeds)]
    results = {"machine": f"{_cpu()}, {os.cpu_count()} cores, python "
                          f"{platform.python_version()}",
               "nodes": args.nodes, "seeds": seeds, "backlog_ops": backlog,
               "link": "5 % loss, 2 % duplicates, 5 % reordered, 5 +- 3 ms",
               "runs": runs, "summary": summarize(runs),
               "wall_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"trust: {args.nodes} nodes, {seeds} seeds, {backlog} library ops of backlog, "
          f"lossy links; virtual seconds from publication until every node holds it")
    print(f"{'seed':>6} {'':9} {'trust.update':>13} {'revocation':>11} {'bulletin':>9} "
          f"{'library':>8}")
    for r in runs:
        for label, f in (("all nodes", "all_s"), ("late car", "late_car_s")):
            print(f"{r['seed']:>6} {label:9} " + " ".join(
                f"{r[k][f]!s:>{w}}" for k, w in zip(KINDS, (13, 11, 9, 8), strict=True)))
    s = results["summary"]
    for k in KINDS:
        extra = "" if k in ("bulletin", "library") else (
            f"; no later than the bulletin in {s[k]['no_later_than_bulletin']} of "
            f"{s[k]['compared']} (at most {s[k]['ratio_to_bulletin_max']} x its time)")
        print(f"{k}: every node median {s[k]['all_median_s']} s, max {s[k]['all_max_s']} s; "
              f"late car median {s[k]['late_car_median_s']} s, max "
              f"{s[k]['late_car_max_s']} s{extra}")
    print(f"({results['wall_s']} s of CPU wall time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
