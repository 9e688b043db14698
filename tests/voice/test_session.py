"""The pure call session: signalling, timers and the media policy, with literal times only."""

from __future__ import annotations

import pytest

from voice.callstate import CallRole, CallStateError
from voice.session import (
    AcceptOffer,
    CallSession,
    Ended,
    MediaStalled,
    ReofferDue,
    SessionEvent,
    StateChanged,
    TakeAnswer,
)
from voice.signalling import Kind, SigMessage

CID = bytes(range(16))
SDP = "v=0\r\na=ice-ufrag:x\r\na=ice-pwd:y\r\na=fingerprint:sha-256 AA\r\n"


def _events(s: CallSession) -> list[SessionEvent]:
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


def _sent(s: CallSession) -> list[tuple[str, int, int]]:
    """(kind, number, acked) of every body the session wants sent."""
    return [(m.kind.value, m.number, m.acked) for m in map(SigMessage.decode, s.messages_to_send())]


def _states(s: CallSession) -> list[str]:
    return [e.after.value for e in _events(s) if isinstance(e, StateChanged)]


def _caller_active(answer_at: float = 5.0) -> CallSession:
    s = CallSession(CID, CallRole.CALLER, 77, 0.0)
    s.dial(0.0)
    s.offer(SDP, 0.1)
    s.receive(SigMessage(Kind.RINGING, CID, 1), 0.2)
    s.receive(SigMessage(Kind.ANSWER, CID, 2, sdp=SDP), answer_at)
    s.messages_to_send()
    _events(s)
    return s


def _callee_ringing(at: float = 1.0) -> CallSession:
    offer = SigMessage(Kind.OFFER, CID, 1, sdp=SDP, flow_id=77)
    s = CallSession(CID, CallRole.CALLEE, 77, at, offer_sdp=SDP)
    s.receive(offer, at)
    s.ring(at)
    return s


def test_caller_dials_rings_is_answered_and_times_answer_and_setup_apart() -> None:
    s = CallSession(CID, CallRole.CALLER, 77, 0.0)
    s.dial(0.0)
    assert _sent(s) == [] and _states(s) == ["dialling"]
    assert s.offer(SDP, 0.1)
    assert _sent(s) == [("offer", 1, 0)]
    s.receive(SigMessage(Kind.RINGING, CID, 1), 0.2)
    assert _sent(s) == [("ack", 0, 1)] and _states(s) == ["ringing"]
    s.receive(SigMessage(Kind.ANSWER, CID, 2, sdp=SDP), 3.6)  # a human took 3.4 s to answer
    assert _sent(s) == [("ack", 0, 2)]
    evs = _events(s)
    assert [e.after.value for e in evs if isinstance(e, StateChanged)] == ["active"]
    assert TakeAnswer(SDP) in evs
    assert s.answer_ms() == 3600.0 and s.setup_ms() is None
    assert s.audio(0, 3.75, 3.75) is True  # the first frame: publish call.audio
    assert s.audio(0, 3.75, 3.8) is False
    assert (s.answer_ms(), s.setup_ms()) == (3600.0, 150.0)
    assert s.outbox.pending == 0  # the answer acknowledged the offer


def test_callee_answer_time_is_the_human_setup_time_is_the_media() -> None:
    s = _callee_ringing(1.0)
    assert _sent(s) == [("ack", 0, 1), ("ringing", 1, 0)]
    assert _states(s) == ["ringing"]
    s.begin_answer(4.0)
    s.send_answer(SDP, 4.1)
    assert _sent(s) == [("answer", 2, 0)] and _states(s) == ["active"]
    s.audio(0, 4.3, 4.3)
    assert (s.answer_ms(), s.setup_ms()) == (3000.0, 300.0)


def test_caller_hangs_up_while_ringing_cancelled_here_missed_there() -> None:
    caller = CallSession(CID, CallRole.CALLER, 77, 0.0)
    caller.dial(0.0)
    caller.offer(SDP, 0.0)
    caller.receive(SigMessage(Kind.RINGING, CID, 1), 0.1)
    caller.messages_to_send()
    caller.hangup(2.0)
    (hangup,) = [SigMessage.decode(b) for b in caller.messages_to_send()]
    assert hangup.kind is Kind.HANGUP
    assert caller.reason is not None and caller.reason.value == "cancelled"
    assert Ended(caller.reason) in _events(caller)
    callee = _callee_ringing(0.05)
    callee.receive(hangup, 2.1)
    assert callee.reason is not None and callee.reason.value == "missed"


def test_callee_hangup_while_ringing_declines() -> None:
    s = _callee_ringing()
    s.messages_to_send()
    s.hangup(3.0)
    assert [m[0] for m in _sent(s)] == ["decline"]
    assert s.reason is not None and s.reason.value == "declined"
    with pytest.raises(CallStateError):
        s.hangup(4.0)


def test_answered_call_without_audio_fails_loudly_at_both_ends() -> None:
    s = _caller_active(answer_at=5.0)
    s.media_hint = "add 127.0.0.2"
    assert s.get_timer() == 15.0  # the answer + MEDIA_SETUP_S
    s.handle_timer(14.9)
    assert s.state.value == "active"
    s.handle_timer(15.0)
    assert (s.state.value, s.reason.value if s.reason else None) == ("ended", "failed")
    assert s.detail == "no audio within 10 s of the answer: add 127.0.0.2"
    (failed,) = [SigMessage.decode(b) for b in s.messages_to_send()]
    assert failed.kind is Kind.FAILED
    peer = _callee_ringing(0.1)
    peer.begin_answer(0.2)
    peer.send_answer(SDP, 0.3)
    peer.media_hint = "add 127.0.0.2 here too"
    peer.receive(failed, 15.1)
    assert peer.reason is not None and peer.reason.value == "failed"
    assert peer.detail == "media could not be set up at the peer: add 127.0.0.2 here too"


