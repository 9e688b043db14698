"""Reliable delivery of numbered end-to-end messages: the pure retransmission core.

No I/O, no clock reads: time is passed in as ``now`` (the node's monotonic
clock).  The adapter sends a message once, ``add``s it, and asks ``get_timer``
when to come back; at that time ``due(now)`` says which messages to resend and
which ran out of tries (or of time) and are given up.  ``ack`` forgets a message.

Used for call signalling (``voice``: 0.25 s, doubling, at most 2 s apart, 7
sends) and for text messages (``meshd.services.messaging``: 0.5 s, doubling,
at most 4 s apart, until the sender's deadline).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["MAX_TRIES", "RETRY_FIRST_S", "RETRY_MAX_S", "Dedup", "Outbox", "RetryPolicy"]

#: defaults (the call signalling schedule): first retransmission after this long, seconds
RETRY_FIRST_S = 0.25
#: the interval doubles up to this, seconds
RETRY_MAX_S = 2.0
#: sends of one message before it counts as undeliverable (about 8 s in all)
MAX_TRIES = 7

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to resend: ``first`` s after the first send, doubling up to ``max_interval``;
    give up after ``max_tries`` sends (None: no limit; then a deadline must bound it)."""

    first: float = RETRY_FIRST_S
    max_interval: float = RETRY_MAX_S
    max_tries: int | None = MAX_TRIES


@dataclass(slots=True)
class _Pending:
    data: bytes
    tries: int
    due: float
    interval: float
    deadline: float | None


class Outbox:
    """Numbered messages to one peer (or many): resend until acked, then give up."""

    def __init__(self, policy: RetryPolicy | None = None) -> None:
        self.policy = policy or RetryPolicy()
        self._pending: dict[int, _Pending] = {}
        self._next = 1

    def next_number(self) -> int:
        """A fresh message number (numbers start at 1; 0 is for acks)."""
        n = self._next
        self._next += 1
        return n

    def add(self, number: int, data: bytes, now: float, *, deadline: float | None = None) -> None:
        """Track a message that was just sent once; ``deadline``: give up at that time at the latest."""
        first = self.policy.first
        due = now + first if deadline is None else min(now + first, deadline)
        self._pending[number] = _Pending(data, 1, due, first, deadline)

    def ack(self, number: int) -> bool:
        """Forget an acknowledged message; True if it was pending."""
        return self._pending.pop(number, None) is not None

    def clear(self) -> None:
        """Stop retransmitting everything."""
        self._pending.clear()

    def __contains__(self, number: int) -> bool:
        return number in self._pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    def get_timer(self) -> float | None:
        """The next retransmission (or give-up) deadline, or None."""
        return min((p.due for p in self._pending.values()), default=None)

    def due(self, now: float) -> tuple[list[tuple[int, bytes]], list[int]]:
        """(messages to resend now, numbers that ran out of tries or time and were dropped)."""
        resend: list[tuple[int, bytes]] = []
        failed: list[int] = []
        limit = self.policy.max_tries
        for n, p in list(self._pending.items()):
            if p.due > now:
                continue
            if (limit is not None and p.tries >= limit) or \
                    (p.deadline is not None and now >= p.deadline):
                del self._pending[n]
                failed.append(n)
                continue
            p.tries += 1
            p.interval = min(p.interval * 2, self.policy.max_interval)
            p.due = now + p.interval
            if p.deadline is not None:
                p.due = min(p.due, p.deadline)
            resend.append((n, p.data))
        return resend, failed


class Dedup(Generic[K]):
    """Remembers which keys (e.g. message numbers) were already applied (bounded, oldest first out).

    Each retransmission is sealed afresh, so ``meshd.core.seal.ReplayCache`` alone cannot
    see that it is a repeat."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._seen: OrderedDict[K, None] = OrderedDict()
        self._max = max_entries

    def first_time(self, key: K) -> bool:
        """True the first time a key is seen."""
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True
