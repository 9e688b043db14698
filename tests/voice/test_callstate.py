"""The pure call state machine and the signalling core, with literal ``now`` values."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.core.codec import pack
from meshd.core.errors import DecodeError
from voice.callstate import (
    DIAL_TIMEOUT_S,
    RING_TIMEOUT_S,
    TRANSITIONS,
    CallInput,
    CallMachine,
    CallRole,
    CallState,
    CallStateError,
    EndReason,
)
from voice.signalling import MAX_TRIES, RETRY_FIRST_S, Dedup, Kind, Outbox, SigMessage

S, I, R = CallState, CallInput, EndReason  # noqa: E741

# the whole table, spelled out: a change to it must change this test
EXPECTED = {
    (S.IDLE, I.DIAL): (S.DIALLING, None),
    (S.IDLE, I.RECV_OFFER): (S.RINGING, None),
    (S.DIALLING, I.RECV_RINGING): (S.RINGING, None),
    (S.DIALLING, I.RECV_ANSWER): (S.ACTIVE, None),
    (S.DIALLING, I.RECV_BUSY): (S.ENDED, R.BUSY),
    (S.DIALLING, I.RECV_DECLINE): (S.ENDED, R.DECLINED),
    (S.DIALLING, I.RECV_HANGUP): (S.ENDED, R.HUNG_UP_REMOTE),
    (S.DIALLING, I.HANGUP): (S.ENDED, R.HUNG_UP_LOCAL),
    (S.DIALLING, I.SEND_FAILED): (S.ENDED, R.UNREACHABLE),
    (S.DIALLING, I.DIAL_TIMER): (S.ENDED, R.UNREACHABLE),
    (S.DIALLING, I.MEDIA_FAILED): (S.ENDED, R.FAILED),
    (S.RINGING, I.RECV_RINGING): (S.RINGING, None),
    (S.RINGING, I.RECV_OFFER): (S.RINGING, None),
    (S.RINGING, I.ANSWER): (S.ACTIVE, None),
    (S.RINGING, I.RECV_ANSWER): (S.ACTIVE, None),
    (S.RINGING, I.DECLINE): (S.ENDED, R.DECLINED),
    (S.RINGING, I.REFUSE_BUSY): (S.ENDED, R.BUSY),
    (S.RINGING, I.RECV_DECLINE): (S.ENDED, R.DECLINED),
    (S.RINGING, I.RECV_BUSY): (S.ENDED, R.BUSY),
    (S.RINGING, I.HANGUP): (S.ENDED, R.HUNG_UP_LOCAL),
    (S.RINGING, I.RECV_HANGUP): (S.ENDED, R.HUNG_UP_REMOTE),
    (S.RINGING, I.RING_TIMER): (S.ENDED, R.TIMEOUT),
    (S.RINGING, I.RECV_TIMEOUT): (S.ENDED, R.TIMEOUT),
    (S.RINGING, I.SEND_FAILED): (S.ENDED, R.UNREACHABLE),
    (S.RINGING, I.MEDIA_FAILED): (S.ENDED, R.FAILED),
    (S.ACTIVE, I.RECV_ANSWER): (S.ACTIVE, None),
    (S.ACTIVE, I.RECV_OFFER): (S.ACTIVE, None),
    (S.ACTIVE, I.RECV_RINGING): (S.ACTIVE, None),
    (S.ACTIVE, I.HANGUP): (S.ENDED, R.HUNG_UP_LOCAL),
    (S.ACTIVE, I.RECV_HANGUP): (S.ENDED, R.HUNG_UP_REMOTE),
    (S.ACTIVE, I.MEDIA_FAILED): (S.ENDED, R.FAILED),
    (S.ACTIVE, I.SEND_FAILED): (S.ENDED, R.UNREACHABLE),
}


def test_transition_table_is_exactly_the_documented_one() -> None:
    assert TRANSITIONS == EXPECTED


def _machine_in(state: CallState, now: float = 10.0) -> CallMachine:
    m = CallMachine(CallRole.CALLER, now)
    m.state = state
    m.state_since = now
    return m


@pytest.mark.parametrize(("state", "event"), list(EXPECTED))
def test_each_legal_transition(state: CallState, event: CallInput) -> None:
    m = _machine_in(state)
    tr = m.process(event, 12.5)
    after, reason = EXPECTED[(state, event)]
    assert (tr.before, tr.after, tr.reason) == (state, after, reason)
    assert m.state is after
    if after is S.ENDED:
        assert m.reason is reason and m.ended_at == 12.5
    if after is S.ACTIVE and state is not S.ACTIVE:
        assert m.answered_at == 12.5


@pytest.mark.parametrize(("state", "event"),
                         [(s, i) for s in S for i in I if (s, i) not in EXPECTED])
def test_every_other_input_is_refused_and_changes_nothing(state: CallState, event: CallInput) -> None:
    m = _machine_in(state)
    with pytest.raises(CallStateError):
        m.process(event, 11.0)
    assert m.state is state and m.reason is None


@given(st.lists(st.sampled_from(list(I)), max_size=30))
def test_ended_is_final_and_always_has_a_reason(events: list[CallInput]) -> None:
    m = CallMachine(CallRole.CALLEE, 0.0)
    now = 0.0
    for ev in events:
        now += 1.0
        before = m.state
        try:
            m.process(ev, now)
        except CallStateError:
            assert m.state is before
        if before is S.ENDED:
            assert m.state is S.ENDED
        assert (m.state is S.ENDED) == (m.reason is not None)


def test_dial_timer() -> None:
    m = CallMachine(CallRole.CALLER, 100.0)
    assert m.get_timer() is None
    m.process(I.DIAL, 100.0)
    assert m.get_timer() == 100.0 + DIAL_TIMEOUT_S
    assert m.handle_timer(100.0 + DIAL_TIMEOUT_S - 0.01) is None
    tr = m.handle_timer(100.0 + DIAL_TIMEOUT_S)
    assert tr is not None and tr.reason is R.UNREACHABLE
    assert m.get_timer() is None


def test_ring_timer_restarts_when_ringing_starts() -> None:
    m = CallMachine(CallRole.CALLER, 0.0)
    m.process(I.DIAL, 0.0)
    m.process(I.RECV_RINGING, 3.0)
    assert m.get_timer() == 3.0 + RING_TIMEOUT_S
    m.process(I.RECV_RINGING, 4.0)  # a retransmission does not restart it
    assert m.get_timer() == 3.0 + RING_TIMEOUT_S
    tr = m.handle_timer(3.0 + RING_TIMEOUT_S)
    assert tr is not None and tr.reason is R.TIMEOUT


def test_answered_call_has_no_timer() -> None:
    m = CallMachine(CallRole.CALLEE, 0.0)
    m.process(I.RECV_OFFER, 0.0)
    m.process(I.ANSWER, 1.0)
    assert m.get_timer() is None and m.handle_timer(1000.0) is None


# ---------------------------------------------------------------------- signalling

CID = bytes(range(16))
SDP = "v=0\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\na=fingerprint:sha-256 AA\r\n"


@pytest.mark.parametrize("msg", [
    SigMessage(Kind.OFFER, CID, 1, sdp=SDP, generation=2, flow_id=77),
    SigMessage(Kind.ANSWER, CID, 3, sdp=SDP, generation=0),
    SigMessage(Kind.RINGING, CID, 4),
    SigMessage(Kind.HANGUP, CID, 5),
    SigMessage(Kind.ACK, CID, 0, acked=5),
])
def test_sig_roundtrip(msg: SigMessage) -> None:
    assert SigMessage.decode(msg.encode()) == msg


@pytest.mark.parametrize("body", [
    b"\xc1", pack([1, 2]), pack({"k": "dance", "c": CID, "n": 1}),
    pack({"k": "ringing", "c": b"short", "n": 1}),
    pack({"k": "ringing", "c": CID, "n": True}),
    pack({"k": "offer", "c": CID, "n": 1, "sdp": "v=0", "g": 0, "f": 5}),  # no fingerprint
    pack({"k": "offer", "c": CID, "n": 1, "sdp": SDP, "g": 0, "f": 0}),  # flow id 0
    pack({"k": "ack", "c": CID, "n": 0}),
    random.Random(64).randbytes(64),  # fixed: parallel test runs collect identically
])
def test_sig_refuses_malformed(body: bytes) -> None:
    with pytest.raises(DecodeError):
        SigMessage.decode(body)


def test_outbox_retransmits_with_backoff_then_gives_up() -> None:
    box = Outbox()
    n = box.next_number()
    assert n == 1 and box.next_number() == 2
    box.add(n, b"m", 0.0)
    assert box.get_timer() == RETRY_FIRST_S
    assert box.due(RETRY_FIRST_S - 0.01) == ([], [])
    sends, now = 1, 0.0
    while True:
        now = box.get_timer() or now
        resend, failed = box.due(now)
        if failed:
            assert failed == [n]
            break
        assert resend == [(n, b"m")]
        sends += 1
    assert sends == MAX_TRIES and box.pending == 0 and box.get_timer() is None
    assert 5.0 < now < 12.0


def test_outbox_ack_stops_retransmission() -> None:
    box = Outbox()
    box.add(1, b"a", 0.0)
    box.add(2, b"b", 0.1)
    assert box.ack(1) and not box.ack(1)
    resend, failed = box.due(1.0)
    assert resend == [(2, b"b")] and failed == []


def test_dedup() -> None:
    d = Dedup(max_entries=2)
    assert d.first_time(CID, 1) and not d.first_time(CID, 1)
    assert d.first_time(CID, 2) and d.first_time(CID, 3)
    assert d.first_time(CID, 1)  # evicted: bounded memory


def test_voice_service_builds_before_the_loop_runs(tmp_path: Path) -> None:
    """The composition root builds services in ``Node.__init__``, before ``run()`` starts the loop."""
    from tests.voice.fakemesh import FakeMesh
    from voice.service import VoiceService

    mesh = FakeMesh(tmp_path, ["A", "B"])
    svc = VoiceService(mesh.by_name["A"], auto_answer=False, answer_play=None, answer_record=None)
    assert set(svc.handlers()) == {"call", "answer", "decline", "hangup", "calls"}
    assert set(mesh.by_name["A"].handlers) == {3, 4}  # Service.SIG, Service.MEDIA
