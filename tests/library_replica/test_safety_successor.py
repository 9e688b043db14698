"""A lost device's successor corrects the safety registrations its predecessor made: the
safety service beside the library service on one real op store, wired as the daemon wires
them (``carmesh.app``): the library's key registry says who continues whom, and a key
statement arriving after a correction re-indexes the corrected record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from library_replica.keycerts import (
    KIND_REVOKE,
    STATEMENT_LIFETIME_MS,
    prepare_key_statement,
)
from library_replica.node_service import LibraryNodeService
from library_replica.safety import KIND_PERSON, prepare_person
from library_replica.safety_service import SafetyNodeService
from meshd.core.errors import ControlError
from sync.store import OpStore
from tests.library_replica.factory import Author, hlc
from tests.library_replica.test_disk_full import FakeNode

Services = tuple[LibraryNodeService, SafetyNodeService, FakeNode]


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time)
    node = FakeNode(tmp_path)
    library = LibraryNodeService(node, store, trust_path=None)  # type: ignore[arg-type]
    safety = SafetyNodeService(node, store,  # type: ignore[arg-type]
                               succeeds=library.trust.keys.continues)
    library.add_trust_listener(safety.successors_changed)
    tasks = [asyncio.create_task(library.run()), asyncio.create_task(safety.run())]
    try:
        await library._ready.wait()
        await safety._ready.wait()
        yield library, safety, node
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await safety.close()
        await library.close()
        await store.close()


def _statement(old: Author, successor: bytes) -> bytes:
    """The owner's statement, made in advance with the lost device's key."""
    now = int(time.time() * 1000)
    doc_id, body = prepare_key_statement(old.sign, old.pub, old.pub, successor=successor,
                                         made_ms=now)
    return old.op(KIND_REVOKE, doc_id, body, hlc(now),
                  expiry_ms=now + STATEMENT_LIFETIME_MS).raw


async def _until(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _names(safety: SafetyNodeService, query: str) -> list[str]:
    res = await safety._h_search({"query": query})
    return [p["name"] for p in res["people"]]


async def test_this_nodes_key_succeeds_the_lost_phone_and_corrects_its_registration(
        services: Services) -> None:
    library, safety, node = services
    store = safety.store
    phone = Author()  # the lost phone; this node is the owner's new device
    now = int(time.time() * 1000)
    pid, body = prepare_person(phone.pub, b"p" * 16, by="phone", name="佐藤 花",
                               reading="さとう はな", status="safe", place="第一小学校")
    assert (await store.apply_remote([phone.op(KIND_PERSON, pid, body, hlc(now)).raw])).applied
    fix = {"id": pid.hex()[:8], "name": "佐藤 花子", "reading": "さとう はなこ"}
    with pytest.raises(ControlError, match="registrant") as err:  # not (yet) its successor
        await safety._h_correct(fix)
    assert err.value.code == "bad_request"
    # the owner publishes the statement made in advance: the phone is revoked, this key
    # carries on its records
    assert (await store.apply_remote([_statement(phone, node.identity.ed25519_pub)])).applied
    assert library.trust.revoked(phone.pub)
    with pytest.raises(ControlError, match="nothing to correct"):
        await safety._h_correct({"id": pid.hex()})
    person = await safety._h_correct(fix)
    assert (person["name"], person["reading"], person["status"], person["place"]) == (
        "佐藤 花子", "さとう はなこ", "safe", "第一小学校")  # status and place restated
    assert person["registered_by"]["key"] == phone.pub.hex()
    assert [(n["kind"], n["author"]) for n in person["notes"]] == [
        ("registered", phone.pub.hex()), ("corrected", node.identity.ed25519_pub.hex())]
    assert await _names(safety, "はなこ") == ["佐藤 花子"]
    # the lost phone's key can no longer write its record (revoked): the correction stays
    late = phone.op(KIND_PERSON, pid, prepare_person(phone.pub, b"p" * 16, by="thief",
                                                     name="偽物")[1], hlc(now + 10_000))
    assert (await store.apply_remote([late.raw])).refused == {"revoked": 1}
    assert (await safety._h_show({"id": pid.hex()}))["name"] == "佐藤 花子"


async def test_a_statement_after_the_correction_reindexes_the_record(
        services: Services) -> None:
    library, safety, _ = services
    store = safety.store
    phone, new_phone = Author(), Author()
    now = int(time.time() * 1000)
    pid, body = prepare_person(phone.pub, b"q" * 16, by="phone", name="高橋 一郎")
    _, fix = prepare_person(new_phone.pub, b"q" * 16, by="new", name="高橋 一朗",
                            status="needs_help", registrant=phone.pub)
    res = await store.apply_remote([phone.op(KIND_PERSON, pid, body, hlc(now)).raw,
                                    new_phone.op(KIND_PERSON, pid, fix, hlc(now + 1)).raw])
    assert len(res.applied) == 2
    # the statement has not reached this node: the record is the phone's
    assert await _names(safety, "一郎") == ["高橋 一郎"] and await _names(safety, "一朗") == []
    assert (await safety._h_show({"id": pid.hex()}))["status"] == "unknown"
    assert (await store.apply_remote([_statement(phone, new_phone.pub)])).applied
    assert library.trust.keys.continues(new_phone.pub, phone.pub)
    await _until(lambda: safety.registry.get(pid).name == "高橋 一朗",  # type: ignore[union-attr]
                 "the correction to count")
    deadline = time.monotonic() + 10
    while await _names(safety, "一朗") != ["高橋 一朗"]:
        assert time.monotonic() < deadline, "the corrected name was not re-indexed"
        await asyncio.sleep(0.01)
    assert await _names(safety, "一郎") == []
    assert (await safety._h_show({"id": pid.hex()}))["status"] == "needs_help"
