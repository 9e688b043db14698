"""Gossip service: reconcile with neighbours and push new ops to them (asyncio adapter).

Theory of operation
-------------------
A *session* is one message-framed stream between two neighbours (the link
layer's ``open_stream(peer, "sync")``).  Frames start with a type byte:

==============  ====================================================
``RECON``       a ``sync.reconcile`` message
``RECON_DONE``  reconciliation is finished (or was not wanted: a push session)
``OPS``         batch number, then raw ops, each prefixed by its length (varints)
``ACK``         batch number: every op of that batch is committed at the receiver
``END``         I have nothing more to send and all of it is acknowledged
==============  ====================================================

Both ends run the same ``_Session``: a reader that answers reconciliation
messages, applies op batches through ``OpStore.apply_remote`` and acknowledges
each batch only after it returns (after the commit), and a sender that pushes
the ops the reconciliation found the peer lacks, highest-priority namespace
first and oldest first within it (so an author's chain arrives in order), in
bounded batches with at most ``WINDOW`` unacknowledged at once.  That window
is the backpressure: a dealer's 10,000-op catch-up moves at the speed the far
side commits, in frames small enough that voice datagrams interleave.

Per neighbour the service reconciles when the link comes up and every
``interval_s`` (with jitter from the injected ``rng``), and pushes ops newly
committed here (created locally or received from another neighbour) within
``push_delay_s``, in a push-only session.  Ops a neighbour sent us, or that we
already sent it, are not sent to it again while the link stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError, RemoteProtocolError
from meshd.core.tasks import cancel_and_wait
from sync.envelope import MAX_OP_SIZE, NAMESPACE_PRIORITY, Op
from sync.reconcile import MAX_MESSAGE_SIZE, Reconciler
from sync.store import OpStore

__all__ = ["OpenStream", "PeerStatus", "Stream", "SyncService"]

log = logging.getLogger(__name__)

RECON, RECON_DONE, OPS, ACK, END = 1, 2, 3, 4, 5
#: ops and bytes per OPS frame; frames stay small so calls interleave
BATCH_OPS = 256
BATCH_BYTES = 128 * 1024
#: unacknowledged batches in flight per session
WINDOW = 4
#: received batches being verified/committed at once (verification overlaps the commit)
APPLY_AHEAD = 2
MAX_FRAME = max(MAX_MESSAGE_SIZE + 1, BATCH_BYTES + MAX_OP_SIZE + 64)
#: a session whose peer says nothing for this long is abandoned
IDLE_TIMEOUT_S = 30.0


class Stream(Protocol):
    """A message-framed, reliable, ordered stream to one neighbour (meshd.links.manager.Stream)."""

    async def send(self, msg: bytes) -> None: ...
    async def recv(self) -> bytes | None: ...
    async def close(self) -> None: ...


OpenStream = Callable[[bytes, str], Awaitable[Stream]]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("malformed", "bad varint")
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def _parse_ops(payload: bytes) -> tuple[int, list[bytes]]:
    batch, pos = _read_varint(payload, 0)
    raws: list[bytes] = []
    while pos < len(payload):
        n, pos = _read_varint(payload, pos)
        if n > MAX_OP_SIZE or pos + n > len(payload) or len(raws) >= BATCH_OPS:
            raise DecodeError("malformed", "op batch")
        raws.append(payload[pos : pos + n])
        pos += n
    return batch, raws


@dataclass
class PeerStatus:
    """Counters of one neighbour, as ``status()`` reports them."""

    up: bool = False
    last_sync: float | None = None
    ops_in: int = 0
    ops_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    sessions: int = 0
    failures: int = 0
    refused_in: int = 0
    #: catch-up in flight: expected and done, each way (None when idle)
    catch_up: dict[str, int] | None = None
    #: the last completed reconciliation found no difference either way
    up_to_date: bool = False
    #: what the last completed reconciliation found: ops to fetch and to send
    last_difference: dict[str, int] | None = None


@dataclass
class _Peer:
    node_id: bytes
    status: PeerStatus = field(default_factory=PeerStatus)
    #: op ids this neighbour holds to our knowledge (sent and acknowledged, or received from it)
    known: set[bytes] = field(default_factory=set)
    #: op ids some session is sending to this neighbour right now (not acknowledged yet)
    sending: set[bytes] = field(default_factory=set)
    push: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reconcile_due: bool = True
    task: asyncio.Task[None] | None = None


class _Session:
    """One sync session over one stream; the same code at both ends."""

    def __init__(self, svc: SyncService, peer: _Peer, stream: Stream, *,
                 reconcile: bool, initiator: bool, push: Sequence[bytes] = ()) -> None:
        self.svc = svc
        self.peer = peer
        self.stream = stream
        self.initiator = initiator
        self.reconcile = reconcile
        self.rec: Reconciler | None = None
        self.recon_done = not reconcile and initiator
        self.queue: list[tuple[int, int, bytes]] = []
        self.queued: set[bytes] = set()
        self.in_flight: dict[int, list[bytes]] = {}
        self.next_batch = 0
        self.sent_end = False
        self.got_end = False
        self.changed = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.in_expected = 0
        self.in_done = 0
        self.out_done = 0
        self.recon_bytes = 0
        self.recon_round_trips = 0
        self.applying: deque[asyncio.Future[None]] = deque()
        self._enqueue(push)

    @property
    def tag(self) -> str:
        return self.peer.node_id.hex()[:8]

    def _enqueue(self, ids: Sequence[bytes]) -> None:
        store = self.svc.store
        for op_id in ids:
            if op_id in self.queued or op_id in self.peer.known:
                continue
            ns = store.namespace_of(op_id)
            hlc = store.hlc_of(op_id)
            if ns is None or hlc is None:
                continue
            heapq.heappush(self.queue, (self.svc.priority(ns), hlc, op_id))
            self.queued.add(op_id)
        self.changed.set()

    def progress(self) -> dict[str, int]:
        return {"in_expected": max(self.in_expected, self.in_done), "in_done": self.in_done,
                "out_expected": len(self.queued), "out_done": self.out_done}

    async def _send(self, frame: bytes) -> None:
        async with self.send_lock:
            await self.stream.send(frame)
        self.peer.status.bytes_out += len(frame)
        self.svc.totals["bytes_out"] += len(frame)

    async def run(self) -> None:
        """Run the session to its end (raises on a broken stream or a misbehaving peer)."""
        if self.initiator:
            if self.reconcile:
                self.rec = Reconciler(self.svc.store.range_sets())
                msg = self.rec.initiate()
                self.recon_bytes += len(msg)
                self.recon_round_trips += 1
                await self._send(bytes([RECON]) + msg)
            else:
                await self._send(bytes([RECON_DONE]))
        sender = asyncio.ensure_future(self._sender())
        try:
            await self._reader(sender)
        finally:
            for ids in self.in_flight.values():  # never acknowledged: others may send them
                self.peer.sending.difference_update(ids)
            if not sender.done():
                await cancel_and_wait(sender)
        if sender.done() and not sender.cancelled():
            sender.result()  # re-raise the sender's error, if any

    async def _reader(self, sender: asyncio.Future[None]) -> None:
        # one receive in flight at a time, never cancelled while the session lives
        recv: asyncio.Future[bytes | None] | None = None
        try:
            while not (self.got_end and self.sent_end):
                if recv is None:
                    recv = asyncio.ensure_future(self.stream.recv())
                waiters: set[asyncio.Future[Any]] = {recv}
                if not sender.done():
                    waiters.add(sender)
                async with asyncio.timeout(self.svc.idle_timeout_s):
                    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    sender.result()  # the sender failed: re-raise its error; or it finished
                    continue
                frame = recv.result()
                recv = None
                if frame is None:
                    raise ConnectionError("stream closed mid-session")
                await self._handle(frame)
            while self.applying:  # (the peer's END implies all were acknowledged)
                await self.applying.popleft()
        finally:
            if recv is not None and not recv.done():
                await cancel_and_wait(recv)
            for task in self.applying:
                task.cancel()

    async def _handle(self, frame: bytes) -> None:
        if not frame or len(frame) > MAX_FRAME:
            raise DecodeError("malformed", "frame size")
        self.peer.status.bytes_in += len(frame)
        self.svc.totals["bytes_in"] += len(frame)
        kind, payload = frame[0], frame[1:]
        if kind == RECON:
            if self.recon_done:
                raise DecodeError("state", "reconcile message after the end")
            if self.rec is None:
                self.rec = Reconciler(self.svc.store.range_sets())
            self.recon_bytes += len(frame)
            reply = self.rec.receive(payload)
            self._enqueue([i for ns in self.rec.have.values() for i in ns])
            self.in_expected = self.rec.incoming()
            if reply is None:
                self.recon_done = True
                await self._send(bytes([RECON_DONE]))
            else:
                self.recon_bytes += len(reply) + 1
                if self.initiator:
                    self.recon_round_trips += 1
                await self._send(bytes([RECON]) + reply)
            self.changed.set()
        elif kind == RECON_DONE:
            self.recon_done = True
            if self.rec is not None:
                self.in_expected = self.rec.incoming()
            self.changed.set()
        elif kind == OPS:
            batch, raws = _parse_ops(payload)
            ids = [hashlib.sha256(r).digest() for r in raws]
            self.peer.known.update(ids)
            # verify the next batch while this one commits: at most APPLY_AHEAD at once
            while len(self.applying) >= APPLY_AHEAD:
                await self.applying.popleft()
            self.applying.append(asyncio.ensure_future(self._apply(batch, raws)))
        elif kind == ACK:
            batch, _ = _read_varint(payload, 0)
            if batch not in self.in_flight:
                raise DecodeError("state", "ack of an unknown batch")
            ids = self.in_flight.pop(batch)
            self.peer.known.update(ids)
            self.peer.sending.difference_update(ids)
            self.out_done += len(ids)
            self.peer.status.ops_out += len(ids)
            self.svc.totals["ops_out"] += len(ids)
            self.changed.set()
        elif kind == END:
            self.got_end = True
        else:
            raise DecodeError("malformed", f"frame type {kind}")

    async def _apply(self, batch: int, raws: list[bytes]) -> None:
        """Apply one batch; acknowledge it only once the store has committed it."""
        result = await self.svc.store.apply_remote(raws, peer=self.tag)
        refused = sum(result.refused.values())
        self.in_done += len(raws)
        self.peer.status.ops_in += len(raws) - refused
        self.peer.status.refused_in += refused
        self.svc.totals["ops_in"] += len(raws) - refused
        await self._send(bytes([ACK]) + _varint(batch))

    async def _sender(self) -> None:
        while True:
            await self.changed.wait()
            self.changed.clear()
            while self.queue and len(self.in_flight) < WINDOW:
                await self._send_batch()
            if self.recon_done and not self.queue and not self.in_flight:
                self.sent_end = True
                await self._send(bytes([END]))
                return

    async def _send_batch(self) -> None:
        peer = self.peer
        ids: list[bytes] = []
        while self.queue and len(ids) < BATCH_OPS:
            _, _, op_id = heapq.heappop(self.queue)
            # another session to this peer (both ends may open one) may carry it already
            if op_id not in peer.known and op_id not in peer.sending:
                ids.append(op_id)
        if not ids:
            return
        peer.sending.update(ids)
        # the store skips ops purged since they were queued
        pairs = await self.svc.store.get_raw_pairs(ids)
        parts = [_varint(self.next_batch)]
        sent: list[bytes] = []
        size = 0
        for op_id, raw in pairs:
            if size + len(raw) > BATCH_BYTES and sent:
                break  # over the byte budget: the rest goes back to the queue
            parts.append(_varint(len(raw)))
            parts.append(raw)
            sent.append(op_id)
            size += len(raw)
        unsent = set(ids).difference(sent)
        peer.sending.difference_update(unsent)
        store = self.svc.store
        for back in unsent:
            hlc = store.hlc_of(back)
            if hlc is not None:
                heapq.heappush(self.queue, (self.svc.priority(store.namespace_of(back) or ""),
                                            hlc, back))
        self.in_flight[self.next_batch] = sent
        self.next_batch += 1
        await self._send(bytes([OPS]) + b"".join(parts))
        await asyncio.sleep(0)  # let voice and routing run between batches


class SyncService:
    """Reconciles with each neighbour and pushes new ops; register ``handle_stream`` as "sync"."""

    def __init__(self, store: OpStore, *, open_stream: OpenStream,
                 wall_clock: Callable[[], float], rng: random.Random,
                 interval_s: float = 30.0, push_delay_s: float = 0.05,
                 idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.store = store
        self.open_stream = open_stream
        self.wall_clock = wall_clock
        self.rng = rng
        self.interval_s = interval_s
        self.push_delay_s = push_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.drops = DropCounter(log)
        self.totals: dict[str, int] = {"ops_in": 0, "ops_out": 0, "bytes_in": 0, "bytes_out": 0}
        self._peers: dict[bytes, _Peer] = {}
        self._sessions: dict[bytes, list[_Session]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._order = {ns: i for i, ns in enumerate(NAMESPACE_PRIORITY)}
        self._unsubscribe = store.subscribe(self._on_commit)
        self.last_session: _Session | None = None

    def priority(self, ns: str) -> int:
        """Transfer rank of a namespace (lower goes first)."""
        return self._order.get(ns, len(self._order))

    # -- neighbour events --------------------------------------------------------------------

    def neighbour_up(self, peer: bytes) -> None:
        """A link to ``peer`` came up: reconcile with it now, and then periodically."""
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer)
        if p.status.up:
            return
        p.status.up = True
        p.known.clear()
        p.sending.clear()
        p.reconcile_due = True
        p.wake.set()
        if self._tg is not None and (p.task is None or p.task.done()):
            p.task = self._tg.create_task(self._peer_loop(p))

    def neighbour_down(self, peer: bytes) -> None:
        """The link to ``peer`` went down: stop its sessions (counters are kept for status)."""
        p = self._peers.get(peer)
        if p is None:
            return
        p.status.up = False
        p.push.clear()
        if p.task is not None:
            p.task.cancel()
            p.task = None

    def _on_commit(self, ops: Sequence[Op]) -> None:
        for p in self._peers.values():
            if p.status.up:
                p.push.extend(o.op_id for o in ops if o.op_id not in p.known)
                if p.push:
                    p.status.up_to_date = False  # until a reconciliation finds no difference
                    p.wake.set()

    # -- sessions ----------------------------------------------------------------------------

    async def handle_stream(self, peer: bytes, stream: Stream) -> None:
        """Serve a session a neighbour opened (never raises: a bad peer is counted and dropped)."""
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer)
        await self._run_session(p, stream, reconcile=True, initiator=False)

    async def _run_session(self, p: _Peer, stream: Stream, *, reconcile: bool, initiator: bool,
                           push: Sequence[bytes] = ()) -> bool:
        s = _Session(self, p, stream, reconcile=reconcile, initiator=initiator, push=push)
        self._sessions.setdefault(p.node_id, []).append(s)
        p.status.sessions += 1
        ok = False
        try:
            await s.run()
            ok = True
            if s.rec is not None:
                p.status.last_sync = self.wall_clock()
                found = {"in": s.rec.incoming(), "out": s.rec.outgoing()}
                p.status.last_difference = found
                p.status.up_to_date = found == {"in": 0, "out": 0}
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, s.tag, str(exc))
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("[%s] sync session ended: %s", s.tag, exc)
        except Exception:
            log.exception("[%s] sync session failed", s.tag)
        finally:
            if not ok:
                p.status.failures += 1
            self._sessions[p.node_id].remove(s)
            self.last_session = s
            with contextlib.suppress(Exception):
                await stream.close()
        return ok

    async def sync_now(self, peer: bytes) -> bool:
        """Run one reconciliation session with ``peer`` now; True if it completed."""
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer)
        stream = await self.open_stream(peer, "sync")
        return await self._run_session(p, stream, reconcile=True, initiator=True)

    async def _peer_loop(self, p: _Peer) -> None:
        backoff_s = 1.0
        while p.status.up:
            if not p.reconcile_due and not p.push:
                timeout = self.interval_s * (0.75 + 0.5 * self.rng.random())
                try:
                    async with asyncio.timeout(timeout):
                        await p.wake.wait()
                except TimeoutError:
                    p.reconcile_due = True
            p.wake.clear()
            try:
                if p.reconcile_due:
                    p.reconcile_due = False
                    p.push.clear()  # the reconciliation covers them
                    ok = await self.sync_now(p.node_id)
                elif p.push:
                    await asyncio.sleep(self.push_delay_s)  # gather a burst into one batch
                    push, p.push = p.push, []
                    stream = await self.open_stream(p.node_id, "sync")
                    ok = await self._run_session(p, stream, reconcile=False, initiator=True,
                                                 push=push)
                else:
                    continue
            except (ConnectionError, TimeoutError, OSError) as exc:
                log.info("[%s] cannot open a sync stream: %s", p.node_id.hex()[:8], exc)
                ok = False
            if ok:
                backoff_s = 1.0
            else:
                p.reconcile_due = True
                await asyncio.sleep(backoff_s * (0.5 + self.rng.random()))
                backoff_s = min(backoff_s * 2, self.interval_s)

    async def run(self) -> None:
        """Serve until cancelled: per-neighbour reconcile loops and pushes, expiry purges."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for p in self._peers.values():
                    if p.status.up and (p.task is None or p.task.done()):
                        p.task = tg.create_task(self._peer_loop(p))
                while True:
                    await asyncio.sleep(60.0)
                    await self.store.purge_expired()
        finally:
            self._tg = None
            self._unsubscribe()

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Per peer: last sync, ops and bytes each way, catch-up progress; plus store facts."""
        peers: dict[str, Any] = {}
        for node_id, p in self._peers.items():
            st = p.status
            sessions = self._sessions.get(node_id, [])
            catch_up: dict[str, int] | None = None
            # steady figures: what reconciliation found and is still to move (it only
            # shrinks once a session's reconciliation is done); None while still reconciling
            to_fetch: int | None = 0
            to_send = 0
            if sessions:
                catch_up = {"in_expected": 0, "in_done": 0, "out_expected": 0, "out_done": 0}
                for s in sessions:
                    prog = s.progress()
                    for k, v in prog.items():
                        catch_up[k] += v
                    to_send += max(0, prog["out_expected"] - prog["out_done"])
                    if s.rec is not None and to_fetch is not None:
                        to_fetch = (None if not s.recon_done else
                                    to_fetch + max(0, prog["in_expected"] - prog["in_done"]))
            peers[node_id.hex()] = {
                "up": st.up, "last_sync": st.last_sync, "ops_in": st.ops_in,
                "ops_out": st.ops_out, "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
                "sessions": st.sessions, "failures": st.failures, "refused_in": st.refused_in,
                "catch_up": catch_up, "to_fetch": to_fetch, "to_send": to_send,
                "up_to_date": st.up and st.up_to_date and not to_fetch and not to_send,
                "last_difference": st.last_difference,
            }
        return {"ops": len(self.store), "pending": self.store.pending_count(),
                "quarantined": [a.hex() for a in self.store.quarantined()],
                "refused": dict(self.store.drops.counts), "totals": dict(self.totals),
                "peers": peers}
