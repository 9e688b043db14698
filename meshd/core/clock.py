"""Mesh time: a node's clock bounded by its neighbours' view of time (pure core, time passed in).

Theory of operation
-------------------
Wrong clocks are normal in a disaster: no network time, a head unit whose RTC
battery died, a phone set by hand.  Every timestamp a node signs — its
announcements, the hybrid-logical-clock stamps of its ops, message times — is
checked by its peers against *their* clocks, and one too far ahead is refused
(``future``), one too old is refused (``stale``).  A node whose clock runs two
days ahead is therefore muted: nothing it says is accepted.

So a node does not sign with its raw system clock but with *mesh time*: the
raw clock plus an offset estimated from its neighbours.  Every hello carries
the sender's raw wall clock (``meshd.routing.neighbours``); the receiver turns
it into an offset sample ``peer_wall + rtt/2 - own_wall`` (raw clocks on both
sides, so estimates never feed back into each other).  ``MeshClock`` keeps the
newest sample per neighbour for ``SAMPLE_TTL_S`` and estimates the offset as
the *lower median* of {0 (our own clock)} ∪ {the neighbours' samples}:

* with several neighbours the majority wins, so one wrong clock — ours or a
  neighbour's — is outvoted;
* with one neighbour the earlier of the two clocks wins: a clock ahead is what
  mutes a node (its stamps are refused as ``future`` and drag other clocks
  forward), a clock behind only delays what it accepts.  So the local clock
  may never run ahead of the neighbours' view of time.

The estimate is applied when it is at least ``TOLERANCE_S`` (smaller
disagreements are normal and tolerated by every check).  It stays applied
when the neighbours go away — an isolated node keeps stamping in the mesh's
time — until the raw clock itself jumps against the monotonic clock (the user
set the clock): then every sample, and the offset, are dropped, since they
were measured against the old clock.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SAMPLE_TTL_S", "TOLERANCE_S", "ClockView", "MeshClock", "describe_offset"]

#: offsets smaller than this are left alone (well inside the 5 min every check tolerates)
TOLERANCE_S = 60.0
#: a neighbour's sample older than this (monotonic seconds) no longer counts
SAMPLE_TTL_S = 30.0


def describe_offset(seconds: float) -> str:
    """An offset's size for people: ``-172799.7`` → ``"2d 0h"``, ``3725`` → ``"1h 2m"``."""
    a = abs(seconds)
    if a >= 86400 - 1800:
        hours = round(a / 3600)
        text = f"{hours // 24}d {hours % 24}h"
    elif a >= 3600 - 30:
        minutes = round(a / 60)
        text = f"{minutes // 60}h {minutes % 60}m"
    elif a >= 60:
        secs = round(a)
        text = f"{secs // 60}m {secs % 60}s"
    else:
        text = f"{a:.1f}s"
    return text


@dataclass(frozen=True, slots=True)
class ClockView:
    """What ``status`` shows about the clock."""

    #: seconds added to the raw system clock for everything this node signs and checks
    offset_s: float
    #: the current estimate from neighbours (None: no fresh sample)
    estimate_s: float | None
    #: fresh samples by neighbour id: that neighbour's clock minus our raw clock, seconds
    samples: dict[bytes, float]
    #: a sentence for the user when the clock is wrong, with the fix; None when all is well
    warning: str | None


class MeshClock:
    """Offset of mesh time from this node's raw wall clock; see the module docstring."""

    def __init__(self, *, tolerance_s: float = TOLERANCE_S,
                 sample_ttl_s: float = SAMPLE_TTL_S) -> None:
        self.tolerance_s = tolerance_s
        self.sample_ttl_s = sample_ttl_s
        self._samples: dict[bytes, tuple[float, float]] = {}  # peer -> (offset, at monotonic)
        self._offset = 0.0
        self._base: float | None = None  # raw wall - monotonic at the last update

    @property
    def offset_s(self) -> float:
        """Seconds to add to the raw wall clock (0 while it agrees with the neighbours)."""
        return self._offset

    def time(self, raw_wall: float) -> float:
        """Mesh time for a raw wall-clock reading (unix seconds)."""
        return raw_wall + self._offset

    def sample(self, peer: bytes, offset_s: float, now: float) -> None:
        """``peer``'s raw clock minus ours, measured at monotonic ``now``."""
        self._samples[peer] = (offset_s, now)

    def forget(self, peer: bytes) -> None:
        """The neighbour went away: its sample no longer counts."""
        self._samples.pop(peer, None)

    def fresh(self, now: float) -> dict[bytes, float]:
        """Samples younger than ``sample_ttl_s`` (older ones are dropped)."""
        for peer in [p for p, (_, at) in self._samples.items() if now - at > self.sample_ttl_s]:
            del self._samples[peer]
        return {p: off for p, (off, _) in self._samples.items()}

    def estimate(self, now: float) -> float | None:
        """Lower median of {0} ∪ fresh samples; None without a fresh sample."""
        fresh = sorted([0.0, *self.fresh(now).values()])
        if len(fresh) == 1:
            return None
        return fresh[(len(fresh) - 1) // 2]

    def update(self, raw_wall: float, now: float) -> bool:
        """Re-estimate at raw wall time ``raw_wall``, monotonic ``now``.

        Returns True when the applied offset moved by ``tolerance_s`` or more (the node
        re-signs its announcement and logs it).
        """
        base = raw_wall - now
        if self._base is not None and abs(base - self._base) >= self.tolerance_s:
            # the system clock was set: what we measured against the old one is void
            self._samples.clear()
            old, self._offset = self._offset, 0.0
            self._base = base
            return abs(old) >= self.tolerance_s
        self._base = base
        est = self.estimate(now)
        if est is None:
            return False  # no neighbour: keep what the mesh told us last
        new = est if abs(est) >= self.tolerance_s else 0.0
        moved = abs(new - self._offset) >= self.tolerance_s
        self._offset = new
        return moved

    def view(self, now: float) -> ClockView:
        """Offset, estimate, samples and a warning for ``status``."""
        est = self.estimate(now)
        samples = self.fresh(now)
        warning = None
        if self._offset:
            way = "ahead of" if self._offset < 0 else "behind"
            warning = (f"this node's system clock is {describe_offset(self._offset)} {way} its"
                       f" neighbours' ({len(samples) or 'none now, as last seen'}); it signs with"
                       f" the mesh's time instead. Fix: set the system clock (e.g."
                       f" `timedatectl set-time 'YYYY-MM-DD HH:MM:SS'` or `date -s`)")
        elif est is not None:
            far = [off for off in samples.values() if abs(off) >= self.tolerance_s]
            if far:
                warning = (f"{len(far)} of {len(samples)} neighbours' clocks disagree with this"
                           f" node's by {describe_offset(max(far, key=abs))} or more; the"
                           " majority (this node's) is kept. Fix the clocks of those nodes")
        return ClockView(self._offset, est, samples, warning)
