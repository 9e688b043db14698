"""Per-client request rate limits: one token bucket per client address (pure; ``now`` passed in).

A bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; each
request takes one.  At most ``max_clients`` buckets are kept: the least recently
used is forgotten first (a forgotten client starts again with a full bucket,
which only ever errs towards letting a request through).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimiter"]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets by client key (the peer's address)."""

    def __init__(self, rate_per_s: float, burst: int, *, max_clients: int = 4096) -> None:
        if rate_per_s < 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate_per_s >= 0, burst >= 1, max_clients >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: requests refused so far
        self.refused = 0

    def allow(self, client: str, now: float) -> bool:
        """Take a token for ``client`` at ``now``; False when its bucket is empty."""
        b = self._buckets.get(client)
        if b is None:
            b = self._buckets[client] = _Bucket(float(self.burst), now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            b.tokens = min(float(self.burst), b.tokens + max(0.0, now - b.stamp) * self.rate_per_s)
            b.stamp = now
        if b.tokens < 1.0:
            self.refused += 1
            return False
        b.tokens -= 1.0
        return True

    def retry_after_s(self, client: str) -> float:
        """Seconds until ``client`` has a token again (an upper bound for Retry-After)."""
        b = self._buckets.get(client)
        if b is None or b.tokens >= 1.0:
            return 0.0
        if self.rate_per_s == 0:
            return 60.0
        return (1.0 - b.tokens) / self.rate_per_s

    def __len__(self) -> int:
        return len(self._buckets)
