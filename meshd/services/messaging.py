"""The ``msg`` service: sealed text messages end to end, acknowledged, retried, kept in an inbox.

Theory of operation
-------------------
``send`` seals the text to the recipient's X25519 key (``meshd.core.seal``: relays
see only routing headers), hands it to the node (which fragments anything
larger than one packet), and retransmits the *same* sealed bytes on the pure
``meshd.services.outbox.Outbox`` schedule (0.5 s, doubling, at most 4 s apart)
until a sealed acknowledgement carrying the message id comes back or the
sender's deadline passes.  Retransmissions run on one timer fed the node's
monotonic clock; no task per message.

The recipient checks the seal (sender keys hash to the packet source) and
acknowledges a message only once it is *durable*: appended to the JSON-lines
inbox in the state directory and fsync'd.  The write is done by one writer task
(``run``, owned by the node's task group) that batches what arrived, so an
acknowledgement never runs ahead of the disk: a receiver killed right after the
sender printed "delivered" still has the message after a restart.  A write that
fails (disk full, I/O error) is not acknowledged: the recipient answers with a
sealed ``nack`` naming the failure class (``disk_full`` or ``io_error``, no free
text), the sender reports that at once, the failure is logged once and shown in
``status`` (``inbox_error``) until a write succeeds again.  Every copy of a
stored message is acknowledged again, so a lost acknowledgement is repaired by
the next retry without a duplicate in the inbox (also across restarts: the
inbox's keys are loaded at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
from meshd.core.seal import MAX_SEALED, Opened, ReplayCache, open_sealed, seal
from meshd.services.outbox import Outbox, RetryPolicy

__all__ = ["MAX_TEXT_BYTES", "RETRY", "MessageNode", "Messenger", "SendResult", "Undeliverable"]

logger = logging.getLogger(__name__)

MAX_TEXT_BYTES = 32 * 1024
#: retransmissions of a text message: 0.5 s after the first send, doubling, at most 4 s apart,
#: until the sender's deadline
RETRY = RetryPolicy(first=0.5, max_interval=4.0, max_tries=None)
#: received messages waiting for the writer; beyond this a message is not acknowledged (the
#: sender retries)
MAX_QUEUED_WRITES = 1024
#: records written with one fsync
WRITE_BATCH = 64
#: keys of stored messages remembered for duplicate suppression
MAX_KEYS = 65536
_CONTEXT = b"msg"
_NACK_WHY = ("disk_full", "io_error")

Key = tuple[str, str, str]  # (sender hex, via, message id)


class MessageNode(Protocol):
    """What the messenger needs from the node (the composition root provides it)."""

    identity: Identity

    def announcement_of(self, node_id: NodeId) -> Announcement | None: ...

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool: ...

    def wall_ms(self) -> int: ...


class Undeliverable(LocalProtocolError):
    """The message could not be delivered: ``reason`` is ``unknown_key``, ``unreachable``,
    ``timeout`` or ``not_stored`` (the recipient could not write it: ``why`` says how)."""

    def __init__(self, reason: str, message: str, why: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.why = why


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    attempts: int
    rtt_ms: float


@dataclass(slots=True)
class _Sending:
    destination: NodeId
    mid: bytes
    future: asyncio.Future[SendResult]
    start: float
    attempts: int = 0


@dataclass(slots=True)
class _Write:
    key: Key
    record: dict[str, Any]
    #: told the outcome once written (None) or failed (the error)
    done: Callable[[OSError | None], None]


def _why(exc: OSError) -> str:
    return "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"


class Messenger:
    """Sends and receives ``msg`` packets for one node; ``run()`` is its writer (the node owns it)."""

    def __init__(self, node: MessageNode, inbox_path: Path,
                 publish: Callable[[str, dict[str, Any]], None], clock: Callable[[], float]) -> None:
        self._node = node
        self._inbox_path = inbox_path
        self._publish = publish
        self._clock = clock
        self._replay = ReplayCache()
        self.drops = DropCounter(logger)
        self._outbox = Outbox(RETRY)
        self._sending: dict[int, _Sending] = {}
        self._by_mid: dict[bytes, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._queue: asyncio.Queue[_Write] = asyncio.Queue(MAX_QUEUED_WRITES)
        #: keys of messages durably in the inbox
        self._stored: OrderedDict[Key, None] = OrderedDict()
        #: keys being written, with the futures of ``deliver`` calls waiting for them
        self._writing: dict[Key, list[asyncio.Future[bool]]] = {}
        #: keys whose seal was checked but whose write failed (a retry skips the replay check)
        self._verified: OrderedDict[Key, None] = OrderedDict()
        #: the last write failure, until a write succeeds again (``status`` shows it)
        self.store_error: str | None = None
        self._inbox: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with contextlib.suppress(FileNotFoundError):
            for line in self._inbox_path.read_text(encoding="utf-8", errors="replace").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
                        self._remember(self._stored, (str(rec.get("from")), str(rec.get("via", "msg")),
                                                      str(rec.get("message_id"))))
        return out

    @staticmethod
    def _remember(keys: OrderedDict[Key, None], key: Key) -> None:
        keys[key] = None
        while len(keys) > MAX_KEYS:
            keys.popitem(last=False)

    def messages(self) -> list[dict[str, Any]]:
        """Received messages (durably stored), oldest first."""
        return list(self._inbox)

    # ------------------------------------------------------------------ sending

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
        now = self._clock()
        number = self._outbox.next_number()
        sending = _Sending(destination, mid, asyncio.get_running_loop().create_future(), now)
        self._sending[number] = sending
        self._by_mid[mid] = number
        if self._node.send_message(destination, Service.MSG, sealed):
            sending.attempts += 1
        self._outbox.add(number, sealed, now, deadline=now + timeout)
        self._arm()
        try:
            return await sending.future
        finally:
            self._outbox.ack(number)
            self._sending.pop(number, None)
            self._by_mid.pop(mid, None)
            self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._outbox.get_timer()
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_later(
                max(0.0, deadline - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        resend, failed = self._outbox.due(self._clock())
        for number, data in resend:
            s = self._sending.get(number)
            if s is not None and self._node.send_message(s.destination, Service.MSG, data):
                s.attempts += 1
        for number in failed:
            s = self._sending.get(number)
            if s is None or s.future.done():
                continue
            who = short_id(s.destination)
            if s.attempts == 0:
                s.future.set_exception(Undeliverable("unreachable", f"no route to {who}"))
            else:
                s.future.set_exception(Undeliverable(
                    "timeout", f"no acknowledgement from {who} in "
                               f"{self._clock() - s.start:.1f} s ({s.attempts} attempt(s))"))
        self._arm()

    def _settle(self, source: NodeId, ref: bytes, why: str | None) -> None:
        number = self._by_mid.get(ref)
        s = self._sending.get(number) if number is not None else None
        if s is None or s.destination != source or s.future.done():
            return
        if why is None:
            s.future.set_result(SendResult(ref.hex()[:24], s.attempts,
                                           round((self._clock() - s.start) * 1000, 3)))
        else:
            text = "its disk is full" if why == "disk_full" else "an I/O error"
            s.future.set_exception(Undeliverable(
                "not_stored", f"{short_id(source)} received the message but could not store it "
                              f"({text}): not delivered", why))
        self._outbox.ack(number or 0)

    # ------------------------------------------------------------------ receiving

    def on_packet(self, pkt: MeshPacket, now: float) -> None:
        """Handle one whole ``msg`` payload (already reassembled)."""
        try:
            opened = open_sealed(self._node.identity, pkt.payload[:MAX_SEALED], source=pkt.source,
                                 context=_CONTEXT)
            f = Fields(unpack(opened.body, MAX_TEXT_BYTES + 256))
            kind = f.str("k", max_len=8)
            if kind in ("ack", "nack"):
                ref = f.bytes("ref", size=32)
                why = f.str("why", max_len=16) if kind == "nack" else None
                if why is not None and why not in _NACK_WHY:
                    raise RemoteProtocolError("nack-why", "unknown nack reason")
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
            return
        if kind in ("ack", "nack"):
            self._settle(pkt.source, ref, why)
            return
        if kind != "text":
            self.drops.drop("kind", short_id(pkt.source), kind)
            return
        mid = pkt.payload[:32]
        key: Key = (pkt.source.hex(), "msg", mid.hex()[:24])
        if key in self._stored:
            self._reply(pkt.source, opened, mid, None)  # a retry: our ack was lost
            return
        if key in self._writing:
            return  # acknowledged once it is written
        try:
            if key not in self._verified:  # a retry after a failed write was checked already
                self._replay.check(opened, self._node.wall_ms())
            text = f.str("text", max_len=MAX_TEXT_BYTES)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
            return
        self._remember(self._verified, key)
        ann = self._node.announcement_of(pkt.source)
        record = {"message_id": key[2], "from": key[0], "from_name": ann.name if ann else "",
                  "sent_ms": opened.timestamp_ms, "received_ms": self._node.wall_ms(), "text": text}
        source = pkt.source

        def done(err: OSError | None) -> None:
            self._reply(source, opened, mid, None if err is None else _why(err))

        if not self._enqueue(_Write(key, record, done)):
            self.drops.drop("inbox-busy", short_id(pkt.source), "writer queue full: not acknowledged")

    def _reply(self, dest: NodeId, opened: Opened, mid: bytes, why: str | None) -> None:
        body: dict[str, Any] = {"k": "ack" if why is None else "nack", "ref": mid}
        if why is not None:
            body["why"] = why
        data = seal(self._node.identity, opened.sender_x25519, dest, pack(body), context=_CONTEXT,
                    timestamp_ms=self._node.wall_ms())
        self._node.send_message(dest, Service.MSG, data)

    async def deliver(self, sender: NodeId, message_id: str, text: str, sent_ms: int, *,
                      via: str, sender_name: str = "") -> bool:
        """Put a message that reached us another way (``via``, e.g. "mail") in the inbox, once.

        The caller has verified the sender already (``sender_name`` is shown when we hold
        no announcement of it).  Returns once the message is durable: True if stored now,
        False if it was stored before; raises ``OSError`` if it could not be written.
        """
        key: Key = (sender.hex(), via, message_id)
        if key in self._stored:
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if key in self._writing:
            self._writing[key].append(fut)
            await fut
            return False
        ann = self._node.announcement_of(sender)
        record = {"message_id": message_id, "from": key[0],
                  "from_name": ann.name if ann else sender_name, "sent_ms": sent_ms,
                  "received_ms": self._node.wall_ms(), "text": text, "via": via}

        def done(err: OSError | None) -> None:
            if fut.done():
                return
            if err is None:
                fut.set_result(True)
            else:
                fut.set_exception(err)

        if not self._enqueue(_Write(key, record, done)):
            raise OSError(errno.EAGAIN, "inbox writer queue full")
        return await fut

    def _enqueue(self, item: _Write) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        self._writing[item.key] = []
        return True

    # ------------------------------------------------------------------ the writer

    async def run(self) -> None:
        """Append received messages to the inbox (fsync'd), then acknowledge them; until cancelled."""
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < WRITE_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                data = b"".join((json.dumps(w.record, ensure_ascii=False) + "\n").encode()
                                for w in batch)
                err: OSError | None = None
                try:
                    await asyncio.to_thread(_append_fsync, self._inbox_path, data)
                except OSError as exc:
                    err = exc
                self._written(batch, err)
        finally:
            # cancelled: whatever was not written is not acknowledged (the senders retry)
            while not self._queue.empty():
                w = self._queue.get_nowait()
                for fut in self._writing.pop(w.key, []):
                    fut.cancel()
                w.done(OSError(errno.ECANCELED, "node stopping"))

    def _written(self, batch: list[_Write], err: OSError | None) -> None:
        if err is not None:
            if self.store_error is None:
                logger.error("cannot store received messages in %s: %s; they are not acknowledged "
                             "(senders are told); free space or fix the state directory",
                             self._inbox_path, err)
            self.store_error = f"{self._inbox_path}: {err.strerror or err}"
            self._publish("message.store_failed", {"error": self.store_error,
                                                   "messages": len(batch)})
        elif self.store_error is not None:
            logger.warning("storing received messages works again (%s)", self._inbox_path)
            self.store_error = None
        for w in batch:
            waiters = self._writing.pop(w.key, [])
            if err is None:
                self._remember(self._stored, w.key)
                self._inbox.append(w.record)
                self._publish("message.received", w.record)
                logger.info("[%s] message received%s (%d characters)", w.key[0][:8],
                            "" if w.key[1] == "msg" else f" via {w.key[1]}", len(w.record["text"]))
            for fut in waiters:
                if not fut.done():
                    if err is None:
                        fut.set_result(False)
                    else:
                        fut.set_exception(err)
            w.done(err)


def _append_fsync(path: Path, data: bytes) -> None:
    """Append ``data`` and fsync; on failure cut the file back so no partial line is left."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
