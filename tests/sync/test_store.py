"""OpStore: causal application, refusals, forks, durability across reopen."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import MAX_OP_SIZE, Op, create_op
from sync.errors import Unauthorized
from sync.store import OpStore
from tests.sync.conftest import WALL_S
from tests.sync.helpers import chain

HLC0 = int(WALL_S * 1000) << 16


async def test_in_order_and_out_of_order_chains_apply_causally(store: OpStore) -> None:
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 6, start_hlc=HLC0)
    seen: list[int] = []
    store.subscribe(lambda applied: seen.extend(o.seq for o in applied))
    r = await store.apply_remote([ops[3].raw, ops[5].raw])
    assert r.applied == () and r.pending == 2 and set(r.acked) == {ops[3].op_id, ops[5].op_id}
    r = await store.apply_remote([ops[1].raw, ops[0].raw])
    assert [o.seq for o in r.applied] == [1, 2]
    r = await store.apply_remote([ops[4].raw, ops[2].raw])
    assert [o.seq for o in r.applied] == [3, 4, 5, 6]
    assert seen == [1, 2, 3, 4, 5, 6]
    assert store.author_head(ops[0].author) == (6, ops[5].op_id)
    assert store.pending_count() == 0
    r = await store.apply_remote([ops[0].raw])
    assert r.duplicates == 1 and r.acked == (ops[0].op_id,)


async def test_restart_resumes_pending_and_heads(open_store: Callable[..., Any]) -> None:
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 4, start_hlc=HLC0)
    s = await open_store()
    await s.apply_remote([ops[0].raw, ops[2].raw, ops[3].raw])
    await s.close()
    s = await open_store()
    assert len(s) == 1 and s.pending_count() == 2
    r = await s.apply_remote([ops[1].raw])
    assert [o.seq for o in r.applied] == [2, 3, 4]
    local = await s.add_local(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80")
    assert local.seq == 5 and local.prev == ops[3].op_id and local.hlc > ops[3].hlc
    await s.close()
    s = await open_store()
    assert s.author_head(local.author) == (5, local.op_id)
    assert [o.seq for o in await s.ops_for_doc(b"D" * 16)] == [1, 2, 3, 4, 5]
    assert await s.integrity_check() == "ok"
    await s.close()


def _tamper(raw: bytes) -> bytes:
    b = bytearray(raw)
    b[-70] ^= 1  # a byte of the body, before the signature
    return bytes(b)


async def test_forged_tampered_oversized_expired_future_are_refused(store: OpStore,
                                                                     wall: list[float]) -> None:
    key = Ed25519PrivateKey.generate()
    good = chain(key, 1, start_hlc=HLC0, body=b"\x80" * 100)[0]
    # a forgery: a valid envelope of another key with the author field swapped to ours
    other = create_op(Ed25519PrivateKey.generate(), kind="library.edit", doc_id=b"D" * 16,
                      body=b"\x80", seq=1, prev=None, hlc=HLC0)
    forged = other.raw.replace(other.author, good.author)
    expired = create_op(key, kind="bulletin.publish", doc_id=b"B" * 16, body=b"\x80", seq=0,
                        prev=None, hlc=HLC0, expiry_ms=int(WALL_S * 1000) - 1)
    future = create_op(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80", seq=1,
                       prev=None, hlc=(int(WALL_S * 1000) + 3_600_000) << 16)
    r = await store.apply_remote([_tamper(good.raw), forged, b"\x00" * (MAX_OP_SIZE + 1),
                                  b"\x93\x01\x02", expired.raw, future.raw])
    assert r.applied == () and r.acked == ()
    assert r.refused == {"signature": 2, "oversize": 1, "malformed": 1, "expired": 1,
                         "future": 1}
    assert len(store) == 0 and store.range_sets() == {}
    assert store.drops.total == 6


async def test_unauthorised_ops_are_refused_and_chain_waits(store: OpStore) -> None:
    def only_city(op: Op, wall_ms: int) -> None:
        if op.body != b"\xa4city":
            raise Unauthorized("not an authority")

    store.register_authorizer("bulletin", only_city)
    key = Ed25519PrivateKey.generate()
    bad = chain(key, 2, start_hlc=HLC0, kind="bulletin.publish")
    r = await store.apply_remote([o.raw for o in bad])
    assert r.applied == () and r.refused == {"unauthorized": 1} and r.pending == 1
    with pytest.raises(Unauthorized):
        await store.add_local(key, kind="bulletin.publish", doc_id=b"B" * 16, body=b"\x80")
    unknown = chain(Ed25519PrivateKey.generate(), 1, start_hlc=HLC0, kind="weather.report")
    r = await store.apply_remote([unknown[0].raw])
    assert r.refused == {"unauthorized": 1}
    assert "bulletin" not in store.range_sets()


async def test_fork_quarantines_author_and_hides_its_ops(store: OpStore) -> None:
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 3, start_hlc=HLC0)
    twin = create_op(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x81", seq=2,
                     prev=ops[0].op_id, hlc=HLC0 + 1)
    r = await store.apply_remote([o.raw for o in ops])
    assert len(r.applied) == 3 and len(store.range_sets()["library"]) == 3
    r = await store.apply_remote([twin.raw])
    assert r.refused == {"fork": 1} and r.acked == ()
    assert key.public_key().public_bytes_raw() in store.quarantined()
    assert len(store.range_sets()["library"]) == 0  # no longer offered to peers
    later = create_op(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80", seq=4,
                      prev=ops[2].op_id, hlc=HLC0 + 9)
    r = await store.apply_remote([later.raw])
    assert r.refused == {"quarantined": 1}


async def test_pending_forks_and_pending_pool_bound(open_store: Callable[..., Any]) -> None:
    s: OpStore = await open_store()
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 3, start_hlc=HLC0)
    twin = create_op(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x81", seq=3,
                     prev=ops[1].op_id, hlc=HLC0 + 2)
    r = await s.apply_remote([ops[2].raw, twin.raw])
    assert r.refused == {"fork": 1}
    await s.close()


async def test_quotas_bound_pending_pool_and_author(tmp_path: Any) -> None:
    from sync.store import Quotas
    from tests.sync.conftest import allow_all

    s = await OpStore.open(tmp_path / "q.db", wall_clock=lambda: WALL_S,
                           authorizers={"library": allow_all},
                           quotas=Quotas(max_ops_per_author=3, max_pending=2,
                                         max_pending_per_author=2))
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 6, start_hlc=HLC0)
    r = await s.apply_remote([ops[3].raw, ops[4].raw, ops[5].raw])
    assert r.pending == 2 and r.refused == {"pending-full": 1}
    r = await s.apply_remote([o.raw for o in ops[:3]])
    assert len(r.applied) == 3 and r.refused == {"quota": 1}
    assert len(s) == 3
    await s.close()


async def test_ephemeral_ops_expire_and_are_purged(store: OpStore, wall: list[float]) -> None:
    key = Ed25519PrivateKey.generate()
    op = await store.add_local(key, kind="bulletin.publish", doc_id=b"B" * 16, body=b"\x80",
                               expiry_ms=int(WALL_S * 1000) + 60_000)
    assert op.seq == 0 and op.prev is None and store.author_head(op.author) is None
    assert await store.purge_expired() == 0
    wall[0] += 61
    assert await store.purge_expired() == 1
    assert await store.get(op.op_id) is None and len(store) == 0


async def test_async_subscriber_runs_after_commit(store: OpStore) -> None:
    key = Ed25519PrivateKey.generate()
    got: list[Op] = []

    async def sub(ops: Sequence[Op]) -> None:
        for o in ops:
            assert await store.get(o.op_id) == o  # already committed
        got.extend(ops)

    store.subscribe(sub)
    ops = chain(key, 3, start_hlc=HLC0)
    await store.apply_remote([o.raw for o in reversed(ops)])
    assert got == ops


async def test_withheld_authors_are_kept_but_not_offered(store: OpStore) -> None:
    k1, k2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    a, b = chain(k1, 3, start_hlc=HLC0), chain(k2, 2, start_hlc=HLC0)
    await store.apply_remote([o.raw for o in a + b])
    store.set_withheld_authors([a[0].author])
    assert len(store.range_sets()["library"]) == 2
    more = create_op(k1, kind="library.edit", doc_id=b"D" * 16, body=b"\x80", seq=4,
                     prev=a[2].op_id, hlc=HLC0 + 7)
    r = await store.apply_remote([more.raw])
    assert len(r.applied) == 1 and len(store) == 6
    assert len(store.range_sets()["library"]) == 2
    store.set_withheld_authors([])
    assert len(store.range_sets()["library"]) == 6


async def test_verification_in_worker_processes_keeps_refusal_reasons(tmp_path: Any) -> None:
    import multiprocessing
    import os
    import signal

    from sync.store import WORKER_MIN_BATCH
    from tests.sync.conftest import allow_all

    s = await OpStore.open(tmp_path / "w.db", wall_clock=lambda: WALL_S,
                           authorizers={"library": allow_all}, verify_workers=1)
    try:
        key = Ed25519PrivateKey.generate()
        n = WORKER_MIN_BATCH
        ops = chain(key, 3 * n, start_hlc=HLC0, body=b"\x80" * 100)
        # the first large batch starts the worker and is verified in threads meanwhile
        r = await s.apply_remote([o.raw for o in ops[:n]])
        assert len(r.applied) == n and s._pool_ready is not None
        await s._pool_ready
        raws = [o.raw for o in ops[n : 2 * n]]
        raws[5] = _tamper(raws[5])
        raws.append(b"\x93\x01\x02")
        r = await s.apply_remote(raws)
        assert len(r.applied) == 5 and r.pending == n - 6
        assert r.refused == {"signature": 1, "malformed": 1}
        r = await s.apply_remote([ops[n + 5].raw])
        assert len(r.applied) == n - 5 and s.author_head(ops[0].author) == (2 * n, ops[2 * n - 1].op_id)
        # a worker that dies is replaced by threads, and the batch is still verified
        assert s._pool is not None
        for pid in list(s._pool._processes):
            os.kill(pid, signal.SIGKILL)
        raws = [o.raw for o in ops[2 * n :]]
        raws[0] = _tamper(raws[0])
        r = await s.apply_remote(raws)
        assert r.refused == {"signature": 1} and r.pending == n - 1 and s._pool is None
    finally:
        await s.close()
    assert multiprocessing.active_children() == []


_V0_OPS = """
    CREATE TABLE ops (op_id BLOB PRIMARY KEY, ns TEXT NOT NULL, kind TEXT NOT NULL,
        doc_id BLOB NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL,
        hlc INTEGER NOT NULL, expiry_ms INTEGER, raw BLOB NOT NULL) WITHOUT ROWID;
    CREATE INDEX ops_ns_hlc ON ops(ns, hlc, op_id);
    CREATE INDEX ops_doc ON ops(doc_id, hlc);
    CREATE INDEX ops_author ON ops(author, seq);
    CREATE INDEX ops_expiry ON ops(expiry_ms) WHERE expiry_ms IS NOT NULL;
    CREATE TABLE pending (op_id BLOB PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL,
        raw BLOB NOT NULL) WITHOUT ROWID;
