"""Gossip service: reconcile with neighbours and push new ops to them (asyncio adapter).

Theory of operation
-------------------
The session protocol (frames, window, acknowledgements, END) is the pure core
``sync.session.SyncSession``; its docstring describes it.  This module only
moves bytes, rows and time for it: ``_Session`` reads frames from the stream
into the core, writes the frames it hands out, reads the raw ops of each
batch it names from the ``OpStore``, commits each batch the peer sends through
``OpStore.apply_remote`` (verification of the next batch overlapping the
commit of this one: at most ``APPLY_AHEAD`` at once) and tells the core after
the commit, so only what is durable is acknowledged, and fires the core's
idle timer on the event loop's clock.

Per neighbour the service reconciles when the link comes up and then every
``interval_s`` (with jitter from the injected ``rng``) unless nothing we committed
since the last reconciliation is missing at the neighbour
(``PeerLedger.reconcile_needed``: converged links stay silent), and pushes ops newly
committed here (created locally or received from another neighbour) within
``push_delay_s``, in a push-only session.  Ops a neighbour sent us, or that we
already sent it, are not sent to it again while the link stays up (the
``PeerLedger`` shared by its sessions).

Sealed mail is not flooded when the service has a ``MailCustody``
(``sync.custody``): every session takes its view of the neighbour, so a mail
op goes only with spray copies or to its recipient; the copies a peer hands
us come with its batch (``OpsReceived.copies``) and are taken when the batch
is committed; mail written here (or submitted by a browser leaf) starts with
the full budget.  Mail held when the
service starts waits for its recipient (budgets are not stored), our own
starts again with the full budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshd.core.codec import DropCounter
from meshd.core.errors import RemoteProtocolError
from meshd.core.tasks import cancel_and_wait
from sync.custody import CUSTODY_NAMESPACES, MailCustody
from sync.envelope import Op
from sync.session import (
    IDLE_TIMEOUT_S,
    IdleTimedOut,
    OpsAcknowledged,
    OpsReceived,
    PeerLedger,
    PeerMisbehaved,
    SessionCompleted,
    SyncSession,
    namespace_rank,
)
from sync.store import ApplyResult, OpStore

__all__ = ["OpenStream", "PeerStatus", "Stream", "SyncService"]

log = logging.getLogger(__name__)

#: received batches being verified/committed at once (verification overlaps the commit)
APPLY_AHEAD = 2


class Stream(Protocol):
    """A message-framed, reliable, ordered stream to one neighbour (meshd.links.manager.Stream)."""

    async def send(self, msg: bytes) -> None: ...
    async def recv(self) -> bytes | None: ...
    async def close(self) -> None: ...


OpenStream = Callable[[bytes, str], Awaitable[Stream]]


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
    ledger: PeerLedger = field(default_factory=PeerLedger)
    push: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    reconcile_due: bool = True
    task: asyncio.Task[None] | None = None


class _Session:
    """Moves one ``SyncSession``'s frames, rows and time between a stream and the store."""

    def __init__(self, svc: SyncService, peer: _Peer, stream: Stream, core: SyncSession) -> None:
        self.svc = svc
        self.peer = peer
        self.stream = stream
        self.core = core
        self._to_apply: deque[OpsReceived] = deque()
        self._applying: dict[asyncio.Future[ApplyResult], OpsReceived] = {}

    @property
    def tag(self) -> str:
        return self.peer.node_id.hex()[:8]

    async def run(self) -> None:
        """Run the session to its end (raises on a broken stream or a misbehaving peer)."""
        loop = asyncio.get_running_loop()
        core = self.core
        recv: asyncio.Future[bytes | None] | None = None  # never cancelled while the session lives
        send: asyncio.Future[None] | None = None
        load: asyncio.Future[list[tuple[bytes, bytes]]] | None = None
        try:
            while True:
                if self._pump():
                    break
                if send is None and (frames := core.frames_to_send(loop.time())):
                    send = asyncio.ensure_future(self._send(frames))
                if load is None and (ids := core.take_batch()) is not None:
                    # the store skips ops purged since they were queued
                    load = asyncio.ensure_future(self.svc.store.get_raw_pairs(ids))
                while self._to_apply and len(self._applying) < APPLY_AHEAD:
                    ev = self._to_apply.popleft()
                    self.svc.copies_arriving(ev)
                    task = asyncio.ensure_future(
                        self.svc.store.apply_remote(list(ev.raw_ops), peer=self.tag))
                    self._applying[task] = ev
                # a batch waiting for an apply slot holds further frames back
                if recv is None and not self._to_apply:
                    recv = asyncio.ensure_future(self.stream.recv())
                waiters: set[asyncio.Future[Any]] = {*self._applying}
                waiters.update(f for f in (recv, send, load) if f is not None)
                timer = core.get_timer()
                timeout = None if timer is None else max(0.0, timer - loop.time())
                done, _ = await asyncio.wait(waiters, timeout=timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
                now = loop.time()
                if not done:
                    core.handle_timer(now)
                    continue
                if send in done:
                    send.result()  # a broken stream raises here
                    send = None
                if load in done:
                    core.batch_loaded(self.svc.outgoing(load.result()), now)
                    load = None
                    await asyncio.sleep(0)  # let voice and routing run between batches
                for fut in [t for t in self._applying if t in done]:
                    ev = self._applying.pop(fut)
                    self.svc.copies_arrived(ev)
                    self._count_applied(len(ev.raw_ops), fut.result())
                    core.batch_committed(ev.batch, now)
                if recv in done:
                    frame = recv.result()
                    recv = None
                    if frame is None:
                        raise ConnectionError("stream closed mid-session")
                    self.peer.status.bytes_in += len(frame)
                    self.svc.totals["bytes_in"] += len(frame)
                    core.receive_frame(frame, now)
            # completed: what is still to go out (the last ACKs, our END) goes
            if send is not None:
                await send
            await self._send(core.frames_to_send(loop.time()))
        finally:
            core.abort()  # releases what was never acknowledged (a no-op once complete)
            pending: list[asyncio.Future[Any] | None] = [recv, send, load, *self._applying]
            for left in pending:
                if left is not None and not left.done():
                    await cancel_and_wait(left)

    def _pump(self) -> bool:
        """Handle the core's events; True once the session completed (raises if it failed)."""
        while (ev := self.core.next_event()) is not None:
            if isinstance(ev, OpsReceived):
                self._to_apply.append(ev)
            elif isinstance(ev, OpsAcknowledged):
                self.peer.status.ops_out += len(ev.op_ids)
                self.svc.totals["ops_out"] += len(ev.op_ids)
            elif isinstance(ev, SessionCompleted):
                return True
            elif isinstance(ev, PeerMisbehaved):
                raise RemoteProtocolError(ev.reason, ev.detail)
            elif isinstance(ev, IdleTimedOut):
                raise TimeoutError(f"peer silent for {ev.idle_s:.1f} s")
        return False

    def _count_applied(self, n: int, result: ApplyResult) -> None:
        refused = sum(result.refused.values())
        self.peer.status.ops_in += n - refused
        self.peer.status.refused_in += refused
        self.svc.totals["ops_in"] += n - refused

    async def _send(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.stream.send(frame)
            self.peer.status.bytes_out += len(frame)
            self.svc.totals["bytes_out"] += len(frame)


class SyncService:
    """Reconciles with each neighbour and pushes new ops; register ``handle_stream`` as "sync"."""

    def __init__(self, store: OpStore, *, open_stream: OpenStream,
                 wall_clock: Callable[[], float], rng: random.Random,
                 interval_s: float = 30.0, push_delay_s: float = 0.05,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 custody: MailCustody | None = None) -> None:
        self.store = store
        #: mail forwarding (None: mail is flooded like every other op)
        self.custody = custody
        #: copies announced with ops being committed (taken by ``_on_commit``)
        self._arriving: dict[bytes, int | None] = {}
        self._custody_prune_at = 256
        self.open_stream = open_stream
        self.wall_clock = wall_clock
        self.rng = rng
        self.interval_s = interval_s
        self.push_delay_s = push_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.drops = DropCounter(log)
        self.totals: dict[str, int] = {"ops_in": 0, "ops_out": 0, "bytes_in": 0, "bytes_out": 0}
        self._peers: dict[bytes, _Peer] = {}
        self._sessions: dict[bytes, list[SyncSession]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._unsubscribe = store.subscribe(self._on_commit)
        #: the core of the session that ended last (its reconciliation cost, for benchmarks)
        self.last_session: SyncSession | None = None
        #: called with a neighbour's id after a reconciliation with it completed (committed)
        self.on_reconciled: Callable[[bytes], None] | None = None
        #: the highest stamp of an own op ever sent to a peer (``sync.reissue``); the owner
        #: restores it at start and persists it in ``on_own_sent`` before the op leaves
        self.own_sent_hlc = 0
        self.on_own_sent: Callable[[int], None] | None = None
        self._held_future_logged = False

    def priority(self, ns: str) -> int:
        """Transfer rank of a namespace (lower goes first)."""
        return namespace_rank(ns)

    # -- neighbour events --------------------------------------------------------------------

    def neighbour_up(self, peer: bytes) -> None:
        """A link to ``peer`` came up: reconcile with it now, and then periodically."""
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer)
        if p.status.up:
            return
        p.status.up = True
        p.ledger.clear()
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

    async def load_custody(self) -> int:
        """At start: the mail held in the store under custody (see the module docstring);
        returns how many."""
        c = self.custody
        if c is None:
            return 0
        n = 0
        async for op in self.store.iter_namespace("mail"):
            if c.is_custody(op.kind, op.seq):
                if self.store.is_own(op.op_id):
                    c.originated(op.op_id, op.doc_id)
                else:
                    c.received(op.op_id, op.doc_id, None)
                n += 1
        return n

    def copies_arriving(self, ev: OpsReceived) -> None:
        """A received batch goes to the store: remember the copies announced with it."""
        if self.custody is not None:
            copies = ev.copies or (None,) * len(ev.raw_ops)
            for raw, c in zip(ev.raw_ops, copies, strict=True):
                self._arriving[hashlib.sha256(raw).digest()] = c

    def copies_arrived(self, ev: OpsReceived) -> None:
        if self.custody is not None:
            for raw in ev.raw_ops:
                self._arriving.pop(hashlib.sha256(raw).digest(), None)

    def _on_commit(self, ops: Sequence[Op]) -> None:
        c = self.custody
        if c is not None:
            if len(c) > self._custody_prune_at:  # (amortised: expired mail leaves the store)
                c.prune(self.store.__contains__)
                self._custody_prune_at = max(256, 2 * len(c))
            for o in ops:
                if c.is_custody(o.kind, o.seq):
                    if o.op_id in self._arriving:  # from a neighbour, by sync
                        c.received(o.op_id, o.doc_id, self._arriving[o.op_id])
                    else:  # written here, or handed to us by a browser leaf
                        c.originated(o.op_id, o.doc_id)
        for peer, p in self._peers.items():
            if p.status.up:
                # (mail this neighbour may not have is not "missing" at it)
                ids = [o.op_id for o in ops if c is None or c.give(o.op_id, peer) != 0]
                p.ledger.committed(ids)
                p.push.extend(i for i in ids if i not in p.ledger.known)
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
        core = SyncSession(self.store, p.ledger, asyncio.get_running_loop().time(),
                           initiator=initiator, reconcile=reconcile, push=push,
                           idle_timeout_s=self.idle_timeout_s,
                           forwarding=(self.custody.for_peer(p.node_id)
                                       if self.custody is not None else None))
        s = _Session(self, p, stream, core)
        self._sessions.setdefault(p.node_id, []).append(core)
        p.status.sessions += 1
        ok = False
        try:
            await s.run()
            ok = True
            if core.reconciled:
                p.status.last_sync = self.wall_clock()
                rec = core.rec
                assert rec is not None  # reconciled
                found = {"in": rec.incoming(), "out": rec.outgoing()}
                if self.custody is not None:
                    # (mail either side holds and may not forward is no backlog)
                    skip = CUSTODY_NAMESPACES
                    found = {"in": sum(len(v) for ns, v in rec.need.items() if ns not in skip)
                             + sum(n for ns, n in rec.expected.items() if ns not in skip),
                             "out": sum(len(v) for ns, v in rec.have.items() if ns not in skip)}
                p.status.last_difference = found
                p.status.up_to_date = found == {"in": 0, "out": 0}
                if self.on_reconciled is not None:
                    self.on_reconciled(p.node_id)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, s.tag, str(exc))
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.info("[%s] sync session ended: %s", s.tag, exc)
        except Exception:
            log.exception("[%s] sync session failed", s.tag)
        finally:
            if not ok:
                p.status.failures += 1
            self._sessions[p.node_id].remove(core)
            self.last_session = core
            with contextlib.suppress(Exception):
                await stream.close()
        return ok

    def outgoing(self, pairs: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The loaded ops a session may send: none stamped beyond this node's time tolerance.

        Peers that agree with our time would refuse them (``future``), and an own op that
        never left the node can be re-issued at the right time once its clock is fixed
        (``sync.reissue``); the stamp of every own op that leaves is recorded first.  A held
        op is left out as if purged since it was queued; the next reconciliation offers it
        again.
        """
        store = self.store
        limit = store.future_limit_hlc()
        keep: list[tuple[bytes, bytes]] = []
        sent_own = self.own_sent_hlc
        held = 0
        for op_id, raw in pairs:
            hlc = store.hlc_of(op_id)
            if hlc is None:
                continue
            if hlc >= limit:
                held += 1
                continue
            if hlc > sent_own and store.is_own(op_id):
                sent_own = hlc
            keep.append((op_id, raw))
        if held:
            self.drops.counts["held-future"] += held
            if not self._held_future_logged:
                self._held_future_logged = True
                log.warning("this node holds back %d op(s) stamped beyond its time tolerance"
                            " (its clock ran ahead when it wrote them): peers would refuse"
                            " them. Set the system clock and restart meshd: its own are then"
                            " re-issued at the right time", held)
        if sent_own > self.own_sent_hlc:
            if self.on_own_sent is not None:
                self.on_own_sent(sent_own)  # durable before the ops leave
            self.own_sent_hlc = sent_own
        return keep

    def neighbours_up(self) -> set[bytes]:
        """The neighbours a link is up to now."""
        return {k for k, p in self._peers.items() if p.status.up}

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
                    # skip it when nothing committed here since the last reconciliation is
                    # missing there, except once after a reconciliation that moved ops: that one
                    # confirms the link converged (`sync status` "up to date" needs it)
                    p.reconcile_due = p.ledger.reconcile_needed() or not p.status.up_to_date
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
                if p.ledger.reconciled and not p.ledger.reconcile_needed():
                    # every op committed here since the last reconciliation is known there
                    # (periodic reconciliations are skipped now: converged links stay silent)
                    p.status.up_to_date = True
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
        c = self.custody
        return {"ops": len(self.store), "pending": self.store.pending_count(),
                "custody": None if c is None else {
                    "mail_held": len(c), "copies_handed": c.handed_copies,
                    "delivered": c.delivered},
                "quarantined": [a.hex() for a in self.store.quarantined()],
                "refused": dict(self.store.drops.counts), "totals": dict(self.totals),
                "peers": peers}
