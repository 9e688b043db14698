"""The pure call state machine and the signalling messages, with literal values."""

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
from voice.signalling import Kind, SigMessage

S, I, R = CallState, CallInput, EndReason  # noqa: E741

# What each legal input does, as literal strings (state, input) -> (state after, reason or
# None), written from the behaviour a user sees, not copied from TRANSITIONS: changing what a
# call does must change this list.
LEGAL = [
    ("idle", "dial", "dialling", None),
    ("idle", "recv_offer", "ringing", None),
    ("dialling", "recv_ringing", "ringing", None),
    ("dialling", "recv_answer", "active", None),
    ("dialling", "recv_busy", "ended", "busy"),
    ("dialling", "recv_decline", "ended", "declined"),
    ("dialling", "recv_hangup", "ended", "hung up by peer"),
    ("dialling", "hangup", "ended", "cancelled"),
    ("dialling", "send_failed", "ended", "unreachable"),
    ("dialling", "dial_timer", "ended", "unreachable"),
    ("dialling", "media_failed", "ended", "failed"),
    ("dialling", "recv_failed", "ended", "failed"),
    ("ringing", "recv_ringing", "ringing", None),
    ("ringing", "recv_offer", "ringing", None),
    ("ringing", "answer", "active", None),
    ("ringing", "recv_answer", "active", None),
    ("ringing", "decline", "ended", "declined"),
    ("ringing", "refuse_busy", "ended", "busy"),
    ("ringing", "recv_decline", "ended", "declined"),
    ("ringing", "recv_busy", "ended", "busy"),
    ("ringing", "hangup", "ended", "cancelled"),
    ("ringing", "recv_hangup", "ended", "missed"),
    ("ringing", "ring_timer", "ended", "timeout"),
    ("ringing", "recv_timeout", "ended", "timeout"),
    ("ringing", "send_failed", "ended", "unreachable"),
    ("ringing", "media_failed", "ended", "failed"),
    ("ringing", "recv_failed", "ended", "failed"),
    ("active", "recv_answer", "active", None),
    ("active", "recv_offer", "active", None),
    ("active", "recv_ringing", "active", None),
    ("active", "hangup", "ended", "hung up"),
    ("active", "recv_hangup", "ended", "hung up by peer"),
    ("active", "media_failed", "ended", "failed"),
    ("active", "recv_failed", "ended", "failed"),
    ("active", "send_failed", "ended", "unreachable"),
]
LEGAL_KEYS = {(CallState(st_), CallInput(inp)) for st_, inp, _a, _r in LEGAL}


def test_the_table_allows_exactly_the_listed_inputs() -> None:
    assert len(LEGAL) == len(LEGAL_KEYS) == 35
    assert set(TRANSITIONS) == LEGAL_KEYS


def _machine_in(state: CallState, now: float = 10.0) -> CallMachine:
    m = CallMachine(CallRole.CALLER, now)
    m.state = state
    m.state_since = now
    return m


@pytest.mark.parametrize(("state", "event", "after", "reason"), LEGAL)
def test_each_legal_transition(state: str, event: str, after: str, reason: str | None) -> None:
    m = _machine_in(CallState(state))
    tr = m.process(CallInput(event), 12.5)
    assert (tr.before.value, tr.after.value) == (state, after)
    assert (tr.reason.value if tr.reason else None) == reason
    assert m.state.value == after
    if after == "ended":
        assert m.reason is not None and m.reason.value == reason and m.ended_at == 12.5
    if after == "active" and state != "active":
        assert m.answered_at == 12.5


@pytest.mark.parametrize(("inputs", "state", "reason"), [
    (["dial", "recv_ringing", "recv_answer", "hangup"], "ended", "hung up"),
    (["dial", "recv_ringing", "hangup"], "ended", "cancelled"),
    (["recv_offer", "recv_hangup"], "ended", "missed"),
    (["recv_offer", "answer", "recv_hangup"], "ended", "hung up by peer"),
    (["recv_offer", "ring_timer"], "ended", "timeout"),
    (["dial", "recv_answer", "recv_offer", "recv_answer"], "active", None),  # a re-offer
])
def test_whole_calls(inputs: list[str], state: str, reason: str | None) -> None:
    m = CallMachine(CallRole.CALLER, 0.0)
    for t, inp in enumerate(inputs):
        m.process(CallInput(inp), float(t))
    assert (m.state.value, m.reason.value if m.reason else None) == (state, reason)


def test_reason_texts_users_see() -> None:
    assert [r.value for r in R] == ["busy", "declined", "timeout", "unreachable", "hung up",
                                    "hung up by peer", "cancelled", "missed", "failed"]


@pytest.mark.parametrize(("state", "event"),
                         [(s, i) for s in S for i in I if (s, i) not in LEGAL_KEYS])
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
    SigMessage(Kind.FAILED, CID, 6),
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


def test_voice_service_builds_before_the_loop_runs(tmp_path: Path) -> None:
    """The composition root builds services in ``Node.__init__``, before ``run()`` starts the loop."""
    from tests.voice.fakemesh import FakeMesh
    from voice.service import VoiceService

    mesh = FakeMesh(tmp_path, ["A", "B"])
    svc = VoiceService(mesh.by_name["A"], auto_answer=False, answer_play=None, answer_record=None)
    assert set(svc.handlers()) == {"call", "answer", "decline", "hangup", "calls",
                                   "browser.dial", "browser.offer", "browser.answer",
                                   "browser.refuse"}
    assert set(mesh.by_name["A"].handlers) == {3, 4}  # Service.SIG, Service.MEDIA
