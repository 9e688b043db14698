"""Which new QUIC handshakes a listener takes on: address validation with Retry, per-source limits.

Pure: no I/O, no clock reads (``now`` is passed in), tested with literal
values in ``tests/meshd/test_links_admission.py``.  ``meshd.links.server``
applies it to every Initial packet that would open a new connection.

Why.  A QUIC Initial costs an attacker one spoofable UDP packet and costs the
listener a connection, TLS state and a signed ServerHello.  Before this
module, 3,000 Initials/s with random connection ids filled the 128-handshake
cap: genuine neighbours could not link for the whole flood.  RFC 9000 §8.1
gives servers the answer: address validation with a Retry packet, stateless
on the server.  A client that can receive at its source address echoes the
Retry's token in a second Initial; a spoofer never sees the token.

Policy (``admit``):

- Address not validated (no token): accepted at once while fewer than
  ``retry_above`` unvalidated handshakes are pending (a neighbour links in one
  round trip when nothing is wrong), otherwise answered with a Retry and
  forgotten.  So spoofed Initials can hold at most ``retry_above`` handshakes.
- Address validated (a valid token): refused when its source already has
  ``per_source`` validated handshakes pending, or when ``max_pending``
  handshakes are pending in all; otherwise accepted.  A host that can
  receive (a real attacker, not a spoofer) holds at most ``per_source``.

Before any of that, ``InitialBudget`` rations the work spent on Initials that
would open a connection at all: token buckets per source address (the UDP
address and port, as QUIC sees a client) and in all, checked on the raw
datagram before anything is parsed.  Beyond the budget an Initial is dropped
silently (the client's own retransmission tries again): a flood then costs a
dictionary look-up per packet, not a header parse, an HMAC and a Retry, and
the existing links' packets, dispatched first by connection id, keep their
latency.  Tokenless Initials and Initials carrying a token draw from separate
global buckets, so forged tokens cannot starve first contacts and a tokenless
flood cannot starve the clients that answered a Retry.

Tokens (``RetryTokens``) are an HMAC-SHA256 over the client's address, the
Retry's source connection id, the original destination connection id and the
time of issue, under a key made when the listener starts; they live
``lifetime_s``.  Checking one costs one HMAC (aioquic's own token handler
decrypts RSA: about a millisecond per forged token).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "MAX_PENDING_HANDSHAKES",
    "PER_SOURCE_PENDING",
    "RETRY_ABOVE",
    "AdmissionPolicy",
    "InitialBudget",
    "PendingHandshakes",
    "RetryTokens",
    "Verdict",
]

#: handshakes pending per node, in all; more are refused (validated) or sent a Retry
MAX_PENDING_HANDSHAKES = 128
#: unvalidated handshakes pending before every new client must prove its address first
RETRY_ABOVE = 16
#: validated handshakes pending from one source address
PER_SOURCE_PENDING = 8
#: how long a Retry token is good for (a client echoes it within one round trip)
TOKEN_LIFETIME_S = 10.0
#: Initials one source address (host, port) may have handled per second, and its burst
SOURCE_RATE, SOURCE_BURST = 10.0, 10.0
#: Initials handled per second in all, and the burst, for each of tokenless and token-carrying
TOTAL_RATE, TOTAL_BURST = 500.0, 100.0
#: source buckets remembered; the table is emptied when full (the global buckets still hold)
MAX_SOURCES = 4096
_MAC_LEN = 16
_MAX_CID = 20  # RFC 9000 §17.2
_TOKEN_HEAD = struct.Struct("!dB")  # issued_at, len(odcid)
MAX_TOKEN_LEN = _TOKEN_HEAD.size + _MAX_CID + _MAC_LEN


class Verdict(enum.Enum):
    """What to do with an Initial that would open a new connection."""

    ACCEPT = "accept"
    RETRY = "retry"  # answer with a Retry packet, keep no state
    REFUSE = "refuse"  # answer with CONNECTION_CLOSE(CONNECTION_REFUSED), keep no state


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """The limits; see the module docstring."""

    retry_above: int = RETRY_ABOVE
    per_source: int = PER_SOURCE_PENDING
    max_pending: int = MAX_PENDING_HANDSHAKES

    def __post_init__(self) -> None:
        if not 0 <= self.retry_above <= self.max_pending or self.per_source < 1:
            raise ValueError(f"inconsistent admission policy {self}")


@dataclass(slots=True)
class PendingHandshakes:
    """Server-side handshakes in progress, by validation and source host (keys are opaque)."""

    policy: AdmissionPolicy = field(default_factory=AdmissionPolicy)
    _entries: dict[int, tuple[str, bool]] = field(default_factory=dict)
    _validated_by_source: Counter[str] = field(default_factory=Counter)
    unvalidated: int = 0

    @property
    def total(self) -> int:
        return len(self._entries)

    def validated_from(self, host: str) -> int:
        return self._validated_by_source[host]

    def admit(self, host: str, validated: bool) -> Verdict:
        """The verdict for a new connection from ``host`` (its address proven or not)."""
        p = self.policy
        if not validated:
            if self.unvalidated < p.retry_above and self.total < p.max_pending:
                return Verdict.ACCEPT
            return Verdict.RETRY
        if self._validated_by_source[host] >= p.per_source or self.total >= p.max_pending:
            return Verdict.REFUSE
        return Verdict.ACCEPT

    def add(self, key: int, host: str, validated: bool) -> None:
        """A connection was created for an accepted Initial."""
        if key in self._entries:
            return
        self._entries[key] = (host, validated)
        if validated:
            self._validated_by_source[host] += 1
        else:
            self.unvalidated += 1

    def done(self, key: int) -> None:
        """The handshake ended (linked, refused, timed out or closed): its slot is free."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        host, validated = entry
        if validated:
            self._validated_by_source[host] -= 1
            if self._validated_by_source[host] <= 0:
                del self._validated_by_source[host]
        else:
            self.unvalidated -= 1


