"""Pure rules of the link layer: which duplicate connection survives, when to dial again.

No I/O and no clock reads: time comes in as ``now`` (seconds on any monotonic
clock) and jitter from an injected ``random.Random``, so each rule is tested
with literal values (``tests/meshd/test_links_rules.py``).  ``LinkManager``
applies them.

Duplicates.  Two nodes may each complete a connection to the other at once
(both dialled, e.g. mutual static peers or both saw the other's zeroconf
service), or a peer that restarted dials again while its old connection still
looks alive to us.  Both ends must keep the *same* connection without talking
about it, so the rule depends only on facts both ends share: the connection
initiated by the node with the smaller NodeId is preferred.  Two connections
in the same direction mean the initiator restarted or re-dialled: the newer
wins.  A preferred connection that is older than the new one is kept only if
it still answers a liveness ping (the peer may have restarted and lost it).

Backoff.  A static or discovered peer that cannot be reached is dialled again
after an exponentially growing delay (``min_s`` doubling up to ``max_s``) with
jitter on the upper half, so cars that lost the same relay do not redial in
step; a successful link starts again from ``min_s``.

Refusals.  A peer that answers and then refuses the link (it closed the link
in or right after the handshake: our key is revoked there, it is busy, speaks
another version, cannot prove its id) would otherwise be redialled at once,
forever: a revoked car made 17 links in 10 s.  Refusals have their own, slower
schedule (``refused_min_s`` 1 s doubling to ``refused_max_s`` 60 s, jittered
the same way), and a link that went down within ``stable_s`` of coming up
counts as a refusal too, whatever the reason given (an old peer closes without
saying why).  Only a link that stayed up ``stable_s`` starts the refusal
schedule over and redials at once when it goes down.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

__all__ = [
    "BACKOFF_MAX_S",
    "BACKOFF_MIN_S",
    "DISCOVERED_BACKOFF_MAX_S",
    "REFUSED_BACKOFF_MAX_S",
    "REFUSED_BACKOFF_MIN_S",
    "STABLE_LINK_S",
    "Backoff",
    "Duplicate",
    "initiated_by_smaller",
    "resolve_duplicate",
]

#: reconnect backoff bounds of a configured static peer
BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 10.0
#: a discovered peer is re-announced by zeroconf while it is around: dial it less eagerly
DISCOVERED_BACKOFF_MAX_S = 30.0
#: redial backoff bounds of a peer that refused the link (in or right after the handshake)
REFUSED_BACKOFF_MIN_S = 1.0
REFUSED_BACKOFF_MAX_S = 60.0
#: a link that went down sooner than this after coming up was refused, not lost
STABLE_LINK_S = 30.0


def initiated_by_smaller(our_id: bytes, peer_id: bytes, we_initiated: bool) -> bool:
    """True if the connection was initiated by the node with the smaller NodeId."""
    initiator = our_id if we_initiated else peer_id
    return initiator == min(our_id, peer_id)


class Duplicate(enum.Enum):
    """What to do when a second connection to an already linked peer completes."""

    #: close the current connection, the new one carries the link from now on
    TAKE_NEW = "take-new"
    #: the current one is preferred: keep it if it answers a liveness ping, else take the new one
    KEEP_CURRENT_IF_ALIVE = "keep-current-if-alive"


def resolve_duplicate(our_id: bytes, peer_id: bytes, *, current_we_initiated: bool,
                      new_we_initiated: bool) -> Duplicate:
    """The duplicate-connection rule; both ends reach the same connection from their own view."""
    current = initiated_by_smaller(our_id, peer_id, current_we_initiated)
    new = initiated_by_smaller(our_id, peer_id, new_we_initiated)
    if current == new:
        # the same direction twice: the initiator restarted or re-dialled; the newer wins
        return Duplicate.TAKE_NEW
    if new:
        return Duplicate.TAKE_NEW
    return Duplicate.KEEP_CURRENT_IF_ALIVE


@dataclass(slots=True)
class Backoff:
    """The redial schedule of one peer: exponential, jittered on the upper half.

    ``failed(now)`` (unreachable) and ``refused(now)`` (the peer refused the
    link) return the time of the next attempt, each on its own schedule;
    ``succeeded(now)`` (a link came up) starts the unreachable schedule over;
    ``link_lost(now)`` returns when to redial: at once after a link that stayed
    up ``stable_s`` (the refusal schedule starts over too), else as a refusal.
    """

    rng: random.Random
    min_s: float = BACKOFF_MIN_S
    max_s: float = BACKOFF_MAX_S
    refused_min_s: float = REFUSED_BACKOFF_MIN_S
    refused_max_s: float = REFUSED_BACKOFF_MAX_S
    stable_s: float = STABLE_LINK_S
    #: the un-jittered delay the next failure waits
    delay: float = 0.0
    #: the un-jittered delay the next refusal waits
    refused_delay: float = 0.0
    #: failed or refused attempts since the last success
    failures: int = 0
    #: refusals (and links that did not stay up) since the last link that stayed up
    refusals: int = 0
    #: when the current (or last) link came up, None if none since the last ``link_lost``
    up_since: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff bounds {self.min_s}..{self.max_s}")
        if not 0 < self.refused_min_s <= self.refused_max_s:
            raise ValueError(f"refusal backoff bounds {self.refused_min_s}..{self.refused_max_s}")
        self.delay = self.min_s
        self.refused_delay = self.refused_min_s

    def _jitter(self, delay: float) -> float:
        return delay * (0.5 + self.rng.random() * 0.5)

    def failed(self, now: float) -> float:
        """An attempt failed at ``now`` (no answer): when to try again."""
        self.failures += 1
        wait = self._jitter(self.delay)
        self.delay = min(self.delay * 2, self.max_s)
        return now + wait

    def refused(self, now: float) -> float:
        """The peer refused the link at ``now``: when to try again."""
        self.failures += 1
        self.refusals += 1
        wait = self._jitter(self.refused_delay)
        self.refused_delay = min(self.refused_delay * 2, self.refused_max_s)
        return now + wait

    def succeeded(self, now: float) -> None:
        """A link came up at ``now``."""
        self.failures = 0
        self.delay = self.min_s
        self.up_since = now

    def link_lost(self, now: float) -> float:
        """The link went down at ``now``: when to dial again (``now`` itself: at once)."""
        up, self.up_since = self.up_since, None
        if up is not None and now - up >= self.stable_s:
            self.refusals = 0
            self.refused_delay = self.refused_min_s
            return now
        return self.refused(now)
