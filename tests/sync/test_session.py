"""The sync session core (``sync.session``) driven by hand: bytes in and out, literal times."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pytest

from meshd.core.errors import DecodeError
from sync.reconcile import RangeSet
from sync.session import (
    ACK,
    BATCH_BYTES,
    BATCH_OPS,
    DIGEST_LEN,
    ECHO_LEN,
    END,
    NOTE_LEN,
    OPS,
    RECON,
    RECON_DONE,
    WINDOW,
    IdleTimedOut,
    OpsAcknowledged,
    OpsReceived,
    PeerDigests,
    PeerLedger,
    PeerMisbehaved,
    SessionCompleted,
    SessionEvent,
    SyncSession,
    decode_note,
    encode_note,
    encode_varint,
    set_digest,
)


class Index:
    """A dict-backed ``OpIndex``: raw ops by id, with their namespace and hlc."""

    def __init__(self) -> None:
        self.raw: dict[bytes, bytes] = {}
        self.meta: dict[bytes, tuple[str, int]] = {}

    def add(self, raw: bytes, ns: str, hlc: int) -> bytes:
        op_id = hashlib.sha256(raw).digest()
        self.raw[op_id] = raw
        self.meta[op_id] = (ns, hlc)
        return op_id

    def namespace_of(self, op_id: bytes) -> str | None:
        m = self.meta.get(op_id)
        return m[0] if m else None

    def hlc_of(self, op_id: bytes) -> int | None:
        m = self.meta.get(op_id)
        return m[1] if m else None

    def range_sets(self) -> Mapping[str, RangeSet]:
        by_ns: dict[str, list[tuple[int, bytes]]] = {}
        for op_id, (ns, hlc) in self.meta.items():
            by_ns.setdefault(ns, []).append((hlc, op_id))
        return {ns: RangeSet(items) for ns, items in by_ns.items()}

    def pairs(self, ids: list[bytes]) -> list[tuple[bytes, bytes]]:
        return [(i, self.raw[i]) for i in ids if i in self.raw]


def events(s: SyncSession) -> list[SessionEvent]:
    out = []
    while (ev := s.next_event()) is not None:
        out.append(ev)
    return out


def load_all(s: SyncSession, index: Index, now: float) -> None:
    while (ids := s.take_batch()) is not None:
        s.batch_loaded(index.pairs(ids), now)


def ops_frame(batch: int, raws: list[bytes]) -> bytes:
    return bytes([OPS]) + encode_varint(batch) + b"".join(encode_varint(len(r)) + r
                                                         for r in raws)


def test_push_session_frames_on_the_wire() -> None:
    index = Index()
    a = index.add(b"first op", "library", 10)
    b = index.add(b"bulletin op", "bulletin", 20)
    ledger = PeerLedger()
    s = SyncSession(index, ledger, 100.0, initiator=True, reconcile=False, push=[a, b])
    assert s.frames_to_send(100.0) == [bytes([RECON_DONE])]
    ids = s.take_batch()
    assert ids == [b, a]  # bulletins first, whatever their hlc
    assert ledger.sending == {a, b}
    assert s.take_batch() is None  # one batch loads at a time
    s.batch_loaded(index.pairs(ids), 100.1)
    # OPS, batch 0, each raw op prefixed by its length
    assert s.frames_to_send(100.1) == [b"\x03\x00\x0bbulletin op\x08first op"]
    s.receive_frame(b"\x04\x00", 100.2)  # ACK 0
    assert events(s) == [OpsAcknowledged(0, (b, a))]
    assert ledger.known == {a, b} and not ledger.sending
    assert s.frames_to_send(100.2) == [bytes([END])]
    s.receive_frame(bytes([END]), 100.3)
    assert events(s) == [SessionCompleted(reconciled=False)]
    assert s.closed and s.get_timer() is None
    assert s.progress() == {"in_expected": 0, "in_done": 0, "out_expected": 2, "out_done": 2}


def test_received_batch_is_acknowledged_only_after_commit() -> None:
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    s.receive_frame(bytes([RECON_DONE]), 1.0)
    assert s.frames_to_send(1.0) == [bytes([END])]  # nothing to send of our own
    s.receive_frame(ops_frame(0, [b"x", b"yy"]), 2.0)
    assert events(s) == [OpsReceived(0, (b"x", b"yy"))]
    assert s.frames_to_send(2.0) == []  # not committed yet: no ACK
    s.receive_frame(bytes([END]), 3.0)
    assert events(s) == []  # the peer is done, but our commit is not
    s.batch_committed(0, 4.0)
    assert s.frames_to_send(4.0) == [bytes([ACK, 0])]
    assert events(s) == [SessionCompleted(reconciled=False)]
    assert s.progress()["in_done"] == 2


def test_window_bounds_unacknowledged_batches() -> None:
    index = Index()
    ids = [index.add(i.to_bytes(4, "big"), "library", i) for i in range(BATCH_OPS * 6)]
    s = SyncSession(index, PeerLedger(), 0.0, initiator=True, reconcile=False, push=ids)
    load_all(s, index, 0.0)
    frames = s.frames_to_send(0.0)
    assert [f[0] for f in frames] == [RECON_DONE] + [OPS] * WINDOW
    assert s.take_batch() is None
    s.receive_frame(bytes([ACK, 1]), 0.5)  # acknowledgements may come in any order
    load_all(s, index, 0.5)
    assert [f[:2] for f in s.frames_to_send(0.5)] == [bytes([OPS, WINDOW])]
    for batch in (0, 2, 3, 4):
        s.receive_frame(bytes([ACK, batch]), 1.0)
    load_all(s, index, 1.0)
    assert [f[:2] for f in s.frames_to_send(1.0)] == [bytes([OPS, 5])]
    s.receive_frame(bytes([ACK, 5]), 1.5)
    assert s.frames_to_send(1.5) == [bytes([END])]
    assert s.out_done == len(ids)


def test_batches_respect_the_byte_budget_and_skip_purged_ops() -> None:
    index = Index()
    big = [index.add(bytes([i]) * 40_000, "library", i) for i in range(5)]
    gone = index.add(b"purged", "library", 99)
    s = SyncSession(index, PeerLedger(), 0.0, initiator=True, reconcile=False, push=[*big, gone])
    s.frames_to_send(0.0)
    ids = s.take_batch()
    assert ids == [*big, gone]
    del index.raw[gone], index.meta[gone]  # purged between queueing and loading
    s.batch_loaded(index.pairs(ids), 0.0)
    first = s.frames_to_send(0.0)
    assert len(first) == 1 and BATCH_BYTES - 40_000 < len(first[0]) <= BATCH_BYTES + 16
    assert s.take_batch() == big[3:]  # the rest went back to the queue, in order
    s.batch_loaded(index.pairs(big[3:]), 0.0)
    assert len(s.frames_to_send(0.0)) == 1


def test_ops_known_to_the_peer_or_in_another_session_are_not_sent() -> None:
    index = Index()
    a, b, c = (index.add(x, "library", i) for i, x in enumerate((b"a", b"b", b"c")))
    ledger = PeerLedger(known={a})
    one = SyncSession(index, ledger, 0.0, initiator=True, reconcile=False, push=[a, b])
    two = SyncSession(index, ledger, 0.0, initiator=True, reconcile=False, push=[b, c])
    assert one.take_batch() == [b]
    assert two.take_batch() == [c]
    one.abort()  # never acknowledged: b may go in another session
    assert ledger.sending == {c}


def test_reconciliation_between_two_cores_sends_exactly_the_difference() -> None:
    ia, ib = Index(), Index()
    for i in range(30):
        ia.add(b"common%d" % i, "library", i)
        ib.add(b"common%d" % i, "library", i)
    only_a = [ia.add(b"a%d" % i, "library", 100 + i) for i in range(5)]
    only_b = [ib.add(b"b%d" % i, "situation", 200 + i) for i in range(3)]
    sa = SyncSession(ia, PeerLedger(), 0.0, initiator=True, reconcile=True)
    sb = SyncSession(ib, PeerLedger(), 0.0, initiator=False, reconcile=True)
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    now = 0.0
    for _ in range(20):  # each end delivers its frames to the other, commits at once
        now += 0.01
        for me, other, idx, name in ((sa, sb, ia, "a"), (sb, sa, ib, "b")):
            load_all(me, idx, now)
            for frame in me.frames_to_send(now):
                other.receive_frame(frame, now)
            for ev in events(other):
                if isinstance(ev, OpsReceived):
                    got["b" if other is sb else "a"] += ev.raw_ops
                    other.batch_committed(ev.batch, now)
                elif isinstance(ev, SessionCompleted):
                    got.setdefault("done", []).append(name.encode())
        if sa.closed and sb.closed:
            break
    assert sa.closed and sb.closed and sa.reconciled and sb.reconciled
    assert sorted(got["b"]) == sorted(ia.raw[i] for i in only_a)
    assert sorted(got["a"]) == sorted(ib.raw[i] for i in only_b)
    assert sa.recon_round_trips == 1 and sa.recon_bytes > 0


@pytest.mark.parametrize("frame, reason", [
    (b"", "malformed"),
    (b"\x09junk", "malformed"),
    (bytes([OPS]) + b"\xff", "malformed"),
    (bytes([ACK]) + b"\x05", "state"),
    (b"\x01\x61\x07library\x01\x00\x00\x09", "field"),
])
def test_malformed_frames_end_the_session(frame: bytes, reason: str) -> None:
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    s.receive_frame(frame, 1.0)
    (ev,) = events(s)
    assert isinstance(ev, PeerMisbehaved) and ev.reason == reason
    assert s.closed and s.get_timer() is None
    s.receive_frame(bytes([RECON_DONE]), 2.0)  # ignored once over
    assert events(s) == [] and s.frames_to_send(2.0) == []


def test_out_of_place_frames_are_refused() -> None:
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    s.receive_frame(bytes([RECON_DONE]), 0.0)
    s.receive_frame(bytes([RECON]) + b"\x61", 0.0)
    assert events(s) == [PeerMisbehaved("state", "reconcile message after the end")]
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    s.receive_frame(bytes([RECON_DONE]), 0.0)
    s.receive_frame(bytes([END]), 0.0)
    s.receive_frame(ops_frame(0, [b"late"]), 0.0)  # after its END a peer sends only ACKs
    assert [type(e) for e in events(s)] == [PeerMisbehaved]
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    s.receive_frame(ops_frame(7, [b"x"]), 0.0)
    s.receive_frame(ops_frame(7, [b"y"]), 0.0)  # a batch number still being committed
    assert [type(e) for e in events(s)] == [OpsReceived, PeerMisbehaved]


def test_idle_timer_fires_only_after_silence() -> None:
    s = SyncSession(Index(), PeerLedger(), 10.0, initiator=False, reconcile=True,
                    idle_timeout_s=30.0)
    assert s.get_timer() == 40.0
    s.handle_timer(39.9)
    assert events(s) == []
    s.receive_frame(bytes([RECON_DONE]), 25.0)  # the peer spoke: the deadline moves
    assert s.get_timer() == 55.0
    s.receive_frame(ops_frame(0, [b"x"]), 26.0)
    s.batch_committed(0, 50.0)  # we were the slow one: it is not the peer's silence
    assert s.get_timer() == 80.0
    s.handle_timer(80.0)
    assert events(s)[-1] == IdleTimedOut(30.0)
    assert s.closed and s.get_timer() is None


def test_a_session_that_ends_badly_releases_what_it_was_sending() -> None:
    index = Index()
    ids = [index.add(b"op%d" % i, "library", i) for i in range(10)]
    ledger = PeerLedger()
    s = SyncSession(index, ledger, 0.0, initiator=True, reconcile=False, push=ids)
    batch = s.take_batch()
    assert batch is not None
    s.batch_loaded(index.pairs(batch), 0.0)
    assert ledger.sending == set(ids)
    s.handle_timer(1000.0)
    assert isinstance(events(s)[-1], IdleTimedOut)
    assert ledger.sending == set() and ledger.known == set()


# -- digest notes ------------------------------------------------------------------------------


def test_set_digest_names_the_set_not_the_order_or_the_namespace_split() -> None:
    a, b = Index(), Index()
    ids = [a.add(bytes([i]) * 40, "bulletin", 10 + i) for i in range(5)]
    for i in reversed(range(5)):
        b.add(bytes([i]) * 40, "bulletin", 10 + i)
    assert set_digest(a) == set_digest(b) and len(set_digest(a)) == DIGEST_LEN
    b.add(b"x" * 40, "bulletin", 99)
    assert set_digest(a) != set_digest(b)
    c = Index()
    c.add(bytes([0]) * 40, "library", 10)  # the same op id in another namespace
    d = Index()
    d.add(bytes([0]) * 40, "bulletin", 10)
    assert set_digest(c) != set_digest(d)
    assert ids and set_digest(Index()) != set_digest(a)


def test_note_decoding_is_strict() -> None:
    digest = bytes(range(DIGEST_LEN))
    note = encode_note(digest, b"\xaa" * 10)
    assert len(note) == NOTE_LEN and decode_note(note) == (digest, b"\xaa" * ECHO_LEN)
    assert decode_note(encode_note(digest, None))[1] == bytes(ECHO_LEN)
    for bad in (b"", note[:-1], note + b"\x00"):
        with pytest.raises(DecodeError):
            decode_note(bad)
    with pytest.raises(ValueError):
        encode_note(b"short", None)


def test_digest_gossip_two_notes_per_contact_and_per_change() -> None:
    low, high = PeerDigests(), PeerDigests()
    d_low, d_high = b"L" * DIGEST_LEN, b"H" * DIGEST_LEN
    low.link_up(0.0, first=True)
    high.link_up(0.0, first=False)
    assert low.note_due(0.0) and not high.note_due(0.2) and high.note_due(0.25)
    ask = low.ask(d_low, 0.0)
    assert low.resend_at == 0.25 and not low.note_due(0.2)  # repeated until answered
    assert high.received(ask, d_high) is True  # it asked (zero echo): answer
    assert not high.note_due(5.0)  # heard the peer: no question of its own left
    answer = high.answer(d_high)
    assert low.received(answer, d_low) is False  # the answer echoes us: no reply
    assert low.theirs == d_high and high.theirs == d_low and not low.note_due(60.0)
    # they differ: both want a reconciliation, until one completes from this very pair
    assert low.wants_reconcile(d_low) and high.wants_reconcile(d_high)
    low.session_started(d_low)
    low.session_completed()
    assert not low.wants_reconcile(d_low)  # (the peer refused what was left: not again)
    # a change: ask at once, answered with an echo; equal digests want nothing
    low.changed(10.0)
    assert low.note_due(10.0)
    ask = low.ask(d_high, 10.0)
    assert high.received(ask, d_high) is True and high.theirs == d_high
    assert not high.wants_reconcile(d_high)
    assert low.received(high.answer(d_high), d_high) is False
    assert not low.wants_reconcile(d_high) and not low.note_due(100.0)
    # an unanswered question is repeated, less and less often
    low.changed(20.0)
    times = []
    t = 20.0
    for _ in range(7):
        assert low.note_due(t)
        low.ask(d_low, t)
        assert low.resend_at is not None
        times.append(low.resend_at - t)
        t = low.resend_at
    assert times == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0][:7]
    with pytest.raises(DecodeError):
        low.received(b"junk", d_low)
    assert low.theirs == d_high  # (a malformed note changes nothing)
    low.link_down()
    assert low.theirs is None and not low.note_due(1e9) and not low.wants_reconcile(d_low)


def _run(sa: SyncSession, sb: SyncSession, ia: Index, ib: Index) -> None:
    now = 0.0
    for _ in range(20):  # each end delivers its frames to the other, commits at once
        now += 0.01
        for me, other, idx in ((sa, sb, ia), (sb, sa, ib)):
            load_all(me, idx, now)
            for frame in me.frames_to_send(now):
                other.receive_frame(frame, now)
            for ev in events(other):
                if isinstance(ev, OpsReceived):
                    other.batch_committed(ev.batch, now)
        if sa.closed and sb.closed:
            return
    raise AssertionError("the session did not end")


def test_ledger_says_when_a_periodic_reconciliation_can_find_nothing() -> None:
    a, b = Index(), Index()
    a.add(b"old" * 20, "bulletin", 1)
    b.add(b"old" * 20, "bulletin", 1)
    la, lb = PeerLedger(), PeerLedger()
    assert la.reconcile_needed()  # nothing reconciled since the link came up
    sa = SyncSession(a, la, 0.0, initiator=True, reconcile=True)
    sb = SyncSession(b, lb, 0.0, initiator=False, reconcile=True)
    new = a.add(b"new" * 20, "bulletin", 2)
    la.committed([new])  # committed after the reconciliation began: not covered by it
    _run(sa, sb, a, b)
    assert la.reconciled and lb.reconciled
    assert not lb.reconcile_needed()  # b committed nothing
    assert la.reconcile_needed()  # ``new`` was not in a's snapshot, b does not hold it
    la.known.add(new)  # (a push delivered it)
    assert not la.reconcile_needed()
    la.committed([new])  # one the neighbour is known to hold does not count
    assert not la.reconcile_needed()
    la.clear()
    assert la.reconcile_needed() and not la.fresh


def test_a_contact_that_begins_lossy_stays_quiet_while_the_link_improves() -> None:
    d = PeerDigests()
    d.link_up(10.0, first=True, loss=0.27)  # the edge of range
    assert not d.note_due(10.0)
    assert d.quiet(10.5, 0.5)  # (no look between two looks)
    assert d.quiet(11.0, 0.22) and d.quiet(12.0, 0.18)  # coming closer
    assert not d.quiet(13.0, 0.12)  # close enough: speak
    assert d.note_due(13.0)
    assert not d.quiet(14.0, 0.3)  # once over, never again in this contact
    passing = PeerDigests()
    passing.link_up(10.0, first=True, loss=0.27)
    assert passing.quiet(11.0, 0.2)
    assert not passing.quiet(12.0, 0.2)  # no better than a second ago: speak now
    edge = PeerDigests()
    edge.link_up(10.0, first=False, loss=0.27)
    assert not edge.quiet(11.0, 0.27)  # standing at the edge: do not wait
    assert not edge.note_due(11.0) and edge.note_due(12.0)  # the first speaker goes first
    slow = PeerDigests()
    slow.link_up(10.0, first=True, loss=0.3)
    for t, loss in ((11.0, 0.29), (12.0, 0.28), (13.0, 0.27)):
        assert slow.quiet(t, loss)
    assert not slow.quiet(14.0, 0.26)  # QUIET_MAX_S at the latest
    good = PeerDigests()
    good.link_up(0.0, first=True, loss=0.05)  # a good link: no quiet start
    assert not good.quiet(0.0, 0.05) and good.note_due(0.0)
    unknown = PeerDigests()
    unknown.link_up(0.0, first=True)  # loss unknown: no quiet start either
    assert unknown.quiet_until is None and unknown.note_due(0.0)
