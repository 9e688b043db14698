"""One call, sans I/O: the state machine, its signalling outbox and dedup, and the media policy.

Theory of operation
-------------------
``CallSession`` is the pure core of one call, in the manner of h2's connection
object: the adapter (``voice.service.VoiceService``) feeds it inputs — the
user's actions, decoded signalling messages, what the WebRTC endpoint reports —
each with ``now`` from **one clock**, the node's monotonic clock; it asks
``get_timer()`` when to come back and calls ``handle_timer(now)`` then.  In
return it offers:

* ``messages_to_send()`` — encoded ``SigMessage`` bodies for the peer (the
  adapter seals and sends them): new messages, retransmissions from the
  ``meshd.services.outbox.Outbox``, and acknowledgements of what was received;
* ``next_event()`` — what the adapter must do or tell: ``StateChanged`` (publish
  ``call.state``), ``AcceptOffer`` (callee: build an endpoint for a re-offer and
  answer it), ``TakeAnswer`` (caller: hand the answer to the endpoint),
  ``ReofferDue`` (caller: media was lost; if a route exists, ``begin_reoffer``),
  ``MediaStalled`` (publish it: the watchdog saw no audio), ``Ended`` (tear media down, publish ``call.ended``).

Policy kept here, with literal times in its tests:

* every message but ``ack`` is retransmitted until acknowledged (0.25 s,
  doubling, at most 2 s apart, 7 sends); one that runs out ends the call
  (UNREACHABLE) — except a caller's re-offer, which is tried again;
* a retransmitted message is acknowledged again but applied once (``Dedup``);
* media setup: an answered call with no audio frame within ``MEDIA_SETUP_S`` of
  the answer, or whose endpoint fails before any audio, ends FAILED with
  ``detail`` saying how to fix it (``media_hint`` from the adapter), never
  "active" with silence;
* media loss: no audio frame for ``MEDIA_STALL_S`` (or the endpoint failing)
  in an active call starts the re-offer: the caller re-offers (generation + 1)
  every ``REOFFER_RETRY_S`` until the answer comes back, both sides give up
  after ``REOFFER_GIVE_UP_S`` (FAILED).

Times for the control API: ``answer_ms`` (caller: dial to the answer arriving;
callee: the offer arriving to the user answering) and ``setup_ms`` (the
answer to the first decoded audio frame) are reported separately, so the human
answering time never counts as media setup.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meshd.services.outbox import Dedup, Outbox
from voice.callstate import (
    CallInput,
    CallMachine,
    CallRole,
    CallState,
    EndReason,
    Transition,
)
from voice.signalling import Kind, SigMessage

__all__ = [
    "MEDIA_SETUP_S",
    "MEDIA_STALL_S",
    "REOFFER_GIVE_UP_S",
    "REOFFER_RETRY_S",
    "AcceptOffer",
    "CallSession",
    "Ended",
    "MediaStalled",
    "ReofferDue",
    "SessionEvent",
    "StateChanged",
    "TakeAnswer",
]

#: an answered call with no audio frame within this long has failed to set up media, seconds
MEDIA_SETUP_S = 10.0
#: no audio frame for this long in an active call counts as failed media (aiortc's own ICE
#: consent check gives up only after about 30 s); above the ~2 s a re-route takes, seconds
MEDIA_STALL_S = 6.0
#: a call whose media failed is re-offered for this long, then ended, seconds
REOFFER_GIVE_UP_S = 60.0
#: how often a caller retries the re-offer (no route, or the re-offer was lost), seconds
REOFFER_RETRY_S = 1.0
#: (call, number) pairs remembered per call for duplicate suppression
DEDUP_ENTRIES = 256

#: the message a side sends when it ends the call for this reason
_FINAL = {EndReason.BUSY: Kind.BUSY, EndReason.DECLINED: Kind.DECLINE,
          EndReason.TIMEOUT: Kind.TIMEOUT, EndReason.HUNG_UP_LOCAL: Kind.HANGUP,
          EndReason.CANCELLED: Kind.HANGUP, EndReason.FAILED: Kind.FAILED}
_RECV = {Kind.OFFER: CallInput.RECV_OFFER, Kind.RINGING: CallInput.RECV_RINGING,
         Kind.ANSWER: CallInput.RECV_ANSWER, Kind.BUSY: CallInput.RECV_BUSY,
         Kind.DECLINE: CallInput.RECV_DECLINE, Kind.HANGUP: CallInput.RECV_HANGUP,
         Kind.TIMEOUT: CallInput.RECV_TIMEOUT, Kind.FAILED: CallInput.RECV_FAILED}


@dataclass(frozen=True, slots=True)
class StateChanged:
    before: CallState
    after: CallState


@dataclass(frozen=True, slots=True)
class AcceptOffer:
    """Callee: an offer (a re-offer, generation > 0) to build a new endpoint for and answer."""

    sdp: str
    generation: int


@dataclass(frozen=True, slots=True)
class TakeAnswer:
    """Caller: the answer to our current offer."""

    sdp: str


@dataclass(frozen=True, slots=True)
class ReofferDue:
    """Caller: media was lost; re-offer now if a route to the peer exists (``begin_reoffer``)."""


@dataclass(frozen=True, slots=True)
class MediaStalled:
    """No audio frame for ``silent_s`` in an active call: media counts as lost."""

    silent_s: float


@dataclass(frozen=True, slots=True)
class Ended:
    reason: EndReason


SessionEvent = StateChanged | AcceptOffer | TakeAnswer | ReofferDue | MediaStalled | Ended


class CallSession:
    """One call; every input takes ``now`` from the node's monotonic clock."""

    def __init__(self, call_id: bytes, role: CallRole, flow_id: int, now: float, *,
                 generation: int = 0, offer_sdp: str | None = None) -> None:
        self.call_id = call_id
        self.flow_id = flow_id
        self.machine = CallMachine(role, now)
        self.generation = generation
        #: the callee keeps the peer's offer until it is answered
        self.offer_sdp = offer_sdp
        self.outbox = Outbox()
        self._dedup: Dedup[int] = Dedup(DEDUP_ENTRIES)
        self._out: list[bytes] = []
        self._events: deque[SessionEvent] = deque()
        self._offer_number = 0
        self.reoffer_since: float | None = None
        self._reoffer_next: float | None = None
        #: callee: when the user answered (media setup counts from here)
        self.answering_at: float | None = None
        self.first_audio_at: float | None = None
        self._last_audio_at: float | None = None  # of the current generation's endpoint
        #: what the adapter knows about why media might not flow (shown if it does not)
        self.media_hint: str = ""
        #: why the call failed, in words for the user (None unless it did)
        self.detail: str | None = None

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> CallState:
        return self.machine.state

    @property
    def role(self) -> CallRole:
        return self.machine.role

    @property
    def reason(self) -> EndReason | None:
        return self.machine.reason

    @property
    def pending(self) -> int:
        """Messages still being retransmitted (an ended call is kept until its last one is acked)."""
        return self.outbox.pending

    def duration_s(self, now: float) -> float | None:
        m = self.machine
        if m.answered_at is None:
            return None
        end = m.ended_at if m.ended_at is not None else now
        return round(end - m.answered_at, 3)

    def _answered_at(self) -> float | None:
        return self.machine.answered_at if self.role is CallRole.CALLER else self.answering_at

    def answer_ms(self) -> float | None:
        """Caller: dial to the answer arriving; callee: the offer arriving to the user answering."""
        at = self._answered_at()
        return round((at - self.machine.created_at) * 1000, 1) if at is not None else None

    def setup_ms(self) -> float | None:
        """The answer to the first audio frame decoded here (media setup only)."""
        at = self._answered_at()
        if at is None or self.first_audio_at is None:
            return None
        return round((self.first_audio_at - at) * 1000, 1)

    def messages_to_send(self) -> list[bytes]:
        """Encoded signalling bodies for the peer, in order (each to be sealed and sent once)."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> SessionEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ local inputs

    def dial(self, now: float) -> None:
        """Caller: start dialling (the offer follows with ``offer`` once the endpoint made it)."""
        self._process(CallInput.DIAL, now, local=True)

    def offer(self, sdp: str, now: float, person: tuple[bytes, bytes] | None = None,
              node_sig: bytes | None = None) -> bool:
        """Send our offer (the first one, or a re-offer); False if the call moved on meanwhile.

        ``person``: a browser's key and signature over the SDP's fingerprints, carried along;
        ``node_sig``: this node's own signature over them (``voice.browser.node_message``)."""
        if self.state is CallState.DIALLING and self._offer_number == 0:
            self._offer_number = self._send(Kind.OFFER, now, sdp=sdp, person=person,
                                            node_sig=node_sig)
            return True
        if self.state is CallState.ACTIVE and self.role is CallRole.CALLER and self.generation > 0:
            if self._offer_number:
                self.outbox.ack(self._offer_number)
            self._offer_number = self._send(Kind.OFFER, now, sdp=sdp, node_sig=node_sig)
            return True
        return False

    def ring(self, now: float) -> None:
        """Callee: tell the caller it rings here."""
        self._send(Kind.RINGING, now)

    def refuse_busy(self, now: float) -> None:
        self._process(CallInput.REFUSE_BUSY, now, local=True)

    def begin_answer(self, now: float) -> None:
        """Callee: the user answered; the endpoint is being built (media setup counts from here)."""
        if self.answering_at is None:
            self.answering_at = now

    def send_answer(self, sdp: str, now: float, person: tuple[bytes, bytes] | None = None,
                    node_sig: bytes | None = None) -> None:
        """Callee: our answer SDP for the current offer; the first one makes the call ACTIVE."""
        if self.state is CallState.ENDED:
            return
        self._send(Kind.ANSWER, now, sdp=sdp, person=person, node_sig=node_sig)
        if self.state is CallState.RINGING:
            self._process(CallInput.ANSWER, now, local=True)

    def hangup(self, now: float) -> None:
        """Hang up; a call that rings in is declined.  Raises ``CallStateError`` if ended."""
        ringing_in = self.role is CallRole.CALLEE and self.state is CallState.RINGING
        self._process(CallInput.DECLINE if ringing_in else CallInput.HANGUP, now, local=True)

    def decline(self, now: float) -> None:
        self._process(CallInput.DECLINE, now, local=True)

    def media_failed(self, now: float, detail: str) -> None:
        """The endpoint could not be set up at all; ends the call (no-op if it ended)."""
        if self.state is not CallState.ENDED:
            self.detail = detail
            self._process(CallInput.MEDIA_FAILED, now, local=True)

    def media_state(self, generation: int, state: str, now: float) -> None:
        """The endpoint of ``generation`` reports a connection state (``failed``, ``closed``...)."""
        if generation != self.generation or self.state is not CallState.ACTIVE:
            return
        if state not in ("failed", "closed"):
            return
        if self.first_audio_at is None:
            self.media_failed(now, f"media could not be set up ({state} before any audio)"
                              + self._hint())
            return
        self._media_lost(now)

    def audio(self, generation: int, first_at: float | None, last_at: float | None) -> bool:
        """What the endpoint of ``generation`` decoded (first and last frame, node clock);
        True the first time this call has audio (publish ``call.audio``)."""
        if generation != self.generation or last_at is None:
            return False
        self._last_audio_at = last_at
        if self.first_audio_at is None and first_at is not None:
            self.first_audio_at = first_at
            return True
        return False

    def begin_reoffer(self) -> int:
        """Caller: a route exists, re-offer now; returns the new generation (build its endpoint,
        then ``offer`` its SDP)."""
        self.generation += 1
        self._reoffer_next = None
        self._last_audio_at = None
        return self.generation

    # ------------------------------------------------------------------ remote input

    def receive(self, msg: SigMessage, now: float) -> None:
        """A decoded signalling message from the peer (not yet acknowledged)."""
        if msg.kind is Kind.ACK:
            self.outbox.ack(msg.acked)
            return
        self._out.append(SigMessage(Kind.ACK, self.call_id, 0, acked=msg.number).encode())
        if not self._dedup.first_time(msg.number):
            return
        if self.state is CallState.ENDED:
            return
        before = self.state
        self._process(_RECV[msg.kind], now, local=False)  # CallStateError: the adapter counts it
        if msg.kind is Kind.FAILED:
            # no audio here either: the same fix likely applies on this side
            self.detail = ("the peer's media failed" if self.first_audio_at is not None
                           else "media could not be set up at the peer" + self._hint())
        elif msg.kind is Kind.OFFER and before is CallState.ACTIVE \
                and msg.generation > self.generation and msg.sdp is not None:
            self.generation = msg.generation  # the caller re-offers after media was lost
            self.offer_sdp = msg.sdp
            self.reoffer_since = None
            self._last_audio_at = now  # the stall watchdog restarts for the new endpoint
            self._events.append(AcceptOffer(msg.sdp, msg.generation))
        elif msg.kind is Kind.ANSWER and self.role is CallRole.CALLER \
                and msg.generation == self.generation and msg.sdp is not None:
            self.outbox.ack(self._offer_number)
            if self.reoffer_since is not None:
                self._last_audio_at = now
            self.reoffer_since = self._reoffer_next = None
            self._events.append(TakeAnswer(msg.sdp))

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """The next deadline at which ``handle_timer`` has work, or None."""
        times = [self.machine.get_timer(), self.outbox.get_timer(), self._reoffer_next]
        if self.state is CallState.ACTIVE:
            answered = self._answered_at()
            if self.first_audio_at is None and answered is not None:
                times.append(answered + MEDIA_SETUP_S)
            elif self.reoffer_since is not None:
                times.append(self.reoffer_since + REOFFER_GIVE_UP_S)
            elif self._last_audio_at is not None:
                times.append(self._last_audio_at + MEDIA_STALL_S)
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, watch media; results via ``messages_to_send``/``next_event``."""
        resend, failed = self.outbox.due(now)
        self._out.extend(data for _n, data in resend)
        if failed and self.state is not CallState.ENDED:
            if self.reoffer_since is not None and self.role is CallRole.CALLER:
                self._reoffer_next = now + REOFFER_RETRY_S  # the re-offer was lost: again
            else:
                self._process(CallInput.SEND_FAILED, now, local=True)
        deadline = self.machine.get_timer()
        if deadline is not None and now >= deadline:
            tr = self.machine.handle_timer(now)
            if tr is not None:
                self._after(tr, now, local=True)
        if self.state is not CallState.ACTIVE:
            return
        answered = self._answered_at()
        if self.first_audio_at is None:
            if answered is not None and now >= answered + MEDIA_SETUP_S:
                self.media_failed(now, f"no audio within {MEDIA_SETUP_S:g} s of the answer"
                                  + self._hint())
            return
        if self.reoffer_since is None and self._last_audio_at is not None \
                and now >= self._last_audio_at + MEDIA_STALL_S:
            self._events.append(MediaStalled(round(now - self._last_audio_at, 3)))
            self._media_lost(now)
        if self.reoffer_since is not None and now >= self.reoffer_since + REOFFER_GIVE_UP_S:
            self.reoffer_since = self._reoffer_next = None
            self.media_failed(now, f"media lost and not restored within {REOFFER_GIVE_UP_S:g} s")
            return
        if self.role is CallRole.CALLER and self._reoffer_next is not None \
                and now >= self._reoffer_next:
            self._reoffer_next = now + REOFFER_RETRY_S  # again unless begin_reoffer is called
            self._events.append(ReofferDue())

    # ------------------------------------------------------------------ internals

    def _hint(self) -> str:
        return f": {self.media_hint}" if self.media_hint else ""

    def _media_lost(self, now: float) -> None:
        if self.reoffer_since is None:
            self.reoffer_since = now
            if self.role is CallRole.CALLER:
                self._events.append(ReofferDue())
                self._reoffer_next = now + REOFFER_RETRY_S  # again unless begin_reoffer is called

    def _send(self, kind: Kind, now: float, *, sdp: str | None = None,
              person: tuple[bytes, bytes] | None = None, node_sig: bytes | None = None) -> int:
        number = self.outbox.next_number()
        pk, ps = person if person is not None else (None, None)
        data = SigMessage(kind, self.call_id, number, sdp=sdp, generation=self.generation,
                          flow_id=self.flow_id, person_key=pk, person_sig=ps,
                          node_sig=node_sig).encode()
        self.outbox.add(number, data, now)
        self._out.append(data)
        return number

    def _process(self, event: CallInput, now: float, *, local: bool) -> None:
        self._after(self.machine.process(event, now), now, local=local)

    def _after(self, tr: Transition, now: float, *, local: bool) -> None:
        if tr.after is tr.before:
            return
        self._events.append(StateChanged(tr.before, tr.after))
        if tr.after is CallState.ENDED:
            assert tr.reason is not None
            self.outbox.clear()
            self.reoffer_since = self._reoffer_next = None
            kind = _FINAL.get(tr.reason)
            if local and kind is not None and tr.before is not CallState.IDLE:
                self._send(kind, now)
            self._events.append(Ended(tr.reason))
