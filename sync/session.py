"""One sync session between two neighbours, as a pure protocol core (no I/O, no clock).

Theory of operation
-------------------
A *session* is one message-framed, reliable, ordered stream between two
neighbours (the link layer's ``open_stream(peer, "sync")``).  Frames start
with a type byte (docs/protocols.md, "Sync"):

==============  ====================================================
``RECON``       a ``sync.reconcile`` message
``RECON_DONE``  reconciliation is finished (or was not wanted: a push session)
``OPS``         batch number, then raw ops, each prefixed by its length (varints)
``ACK``         batch number: every op of that batch is committed at the receiver
``END``         I have nothing more to send and all of it is acknowledged
``COPIES``      batch number, then (index in that batch, copies) pairs for the custody
                ops of the next ``OPS`` batch (varints; mail: ``sync.custody``)
==============  ====================================================

Both ends run the same ``SyncSession``; only the initiator starts (a ``RECON``
opening, or ``RECON_DONE`` for a push-only session).  Reconciliation messages
are answered at once; what it finds the peer lacks is queued, highest-priority
namespace first and oldest first within it (so an author's chain arrives in
order), and sent in batches of at most ``BATCH_OPS`` ops and ``BATCH_BYTES``
bytes, with at most ``WINDOW`` batches unacknowledged.  Custody ops (sealed
mail) are not flooded: a session given a ``Forwarding`` policy (``sync.custody``)
sends one only when the policy gives it copies for this neighbour, announces
the copies in a ``COPIES`` frame just before the batch, and spends them when
the batch is acknowledged.  That window is the
backpressure: a dealer's 10,000-op catch-up moves at the speed the far side
commits, in frames small enough that voice datagrams interleave.

The core never touches the store or the stream.  Its caller (the asyncio
adapter ``sync.service``, or the simulator) moves three things:

* bytes: ``receive_frame(data, now)`` in, ``frames_to_send(now)`` out;
* rows: ``take_batch()`` names the op ids of the next batch, the caller reads
  their raw forms and hands them back with ``batch_loaded(pairs, now)``; an
  ``OpsReceived`` event carries a peer's batch to the caller, which commits it
  and then calls ``batch_committed(batch, now)``: only then is it acknowledged
  (acknowledge only what is durable);
* time: ``get_timer()`` is the idle deadline (a peer that says nothing for
  ``idle_timeout_s`` is abandoned), ``handle_timer(now)`` fires it.

Events (``next_event()``) say what happened: ``OpsReceived``,
``OpsAcknowledged``, and exactly one of ``SessionCompleted`` (both ``END``\\ s
exchanged, every received batch committed), ``PeerMisbehaved`` (a malformed or
out-of-place frame: the session is over, counted and dropped by the caller) or
``IdleTimedOut``.  ``abort()`` ends the session from the caller's side (a broken
stream).  However a session ends, op ids it was sending but that were never
acknowledged are released from the ``PeerLedger`` so another session may send
them.

The ``PeerLedger`` is shared by every session with one neighbour (both ends
may open one at the same moment): ops the neighbour holds to our knowledge,
and ops some session is sending it right now, so each op crosses once.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meshd.core.errors import DecodeError, RemoteProtocolError
from sync.envelope import MAX_OP_SIZE, NAMESPACE_PRIORITY
from sync.reconcile import MAX_MESSAGE_SIZE, RangeSet, Reconciler

__all__ = [
    "ACK",
    "BATCH_BYTES",
    "BATCH_OPS",
    "COPIES",
    "DIGEST_LEN",
    "ECHO_LEN",
    "END",
    "IDLE_TIMEOUT_S",
    "MAX_FRAME",
    "NOTE_LEN",
    "OPS",
    "QUIET_LOSS",
    "QUIET_MAX_S",
    "QUIET_POLL_S",
    "RECON",
    "RECON_DONE",
    "WINDOW",
    "Forwarding",
    "IdleTimedOut",
    "OpIndex",
    "OpsAcknowledged",
    "OpsReceived",
    "PeerDigests",
    "PeerLedger",
    "PeerMisbehaved",
    "SessionCompleted",
    "SessionEvent",
    "SyncSession",
    "decode_note",
    "decode_varint",
    "encode_note",
    "encode_varint",
    "namespace_rank",
    "parse_ops",
    "set_digest",
]

#: frame types (the first byte of every frame)
RECON, RECON_DONE, OPS, ACK, END, COPIES = 1, 2, 3, 4, 5, 6
#: ops and bytes per OPS frame; frames stay small so calls interleave
BATCH_OPS = 256
BATCH_BYTES = 128 * 1024
#: unacknowledged batches in flight per session
WINDOW = 4
MAX_FRAME = max(MAX_MESSAGE_SIZE + 1, BATCH_BYTES + MAX_OP_SIZE + 64)
#: a session whose peer says nothing for this long is abandoned
IDLE_TIMEOUT_S = 30.0

_RANK = {ns: i for i, ns in enumerate(NAMESPACE_PRIORITY)}

#: a digest note: our set digest, then the first bytes of the peer's as we last heard it
#: (all zero: "answer me").  8 bytes: a chance match of two different sets is 2**-64 (and
#: costs only a skipped reconciliation until either set changes); a 2-byte echo that
#: matches by chance (2**-16) only delays the answer to the next asking note.
DIGEST_LEN = 8
ECHO_LEN = 2
NOTE_LEN = DIGEST_LEN + ECHO_LEN
#: an unanswered note is sent again after this long, doubling up to ``NOTE_RTO_MAX_S``
#: (0.25 s: with 1 s, a note lost at the lossy edge of range cost a second per contact, and
#: bulletins' p95 delay at 1,000 simulated nodes was 1.12x flooding's; notes are 11 bytes)
NOTE_RTO_S = 0.25
NOTE_RTO_MAX_S = 30.0
#: a contact that begins on a link losing more than this (the link layer's hello loss)
#: stays quiet while the loss keeps falling (the nodes come closer), until it is below
#: this ...
QUIET_LOSS = 0.15
#: ... or this long has passed since the link came up
QUIET_MAX_S = 4.0
#: how often a quiet contact looks at its link's loss again
QUIET_POLL_S = 1.0


def namespace_rank(ns: str) -> int:
    """Transfer rank of a namespace (lower goes first; unknown ones last)."""
    return _RANK.get(ns, len(_RANK))


def encode_varint(n: int) -> bytes:
    """Unsigned LEB128."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """``(value, next position)`` of the LEB128 varint at ``pos``; ``DecodeError`` if malformed."""
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


def parse_ops(payload: bytes) -> tuple[int, list[bytes]]:
    """``(batch, raw ops)`` of an OPS frame's payload; ``DecodeError`` if malformed."""
    batch, pos = decode_varint(payload, 0)
    raws: list[bytes] = []
    while pos < len(payload):
        n, pos = decode_varint(payload, pos)
        if n > MAX_OP_SIZE or pos + n > len(payload) or len(raws) >= BATCH_OPS:
            raise DecodeError("malformed", "op batch")
        raws.append(payload[pos : pos + n])
        pos += n
    return batch, raws