"""
_V1_OPS = """
    CREATE TABLE ops (op_id BLOB NOT NULL UNIQUE, ns TEXT NOT NULL, kind TEXT NOT NULL,
        doc_id BLOB NOT NULL, author BLOB NOT NULL, seq INTEGER NOT NULL,
        hlc INTEGER NOT NULL, expiry_ms INTEGER, raw BLOB NOT NULL);
    CREATE INDEX ops_ns_hlc ON ops(ns, hlc, op_id);
    CREATE INDEX ops_doc ON ops(doc_id, hlc);
    CREATE INDEX ops_expiry ON ops(expiry_ms) WHERE expiry_ms IS NOT NULL;
    CREATE TABLE pending (op_id BLOB PRIMARY KEY, author BLOB NOT NULL, seq INTEGER NOT NULL,
        raw BLOB NOT NULL) WITHOUT ROWID;
    PRAGMA user_version = 1;
"""


@pytest.mark.parametrize("old_layout", [_V0_OPS, _V1_OPS], ids=["v0", "v1"])
async def test_older_database_layouts_are_migrated_on_open(tmp_path: Any, old_layout: str) -> None:
    import sqlite3

    from sync.store import SCHEMA_VERSION
    from tests.sync.conftest import allow_all

    key = Ed25519PrivateKey.generate()
    ops = chain(key, 5, start_hlc=HLC0, body=b"\x80" * 10)
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(old_layout + """
        CREATE TABLE authors (author BLOB PRIMARY KEY, head_seq INTEGER NOT NULL, head_id BLOB,
            head_hlc INTEGER NOT NULL, n_ops INTEGER NOT NULL, n_bytes INTEGER NOT NULL,
            quarantined TEXT) WITHOUT ROWID;
    """)
    con.executemany("INSERT INTO ops VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(o.op_id, o.namespace, o.kind, o.doc_id, o.author, o.seq, o.hlc,
                      o.expiry_ms, o.raw) for o in ops[:2]])
    con.execute("INSERT INTO authors VALUES (?, 2, ?, ?, 2, ?, NULL)",
                (ops[0].author, ops[1].op_id, ops[1].hlc, len(ops[0].raw) + len(ops[1].raw)))
    con.execute("INSERT INTO pending VALUES (?, ?, ?, ?)",
                (ops[4].op_id, ops[4].author, ops[4].seq, ops[4].raw))  # waits for seq 4
    con.commit()
    con.close()
    for held in (2, 5):  # migrated once, then opened as it is
        s = await OpStore.open(db, wall_clock=lambda: WALL_S, authorizers={"library": allow_all})
        try:
            assert len(s) == held and await s.get(ops[1].op_id) == ops[1]
            assert s.pending_count() == (1 if held == 2 else 0)
            assert await s.get_raw_many([ops[1].op_id, b"x" * 32, ops[0].op_id]) == [
                ops[1].raw, ops[0].raw]
            assert await s.integrity_check() == "ok"
            r = await s.apply_remote([ops[2].raw, ops[3].raw])
            assert {ops[2].op_id, ops[3].op_id} <= set(r.acked)
            assert await s.ops_for_doc(ops[0].doc_id) == ops
            assert s.author_head(ops[0].author) == (5, ops[4].op_id)
        finally:
            await s.close()
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        assert names >= {"ops", "ops_key", "ops_expiry", "authors", "pending", "evidence"}
        assert not names & {"ops_v0", "pending_v0", "ops_ns_hlc", "ops_doc", "ops_author"}
        with pytest.raises(sqlite3.IntegrityError):  # one row per op
            con.execute("INSERT INTO ops SELECT * FROM ops LIMIT 1")
    finally:
        con.close()


async def test_the_op_index_shares_each_authors_key_and_namespace(
        open_store: Callable[..., Any]) -> None:
    """Issue 18, memory: the in-memory index holds one copy of an author's key and of a
    namespace for all their ops, after apply and after a reopen (not one per op)."""
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 5, start_hlc=HLC0)

    def copies(s: OpStore) -> tuple[int, int]:
        entries = [s._known[o.op_id] for o in ops]
        return len({id(ns) for ns, _, _ in entries}), len({id(a) for _, _, a in entries})

    s = await open_store()
    r = await s.apply_remote([o.raw for o in ops])
    assert len(r.applied) == 5 and copies(s) == (1, 1)
    await s.close()
    s = await open_store()
    assert len(s) == 5 and copies(s) == (1, 1)
    await s.close()
