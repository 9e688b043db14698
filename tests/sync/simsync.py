"""Sync on the simulator: the session core and the apply planner, glued as the daemon does.

``MemOpStore`` is the ``OpStore`` of the simulator: its *durable* part
(``Durable``: the ops, the pending pool, author states and evidence, what
SQLite holds) changes only by committing a plan of ``sync.apply.plan_apply``
in one step; its indexes (what the real store keeps in memory) are rebuilt
from it on ``MemOpStore(durable)``, so a restart replays from the store.

``SyncSimNode`` is a ``tests.sim`` node: one ``SyncSession`` core per stream
of a ``tests.sim.streams.StreamMux`` (reliable streams over the lossy
simulated links), each received batch committed ``commit_delay_s`` later (the
window in which a crash loses it, unacknowledged), and the per-neighbour
schedule of ``sync.service.SyncService``: reconcile when the link comes up and
every ``interval_s`` with jitter, push what was committed within
``push_delay_s``, back off after a failed session.

With ``digests=True`` the schedule is the digest gossip of
``sync.session.PeerDigests`` instead: an 11-byte note (``NOTE_TAG``, then
``encode_note``) in one unreliable datagram at contact start and when the set
changes, and a reconciliation only while the two digests differ: opened
``push_delay_s`` after our own set changed (the node that got something new
offers it, its opening listing the newest ids so the peer takes only what it
lacks) or after the peer's note showed a difference if we have the lower id,
four to eight times later if we have the higher (so usually only one end
opens), never while a session with that peer runs.  No periodic
reconciliation and no blind push.

With ``custody`` (a ``sync.custody.MailCustody``) mail ops are forwarded by
binary spray-and-wait instead of flooded: sessions take the custody's view of
their neighbour (``forwarding=``), the digest leaves the mail namespace out,
and a reconciliation is also wanted when the custody has something for the
neighbour (spray copies, or mail addressed to it) that it has not already
reconciled with that neighbour.  Without ``digests`` the periodic
reconciliation is skipped while ``PeerLedger.reconcile_needed`` says nothing we
committed is missing at the peer (as ``sync.service`` does).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.errors import DecodeError, RemoteProtocolError
from sync.apply import AuthorState, ChainView, Quotas, plan_apply
from sync.custody import CUSTODY_NAMESPACES, CustodyView, MailCustody
from sync.envelope import MAX_SKEW_MS, HybridClock, Op, create_op, decode_op
from sync.reconcile import RangeSet
from sync.session import (
    IdleTimedOut,
    OpsAcknowledged,
    OpsReceived,
    PeerDigests,
    PeerLedger,
    PeerMisbehaved,
    SessionCompleted,
    SyncSession,
    set_digest,
)
from tests.sim.streams import MessageReceived, StreamKey, StreamMux, StreamOpened

__all__ = ["Durable", "MemOpStore", "SessionEnded", "SyncSimNode"]

#: unix ms at virtual time 0
WALL0_MS = 1_800_000_000_000
#: first byte of a digest-note datagram (stream datagrams start with 0 or 1)
NOTE_TAG = b"\x02"


@dataclass
class Durable:
    """What survives a crash: the committed rows."""

    ops: dict[bytes, Op] = field(default_factory=dict)
    pending: dict[tuple[bytes, int], Op] = field(default_factory=dict)
    authors: dict[bytes, AuthorState] = field(default_factory=dict)
    evidence: list[tuple[bytes, bytes, str]] = field(default_factory=list)


class MemOpStore:
    """An in-memory op store applying through the pure planner (see module docstring)."""

    def __init__(self, durable: Durable | None = None, *, quotas: Quotas | None = None) -> None:
        self.durable = durable or Durable()
        self.quotas = quotas or Quotas()
        # indexes, rebuilt from the rows as ``OpStore._load`` does
        self._known: dict[bytes, tuple[str, int]] = {
            i: (o.namespace, o.hlc) for i, o in self.durable.ops.items()}
        self._pending_ids = {o.op_id for o in self.durable.pending.values()}
        self._sets: dict[str, RangeSet] = {}
        self.clock = HybridClock(max((o.hlc for o in self.durable.ops.values()), default=0))
        self.refused: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._known

    def ids(self) -> set[bytes]:
        return set(self._known)

    # -- OpIndex --------------------------------------------------------------------------

    def namespace_of(self, op_id: bytes) -> str | None:
        k = self._known.get(op_id)
        return k[0] if k else None

    def hlc_of(self, op_id: bytes) -> int | None:
        k = self._known.get(op_id)
        return k[1] if k else None

    def range_sets(self) -> Mapping[str, RangeSet]:
        quarantined = {a for a, s in self.durable.authors.items() if s.quarantined is not None}
        if not self._sets:
            by_ns: dict[str, list[tuple[int, bytes]]] = {}
            for op in self.durable.ops.values():
                if op.author not in quarantined:
                    by_ns.setdefault(op.namespace, []).append((op.hlc, op.op_id))
            self._sets = {ns: RangeSet(items) for ns, items in by_ns.items()}
        return self._sets

    def get_raw_pairs(self, op_ids: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        return [(i, self.durable.ops[i].raw) for i in op_ids if i in self.durable.ops]

    # -- writing --------------------------------------------------------------------------

    def apply_remote(self, raws: Sequence[bytes], wall_ms: int) -> tuple[list[Op], list[bytes]]:
        """Verify, plan and commit a peer's batch; ``(applied ops, acknowledgeable ids)``."""
        known: list[bytes] = []
        decoded: list[Op | RemoteProtocolError] = []
        for raw in raws:
            op_id = hashlib.sha256(raw).digest()
            if op_id in self._known or op_id in self._pending_ids:
                known.append(op_id)
                continue
            try:
                decoded.append(decode_op(raw))
            except RemoteProtocolError as exc:
                decoded.append(exc)
        applied, acked = self._commit(decoded, wall_ms)
        return applied, known + acked

    def add_local(self, key: Ed25519PrivateKey, *, kind: str, doc_id: bytes, body: bytes,
                  wall_ms: int, expiry_ms: int | None = None) -> Op:
        """Write an op: the next of the author's chain, or ephemeral (``seq`` 0, in no
        chain) with an ``expiry_ms``, as ``OpStore.add_local`` does."""
        author = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if expiry_ms is not None:
            op = create_op(key, kind=kind, doc_id=doc_id, body=body, seq=0, prev=None,
                           hlc=self.clock.now(wall_ms), expiry_ms=expiry_ms)
            applied, _ = self._commit([op], wall_ms)
            assert applied == [op], self.refused
            return op
        a = self.durable.authors.get(author) or AuthorState()
        op = create_op(key, kind=kind, doc_id=doc_id, body=body, seq=a.head_seq + 1,
                       prev=a.head_id, hlc=max(self.clock.now(wall_ms), a.head_hlc + 1))
        applied, _ = self._commit([op], wall_ms)
        assert applied == [op], self.refused
        return op

    def _commit(self, decoded: Sequence[Op | RemoteProtocolError],
                wall_ms: int) -> tuple[list[Op], list[bytes]]:
        d = self.durable
        plan = plan_apply(decoded, ChainView(d.authors, self._known, d.pending, self._pending_ids),
                          wall_ms=wall_ms, max_skew_ms=MAX_SKEW_MS, quotas=self.quotas,
                          authorize=lambda op, ms: None)
        for r in plan.refusals:
            self.refused[r.reason] = self.refused.get(r.reason, 0) + 1
        # the one transaction: rows, then indexes
        for op in plan.apply:
            d.ops[op.op_id] = op
            self._known[op.op_id] = (op.namespace, op.hlc)
            self.clock.observe_trusted(op.hlc)
        for op in plan.park:
            d.pending[(op.author, op.seq)] = op
            self._pending_ids.add(op.op_id)
        for op in plan.unpark:
            d.pending.pop((op.author, op.seq), None)
            self._pending_ids.discard(op.op_id)
        d.authors.update(plan.authors or {})
        d.evidence.extend(plan.evidence)
        if plan.apply or plan.evidence:
            self._sets = {}
        return list(plan.apply), list(plan.acked)


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """One session of a node ended (the simulator logs these)."""

    peer: bytes
    initiator: bool
    outcome: str  # "completed", "timeout", a misbehaviour reason, or "link-down"
    ops_in: int
    ops_out: int