class OpIndex(Protocol):
    """The read-only facts a session needs about the local op set (``OpStore`` has them)."""

    def namespace_of(self, op_id: bytes) -> str | None: ...
    def hlc_of(self, op_id: bytes) -> int | None: ...
    def range_sets(self) -> Mapping[str, RangeSet]: ...


class Forwarding(Protocol):
    """Which ops may go to this session's neighbour (``sync.custody.CustodyView``)."""

    def give(self, op_id: bytes) -> int | None:
        """None: flood it; 0: do not send it now; n: send it handing ``n`` copies."""
        ...

    def handed(self, op_id: bytes, copies: int) -> None:
        """The neighbour acknowledged the op sent with ``copies``."""
        ...


@dataclass(slots=True)
class PeerLedger:
    """What one neighbour holds, shared by every session with it (cleared when its link comes up)."""

    #: op ids it holds to our knowledge (sent and acknowledged, or received from it)
    known: set[bytes] = field(default_factory=set)
    #: op ids some session is sending it right now (not acknowledged yet)
    sending: set[bytes] = field(default_factory=set)
    #: ops we committed since the last reconciliation with it began, not known to it then
    fresh: set[bytes] = field(default_factory=set)
    #: a reconciliation with it completed since its link came up
    reconciled: bool = False

    def clear(self) -> None:
        self.known.clear()
        self.sending.clear()
        self.fresh.clear()
        self.reconciled = False

    def committed(self, op_ids: Iterable[bytes]) -> None:
        """We committed these ops (our own or from any neighbour)."""
        self.fresh.update(i for i in op_ids if i not in self.known)

    def reconcile_needed(self) -> bool:
        """Whether a periodic reconciliation could find anything the neighbour lacks: until
        one has completed since the link came up, yes; after that only while an op we
        committed since it began is not known to be held by the neighbour (a push that
        failed).  What the neighbour has and we lack is its own check's business: when
        neither side changed, neither reconciles."""
        if not self.reconciled:
            return True
        self.fresh.difference_update(self.known)
        return bool(self.fresh)

    def _reconcile_began(self) -> frozenset[bytes]:
        return frozenset(self.fresh)

    def _reconcile_completed(self, began: frozenset[bytes]) -> None:
        self.fresh.difference_update(began)
        self.reconciled = True