class InitialBudget:
    """Token buckets for Initials that would open a connection: per source and in all.

    ``allow`` is called for every such datagram before it is parsed, so it
    allocates nothing for a known source and reads no clock (``now`` is passed
    in).  A source is whatever hashable address the transport gives (host,
    port); the per-source table holds at most ``max_sources`` entries and is
    emptied when full, which a spoofer varying its address could force, so the
    global buckets are what bound the work in that case.
    """

    __slots__ = (
        "_fresh",
        "_sources",
        "_token",
        "max_sources",
        "source_burst",
        "source_rate",
        "total_burst",
        "total_rate",
    )

    def __init__(self, *, source_rate: float = SOURCE_RATE, source_burst: float = SOURCE_BURST,
                 total_rate: float = TOTAL_RATE, total_burst: float = TOTAL_BURST,
                 max_sources: int = MAX_SOURCES) -> None:
        if min(source_rate, source_burst, total_rate, total_burst) <= 0 or max_sources < 1:
            raise ValueError("initial budget rates, bursts and table size must be positive")
        self.source_rate = source_rate
        self.source_burst = source_burst
        self.total_rate = total_rate
        self.total_burst = total_burst
        self.max_sources = max_sources
        # [tokens, last refill time]; lists updated in place
        self._sources: dict[object, list[float]] = {}
        self._fresh: list[float] = [total_burst, float("-inf")]
        self._token: list[float] = [total_burst, float("-inf")]

    @staticmethod
    def _take(bucket: list[float], rate: float, burst: float, now: float) -> bool:
        tokens = bucket[0] + (now - bucket[1]) * rate
        tokens = min(tokens, burst)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def allow(self, source: object, has_token: bool, now: float) -> bool:
        """Whether to handle one more Initial from ``source`` now (a token: it answers a Retry)."""
        bucket = self._sources.get(source)
        if bucket is None:
            if len(self._sources) >= self.max_sources:
                self._sources.clear()
            bucket = self._sources[source] = [self.source_burst, now]
        if not self._take(bucket, self.source_rate, self.source_burst, now):
            return False
        return self._take(self._token if has_token else self._fresh,
                          self.total_rate, self.total_burst, now)

    @property
    def sources(self) -> int:
        """Source buckets held now."""
        return len(self._sources)


class RetryTokens:
    """Stateless Retry tokens: HMAC over address, connection ids and issue time."""

    def __init__(self, key: bytes, lifetime_s: float = TOKEN_LIFETIME_S) -> None:
        if len(key) < 16:
            raise ValueError("retry token key too short")
        self._key = key
        self.lifetime_s = lifetime_s

    def _mac(self, addr: tuple[str, int], issued_at: float, odcid: bytes,
             retry_scid: bytes) -> bytes:
        msg = b"|".join((b"carmesh-retry-1", addr[0].encode(), str(addr[1]).encode(),
                         struct.pack("!d", issued_at), odcid, retry_scid))
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:_MAC_LEN]

    def create(self, addr: tuple[str, int], odcid: bytes, retry_scid: bytes,
               now: float) -> bytes:
        """The token for a Retry to ``addr`` (``odcid``: the client's first destination cid)."""
        if len(odcid) > _MAX_CID:
            raise ValueError("connection id too long")
        return (_TOKEN_HEAD.pack(now, len(odcid)) + odcid
                + self._mac(addr, now, odcid, retry_scid))

    def validate(self, addr: tuple[str, int], retry_scid: bytes, token: bytes,
                 now: float) -> bytes:
        """The original destination cid a valid token carries; ``ValueError`` otherwise.

        ``retry_scid`` is the destination cid of the client's second Initial
        (the source cid our Retry gave it).
        """
        if not _TOKEN_HEAD.size + _MAC_LEN <= len(token) <= MAX_TOKEN_LEN:
            raise ValueError("token size")
        issued_at, n = _TOKEN_HEAD.unpack_from(token)
        if len(token) != _TOKEN_HEAD.size + n + _MAC_LEN:
            raise ValueError("token layout")
        odcid = token[_TOKEN_HEAD.size:_TOKEN_HEAD.size + n]
        mac = token[_TOKEN_HEAD.size + n:]
        if not hmac.compare_digest(mac, self._mac(addr, issued_at, odcid, retry_scid)):
            raise ValueError("token mac")
        if not issued_at <= now <= issued_at + self.lifetime_s:
            raise ValueError("token expired")
        return odcid
