"""What a node carries unverified is checked again when trust arrives: a node that never
enrolled shows a city's bulletin once it joins (by fingerprint: the carried root update is
adopted from its own store), and a node behind on updates shows a bulletin of a newly added
authority once the update reaches it.  The library service on a real op store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from library_replica.bulletins import (
    KIND_PUBLISH,
    KIND_TRUST_UPDATE,
    TRUST_UPDATE_LIFETIME_MS,
    Authority,
    AuthorityRole,
    fingerprint,
    format_fingerprint,
    prepare_bulletin,
    prepare_trust_update,
)
from library_replica.node_service import LibraryNodeService
from library_replica.ops import new_doc_id
from sync.apply import Quotas
from sync.store import OpStore
from tests.library_replica.factory import Author, hlc
from tests.library_replica.test_disk_full import FakeNode

ROOT, CITY, DEALER = Author(), Author(), Author()


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[LibraryNodeService]:
    """A node with no trust configuration."""
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time,
                               quotas=Quotas(protected_namespaces=frozenset({"trust",
                                                                             "bulletin"})))
    svc = LibraryNodeService(FakeNode(tmp_path), store, trust_path=None)  # type: ignore[arg-type]
    task = asyncio.create_task(svc.run())
    try:
        await svc._ready.wait()
        yield svc
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
        await store.close()


def _update(version: int, auths: list[Authority]) -> bytes:
    now = int(time.time() * 1000)
    doc_id, body = prepare_trust_update(ROOT.sign, ROOT.pub, version, auths, community="Town")
    return ROOT.op(KIND_TRUST_UPDATE, doc_id, body, hlc(now, version),
                   expiry_ms=now + TRUST_UPDATE_LIFETIME_MS).raw


def _bulletin(who: Author, title: str, version: int) -> tuple[str, bytes]:
    now = int(time.time() * 1000)
    doc_id = new_doc_id(title.encode())
    body = prepare_bulletin(who.sign, who.pub, doc_id, title=title, text="at nine",
                            issued_ms=now, expires_ms=now + 3600_000, root=ROOT.pub,
                            trust_version=version)
    op = who.op(KIND_PUBLISH, doc_id, body, hlc(now), expiry_ms=now + 3600_000)
    return op.op_id.hex(), op.raw


async def _titles(svc: LibraryNodeService) -> list[str]:
    return sorted(b["title"] for b in (await svc._h_bulletin_list({}))["bulletins"])


async def _carried(svc: LibraryNodeService) -> set[str]:
    return {i["op_id"] for i in (await svc._h_trust_show({}))["carried"]["items"]}


async def test_carried_ops_are_checked_again_when_the_node_joins_and_when_it_catches_up(
        bare: LibraryNodeService) -> None:
    svc, store = bare, bare.store
    city = Authority(CITY.pub, AuthorityRole.CITY, "City")
    water_id, water = _bulletin(CITY, "Water", 5)
    res = await store.apply_remote([_update(5, [city]), water])
    assert len(res.applied) == 2 and res.refused == {}
    # no trust here: stored and carried, shown to nobody
    assert await _titles(svc) == [] and water_id in await _carried(svc)
    assert svc.trust.version == 0
    # the owner enrols the car by the root's fingerprint: the carried update is adopted
    # from the car's own store, and the bulletin it carried is shown
    fp = format_fingerprint(fingerprint(ROOT.pub))
    await svc._h_trust_join({"fingerprint": fp})
    assert svc.trust.version == 5
    assert await _titles(svc) == ["Water"] and await _carried(svc) == set()
    # behind on updates: a dealer added at version 6 publishes before version 6 arrives
    dealer = Authority(DEALER.pub, AuthorityRole.DEALER, "Dealer")
    recall_id, recall = _bulletin(DEALER, "Recall", 6)
    assert (await store.apply_remote([recall])).refused == {}
    assert await _titles(svc) == ["Water"] and recall_id in await _carried(svc)
    # a bulletin by the same key at the version the car holds is a forgery: refused
    _, forged = _bulletin(DEALER, "Forged", 5)
    assert (await store.apply_remote([forged])).refused == {"unauthorized": 1}
    # version 6 arrives: the carried bulletin is checked again and shown
    assert (await store.apply_remote([_update(6, [city, dealer])])).refused == {}
    assert svc.trust.version == 6
    assert await _titles(svc) == ["Recall", "Water"] and await _carried(svc) == set()
    # version 7 drops the dealer: its bulletin goes, and leaves the store (not forwarded)
    assert (await store.apply_remote([_update(7, [city])])).refused == {}
    assert await _titles(svc) == ["Water"]
    assert bytes.fromhex(recall_id) not in store