@dataclass
class _Peer:
    ledger: PeerLedger = field(default_factory=PeerLedger)
    up: bool = False
    reconcile_due: bool = True
    next_at: float = 0.0
    push: list[bytes] = field(default_factory=list)
    push_at: float | None = None
    backoff_s: float = 1.0
    running: StreamKey | None = None  # the session we initiated, if any
    dig: PeerDigests = field(default_factory=PeerDigests)
    reconcile_at: float | None = None  # digest mode: a reconciliation is due then
    #: custody: ``MailCustody.token`` when the last reconciliation with it completed
    custody_synced: bytes | None = None
    custody_started: bytes | None = None


@dataclass
class _Slot:
    core: SyncSession
    peer: bytes
    commits: list[tuple[float, int, tuple[bytes, ...], tuple[int | None, ...]]] = field(
        default_factory=list)


class SyncSimNode:
    """One node: sessions over a stream mux, a MemOpStore, the per-neighbour schedule."""

    def __init__(self, node_id: bytes, store: MemOpStore, rng: random.Random, *,
                 interval_s: float = 5.0, push_delay_s: float = 0.05,
                 commit_delay_s: float = 0.004, idle_timeout_s: float = 3.0,
                 digests: bool = False, custody: MailCustody | None = None,
                 link_loss: Callable[[bytes], float | None] | None = None) -> None:
        self.node_id = node_id
        self.store = store
        self.rng = rng
        self.interval_s = interval_s
        self.push_delay_s = push_delay_s
        self.commit_delay_s = commit_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.mux = StreamMux()
        self.peers: dict[bytes, _Peer] = {}
        self.slots: dict[StreamKey, _Slot] = {}
        #: every op id this node has acknowledged to a peer
        self.acknowledged: set[bytes] = set()
        self.ended: list[SessionEnded] = []
        self._events: list[SessionEnded] = []
        self._dirty: dict[StreamKey, None] = {}  # sessions with input since the last pump
        self.digests = digests
        self._digest: bytes | None = None
        self._notes: list[tuple[bytes, bytes]] = []
        self.notes_sent = 0
        self.custody = custody
        #: digest mode: a reconciliation after our own change opens ``push_delay_s`` plus up
        #: to this much later (so a neighbour that got the same ops from another one
        #: meanwhile can say so first)
        self.push_jitter_s = 0.0
        #: the link layer's loss estimate for a neighbour (digest mode: a contact that
        #: begins lossy stays quiet, ``PeerDigests.quiet``); None: not known
        self.link_loss = link_loss

    # -- what the test does ---------------------------------------------------------------

    def edit(self, key: Ed25519PrivateKey, now: float, *, kind: str, doc_id: bytes,
             body: bytes, expiry_ms: int | None = None) -> Op:
        op = self.store.add_local(key, kind=kind, doc_id=doc_id, body=body,
                                  wall_ms=WALL0_MS + int(now * 1000), expiry_ms=expiry_ms)
        self.originated([op])
        self._committed([op], now)
        return op

    def uncommitted(self) -> int:
        """Received batches waiting for their commit."""
        return sum(len(s.commits) for s in self.slots.values())

    # -- SimNode --------------------------------------------------------------------------

    def link_up(self, peer: bytes, now: float) -> None:
        p = self.peers.setdefault(peer, _Peer())
        p.up, p.reconcile_due, p.next_at, p.backoff_s = True, True, now, 1.0
        p.ledger.clear()
        if self.digests:
            p.reconcile_due, p.reconcile_at = False, None
            p.dig.link_up(now, first=self.node_id < peer, loss=self._loss(peer))
            self._want(p, now, delay=self.push_delay_s * (
                1 if self.node_id < peer else 4 + 4 * self.rng.random()), peer=peer)

    def link_down(self, peer: bytes, now: float) -> None:
        p = self.peers.get(peer)
        if p is None:
            return
        p.up = False
        p.push.clear()
        p.push_at = None
        p.reconcile_at = None
        p.dig.link_down()
        for key in [k for k, s in self.slots.items() if s.peer == peer]:
            self._end(key, "link-down", now)
        self.mux.reset_peer(peer)

    def digest(self) -> bytes:
        """Our set digest (cached until the set changes)."""
        if self._digest is None:
            self._digest = set_digest(
                self.store, CUSTODY_NAMESPACES if self.custody is not None else ())
        return self._digest

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        if self.digests and data[:1] == NOTE_TAG:
            p = self.peers.get(src)
            if p is not None and p.up:
                try:
                    reply = p.dig.received(data[1:], self.digest())
                except DecodeError:
                    return
                if reply:
                    self._note(src, p.dig.answer(self.digest()))
                self._want(p, now, delay=self.push_delay_s * (
                    1 if self.node_id < src else 4 + 4 * self.rng.random()), peer=src)
            return
        self.mux.receive(src, data, now)
        while (ev := self.mux.next_event()) is not None:
            if isinstance(ev, StreamOpened):
                p = self.peers.get(ev.key.peer)
                if p is None or not p.up:
                    self.mux.reset(ev.key)
                    continue
                self.slots[ev.key] = _Slot(SyncSession(
                    self.store, p.ledger, now, initiator=False, reconcile=True,
                    idle_timeout_s=self.idle_timeout_s,
                    forwarding=self._forwarding(ev.key.peer)), ev.key.peer)
                if self.digests:
                    p.dig.session_started(self.digest())
                    self._custody_started(ev.key.peer, p)
                self._dirty[ev.key] = None
            elif isinstance(ev, MessageReceived):
                slot = self.slots.get(ev.key)
                if slot is not None:
                    slot.core.receive_frame(ev.data, now)
                    self._dirty[ev.key] = None
        self._pump(now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        self._pump(now)
        notes, self._notes = self._notes, []
        return notes + self.mux.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        ts = [self.mux.get_timer()]
        for s in self.slots.values():
            ts.append(s.core.get_timer())
            ts.extend(c[0] for c in s.commits[:1])
        for p in self.peers.values():
            if self.digests:
                if p.up:
                    ts.extend((p.dig.resend_at, p.reconcile_at))
                continue
            if p.up and p.running is None:
                if p.reconcile_due:
                    ts.append(p.next_at)
                elif p.push_at is not None:
                    ts.append(p.push_at)
                else:
                    ts.append(p.next_at)
        return min((t for t in ts if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.mux.handle_timer(now)
        wall_ms = WALL0_MS + int(now * 1000)
        for key, s in list(self.slots.items()):
            self._dirty[key] = None
            while s.commits and s.commits[0][0] <= now and not s.core.closed:
                _, batch, raws, copies = s.commits.pop(0)
                applied, acked = self.store.apply_remote(raws, wall_ms)
                self.acknowledged.update(acked)
                s.core.batch_committed(batch, now)
                if self.custody is not None:
                    ids = [hashlib.sha256(r).digest() for r in raws]
                    self.custody.holds_for(s.peer, ids)
                    self._custody_received(applied, dict(zip(ids, copies, strict=False)))
                self._committed(applied, now)
            s.core.handle_timer(now)
        for peer, p in self.peers.items():
            if self.digests:
                if p.up:
                    self._digest_timer(peer, p, now)
                continue
            if not p.up or p.running is not None:
                continue
            if not p.reconcile_due and p.push_at is None and now >= p.next_at:
                # (nothing changed on our side since the last reconciliation: skip it)
                p.reconcile_due = p.ledger.reconcile_needed()
                if not p.reconcile_due:
                    p.next_at = now + self.interval_s * (0.75 + 0.5 * self.rng.random())
            if p.reconcile_due and now >= p.next_at:
                p.reconcile_due = False
                p.push.clear()  # the reconciliation covers them
                p.push_at = None
                self._open(peer, p, now, reconcile=True, push=[])
            elif p.push_at is not None and now >= p.push_at:
                push, p.push, p.push_at = p.push, [], None
                self._open(peer, p, now, reconcile=False, push=push)
        self._pump(now)

    def next_event(self) -> SessionEnded | None:
        return self._events.pop(0) if self._events else None

    # -- inside ---------------------------------------------------------------------------

    def _note(self, peer: bytes, note: bytes) -> None:
        self._notes.append((peer, NOTE_TAG + note))
        self.notes_sent += 1

    def _want(self, p: _Peer, now: float, *, delay: float, peer: bytes | None = None) -> None:
        """Digest mode: schedule a reconciliation if the digests differ (none due yet), or
        (custody, ``peer`` given) if we hold mail to forward to that neighbour."""
        if p.up and (p.dig.wants_reconcile(self.digest())
                     or (peer is not None and self._custody_wants(peer, p))):
            at = now + delay
            if p.reconcile_at is None or at < p.reconcile_at:
                p.reconcile_at = at

    def _forwarding(self, peer: bytes) -> CustodyView | None:
        return self.custody.for_peer(peer) if self.custody is not None else None

    def _custody_wants(self, peer: bytes, p: _Peer) -> bool:
        c = self.custody
        return c is not None and c.wants(peer) and c.token(peer) != p.custody_synced

    def _custody_started(self, peer: bytes, p: _Peer) -> None:
        if self.custody is not None:
            p.custody_started = self.custody.token(peer)

    def _custody_received(self, applied: Sequence[Op],
                          copies: Mapping[bytes, int | None]) -> None:
        assert self.custody is not None
        for op in applied:
            if self.custody.is_custody(op.kind, op.seq):
                self.custody.received(op.op_id, op.doc_id, copies.get(op.op_id))

    def _busy_with(self, peer: bytes) -> bool:
        return any(s.peer == peer for s in self.slots.values())

    def _loss(self, peer: bytes) -> float | None:
        return self.link_loss(peer) if self.link_loss is not None else None

    def _digest_timer(self, peer: bytes, p: _Peer, now: float) -> None:
        if p.dig.quiet_until is not None and p.dig.quiet(now, self._loss(peer)):
            # (a lossy start: look again soon; nothing of ours goes out meanwhile)
            wait = min(p.dig.quiet_look_at, p.dig.quiet_until)
            if p.dig.resend_at is not None and p.dig.resend_at <= now:
                p.dig.resend_at = wait
            if p.reconcile_at is not None and p.reconcile_at <= now:
                p.reconcile_at = wait
            return
        if p.dig.note_due(now):
            self._note(peer, p.dig.ask(self.digest(), now))
        if p.reconcile_at is not None and now >= p.reconcile_at:
            p.reconcile_at = None
            if not self._busy_with(peer) and (p.dig.wants_reconcile(self.digest())
                                              or self._custody_wants(peer, p)):
                p.dig.session_started(self.digest())
                self._custody_started(peer, p)
                self._open(peer, p, now, reconcile=True, push=[])

    def _open(self, peer: bytes, p: _Peer, now: float, *, reconcile: bool,
              push: list[bytes]) -> None:
        key = self.mux.open(peer)
        p.running = key
        self.slots[key] = _Slot(SyncSession(self.store, p.ledger, now, initiator=True,
                                            reconcile=reconcile, push=push,
                                            idle_timeout_s=self.idle_timeout_s,
                                            forwarding=self._forwarding(peer)), peer)
        self._dirty[key] = None

    def originated(self, ops: Sequence[Op]) -> None:
        """We wrote these ops (custody: mail starts with the full copy budget)."""
        if self.custody is not None:
            for op in ops:
                if self.custody.is_custody(op.kind, op.seq):
                    self.custody.originated(op.op_id, op.doc_id)

    def _committed(self, ops: Sequence[Op], now: float) -> None:
        if self.digests:
            if ops:
                self._digest = None
                flooded = [o for o in ops if self.custody is None
                           or o.namespace not in CUSTODY_NAMESPACES]
                for peer, p in self.peers.items():
                    if not p.up:
                        continue
                    if flooded:
                        # (at once, even when a reconciliation will follow: a peer that got
                        # the same ops from someone else meanwhile answers before it opens)
                        p.dig.changed(now)
                        if p.dig.quiet_until is None or not p.dig.quiet(now, self._loss(peer)):
                            self._note(peer, p.dig.ask(self.digest(), now))
                    self._want(p, now, peer=peer,
                               delay=self.push_delay_s + self.push_jitter_s * self.rng.random())
            return
        for p in self.peers.values():
            if p.up:
                p.ledger.committed(o.op_id for o in ops)
                p.push.extend(o.op_id for o in ops if o.op_id not in p.ledger.known)
                if p.push and p.push_at is None:
                    p.push_at = now + self.push_delay_s

    def _pump(self, now: float) -> None:
        dirty, self._dirty = self._dirty, {}
        for key in dirty:
            s = self.slots.get(key)
            if s is None:
                continue
            core = s.core
            while (ids := core.take_batch()) is not None:
                core.batch_loaded(self.store.get_raw_pairs(ids), now)
            for frame in core.frames_to_send(now):
                self.mux.send(key, frame, now)
            while (ev := core.next_event()) is not None:
                if isinstance(ev, OpsReceived):
                    s.commits.append((now + self.commit_delay_s, ev.batch, ev.raw_ops,
                                      ev.copies))
                elif isinstance(ev, OpsAcknowledged):
                    pass
                elif isinstance(ev, SessionCompleted):
                    for frame in core.frames_to_send(now):  # the last ACKs and our END
                        self.mux.send(key, frame, now)
                    self._end(key, "completed", now)
                elif isinstance(ev, PeerMisbehaved):
                    self._end(key, ev.reason, now)
                elif isinstance(ev, IdleTimedOut):
                    self._end(key, "timeout", now)

    def _end(self, key: StreamKey, outcome: str, now: float) -> None:
        s = self.slots.pop(key)
        s.core.abort()
        if outcome != "completed":
            self.mux.reset(key)
        p = self.peers[s.peer]
        if self.digests:
            if p.running == key:
                p.running = None
            if outcome == "completed" and s.core.reconciled:
                p.dig.session_completed()
                if self.custody is not None:
                    # (what we would still offer it, it holds or would not take)
                    p.custody_synced = self.custody.token(s.peer)
            if outcome == "completed":
                p.backoff_s = 1.0
                # (the peer's note of its new digest is on its way: give it time to land)
                self._want(p, now, delay=0.5)
            elif p.up:
                self._want(p, now, delay=p.backoff_s * (0.5 + self.rng.random()))
                p.backoff_s = min(p.backoff_s * 2, self.interval_s)
        elif p.running == key:
            p.running = None
            if outcome == "completed":
                p.backoff_s = 1.0
                p.next_at = now + self.interval_s * (0.75 + 0.5 * self.rng.random())
            else:
                p.reconcile_due = True
                p.next_at = now + p.backoff_s * (0.5 + self.rng.random())
                p.backoff_s = min(p.backoff_s * 2, self.interval_s)
        ev = SessionEnded(s.peer, key.mine, outcome, s.core.in_done, s.core.out_done)
        self.ended.append(ev)
        self._events.append(ev)