# -- digest notes ------------------------------------------------------------------------------


def set_digest(index: OpIndex, exclude: Iterable[str] = ()) -> bytes:
    """``DIGEST_LEN`` bytes naming the whole op set (every namespace the reconciler sees but
    ``exclude``: custody namespaces, which are not flooded): equal digests, equal sets (up
    to a 2**-64 chance)."""
    h = hashlib.sha256(b"carmesh/sync-digest/1")
    sets = index.range_sets()
    skip = frozenset(exclude)
    for ns in sorted(sets):
        if ns in skip:
            continue
        s = sets[ns]
        if len(s):
            name = ns.encode()
            h.update(encode_varint(len(name)) + name + s.fingerprint(0, len(s)))
    return h.digest()[:DIGEST_LEN]


def encode_note(digest: bytes, echo: bytes | None) -> bytes:
    """A note: our digest and the first ``ECHO_LEN`` bytes of the peer's (zeros if unknown)."""
    if len(digest) != DIGEST_LEN:
        raise ValueError("digest length")
    return digest + (echo[:ECHO_LEN] if echo is not None else bytes(ECHO_LEN))


def decode_note(data: bytes) -> tuple[bytes, bytes]:
    """``(digest, echo)`` of a note; ``DecodeError`` unless exactly ``NOTE_LEN`` bytes."""
    if len(data) != NOTE_LEN:
        raise DecodeError("malformed", "digest note size")
    return data[:DIGEST_LEN], data[DIGEST_LEN:]


