"""SyncService over in-memory streams: catch-up, push, refusals not relayed, bad frames."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import create_op
from sync.errors import Unauthorized
from sync.service import SyncService
from sync.session import ACK, END, OPS, RECON_DONE
from sync.session import encode_varint as _varint
from sync.store import OpStore
from tests.sync.conftest import WALL_S
from tests.sync.helpers import chain
from tests.sync.memnet import MemNet, stream_pair

HLC0 = int(WALL_S * 1000) << 16
A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


async def _ids(store: OpStore) -> set[bytes]:
    out: set[bytes] = set()
    for ns in ("library", "bulletin", "situation"):
        out |= {o.op_id async for o in store.iter_namespace(ns)}
    return out


def _services(net: MemNet, stores: dict[bytes, OpStore], wall: list[float],
              **kw: Any) -> dict[bytes, SyncService]:
    svcs = {}
    for nid, st in stores.items():
        svcs[nid] = SyncService(st, open_stream=net.opener(nid), wall_clock=lambda: wall[0],
                                rng=random.Random(nid), **kw)
        net.handlers[nid] = svcs[nid].handle_stream
    return svcs


async def test_reconcile_session_exchanges_exactly_the_difference(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    sa, sb = await open_store("a.db"), await open_store("b.db")
    keys = [Ed25519PrivateKey.generate() for _ in range(3)]
    common = [o for k in keys for o in chain(k, 100, start_hlc=HLC0)]
    only_a = chain(keys[0], 400, start_hlc=HLC0 + 100, first_seq=101, prev=common[99].op_id)
    only_b = chain(Ed25519PrivateKey.generate(), 50, start_hlc=HLC0, kind="bulletin.publish")
    await sa.apply_remote([o.raw for o in common + only_a])
    await sb.apply_remote([o.raw for o in common + only_b])
    net = MemNet()
    net.links.add(frozenset((A, B)))
    svcs = _services(net, {A: sa, B: sb}, wall)
    assert await svcs[B].sync_now(A)
    await asyncio.gather(*net.tasks)
    assert await _ids(sa) == await _ids(sb) == {o.op_id for o in common + only_a + only_b}
    st = svcs[B].status()["peers"][A.hex()]
    assert st["ops_in"] == 400 and st["ops_out"] == 50 and st["last_sync"] == WALL_S
    assert st["catch_up"] is None and st["bytes_in"] > sum(len(o.raw) for o in only_a)
    assert st["last_difference"] == {"in": 400, "out": 50} and st["up_to_date"] is False
    assert st["to_fetch"] == 0 and st["to_send"] == 0
    # the transfer cost little more than the ops themselves
    raw = sum(len(o.raw) for o in only_a + only_b)
    assert net.bytes_total() < 1.25 * raw
    # a second session finds nothing and sends no ops
    before = net.bytes_total()
    svcs[A].neighbour_up(B)  # (no task group here: marks the link up, starts no loop)
    assert svcs[A].status()["peers"][B.hex()]["up_to_date"] is False
    assert await svcs[A].sync_now(B)
    await asyncio.gather(*net.tasks)
    assert net.bytes_total() - before < 512
    st = svcs[A].status()["peers"][B.hex()]
    assert st["last_difference"] == {"in": 0, "out": 0} and st["up_to_date"] is True
    await sa.close()
    await sb.close()


async def test_new_local_ops_are_pushed_promptly_and_relayed(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    stores = {n: await open_store(f"{n[:1].decode()}.db") for n in (A, B, C)}
    net = MemNet()
    net.links |= {frozenset((A, B)), frozenset((B, C))}
    svcs = _services(net, stores, wall, interval_s=3600.0, push_delay_s=0.01)
    reconciled: set[tuple[bytes, bytes]] = set()
    all_reconciled = asyncio.Event()
    for x, svc in svcs.items():
        def done(peer: bytes, x: bytes = x) -> None:
            reconciled.add((x, peer))
            if reconciled >= {(A, B), (B, A), (B, C), (C, B)}:
                all_reconciled.set()
        svc.on_reconciled = done
    runners = [asyncio.create_task(s.run()) for s in svcs.values()]
    await asyncio.sleep(0)
    for x, y in ((A, B), (B, C)):
        svcs[x].neighbour_up(y)
        svcs[y].neighbour_up(x)
    key = Ed25519PrivateKey.generate()
    # the link-up reconciliations ran (each side completed one with each neighbour)
    async with asyncio.timeout(10):
        await all_reconciled.wait()
    arrived = asyncio.Event()
    stores[C].subscribe(lambda ops: arrived.set())
    op = await stores[A].add_local(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80")
    async with asyncio.timeout(10):
        await arrived.wait()
    assert op.op_id in stores[C]
    for _ in range(500):  # B counts the op as sent once C's acknowledgement is back
        if svcs[B].status()["peers"][C.hex()]["ops_out"] >= 1:
            break
        await asyncio.sleep(0.01)
    assert svcs[B].status()["peers"][C.hex()]["ops_out"] >= 1
    for r in runners:
        r.cancel()
    await asyncio.gather(*runners, return_exceptions=True)
    for s in stores.values():
        await s.close()


async def test_refused_ops_are_not_stored_acked_or_relayed(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    sb, sc = await open_store("b.db"), await open_store("c.db")

    def no_weather(op: Any, wall_ms: int) -> None:
        if op.body == b"\xa5storm":
            raise Unauthorized("not allowed")

    sb.register_authorizer("library", no_weather)
    key = Ed25519PrivateKey.generate()
    good = chain(key, 2, start_hlc=HLC0)
    fork = create_op(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x81", seq=2,
                     prev=good[0].op_id, hlc=HLC0 + 5)
    tampered = bytearray(good[1].raw)
    tampered[-70] ^= 4
    unauth = create_op(Ed25519PrivateKey.generate(), kind="library.edit", doc_id=b"E" * 16,
                       body=b"\xa5storm", seq=1, prev=None, hlc=HLC0)
    net = MemNet()
    net.links.add(frozenset((B, C)))
    svcs = _services(net, {B: sb, C: sc}, wall)
    # a misbehaving neighbour A speaks the protocol directly
    a_end, b_end, _, _ = stream_pair()
    serve = asyncio.create_task(svcs[B].handle_stream(A, b_end))
    await a_end.send(bytes([RECON_DONE]))
    batch = b"".join(_varint(len(r)) + r for r in
                     (good[0].raw, bytes(tampered), unauth.raw, good[1].raw, fork.raw))
    await a_end.send(bytes([OPS]) + _varint(0) + batch)
    frames = {await a_end.recv(), await a_end.recv()}
    # B has nothing to send (END) and acknowledges the batch once it is committed
    assert frames == {bytes([ACK]) + _varint(0), bytes([END])}
    await a_end.send(bytes([END]))
    await serve
    assert await _ids(sb) == {good[0].op_id, good[1].op_id}
    assert sb.quarantined() == {good[0].author: "second op at seq 2"}
    assert svcs[B].status()["peers"][A.hex()]["refused_in"] == 3
    assert await svcs[C].sync_now(B)
    await asyncio.gather(*net.tasks)
    # the quarantined author's ops are not offered; nothing refused reaches C
    assert await _ids(sc) == set()
    await sb.close()
    await sc.close()


async def test_malformed_frames_end_the_session_quietly(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    sb = await open_store("b.db")
    net = MemNet()
    svcs = _services(net, {B: sb}, wall)
    for bad in (b"", b"\x09junk", bytes([OPS]) + b"\xff", bytes([ACK]) + b"\x05",
                b"\x01\x61\x07library\x01\x00\x00\x09"):
        a_end, b_end, _, _ = stream_pair()
        serve = asyncio.create_task(svcs[B].handle_stream(A, b_end))
        await a_end.send(bad)
        await asyncio.wait_for(serve, 5)  # returns, never raises
    st = svcs[B].status()["peers"][A.hex()]
    assert st["failures"] == 5 and svcs[B].drops.total == 5
    await sb.close()


async def test_simultaneous_sessions_from_both_ends_send_each_op_once(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    sa, sb = await open_store("a.db"), await open_store("b.db")
    key = Ed25519PrivateKey.generate()
    ops = chain(key, 1500, start_hlc=HLC0, body=b"\xc4" * 200)
    await sa.apply_remote([o.raw for o in ops])
    net = MemNet()
    net.links.add(frozenset((A, B)))
    svcs = _services(net, {A: sa, B: sb}, wall)
    # both ends see the link come up and open a session at the same moment
    assert all(await asyncio.gather(svcs[A].sync_now(B), svcs[B].sync_now(A)))
    await asyncio.gather(*net.tasks)
    assert len(sb) == 1500
    assert svcs[A].status()["peers"][B.hex()]["ops_out"] == 1500
    assert svcs[B].status()["peers"][A.hex()]["ops_in"] == 1500
    assert net.bytes_total() < 1.1 * sum(len(o.raw) for o in ops)
    await sa.close()
    await sb.close()


async def test_mail_goes_by_custody_bulletins_flood(
        open_store: Callable[..., Any], wall: list[float]) -> None:
    """With a ``MailCustody`` (2 copies at the writer): B gets the mail with one copy and
    hands it only to its recipient C, never to D; the bulletin reaches everyone, and B's
    link to D is up to date though D lacks the mail."""
    from sync.custody import MailCustody
    D = b"D" * 16
    stores = {n: await open_store(f"{n[:1].decode()}.db") for n in (A, B, C, D)}
    net = MemNet()
    net.links |= {frozenset((A, B)), frozenset((B, C)), frozenset((B, D))}
    svcs = {}
    for nid, st in stores.items():
        svcs[nid] = SyncService(st, open_stream=net.opener(nid), wall_clock=lambda: wall[0],
                                rng=random.Random(nid),
                                custody=MailCustody(nid, copies=2))
        net.handlers[nid] = svcs[nid].handle_stream
    key = Ed25519PrivateKey.generate()
    mail = create_op(key, kind="mail.sealed", doc_id=C, body=b"\x80", seq=0, prev=None,
                     hlc=HLC0, expiry_ms=int(WALL_S * 1000) + 3_600_000)
    bull = chain(key, 1, start_hlc=HLC0 + 1, kind="bulletin.post")[0]
    await stores[A].apply_remote([mail.raw, bull.raw])  # (as a leaf's submission: written here)
    assert await svcs[B].sync_now(A)
    await asyncio.gather(*net.tasks)
    assert mail.op_id in stores[B] and bull.op_id in stores[B]
    assert svcs[A].status()["custody"] == {"mail_held": 1, "copies_handed": 1, "delivered": 0}
    assert await svcs[B].sync_now(D) and await svcs[D].sync_now(B)
    await asyncio.gather(*net.tasks)
    assert bull.op_id in stores[D] and mail.op_id not in stores[D]
    assert svcs[B].status()["peers"][D.hex()]["last_difference"] == {"in": 0, "out": 0}
    assert await svcs[C].sync_now(B)
    await asyncio.gather(*net.tasks)
    assert mail.op_id in stores[C] and bull.op_id in stores[C]
    assert svcs[B].status()["custody"]["delivered"] == 1
    # a restarted service: held mail waits for its recipient
    again = SyncService(stores[B], open_stream=net.opener(B), wall_clock=lambda: wall[0],
                        rng=random.Random(1), custody=MailCustody(B, copies=2))
    assert await again.load_custody() == 1
    assert again.custody is not None and again.custody.give(mail.op_id, D) == 0
    for s in stores.values():
        await s.close()
