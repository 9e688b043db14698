"""The ``msg`` service: sealed text messages end to end, acknowledged, retried, kept in an inbox.

Theory of operation
-------------------
``send`` seals the text to the recipient's X25519 key (``meshd.core.seal``: relays
see only routing headers), hands it to the node (which fragments anything
larger than one packet), and retries the *same* sealed bytes with backoff
until a sealed acknowledgement carrying the message id comes back or the
timeout passes.  The recipient checks the seal (sender keys hash to the packet
source), stores the message once, and acknowledges every copy it receives, so
a lost acknowledgement is repaired by the sender's next retry without a
duplicate in the inbox.  The inbox is a JSON-lines file in the state directory,
appended and fsync'd off the event loop; a restart keeps what was received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import LocalProtocolError, RemoteProtocolError
from meshd.core.identity import Announcement, Identity, NodeId, short_id
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import MAX_SEALED, ReplayCache, open_sealed, seal

__all__ = ["MAX_TEXT_BYTES", "MessageNode", "Messenger", "SendResult", "Undeliverable"]

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 32 * 1024
RETRY_DELAYS_S = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)
_CONTEXT = b"msg"


class MessageNode(Protocol):
    """What the messenger needs from the node (the composition root provides it)."""

    identity: Identity

    def announcement_of(self, node_id: NodeId) -> Announcement | None: ...

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool: ...

    def wall_ms(self) -> int: ...


class Undeliverable(LocalProtocolError):
    """The message could not be sent: ``reason`` is ``unknown_key``, ``unreachable`` or ``timeout``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    attempts: int
    rtt_ms: float


class Messenger:
    """Sends and receives ``msg`` packets for one node."""

    def __init__(self, node: MessageNode, inbox_path: Path,
                 publish: Callable[[str, dict[str, Any]], None]) -> None:
        self._node = node
        self._inbox_path = inbox_path
        self._publish = publish
        self._replay = ReplayCache()
        self._received: OrderedDict[tuple[NodeId, bytes], None] = OrderedDict()
        self._acks: dict[bytes, asyncio.Event] = {}
        self._inbox: list[dict[str, Any]] = self._load()
        self.drops = DropCounter(logger)
        self._write_lock = asyncio.Lock()

    def _load(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self._inbox_path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
        return out

    def messages(self) -> list[dict[str, Any]]:
        """Received messages, oldest first."""
        return list(self._inbox)

    async def send(self, destination: NodeId, text: str, timeout: float = 10.0) -> SendResult:
        """Seal, send and wait for the acknowledgement; raises ``Undeliverable``."""
        body = text.encode("utf-8")
        if len(body) > MAX_TEXT_BYTES:
            raise LocalProtocolError(f"message of {len(body)} bytes exceeds {MAX_TEXT_BYTES}")
        ann = self._node.announcement_of(destination)
        if ann is None:
            raise Undeliverable("unknown_key", f"no announcement (keys) known for {short_id(destination)}")
        sealed = seal(self._node.identity, ann.x25519_pub, destination,
                      pack({"k": "text", "text": text}), context=_CONTEXT,
                      timestamp_ms=self._node.wall_ms())
        mid = sealed[:32]  # the ephemeral public key is unique per message
        acked = self._acks[mid] = asyncio.Event()
        loop = asyncio.get_running_loop()
        start = loop.time()
        attempts = 0
        try:
            for delay in RETRY_DELAYS_S:
                if delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(acked.wait(), min(delay, max(0.0, start + timeout - loop.time())))
                if acked.is_set():
                    break
                if loop.time() - start >= timeout:
                    break
                if self._node.send_message(destination, Service.MSG, sealed):
                    attempts += 1
            if not acked.is_set():
                remaining = start + timeout - loop.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(acked.wait(), remaining)
            if not acked.is_set():
                if attempts == 0:
                    raise Undeliverable("unreachable", f"no route to {short_id(destination)}")
                raise Undeliverable("timeout", f"no acknowledgement from {short_id(destination)} in {timeout} s")
            return SendResult(mid.hex()[:24], attempts, round((loop.time() - start) * 1000, 3))
        finally:
            self._acks.pop(mid, None)

    def on_packet(self, pkt: MeshPacket, now: float) -> None:
        """Handle one whole ``msg`` payload (already reassembled)."""
        try:
            opened = open_sealed(self._node.identity, pkt.payload[:MAX_SEALED], source=pkt.source,
                                 context=_CONTEXT)
            f = Fields(unpack(opened.body, MAX_TEXT_BYTES + 256))
            kind = f.str("k", max_len=8)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
            return
        if kind == "ack":
            try:
                ref = f.bytes("ref", size=32)
            except RemoteProtocolError as exc:
                self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
                return
            event = self._acks.get(ref)
            if event is not None:
                event.set()
            return
        if kind != "text":
            self.drops.drop("kind", short_id(pkt.source), kind)
            return
        mid = pkt.payload[:32]
        key = (pkt.source, mid)
        if key not in self._received:
            try:
                self._replay.check(opened, self._node.wall_ms())
                text = f.str("text", max_len=MAX_TEXT_BYTES)
            except RemoteProtocolError as exc:
                self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
                return
            self._received[key] = None
            if len(self._received) > 65536:
                self._received.popitem(last=False)
            ann = self._node.announcement_of(pkt.source)
            record = {"message_id": mid.hex()[:24], "from": pkt.source.hex(),
                      "from_name": ann.name if ann else "", "sent_ms": opened.timestamp_ms,
                      "received_ms": self._node.wall_ms(), "text": text}
            self._inbox.append(record)
            asyncio.get_running_loop().create_task(self._append(record))
            self._publish("message.received", record)
            logger.info("[%s] message received (%d bytes)", short_id(pkt.source), len(text))
        ack = seal(self._node.identity, opened.sender_x25519, pkt.source,
                   pack({"k": "ack", "ref": mid}), context=_CONTEXT, timestamp_ms=self._node.wall_ms())
        self._node.send_message(pkt.source, Service.MSG, ack)

    def deliver(self, sender: NodeId, message_id: str, text: str, sent_ms: int, *,
                via: str, sender_name: str = "") -> bool:
        """Put a message that reached us another way (``via``, e.g. "mail") in the inbox, once.

        The caller has verified the sender already (``sender_name`` is shown when we hold
        no announcement of it); False if it was delivered before.
        """
        key = (sender, f"{via}:{message_id}".encode())
        if key in self._received:
            return False
        self._received[key] = None
        ann = self._node.announcement_of(sender)
        record = {"message_id": message_id, "from": sender.hex(),
                  "from_name": ann.name if ann else sender_name, "sent_ms": sent_ms,
                  "received_ms": self._node.wall_ms(), "text": text, "via": via}
        self._inbox.append(record)
        asyncio.get_running_loop().create_task(self._append(record))
        self._publish("message.received", record)
        logger.info("[%s] message received via %s (%d bytes)", short_id(sender), via, len(text))
        return True

    async def _append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        async with self._write_lock:
            await asyncio.to_thread(_append_fsync, self._inbox_path, line)


def _append_fsync(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