@dataclass(slots=True)
class PeerDigests:
    """The digest gossip with one neighbour: when to reconcile at all (pure, time passed in).

    Each end tells the other its set digest in a *note* (``encode_note``: 10 bytes in one
    unreliable datagram).  A note carries an echo of the first bytes of the digest last
    heard from the peer, or zeros to ask for an answer; a note whose echo is not the
    receiver's current digest is answered with the receiver's own note (which echoes the
    one just heard, so it needs no answer).  The lower id speaks first at contact start
    (an asking note; the other end asks after ``NOTE_RTO_S`` if it heard nothing); after
    our set changes we ask again: at once, or ``delay`` later (``changed``) when a
    reconciliation with the peer follows anyway and the peer's own note after it will
    tell us.  An asking note is repeated (``NOTE_RTO_S``, doubling) until answered.

    A contact usually begins at the edge of radio range, where a third of the datagrams
    are lost: notes there are repeated and op transfers re-sent.  When the link layer
    says the link loses more than ``QUIET_LOSS`` at link-up, the contact stays *quiet*
    (no note of ours, no reconciliation opened) while the loss keeps falling from one
    look to the next (``QUIET_POLL_S`` apart: the nodes are coming closer), until it is
    below ``QUIET_LOSS`` or ``QUIET_MAX_S`` has passed (``quiet``; a note from the peer
    is still answered).  A link whose loss stays put or grows (nodes at the edge of
    range, or passing) is used at once: a short contact is not wasted waiting.

    A reconciliation is wanted only while the digests differ, and not again for the same
    pair of digests that a completed reconciliation started from (a difference the peer
    refuses to take, e.g. an op outside its quota, is not retried until a set changes).
    That pair is kept across contacts.  Two neighbours with equal sets exchange two
    notes per contact and per change, and nothing else: no periodic reconciliation.
    """

    theirs: bytes | None = None
    #: we asked and have no answer yet (an asking note is due at ``resend_at``)
    asking: bool = False
    resend_at: float | None = None
    rto_s: float = NOTE_RTO_S
    #: (ours, theirs) at the start of the last completed reconciliation (kept across contacts)
    synced: tuple[bytes, bytes] | None = None
    started: tuple[bytes, bytes] | None = None
    #: a quiet contact (see above) ends then at the latest
    quiet_until: float | None = None
    #: we speak first in this contact (the lower id)
    first: bool = False
    #: the link's loss at the last look of a quiet contact, and when the next look is due
    quiet_loss: float | None = None
    quiet_look_at: float = 0.0

    def link_up(self, now: float, *, first: bool, loss: float | None = None) -> None:
        """A contact begins; ``first``: we speak first (else we ask one ``NOTE_RTO_S`` later
        if we heard nothing); ``loss``: the link's loss as the link layer measures it
        (None: unknown, no quiet start)."""
        self.theirs, self.asking, self.rto_s = None, True, NOTE_RTO_S
        self.resend_at = now if first else now + NOTE_RTO_S
        self.quiet_until, self.first, self.quiet_loss = None, first, loss
        if loss is not None and loss > QUIET_LOSS:
            self.quiet_until = now + QUIET_MAX_S
            self.quiet_look_at = now + QUIET_POLL_S
            self.resend_at = max(self.resend_at, self.quiet_look_at)

    def link_down(self) -> None:
        self.theirs, self.asking, self.resend_at, self.started = None, False, None, None
        self.quiet_until = None

    def quiet(self, now: float, loss: float | None) -> bool:
        """Whether the contact is still quiet (the link's ``loss`` now, None: unknown); it
        looks at ``loss`` every ``QUIET_POLL_S`` (``quiet_look_at``) and compares it with
        the last look.  Once not quiet, never again until the next link-up."""
        if self.quiet_until is None:
            return False
        if now < min(self.quiet_look_at, self.quiet_until):
            return True  # (between two looks)
        self.quiet_look_at = now + QUIET_POLL_S
        last, self.quiet_loss = self.quiet_loss, loss
        if (now >= self.quiet_until or loss is None or loss <= QUIET_LOSS
                or last is None or loss >= last):
            self.quiet_until = None
            if not self.first and self.asking and self.resend_at is not None:
                # (the first speaker's note is due now: ours only if it does not come)
                self.resend_at = max(self.resend_at, now + NOTE_RTO_S)
            return False
        return True

    def changed(self, now: float, *, delay: float = 0.0) -> None:
        """Our set changed: ask the peer after ``delay`` (unless its answer-worthy note comes
        first)."""
        self.asking, self.rto_s, self.resend_at = True, NOTE_RTO_S, now + delay

    def note_due(self, now: float) -> bool:
        return self.resend_at is not None and now >= self.resend_at

    def ask(self, mine: bytes, now: float) -> bytes:
        """An asking note (the peer answers it); repeated until answered."""
        self.resend_at = now + self.rto_s
        self.rto_s = min(self.rto_s * 2, NOTE_RTO_MAX_S)
        return encode_note(mine, None)

    def answer(self, mine: bytes) -> bytes:
        """A note that echoes the peer's digest (needs no answer)."""
        return encode_note(mine, self.theirs)

    def received(self, data: bytes, mine: bytes) -> bool:
        """Take the peer's note; True if we should answer it now (``answer``).
        ``DecodeError`` if malformed (nothing changes)."""
        digest, echo = decode_note(data)
        # any note after our change answers our question: it names the peer's digest now
        self.theirs, self.asking, self.resend_at, self.rto_s = digest, False, None, NOTE_RTO_S
        return echo != mine[:ECHO_LEN]

    def wants_reconcile(self, mine: bytes) -> bool:
        """Whether the sets differ and no completed reconciliation began from this pair."""
        return (self.theirs is not None and self.theirs != mine
                and (mine, self.theirs) != self.synced)

    def session_started(self, mine: bytes) -> None:
        """A reconciliation with the peer begins (remember the pair it starts from)."""
        self.started = (mine, self.theirs or b"")

    def session_completed(self) -> None:
        """That reconciliation completed."""
        if self.started is not None:
            self.synced, self.started = self.started, None


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpsReceived:
    """The peer sent batch ``batch``: commit ``raw_ops``, then call ``batch_committed(batch)``."""

    batch: int
    raw_ops: tuple[bytes, ...]
    #: copies handed with each op (None: none announced), aligned with ``raw_ops``; empty
    #: when the batch came with no ``COPIES`` frame
    copies: tuple[int | None, ...] = ()


