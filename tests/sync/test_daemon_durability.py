"""Durability: a real daemon receiving a 10,000-op catch-up is killed with kill -9 at random moments.

Just before each kill the receiver reports how many ops it holds (it reports only
committed ops, and acknowledges a batch only after its commit); after the kill its
database passes ``PRAGMA integrity_check`` and still holds at least that many; after
the last restart the catch-up completes with nothing pending and no fork.

(The sender's ``ops_out`` counts acknowledged batches op by op, including ops the
receiver already had or refused, so it is not an exact count of distinct stored ops:
it is reported, not asserted.)
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import pytest

from library_replica.ops import sync_authorizers
from library_replica.situation import KIND_SET, authorize_situation, prepare_set
from meshd.core.identity import Identity
from sync.envelope import create_op
from sync.node_service import DB_NAME
from sync.store import OpStore
from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow

N_OPS = 10_000


async def _seed(state_dir: Path, n: int) -> None:
    """Give the sender ``n`` signed ops of its own (one situation record, rewritten n times)."""
    ident = Identity.load_or_create(state_dir)
    store = await OpStore.open(state_dir / DB_NAME, wall_clock=time.time,
                               authorizers=sync_authorizers({"situation": authorize_situation}))
    try:
        base = (int(time.time() * 1000) - 60_000) << 16
        prev = None
        raws = []
        for i in range(1, n + 1):
            doc_id, body = prepare_set(ident.ed25519_pub, "vehicle", {"seats": i % 8, "note": f"update {i}"})
            op = create_op(ident.signing_key, kind=KIND_SET, doc_id=doc_id, body=body, seq=i,
                           prev=prev, hlc=base + i)
            prev = op.op_id
            raws.append(op.raw)
        for k in range(0, n, 1000):
            res = await store.apply_remote(raws[k:k + 1000])
            assert len(res.acked) == len(raws[k:k + 1000])
    finally:
        await store.close()


def _count_ops(db: Path) -> tuple[int, str]:
    con = sqlite3.connect(db)
    try:
        # committed ops: applied, or held durably until their predecessor arrives
        n = (con.execute("SELECT count(*) FROM ops").fetchone()[0]
             + con.execute("SELECT count(*) FROM pending").fetchone()[0])
        ok = con.execute("PRAGMA integrity_check").fetchone()[0]
        return int(n), str(ok)
    finally:
        con.close()


def _reported(d: object) -> int:
    rc, st = d.meshctl("sync", "status", timeout=5)  # type: ignore[attr-defined]
    return int(st["ops"]) + int(st["pending"]) if rc == 0 else 0


def _acked(c: Cluster, receiver_id: str) -> int:
    rc, st = c["sender"].meshctl("sync", "status")
    assert rc == 0, st
    peer = st["peers"].get(receiver_id)
    return int(peer["ops_out"]) if peer else 0


def test_kill_9_during_catch_up_loses_nothing_acknowledged() -> None:
    rng = random.Random(20261126)
    ports = {n: free_udp_port() for n in ("sender", "receiver")}
    with Cluster(log_level="info") as c:
        sender_dir = c.root / "sender"
        sender_dir.mkdir()
        asyncio.run(_seed(sender_dir, N_OPS))
        c.add("sender", ["--listen", f"127.0.0.1:{ports['sender']}"])
        c["sender"].wait_ready()
        recv_args = ["--listen", f"127.0.0.1:{ports['receiver']}",
                     "--peer", f"127.0.0.1:{ports['sender']}"]
        receiver = c.add("receiver", recv_args)
        receiver_id = receiver.wait_ready()["node_id"]
        db = receiver.state_dir / DB_NAME
        kills = 0
        for _ in range(3):
            # let some of the catch-up happen, then kill -9 at a random moment
            wait_until(lambda: _acked(c, receiver_id) > 0 or _count_ops(db)[0] > 0, 30,
                       what="catch-up under way")
            time.sleep(rng.uniform(0.0, 0.8))
            reported = _reported(receiver)
            receiver.kill9()
            kills += 1
            held, integrity = _count_ops(db)
            assert integrity == "ok"
            assert held >= reported, f"held {reported} ops before kill -9, only {held} after"
            if held >= N_OPS:
                break
            receiver.start()
            receiver.wait_ready()
        assert kills >= 1
        if receiver.proc is None or receiver.proc.poll() is not None:
            receiver.start()
            receiver.wait_ready()
        wait_until(lambda: _count_ops(db)[0] >= N_OPS, 120, 0.5, what="the whole catch-up")
        rc, st = receiver.meshctl("sync", "status")
        assert rc == 0 and st["ops"] == N_OPS and st["pending"] == 0 and not st["quarantined"]
        assert _count_ops(db)[1] == "ok"
