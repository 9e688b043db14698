"""OpStore.forget: an application withdraws ephemeral ops (a revoked authority's bulletins)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import NAMESPACE_PRIORITY
from sync.store import OpStore
from tests.sync.conftest import WALL_S

NOW_MS = int(WALL_S * 1000)


def test_trust_travels_first() -> None:
    # a revocation must reach a node no later than the bulletins it withdraws
    assert NAMESPACE_PRIORITY[:2] == ("trust", "bulletin")


async def test_forget_deletes_ephemeral_ops_only_and_survives_restart(
        open_store: Callable[..., object], tmp_path: Path) -> None:
    store: OpStore = await open_store()  # type: ignore[misc]
    key = Ed25519PrivateKey.generate()
    doc = b"\x01" * 16
    eph = await store.add_local(key, kind="bulletin.publish", doc_id=doc, body=b"a",
                                expiry_ms=NOW_MS + 3600_000)
    kept = await store.add_local(key, kind="bulletin.publish", doc_id=doc, body=b"b",
                                 expiry_ms=NOW_MS + 3600_000)
    chained = await store.add_local(key, kind="library.edit", doc_id=doc, body=b"c")
    size = store.bytes_stored
    offered = store.range_sets()["bulletin"]
    assert len(offered) == 2
    gone = await store.forget([eph.op_id, chained.op_id, b"\x00" * 32, eph.op_id])
    assert gone == [eph.op_id]  # the chained op stays: a re-delivery would look like a fork
    assert eph.op_id not in store and kept.op_id in store and chained.op_id in store
    assert store.bytes_stored == size - len(eph.raw)
    assert len(store.range_sets()["bulletin"]) == 1  # no longer offered to peers
    assert await store.get_raw_many([eph.op_id]) == []
    # offered again by a peer, it meets the authoriser again (here: allowed) and comes back
    res = await store.apply_remote([eph.raw], "peer")
    assert [o.op_id for o in res.applied] == [eph.op_id]
    assert await store.forget([eph.op_id]) == [eph.op_id]
    await store.close()
    again: OpStore = await open_store()  # type: ignore[misc]
    assert eph.op_id not in again and kept.op_id in again and len(again) == 2
    await again.close()
