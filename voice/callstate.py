"""The pure call state machine: one ``CallMachine`` per call, no I/O, time passed in as ``now``.

Theory of operation
-------------------
A call is IDLE until the caller dials (DIALLING) or an offer arrives at the
callee (RINGING).  The callee's node answers RINGING at once, so the caller
moves to RINGING too; ANSWER makes both ACTIVE; anything that ends the call
moves to ENDED with an ``EndReason``.  ENDED is final: late messages for an
ended call are acknowledged by the service and otherwise ignored.

The whole legal-transition table is one dict, ``TRANSITIONS``: (state, input)
-> (next state, end reason or None), in the manner of h2's
``H2ConnectionStateMachine``.  An input that is not in the table raises
``CallStateError``; the service counts and drops those that came from the
network and reports those that came from the user.

Timers (``get_timer``/``handle_timer(now)``): a caller that hears no RINGING
within ``DIAL_TIMEOUT_S`` gives up (UNREACHABLE); a call that rings for
``RING_TIMEOUT_S`` ends (TIMEOUT) on both sides.  A caller that hangs up
before the answer has CANCELLED the call; its callee MISSED it.  Signalling,
retransmission and the media policy around the machine are
``voice.session.CallSession``'s business.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshd.core.errors import LocalProtocolError

__all__ = [
    "DIAL_TIMEOUT_S",
    "RING_TIMEOUT_S",
    "TRANSITIONS",
    "CallInput",
    "CallMachine",
    "CallRole",
    "CallState",
    "CallStateError",
    "EndReason",
    "Transition",
]

#: a caller that hears no ringing within this long gives up as unreachable, seconds
DIAL_TIMEOUT_S = 10.0
#: an unanswered call ends after ringing this long, seconds
RING_TIMEOUT_S = 45.0


class CallState(enum.Enum):
    IDLE = "idle"
    DIALLING = "dialling"
    RINGING = "ringing"
    ACTIVE = "active"
    ENDED = "ended"


class CallRole(enum.Enum):
    CALLER = "caller"
    CALLEE = "callee"


class EndReason(enum.Enum):
    """Why a call ended; the same reason is reported on both sides."""

    BUSY = "busy"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"
    HUNG_UP_LOCAL = "hung up"  #: this side hung up
    HUNG_UP_REMOTE = "hung up by peer"  #: the other side hung up
    CANCELLED = "cancelled"  #: the caller hung up before the call was answered (caller's side)
    MISSED = "missed"  #: the caller gave up before this side answered (callee's side)
    FAILED = "failed"  #: media could not be set up or was lost for good


class CallInput(enum.Enum):
    # local inputs
    DIAL = "dial"
    ANSWER = "answer"  #: the callee's user answers
    DECLINE = "decline"  #: the callee's user declines
    REFUSE_BUSY = "refuse_busy"  #: the callee's node is busy with other calls
    HANGUP = "hangup"
    MEDIA_FAILED = "media_failed"  #: the endpoint could not be set up or re-offered
    SEND_FAILED = "send_failed"  #: no route, or retries exhausted
    DIAL_TIMER = "dial_timer"
    RING_TIMER = "ring_timer"
    # inputs received from the peer
    RECV_OFFER = "recv_offer"
    RECV_RINGING = "recv_ringing"
    RECV_ANSWER = "recv_answer"
    RECV_BUSY = "recv_busy"
    RECV_DECLINE = "recv_decline"
    RECV_HANGUP = "recv_hangup"
    RECV_TIMEOUT = "recv_timeout"  #: the peer ended an unanswered call on its ring timer
    RECV_FAILED = "recv_failed"  #: the peer's media could not be set up or was lost for good


@dataclass(frozen=True, slots=True)
class Transition:
    """What one input did: the state before, after, and the end reason if the call ended."""

    before: CallState
    after: CallState
    reason: EndReason | None


S, I, R = CallState, CallInput, EndReason  # noqa: E741  (short names keep the table readable)
_END = S.ENDED

#: every legal (state, input) -> (next state, end reason)
TRANSITIONS: dict[tuple[CallState, CallInput], tuple[CallState, EndReason | None]] = {
    (S.IDLE, I.DIAL): (S.DIALLING, None),
    (S.IDLE, I.RECV_OFFER): (S.RINGING, None),
    # caller, before the callee rang
    (S.DIALLING, I.RECV_RINGING): (S.RINGING, None),
    (S.DIALLING, I.RECV_ANSWER): (S.ACTIVE, None),  # ringing lost, answer got through
    (S.DIALLING, I.RECV_BUSY): (_END, R.BUSY),
    (S.DIALLING, I.RECV_DECLINE): (_END, R.DECLINED),
    (S.DIALLING, I.RECV_HANGUP): (_END, R.HUNG_UP_REMOTE),
    (S.DIALLING, I.HANGUP): (_END, R.CANCELLED),
    (S.DIALLING, I.SEND_FAILED): (_END, R.UNREACHABLE),
    (S.DIALLING, I.DIAL_TIMER): (_END, R.UNREACHABLE),
    (S.DIALLING, I.MEDIA_FAILED): (_END, R.FAILED),
    (S.DIALLING, I.RECV_FAILED): (_END, R.FAILED),
    # ringing (both sides)
    (S.RINGING, I.RECV_RINGING): (S.RINGING, None),  # a retransmission
    (S.RINGING, I.RECV_OFFER): (S.RINGING, None),  # a retransmission
    (S.RINGING, I.ANSWER): (S.ACTIVE, None),
    (S.RINGING, I.RECV_ANSWER): (S.ACTIVE, None),
    (S.RINGING, I.DECLINE): (_END, R.DECLINED),
    (S.RINGING, I.REFUSE_BUSY): (_END, R.BUSY),
    (S.RINGING, I.RECV_DECLINE): (_END, R.DECLINED),
    (S.RINGING, I.RECV_BUSY): (_END, R.BUSY),
    (S.RINGING, I.HANGUP): (_END, R.CANCELLED),  # the caller gives up (a callee declines)
    (S.RINGING, I.RECV_HANGUP): (_END, R.MISSED),  # the callee hears the caller give up
    (S.RINGING, I.RING_TIMER): (_END, R.TIMEOUT),
    (S.RINGING, I.RECV_TIMEOUT): (_END, R.TIMEOUT),
    (S.RINGING, I.SEND_FAILED): (_END, R.UNREACHABLE),
    (S.RINGING, I.MEDIA_FAILED): (_END, R.FAILED),
    (S.RINGING, I.RECV_FAILED): (_END, R.FAILED),
    # in a call
    (S.ACTIVE, I.RECV_ANSWER): (S.ACTIVE, None),  # a retransmission, or the answer to a re-offer
    (S.ACTIVE, I.RECV_OFFER): (S.ACTIVE, None),  # a re-offer after media was lost
    (S.ACTIVE, I.RECV_RINGING): (S.ACTIVE, None),
    (S.ACTIVE, I.HANGUP): (_END, R.HUNG_UP_LOCAL),
    (S.ACTIVE, I.RECV_HANGUP): (_END, R.HUNG_UP_REMOTE),
    (S.ACTIVE, I.MEDIA_FAILED): (_END, R.FAILED),
    (S.ACTIVE, I.RECV_FAILED): (_END, R.FAILED),
    (S.ACTIVE, I.SEND_FAILED): (_END, R.UNREACHABLE),
}

del S, I, R


class CallStateError(LocalProtocolError):
    """An input that the call's current state does not allow."""