@dataclass(frozen=True, slots=True)
class OpsAcknowledged:
    """The peer committed our batch ``batch``, these ops."""

    batch: int
    op_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SessionCompleted:
    """Both ends said END and every batch received was committed: the session is over, well."""

    reconciled: bool


@dataclass(frozen=True, slots=True)
class PeerMisbehaved:
    """The peer sent a malformed or out-of-place frame: the session is over."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class IdleTimedOut:
    """The peer said nothing for ``idle_s`` seconds: the session is over."""

    idle_s: float


SessionEvent = OpsReceived | OpsAcknowledged | SessionCompleted | PeerMisbehaved | IdleTimedOut


class SyncSession:
    """One end of one sync session (see the module docstring); the same code at both ends."""

    def __init__(self, index: OpIndex, ledger: PeerLedger, now: float, *, initiator: bool,
                 reconcile: bool, push: Iterable[bytes] = (),
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 forwarding: Forwarding | None = None) -> None:
        self._index = index
        self._ledger = ledger
        self._fwd = forwarding
        #: copies handed with the ops of each unacknowledged batch
        self._handing: dict[int, list[tuple[bytes, int]]] = {}
        #: the peer's COPIES frame for its next batch
        self._copies_in: tuple[int, dict[int, int]] | None = None
        self.initiator = initiator
        self.idle_timeout_s = idle_timeout_s
        self.rec: Reconciler | None = None
        self.recon_done = not reconcile and initiator
        self._queue: list[tuple[int, int, bytes]] = []
        self._queued: set[bytes] = set()
        self._in_flight: dict[int, list[bytes]] = {}
        self._loading: list[bytes] | None = None
        self._uncommitted: dict[int, int] = {}  # batch -> ops, received and not yet committed
        self._next_batch = 0
        self._outbox: list[bytes] = []
        self._events: list[SessionEvent] = []
        self._last_activity = now
        self.sent_end = False
        self.got_end = False
        self.closed = False
        self.in_expected = 0
        self.in_done = 0
        self.out_done = 0
        #: reconciliation cost of this session: bytes both ways, round trips we began
        self.recon_bytes = 0
        self.recon_round_trips = 0
        self._began: frozenset[bytes] | None = None
        self._enqueue(push)
        if initiator:
            if reconcile:
                self._began = ledger._reconcile_began()
                self.rec = Reconciler(index.range_sets())
                msg = self.rec.initiate()
                self.recon_bytes += len(msg)
                self.recon_round_trips += 1
                self._outbox.append(bytes([RECON]) + msg)
            else:
                self._outbox.append(bytes([RECON_DONE]))

    # -- facts ---------------------------------------------------------------------------------

    @property
    def reconciled(self) -> bool:
        """Whether this session reconciled (a push-only session did not)."""
        return self.rec is not None

    def progress(self) -> dict[str, int]:
        """Catch-up progress: ops expected and done, each way."""
        return {"in_expected": max(self.in_expected, self.in_done), "in_done": self.in_done,
                "out_expected": len(self._queued), "out_done": self.out_done}

    # -- input ---------------------------------------------------------------------------------

    def receive_frame(self, data: bytes, now: float) -> None:
        """Take one frame from the peer (never raises for what the peer sent)."""
        if self.closed:
            return
        self._last_activity = now
        try:
            self._receive(data)
        except RemoteProtocolError as exc:
            self._close(PeerMisbehaved(exc.reason, exc.detail))

    def _receive(self, frame: bytes) -> None:
        if not frame or len(frame) > MAX_FRAME:
            raise DecodeError("malformed", "frame size")
        kind, payload = frame[0], frame[1:]
        if self.got_end and kind != ACK:
            # after its END a peer only acknowledges what we still send
            raise DecodeError("state", f"frame type {kind} after END")
        if kind == RECON:
            if self.recon_done:
                raise DecodeError("state", "reconcile message after the end")
            if self.rec is None:
                self._began = self._ledger._reconcile_began()
                self.rec = Reconciler(self._index.range_sets())
            self.recon_bytes += len(frame)
            reply = self.rec.receive(payload)
            self._enqueue([i for ids in self.rec.have.values() for i in ids])
            self.in_expected = self.rec.incoming()
            if reply is None:
                self.recon_done = True
                self._outbox.append(bytes([RECON_DONE]))
            else:
                self.recon_bytes += len(reply) + 1
                if self.initiator:
                    self.recon_round_trips += 1
                self._outbox.append(bytes([RECON]) + reply)
        elif kind == RECON_DONE:
            self.recon_done = True
            if self.rec is not None:
                self.in_expected = self.rec.incoming()
        elif kind == OPS:
            batch, raws = parse_ops(payload)
            if batch in self._uncommitted:
                raise DecodeError("state", "batch number reused")
            copies: tuple[int | None, ...] = ()
            if self._copies_in is not None:
                cb, given = self._copies_in
                self._copies_in = None
                if cb != batch or any(i >= len(raws) for i in given):
                    raise DecodeError("malformed", "copies do not match the batch")
                copies = tuple(given.get(i) for i in range(len(raws)))
            self._ledger.known.update(hashlib.sha256(r).digest() for r in raws)
            self._uncommitted[batch] = len(raws)
            self._events.append(OpsReceived(batch, tuple(raws), copies))
        elif kind == COPIES:
            if self._copies_in is not None:
                raise DecodeError("state", "two COPIES frames before a batch")
            batch, pos = decode_varint(payload, 0)
            n, pos = decode_varint(payload, pos)
            if n > BATCH_OPS:
                raise DecodeError("malformed", "copies count")
            table: dict[int, int] = {}
            for _ in range(n):
                i, pos = decode_varint(payload, pos)
                c, pos = decode_varint(payload, pos)
                table[i] = c
            if pos != len(payload):
                raise DecodeError("malformed", "copies frame length")
            self._copies_in = (batch, table)
        elif kind == ACK:
            batch, _ = decode_varint(payload, 0)
            if batch not in self._in_flight:
                raise DecodeError("state", "ack of an unknown batch")
            ids = self._in_flight.pop(batch)
            if self._fwd is not None:
                for op_id, c in self._handing.pop(batch, ()):
                    self._fwd.handed(op_id, c)
            self._ledger.known.update(ids)
            self._ledger.sending.difference_update(ids)
            self.out_done += len(ids)
            self._events.append(OpsAcknowledged(batch, tuple(ids)))
        elif kind == END:
            self.got_end = True
        else:
            raise DecodeError("malformed", f"frame type {kind}")
        self._check_complete()

    def batch_committed(self, batch: int, now: float) -> None:
        """The caller committed the peer's batch ``batch``: acknowledge it."""
        if self.closed:
            return
        n = self._uncommitted.pop(batch)  # KeyError: not a batch we handed out (caller's bug)
        self._last_activity = now  # the peer was waiting on us, not silent
        self.in_done += n
        self._outbox.append(bytes([ACK]) + encode_varint(batch))
        self._check_complete()

    def push(self, op_ids: Iterable[bytes]) -> None:
        """Queue more ops to send in this session (before it has said END)."""
        self._enqueue(op_ids)

    def _enqueue(self, ids: Iterable[bytes]) -> None:
        for op_id in ids:
            if op_id in self._queued or op_id in self._ledger.known:
                continue
            if self._fwd is not None and self._fwd.give(op_id) == 0:
                continue  # a custody op not for this neighbour
            ns = self._index.namespace_of(op_id)
            hlc = self._index.hlc_of(op_id)
            if ns is None or hlc is None:
                continue
            heapq.heappush(self._queue, (namespace_rank(ns), hlc, op_id))
            self._queued.add(op_id)

    # -- output --------------------------------------------------------------------------------

    def take_batch(self) -> list[bytes] | None:
        """Op ids of the next batch to send, or None (window full, nothing queued, or loading).

        The caller reads their raw forms and passes them to ``batch_loaded``.
        """
        if self.closed or self._loading is not None or len(self._in_flight) >= WINDOW:
            return None
        ledger = self._ledger
        ids: list[bytes] = []
        while self._queue and len(ids) < BATCH_OPS:
            _, _, op_id = heapq.heappop(self._queue)
            # another session to this peer (both ends may open one) may carry it already
            if op_id not in ledger.known and op_id not in ledger.sending:
                ids.append(op_id)
        if not ids:
            return None
        ledger.sending.update(ids)
        self._loading = ids
        return ids

    def batch_loaded(self, pairs: Sequence[tuple[bytes, bytes]], now: float) -> None:
        """``(op_id, raw)`` of the batch ``take_batch`` named, in its order (purged ones missing)."""
        ids, self._loading = self._loading, None
        if ids is None:
            raise RuntimeError("batch_loaded without take_batch")
        if self.closed:
            self._ledger.sending.difference_update(ids)
            return
        parts = [encode_varint(self._next_batch)]
        sent: list[bytes] = []
        handing: list[tuple[int, bytes, int]] = []
        size = 0
        withheld: set[bytes] = set()
        for op_id, raw in pairs:
            if size + len(raw) > BATCH_BYTES and sent:
                break  # over the byte budget: the rest goes back to the queue
            c = self._fwd.give(op_id) if self._fwd is not None else None
            if c == 0:
                withheld.add(op_id)  # its copies went elsewhere meanwhile
                continue
            if c is not None:
                handing.append((len(sent), op_id, c))
            parts.append(encode_varint(len(raw)))
            parts.append(raw)
            sent.append(op_id)
            size += len(raw)
        self._ledger.sending.difference_update(withheld)
        unsent = set(ids).difference(sent).difference(withheld)
        self._ledger.sending.difference_update(unsent)
        for back in unsent:
            hlc = self._index.hlc_of(back)
            if hlc is not None:
                heapq.heappush(self._queue, (namespace_rank(self._index.namespace_of(back) or ""),
                                             hlc, back))
        if sent:
            if handing:
                self._handing[self._next_batch] = [(i, c) for _, i, c in handing]
                self._outbox.append(bytes([COPIES]) + encode_varint(self._next_batch)
                                    + encode_varint(len(handing)) + b"".join(
                                        encode_varint(k) + encode_varint(c)
                                        for k, _, c in handing))
            self._in_flight[self._next_batch] = sent
            self._next_batch += 1
            self._outbox.append(bytes([OPS]) + b"".join(parts))
        self._check_complete()

    def frames_to_send(self, now: float) -> list[bytes]:
        """Frames for the stream, in order (END once nothing is queued, loading or unacknowledged)."""
        if (not self.closed and not self.sent_end and self.recon_done and not self._queue
                and self._loading is None and not self._in_flight):
            self.sent_end = True
            self._outbox.append(bytes([END]))
            self._check_complete()
        out, self._outbox = self._outbox, []
        return out

    def next_event(self) -> SessionEvent | None:
        """The oldest event not yet taken, or None."""
        return self._events.pop(0) if self._events else None

    # -- time ----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` is due: the idle deadline (None once the session is over)."""
        return None if self.closed else self._last_activity + self.idle_timeout_s

    def handle_timer(self, now: float) -> None:
        """Abandon the session if the peer has been silent for ``idle_timeout_s``."""
        if not self.closed and now >= self._last_activity + self.idle_timeout_s:
            self._close(IdleTimedOut(now - self._last_activity))

    # -- ending --------------------------------------------------------------------------------

    def abort(self) -> None:
        """End the session from our side (a broken stream); no event.  Idempotent."""
        if not self.closed:
            self._close(None)

    def _check_complete(self) -> None:
        # (our END is queued behind every frame but the ACKs still to come, which the
        # caller flushes with frames_to_send after this event)
        if not self.closed and self.got_end and self.sent_end and not self._uncommitted:
            if self._began is not None:
                self._ledger._reconcile_completed(self._began)
            self._close(SessionCompleted(self.rec is not None))

    def _close(self, event: SessionEvent | None) -> None:
        self.closed = True
        # never acknowledged: others may send them
        for ids in self._in_flight.values():
            self._ledger.sending.difference_update(ids)
        self._in_flight.clear()
        if self._loading is not None:
            self._ledger.sending.difference_update(self._loading)
        self._queue.clear()
        if event is not None:
            self._events.append(event)
