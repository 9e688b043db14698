"""library_replica over sync's real op store: authorisers, subscribers, two replicas."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from library_replica.bulletins import (
    KIND_PUBLISH,
    Authority,
    AuthorityRole,
    BulletinBoard,
    TrustConfig,
    TrustStore,
    prepare_bulletin,
)
from library_replica.documents import Library
from library_replica.ops import new_doc_id, sync_authorizers
from library_replica.situation import KIND_SET, SituationBoard, authorize_situation, prepare_set
from sync.envelope import Op
from sync.errors import Unauthorized
from sync.store import OpStore

NOW_S = 1_790_000_000.0


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Replica:
    """A node's library side: sync store + materialised views fed by its subscriber."""

    def __init__(self, trust: TrustConfig, clock: list[float]) -> None:
        self.library = Library()
        self.situation = SituationBoard()
        self.bulletins = BulletinBoard(TrustStore(trust))
        self.clock = clock
        self.store: OpStore | None = None

    async def open(self, path: Path) -> Replica:
        self.store = await OpStore.open(
            path, wall_clock=lambda: self.clock[0],
            authorizers=sync_authorizers({
                "library": self.library.authorize,
                "situation": authorize_situation,
                "bulletin": self.bulletins.authorize,
                "trust": self.bulletins.trust.authorize,
            }))
        self.store.subscribe(self._on_ops)
        return self

    def _on_ops(self, ops: Sequence[Op]) -> None:
        now_ms = int(self.clock[0] * 1000)
        for op in ops:
            if op.namespace == "library":
                self.library.apply(op)
            elif op.namespace == "situation":
                self.situation.apply(op)
            elif op.namespace == "bulletin":
                self.bulletins.apply(op, now_ms)
            elif op.namespace == "trust":
                self.bulletins.trust.apply(op)


async def test_two_replicas_through_sync_store(tmp_path: Path) -> None:
    clock = [NOW_S]
    root, city = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    alice, bob = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust = TrustConfig(_pub(root), 1, {_pub(city): Authority(_pub(city), AuthorityRole.CITY,
                                                                "市")})
    a = await Replica(trust, clock).open(tmp_path / "a.db")
    b = await Replica(trust, clock).open(tmp_path / "b.db")
    assert a.store is not None and b.store is not None
    sent: list[Op] = []
    try:
        # a document written on a, copied to b
        d = new_doc_id(b"seam")
        for p in a.library.prepare_create(_pub(alice), collection="know-how", title="給水",
                                          body="給水所：公民館"):
            sent.append(await a.store.add_local(alice, kind=p.kind, doc_id=d, body=p.body))
        await b.store.apply_remote([op.raw for op in sent], "a")
        # concurrent edits while partitioned, then both directions
        from_a, from_b = [], []
        for p in a.library.prepare_edit(d, _pub(alice), body="給水所：公民館（九時）"):
            from_a.append(await a.store.add_local(alice, kind=p.kind, doc_id=d, body=p.body))
        for p in b.library.prepare_edit(d, _pub(bob), body="🚰給水所：公民館"):
            from_b.append(await b.store.add_local(bob, kind=p.kind, doc_id=d, body=p.body))
        res = await a.store.apply_remote([op.raw for op in from_b], "b")
        assert len(res.applied) == len(from_b)
        await b.store.apply_remote([op.raw for op in from_a], "a")
        va, vb = a.library.get(d), b.library.get(d)
        assert va is not None and vb is not None
        assert va.body == vb.body == "🚰給水所：公民館（九時）"

        # situation: bob may not write alice's record
        doc_id, body = prepare_set(_pub(alice), "person", {"safety": "safe"})
        with pytest.raises(Unauthorized) as exc:
            await a.store.add_local(bob, kind=KIND_SET, doc_id=doc_id, body=body)
        assert "not_owner" in exc.value.detail
        op = await a.store.add_local(alice, kind=KIND_SET, doc_id=doc_id, body=body)
        await b.store.apply_remote([op.raw], "a")
        rec = b.situation.get(_pub(alice), "person")
        assert rec is not None and rec.fields == {"safety": "safe"}

        # bulletins: only the city's key, expiry carried by the envelope, purged after it
        now_ms = int(NOW_S * 1000)
        expires = now_ms + 3600_000
        bid = new_doc_id(b"bulletin")
        with pytest.raises(Unauthorized):
            await a.store.add_local(bob, kind=KIND_PUBLISH, doc_id=bid, expiry_ms=expires,
                                    body=prepare_bulletin(bob.sign, _pub(bob), bid, title="偽",
                                                          text="x", issued_ms=now_ms,
                                                          expires_ms=expires, root=_pub(root),
                                                          trust_version=1))
        op = await a.store.add_local(city, kind=KIND_PUBLISH, doc_id=bid, expiry_ms=expires,
                                     body=prepare_bulletin(city.sign, _pub(city), bid,
                                                           title="給水車", text="九時に公民館",
                                                           issued_ms=now_ms, expires_ms=expires,
                                                           root=_pub(root), trust_version=1))
        await b.store.apply_remote([op.raw], "a")
        assert [x.title for x in b.bulletins.active(now_ms)] == ["給水車"]
        clock[0] = NOW_S + 7200
        assert b.bulletins.active(int(clock[0] * 1000)) == []
        assert b.bulletins.purge(int(clock[0] * 1000)) == [op.op_id]
        assert await b.store.purge_expired() == 1
    finally:
        await a.store.close()
        await b.store.close()