class CallMachine:
    """The state of one call; ``process(input, now)`` applies ``TRANSITIONS``."""

    def __init__(self, role: CallRole, now: float) -> None:
        self.role = role
        self.state = CallState.IDLE
        self.reason: EndReason | None = None
        self.created_at = now
        self.state_since = now
        self.answered_at: float | None = None
        self.ended_at: float | None = None

    def process(self, event: CallInput, now: float) -> Transition:
        """Apply one input; raise ``CallStateError`` if the table has no entry for it."""
        key = (self.state, event)
        if key not in TRANSITIONS:
            raise CallStateError(f"{event.value} not allowed in state {self.state.value}")
        after, reason = TRANSITIONS[key]
        before = self.state
        if after is not before:
            self.state = after
            self.state_since = now
            if after is CallState.ACTIVE:
                self.answered_at = now
            if after is CallState.ENDED:
                self.reason = reason
                self.ended_at = now
        return Transition(before, after, reason)

    def get_timer(self) -> float | None:
        """The next deadline at which ``handle_timer`` has work, or None."""
        if self.state is CallState.DIALLING:
            return self.state_since + DIAL_TIMEOUT_S
        if self.state is CallState.RINGING:
            return self.state_since + RING_TIMEOUT_S
        return None

    def handle_timer(self, now: float) -> Transition | None:
        """Fire a due timer (dial or ring timeout); None if nothing was due."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return None
        if self.state is CallState.DIALLING:
            return self.process(CallInput.DIAL_TIMER, now)
        return self.process(CallInput.RING_TIMER, now)
