"""The library service tells the op store who is a member: the trust's members list, adopted
updates move keys in and out of the non-members' pool, and revoked keys are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from library_replica.bulletins import (
    KIND_TRUST_UPDATE,
    TRUST_UPDATE_LIFETIME_MS,
    TrustConfig,
    prepare_trust_update,
)
from library_replica.node_service import LibraryNodeService
from library_replica.situation import KIND_SET, prepare_set
from sync.apply import Quotas
from sync.store import OpStore
from tests.library_replica.factory import Author, hlc
from tests.library_replica.test_disk_full import FakeNode

ROOT, MEMBER, VISITOR = Author(), Author(), Author()


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LibraryNodeService]:
    trust = tmp_path / "town.trust.toml"
    trust.write_text(TrustConfig(ROOT.pub, 5, {}, "Town",
                                 members=frozenset({MEMBER.pub})).to_toml(), encoding="utf-8")
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time,
                               quotas=Quotas(unknown_max_ops=2,
                                             protected_namespaces=frozenset({"trust",
                                                                             "bulletin"})))
    (tmp_path / "state").mkdir()
    svc = LibraryNodeService(FakeNode(tmp_path / "state"), store,  # type: ignore[arg-type]
                             trust_path=trust)
    task = asyncio.create_task(svc.run())
    try:
        await svc._ready.wait()
        yield svc
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
        await store.close()


def _reports(who: Author, n: int) -> list[bytes]:
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        doc_id, body = prepare_set(who.pub, "person", {"safety": "safe", "note": f"n{i}"})
        out.append(who.op(KIND_SET, doc_id, body, hlc(now, i)).raw)
    return out


def _update(version: int, members: list[bytes], revoked: tuple[bytes, ...] = ()) -> bytes:
    now = int(time.time() * 1000)
    doc_id, body = prepare_trust_update(ROOT.sign, ROOT.pub, version, [], members=members,
                                        revoked=revoked, community="Town")
    return ROOT.op(KIND_TRUST_UPDATE, doc_id, body, hlc(now),
                   expiry_ms=now + TRUST_UPDATE_LIFETIME_MS).raw


async def test_members_write_freely_visitors_share_the_pool_until_enrolled(
        service: LibraryNodeService) -> None:
    store = service.store
    assert (await store.apply_remote(_reports(MEMBER, 4))).refused == {}
    visitor = _reports(VISITOR, 3)
    res = await store.apply_remote(visitor)
    assert res.refused == {"unknown-pool-full": 1}
    assert store.admission_status()["unknown_ops"] == 2
    # the root enrols the visitor: it leaves the pool, and writes on
    assert (await store.apply_remote([_update(6, [MEMBER.pub, VISITOR.pub])])).refused == {}
    assert service.trust.version == 6
    assert store.admission_status()["unknown_ops"] == 0
    res = await store.apply_remote(visitor[2:])
    assert res.refused == {} and len(res.applied) == 1
    # the member's phone is lost: revoked, its next op is refused
    assert (await store.apply_remote([_update(7, [VISITOR.pub], (MEMBER.pub,))])).refused == {}
    res = await store.apply_remote(_reports(MEMBER, 1))
    assert res.refused == {"revoked": 1}
