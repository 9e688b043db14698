"""The ``msg`` service in process: two real ``Messenger``s joined by a wire that can lose packets.

Acknowledged only once durable; a write that fails (disk full) is not acknowledged and
the sender is told; retries run on the pure outbox; duplicates are suppressed across a
restart.  Every wait is on an event or a future, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.core.packet import DEFAULT_HOP_LIMIT, MeshPacket, Service
from meshd.services import messaging
from meshd.services.messaging import Messenger, Undeliverable


class _Wire:
    """Delivers ``msg`` payloads between nodes on the next loop turn; ``drop`` decides losses."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, _Node] = {}
        self.drop: Callable[[NodeId, NodeId, bytes], bool] = lambda s, d, b: False
        self.sent: list[tuple[NodeId, NodeId]] = []


class _Node:
    def __init__(self, wire: _Wire, name: str, state: Path) -> None:
        self.identity = Identity.load_or_create(state)
        self.announcement = Announcement.decode(
            self.identity.announce(1, time.time(), name, Role.CAR).raw)
        self.wire = wire
        self.events: list[tuple[str, dict[str, Any]]] = []
        wire.nodes[self.identity.node_id] = self
        self.messenger = self._messenger(state)

    def _messenger(self, state: Path) -> Messenger:
        return Messenger(self, state / "messages.jsonl", lambda e, d: self.events.append((e, d)),
                         time.monotonic)

    def restart(self, state: Path) -> None:
        self.messenger = self._messenger(state)

    def announcement_of(self, node_id: NodeId) -> Announcement | None:
        n = self.wire.nodes.get(node_id)
        return n.announcement if n is not None else None

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool:
        dst = self.wire.nodes.get(destination)
        if dst is None:
            return False
        self.wire.sent.append((self.identity.node_id, destination))
        if not self.wire.drop(self.identity.node_id, destination, data):
            pkt = MeshPacket(self.identity.node_id, destination, DEFAULT_HOP_LIMIT, service, 0, data)
            asyncio.get_running_loop().call_soon(lambda: dst.messenger.on_packet(pkt, 0.0))
        return True

    def wall_ms(self) -> int:
        return int(time.time() * 1000)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[_Wire, _Node, _Node]:
    wire = _Wire()
    return wire, _Node(wire, "ann", tmp_path / "ann"), _Node(wire, "bob", tmp_path / "bob")


def _inbox(node: _Node) -> list[dict[str, Any]]:
    path = node.messenger._inbox_path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _writer(node: _Node) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(node.messenger.run())


async def test_acknowledged_only_once_appended_and_fsynced(
        pair: tuple[_Wire, _Node, _Node], monkeypatch: pytest.MonkeyPatch) -> None:
    _wire, ann, bob = pair
    real = messaging._append_fsync
    entered, release = threading.Event(), threading.Event()

    def slow(path: Path, data: bytes) -> None:
        entered.set()
        assert release.wait(10)
        real(path, data)

    monkeypatch.setattr(messaging, "_append_fsync", slow)
    writer = await _writer(bob)
    send = asyncio.ensure_future(ann.messenger.send(bob.identity.node_id, "at the shelter at 6"))
    await asyncio.to_thread(entered.wait, 10)  # bob has it and is writing it
    await asyncio.sleep(0)
    assert not send.done(), "acknowledged before the message was on disk"
    assert bob.messenger.messages() == [] and _inbox(bob) == []
    release.set()
    res = await asyncio.wait_for(send, 10)
    assert res.attempts >= 1
    (rec,) = _inbox(bob)  # on disk by the time the sender heard "delivered"
    assert rec["text"] == "at the shelter at 6" and rec["from_name"] == "ann"
    assert bob.messenger.messages() == [rec]
    assert [e for e, _ in bob.events] == ["message.received"]
    writer.cancel()