def test_endpoint_failing_before_any_audio_ends_the_call_at_once() -> None:
    s = _caller_active()
    s.media_hint = "fix it so"
    s.media_state(0, "connecting", 5.1)
    assert s.state.value == "active"
    s.media_state(1, "failed", 5.2)  # another generation's endpoint: ignored
    assert s.state.value == "active"
    s.media_state(0, "failed", 5.3)
    assert s.reason is not None and s.reason.value == "failed"
    assert s.detail == "media could not be set up (failed before any audio): fix it so"


def test_stalled_audio_is_reoffered_once_a_route_is_back() -> None:
    s = _caller_active(answer_at=5.0)
    s.audio(0, 5.2, 10.0)
    assert s.get_timer() == 16.0  # the last frame + MEDIA_STALL_S
    s.handle_timer(16.0)
    assert _events(s) == [MediaStalled(6.0), ReofferDue()]
    assert s.get_timer() == 17.0  # no route yet: asked again every REOFFER_RETRY_S
    s.handle_timer(17.0)
    assert _events(s) == [ReofferDue()]
    assert s.begin_reoffer() == 1
    assert s.offer(SDP, 17.2)
    (reoffer,) = [SigMessage.decode(b) for b in s.messages_to_send()]
    assert (reoffer.kind, reoffer.generation) == (Kind.OFFER, 1)
    s.receive(SigMessage(Kind.ANSWER, CID, 3, sdp=SDP, generation=0), 17.3)  # a stale answer
    assert TakeAnswer(SDP) not in _events(s)
    s.receive(SigMessage(Kind.ANSWER, CID, 4, sdp=SDP, generation=1), 17.5)
    assert _events(s) == [TakeAnswer(SDP)]
    assert s.reoffer_since is None and s.state.value == "active"
    assert s.get_timer() == 23.5  # the watchdog restarts for the new endpoint


def test_callee_takes_a_reoffer_and_both_give_up_after_a_minute() -> None:
    callee = _callee_ringing(0.0)
    callee.begin_answer(0.0)
    callee.send_answer(SDP, 0.1)
    callee.audio(0, 0.3, 20.0)
    callee.messages_to_send()
    _events(callee)
    callee.handle_timer(26.0)
    assert _events(callee) == [MediaStalled(6.0)]  # the callee waits for the caller's re-offer
    callee.receive(SigMessage(Kind.OFFER, CID, 5, sdp=SDP, generation=1, flow_id=77), 30.0)
    assert _events(callee) == [AcceptOffer(SDP, 1)]
    assert callee.generation == 1 and callee.reoffer_since is None
    caller = _caller_active(answer_at=5.0)
    caller.audio(0, 5.2, 10.0)
    caller.handle_timer(16.0)
    for t in range(17, 76):
        caller.handle_timer(float(t))
    assert caller.state.value == "active"
    assert caller.get_timer() == 76.0
    caller.handle_timer(76.0)
    assert caller.reason is not None and caller.reason.value == "failed"
    assert caller.detail == "media lost and not restored within 60 s"


def test_unacknowledged_ringing_is_resent_then_the_call_is_unreachable() -> None:
    s = _callee_ringing(0.0)
    s.messages_to_send()
    resends = []
    while s.state.value != "ended":
        t = s.get_timer()
        assert t is not None
        s.handle_timer(t)
        resends += [(round(t, 2), k) for k, _n, _a in _sent(s)]
    assert resends == [(0.25, "ringing"), (0.75, "ringing"), (1.75, "ringing"),
                       (3.75, "ringing"), (5.75, "ringing"), (7.75, "ringing")]
    assert s.reason is not None and s.reason.value == "unreachable"


def test_a_retransmission_is_acknowledged_again_but_applied_once() -> None:
    s = _caller_active()
    hangup = SigMessage(Kind.HANGUP, CID, 9)
    s.receive(hangup, 8.0)
    s.receive(hangup, 8.2)
    assert _sent(s) == [("ack", 0, 9), ("ack", 0, 9)]
    assert [type(e).__name__ for e in _events(s)] == ["StateChanged", "Ended"]
    assert s.reason is not None and s.reason.value == "hung up by peer"


def test_ring_timeout_sends_timeout_and_dial_timeout_is_unreachable() -> None:
    s = _callee_ringing(0.0)
    s.receive(SigMessage(Kind.ACK, CID, 0, acked=1), 0.1)  # the ringing got through
    s.messages_to_send()
    assert s.get_timer() == 45.0
    s.handle_timer(45.0)
    assert [m[0] for m in _sent(s)] == ["timeout"]
    assert s.reason is not None and s.reason.value == "timeout"
    c = CallSession(CID, CallRole.CALLER, 77, 0.0)
    c.dial(0.0)
    c.offer(SDP, 0.0)
    c.receive(SigMessage(Kind.ACK, CID, 0, acked=1), 0.1)
    c.messages_to_send()
    assert c.get_timer() == 10.0
    c.handle_timer(10.0)
    assert c.reason is not None and c.reason.value == "unreachable" and _sent(c) == []
