"""Call signalling messages (the body inside a sealed ``sig`` packet) and their retransmission.

A ``SigMessage`` is MessagePack ``{"k": kind, "c": call id (16 B), "n": message
number, ...}``: ``offer`` and ``answer`` carry the SDP (``"sdp"``, whose
``a=fingerprint`` lines are thereby signed end to end by ``meshd.core.seal``) and a
generation (``"g"``: 0 for the first offer, +1 for each re-offer); ``offer``
carries the call's media flow id (``"f"``).  Every message but ``ack`` is
acknowledged with ``{"k": "ack", "c", "n": 0, "a": acked number}``.

``Outbox`` is the pure retransmission core: messages are resent on an
exponential schedule until acknowledged or until ``MAX_TRIES`` sends, then
reported as failed.  ``Dedup`` remembers the (call, number) pairs already
processed so that a retransmission is acknowledged but not applied twice
(each retransmission is sealed afresh, so ``meshd.core.seal.ReplayCache`` alone
cannot see that it is a repeat).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field

from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import DecodeError

__all__ = [
    "CALL_ID_LEN",
    "MAX_SDP",
    "MAX_TRIES",
    "Dedup",
    "Kind",
    "Outbox",
    "SigMessage",
]

CALL_ID_LEN = 16
#: an SDP larger than this is refused (an aiortc audio offer is about 1.3 KB)
MAX_SDP = 16 * 1024
MAX_BODY = MAX_SDP + 512
#: first retransmission after this long, then doubling, seconds
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 2.0
#: sends of one message before it counts as undeliverable (about 8 s in all)
MAX_TRIES = 7


class Kind(enum.Enum):
    OFFER = "offer"
    RINGING = "ringing"
    ANSWER = "answer"
    BUSY = "busy"
    DECLINE = "decline"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class SigMessage:
    """One signalling message; ``encode``/``decode`` are exact inverses."""

    kind: Kind
    call_id: bytes
    number: int
    sdp: str | None = None
    generation: int = 0
    flow_id: int = 0
    acked: int = 0

    def encode(self) -> bytes:
        m: dict[str, object] = {"k": self.kind.value, "c": self.call_id, "n": self.number}
        if self.kind in (Kind.OFFER, Kind.ANSWER):
            m["sdp"] = self.sdp or ""
            m["g"] = self.generation
        if self.kind is Kind.OFFER:
            m["f"] = self.flow_id
        if self.kind is Kind.ACK:
            m["a"] = self.acked
        return pack(m)

    @classmethod
    def decode(cls, data: bytes) -> SigMessage:
        """Parse a decrypted body; raise ``DecodeError`` for anything malformed."""
        f = Fields(unpack(data, MAX_BODY, max_items=16))
        try:
            kind = Kind(f.str("k", max_len=16))
        except ValueError:
            raise DecodeError("sig-kind", "unknown signalling kind") from None
        call_id = f.bytes("c", size=CALL_ID_LEN)
        number = f.int("n", 0, 2**31)
        sdp: str | None = None
        generation = flow_id = acked = 0
        if kind in (Kind.OFFER, Kind.ANSWER):
            sdp = f.str("sdp", max_len=MAX_SDP)
            generation = f.int("g", 0, 1000)
            if "a=fingerprint:" not in sdp:
                raise DecodeError("sig-sdp", "SDP without a DTLS fingerprint")
        if kind is Kind.OFFER:
            flow_id = f.int("f", 1, 2**32 - 1)
        if kind is Kind.ACK:
            acked = f.int("a", 1, 2**31)
        return cls(kind, call_id, number, sdp, generation, flow_id, acked)


@dataclass(slots=True)
class _Pending:
    data: bytes
    tries: int
    due: float
    interval: float = field(default=RETRY_FIRST_S)


class Outbox:
    """Reliable delivery of numbered messages to one peer: resend until acked, then give up."""

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._next = 1

    def next_number(self) -> int:
        """A fresh message number (numbers start at 1; 0 is for acks)."""
        n = self._next
        self._next += 1
        return n

    def add(self, number: int, data: bytes, now: float) -> None:
        """Track a message that was just sent once."""
        self._pending[number] = _Pending(data, 1, now + RETRY_FIRST_S)

    def ack(self, number: int) -> bool:
        """Forget an acknowledged message; True if it was pending."""
        return self._pending.pop(number, None) is not None

    def clear(self) -> None:
        """Stop retransmitting everything."""
        self._pending.clear()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def get_timer(self) -> float | None:
        """The next retransmission deadline, or None."""
        return min((p.due for p in self._pending.values()), default=None)

    def due(self, now: float) -> tuple[list[tuple[int, bytes]], list[int]]:
        """(messages to resend now, numbers that ran out of tries and were dropped)."""
        resend: list[tuple[int, bytes]] = []
        failed: list[int] = []
        for n, p in list(self._pending.items()):
            if p.due > now:
                continue
            if p.tries >= MAX_TRIES:
                del self._pending[n]
                failed.append(n)
                continue
            p.tries += 1
            p.interval = min(p.interval * 2, RETRY_MAX_S)
            p.due = now + p.interval
            resend.append((n, p.data))
        return resend, failed


class Dedup:
    """Remembers which (call id, message number) pairs were already applied (bounded, oldest first out)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        self._max = max_entries

    def first_time(self, call_id: bytes, number: int) -> bool:
        """True the first time a pair is seen."""
        key = (call_id, number)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True