async def test_disk_full_is_not_acknowledged_sender_told_logged_once_then_recovers(
        pair: tuple[_Wire, _Node, _Node], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    _wire, ann, bob = pair
    full = True
    real = messaging._append_fsync

    def append(path: Path, data: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(messaging, "_append_fsync", append)
    writer = await _writer(bob)
    caplog.set_level(logging.ERROR, logger="meshd.services.messaging")
    for text in ("first", "second"):
        with pytest.raises(Undeliverable) as err:
            await asyncio.wait_for(ann.messenger.send(bob.identity.node_id, text), 10)
        assert (err.value.reason, err.value.why) == ("not_stored", "disk_full")
        assert "could not store" in str(err.value)
    assert bob.messenger.messages() == [] and _inbox(bob) == []
    assert bob.messenger.store_error is not None and "No space left" in bob.messenger.store_error
    assert len([r for r in caplog.records if "cannot store" in r.getMessage()]) == 1
    assert [e for e, _ in bob.events] == ["message.store_failed", "message.store_failed"]
    full = False  # space freed: the next message is stored and acknowledged
    await asyncio.wait_for(ann.messenger.send(bob.identity.node_id, "third"), 10)
    assert [m["text"] for m in _inbox(bob)] == ["third"]
    assert bob.messenger.store_error is None
    writer.cancel()


async def test_a_retry_after_a_failed_write_is_stored(
        pair: tuple[_Wire, _Node, _Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first copy fails to write and its nack is lost; the retransmission (the same sealed
    bytes, which the replay cache has seen) is stored and acknowledged."""
    wire, ann, bob = pair
    real = messaging._append_fsync
    calls = 0

    def append(path: Path, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(errno.EIO, "Input/output error")
        real(path, data)

    monkeypatch.setattr(messaging, "_append_fsync", append)
    nacks = 0

    def drop(src: NodeId, dst: NodeId, data: bytes) -> bool:
        nonlocal nacks
        if src == bob.identity.node_id and nacks == 0:
            nacks += 1
            return True
        return False

    wire.drop = drop
    writer = await _writer(bob)
    res = await asyncio.wait_for(ann.messenger.send(bob.identity.node_id, "retry me"), 10)
    assert res.attempts == 2 and calls == 2
    assert [m["text"] for m in _inbox(bob)] == ["retry me"]
    writer.cancel()


async def test_lost_packets_are_retransmitted_and_a_lost_ack_makes_no_duplicate(
        pair: tuple[_Wire, _Node, _Node]) -> None:
    wire, ann, bob = pair
    lost = {"to_bob": 1, "to_ann": 1}

    def drop(src: NodeId, dst: NodeId, data: bytes) -> bool:
        way = "to_bob" if dst == bob.identity.node_id else "to_ann"
        if lost[way]:
            lost[way] -= 1
            return True
        return False

    wire.drop = drop
    writer = await _writer(bob)
    res = await asyncio.wait_for(ann.messenger.send(bob.identity.node_id, "twice lost"), 10)
    assert res.attempts == 3  # the first copy lost, the second's ack lost, the third acked
    assert [m["text"] for m in _inbox(bob)] == ["twice lost"]
    writer.cancel()


async def test_unreachable_and_timeout(pair: tuple[_Wire, _Node, _Node]) -> None:
    wire, ann, bob = pair
    wire.drop = lambda s, d, b: True
    with pytest.raises(Undeliverable) as err:
        await ann.messenger.send(bob.identity.node_id, "into the void", timeout=1.2)
    assert err.value.reason == "timeout" and "2 attempt(s)" in str(err.value)  # at 0 and 0.5 s
    del wire.nodes[bob.identity.node_id]
    bob_ann = bob.announcement
    ann.announcement_of = lambda node_id: bob_ann  # type: ignore[method-assign]
    with pytest.raises(Undeliverable) as err:
        await ann.messenger.send(bob.identity.node_id, "no route", timeout=0.6)
    assert err.value.reason == "unreachable"


async def test_a_message_stored_before_a_restart_is_acknowledged_not_stored_again(
        pair: tuple[_Wire, _Node, _Node], tmp_path: Path) -> None:
    wire, ann, bob = pair
    writer = await _writer(bob)
    copies: list[bytes] = []
    real_send = ann.send_message

    def record(destination: NodeId, service: int, data: bytes) -> bool:
        copies.append(data)
        return real_send(destination, service, data)

    ann.send_message = record  # type: ignore[method-assign]
    await asyncio.wait_for(ann.messenger.send(bob.identity.node_id, "once"), 10)
    writer.cancel()
    bob.restart(tmp_path / "bob")  # the inbox is read back, its keys with it
    writer = await _writer(bob)
    acks: list[bytes] = []

    def keep_acks(src: NodeId, dst: NodeId, data: bytes) -> bool:
        if src == bob.identity.node_id:
            acks.append(data)
        return False

    wire.drop = keep_acks
    pkt = MeshPacket(ann.identity.node_id, bob.identity.node_id, DEFAULT_HOP_LIMIT, Service.MSG, 0,
                     copies[0])
    bob.messenger.on_packet(pkt, 0.0)  # a late retransmission of the same sealed bytes
    assert len(acks) == 1
    assert [m["text"] for m in bob.messenger.messages()] == ["once"]
    assert [m["text"] for m in _inbox(bob)] == ["once"]
    writer.cancel()


async def test_deliver_returns_once_durable_and_raises_when_not(
        pair: tuple[_Wire, _Node, _Node], monkeypatch: pytest.MonkeyPatch) -> None:
    _wire, ann, bob = pair
    writer = await _writer(bob)
    sender = ann.identity.node_id
    assert await bob.messenger.deliver(sender, "m1", "by mail", 5, via="mail") is True
    assert [m["via"] for m in _inbox(bob)] == ["mail"]
    assert await bob.messenger.deliver(sender, "m1", "by mail", 5, via="mail") is False

    def fail(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(messaging, "_append_fsync", fail)
    with pytest.raises(OSError):
        await bob.messenger.deliver(sender, "m2", "lost?", 6, via="mail")
    assert len(_inbox(bob)) == 1
    writer.cancel()


def test_a_failed_append_leaves_no_partial_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "messages.jsonl"
    messaging._append_fsync(path, b'{"a": 1}\n')
    real_write = os.write

    def short_then_full(fd: int, data: Any) -> int:
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError):
        messaging._append_fsync(path, b'{"b": 2}\n')
    monkeypatch.undo()
    assert path.read_bytes() == b'{"a": 1}\n'
