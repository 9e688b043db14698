"""Range-based set reconciliation in the manner of negentropy (pure core, no I/O).

Theory of operation
-------------------
Each side holds, per namespace, an immutable snapshot of its op ids sorted by
``(hlc, op_id)`` (``RangeSet``).  A *bound* ``(ts, id_prefix)`` splits that
order: the items at or above a bound are those whose ``(hlc, op_id)`` compares
``>=`` to it.  A message is a list of consecutive ranges per namespace, each
closed by an upper bound and carrying one of:

* ``SKIP`` — nothing to do here;
* ``FINGERPRINT`` — 16 bytes: SHA-256 over (sum of the ids as little-endian
  integers mod 2**256, then the count as a varint), truncated — the fingerprint
  of hoytech/negentropy;
* ``IDLIST`` — every id the sender holds in the range (16-byte prefixes);
* ``IDLIST_REPLY`` — a bitmap over the ids of the sender's earlier ``IDLIST``
  for the same range (the ids the replier lacks), then how many ops the
  replier will push in that range (for progress reporting).

On a fingerprint the receiver compares its own; if they differ it either
sends its ids (a small range) or splits the range into ``buckets`` sub-ranges
with their fingerprints.  On an id list the receiver learns at once both what
the peer lacks (its own ids not in the list: ``have``, to push) and what it
lacks itself (flagged in an ``IDLIST_REPLY``); on the reply the original
sender learns what to push.  Unlike negentropy's v1, the id list is therefore
never echoed back: the bytes saved go straight into the op transfer.

Both sides run the same code; the initiator only starts.  Reconciliation is
finished when a side has nothing but skips to say (``receive`` returns
``None``).  Namespaces travel in the same messages, in ``NAMESPACE_PRIORITY``
order, so checking all of them costs no extra round trip; the op transfer
then follows that order (see ``sync.service``).

Encoding (all integers are unsigned LEB128 varints)::

    message := 0x61 section*
    section := len(ns) ns n_ranges range*
    range   := bound mode payload
    bound   := ts_code prefix_len prefix     ts_code 0 = infinity, else 1 + ts - previous ts
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.errors import DecodeError
from sync.envelope import NAMESPACE_PRIORITY, OP_ID_LEN

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_IDLIST_THRESHOLD",
    "MAX_MESSAGE_SIZE",
    "RangeSet",
    "Reconciler",
]

PROTOCOL_VERSION = 0x61
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
MAX_NS_LEN = 32
FINGERPRINT_LEN = 16
DEFAULT_BUCKETS = 16
#: ranges with at most this many of our items are sent as id lists, not split further
DEFAULT_IDLIST_THRESHOLD = 64
#: id lists carry the first 16 bytes of each op id.  Nothing is ever requested by id
#: (each side pushes what the other lacks), so a prefix only has to tell ids apart: a
#: chance collision is 2**-128 per pair, and crafting an op to shadow someone else's
#: op is a 128-bit second preimage of SHA-256.
ID_PREFIX_LEN = 16
_INF_TS = 2**64
_MOD = 2**256

SKIP, FINGERPRINT, IDLIST, IDLIST_REPLY = 0, 1, 2, 3

Bound = tuple[int, bytes]
_INF: Bound = (_INF_TS, b"")
_ZERO: Bound = (0, b"")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fingerprint(total: int, count: int) -> bytes:
    return hashlib.sha256(total.to_bytes(32, "little") + _varint(count)).digest()[:FINGERPRINT_LEN]


class RangeSet:
    """Immutable snapshot of one namespace's ``(hlc, op_id)`` items, sorted, with prefix sums."""

    __slots__ = ("_keys", "_sums")

    def __init__(self, items: Iterable[tuple[int, bytes]]) -> None:
        self._keys: list[tuple[int, bytes]] = sorted(items)
        sums = [0] * (len(self._keys) + 1)
        acc = 0
        for i, (_, op_id) in enumerate(self._keys):
            acc = (acc + int.from_bytes(op_id, "little")) % _MOD
            sums[i + 1] = acc
        self._sums = sums

    def __len__(self) -> int:
        return len(self._keys)

    def index(self, bound: Bound) -> int:
        """Position of the first item at or above ``bound``."""
        if bound[0] >= _INF_TS:
            return len(self._keys)
        return bisect_left(self._keys, bound)

    def fingerprint(self, lo: int, hi: int) -> bytes:
        """Fingerprint of the items at positions ``lo`` (inclusive) to ``hi`` (exclusive)."""
        return _fingerprint((self._sums[hi] - self._sums[lo]) % _MOD, hi - lo)

    def ids(self, lo: int, hi: int) -> list[bytes]:
        """The op ids at positions ``lo`` to ``hi``."""
        return [k[1] for k in self._keys[lo:hi]]

    def key(self, i: int) -> tuple[int, bytes]:
        """The ``(hlc, op_id)`` at position ``i``."""
        return self._keys[i]


def _minimal_bound(prev: tuple[int, bytes], curr: tuple[int, bytes]) -> Bound:
    """The shortest bound above ``prev`` and at or below ``curr`` (negentropy's getMinimalBound)."""
    if curr[0] != prev[0]:
        return (curr[0], b"")
    a, b = prev[1], curr[1]
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return (curr[0], b[: n + 1])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise DecodeError("malformed", "bad varint")
            b = self.data[self.pos]
            self.pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DecodeError("malformed", "truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


@dataclass(slots=True)
class _Writer:
    sections: list[bytes] = field(default_factory=list)

    def section(self, ns: str, ranges: list[tuple[Bound, int, bytes]]) -> None:
        # drop trailing skips: the rest of a section is implicitly skipped
        while ranges and ranges[-1][1] == SKIP:
            ranges.pop()
        if not ranges:
            return
        out = bytearray()
        name = ns.encode()
        out += _varint(len(name)) + name + _varint(len(ranges))
        last_ts = 0
        for (ts, prefix), mode, payload in ranges:
            if ts >= _INF_TS:
                out += b"\x00"
            else:
                out += _varint(1 + ts - last_ts)
                last_ts = ts
            out += _varint(len(prefix)) + prefix + _varint(mode) + payload
        self.sections.append(bytes(out))

    def message(self) -> bytes | None:
        if not self.sections:
            return None
        return bytes([PROTOCOL_VERSION]) + b"".join(self.sections)


def _add_range(ranges: list[tuple[Bound, int, bytes]], bound: Bound, mode: int,
               payload: bytes) -> None:
    if mode == SKIP and ranges and ranges[-1][1] == SKIP:
        ranges[-1] = (bound, SKIP, b"")  # coalesce neighbouring skips
    else:
        ranges.append((bound, mode, payload))


class Reconciler:
    """One side of a reconciliation session over several namespaces (pure; feed it messages)."""

    def __init__(self, sets: Mapping[str, RangeSet], *, buckets: int = DEFAULT_BUCKETS,
                 idlist_threshold: int = DEFAULT_IDLIST_THRESHOLD) -> None:
        if buckets < 2 or idlist_threshold < 1:
            raise ValueError("buckets >= 2 and idlist_threshold >= 1")
        self._sets = dict(sets)
        self._buckets = buckets
        self._threshold = idlist_threshold
        order = {ns: i for i, ns in enumerate(NAMESPACE_PRIORITY)}
        names = set(NAMESPACE_PRIORITY) | set(self._sets)
        self.namespaces: list[str] = sorted(names, key=lambda n: (order.get(n, len(order)), n))
        #: per namespace, ids we hold that the peer lacks (push them)
        self.have: dict[str, list[bytes]] = {}
        #: per namespace, id prefixes the peer holds that we lack (it will push them)
        self.need: dict[str, list[bytes]] = {}
        #: per namespace, how many ops the peer announced it will push that are not in ``need``
        self.expected: dict[str, int] = {}
        self.rounds = 0

    def incoming(self) -> int:
        """How many ops this session will bring us (known ids plus announced pushes)."""
        return sum(len(v) for v in self.need.values()) + sum(self.expected.values())

    def outgoing(self) -> int:
        """How many ops this session found the peer lacks."""
        return sum(len(v) for v in self.have.values())

    def _set(self, ns: str) -> RangeSet:
        s = self._sets.get(ns)
        if s is None:
            s = self._sets[ns] = RangeSet(())
        return s

    def initiate(self) -> bytes:
        """The first message: one fingerprint per namespace (an empty id list when empty)."""
        w = _Writer()
        for ns in self.namespaces:
            s = self._set(ns)
            ranges: list[tuple[Bound, int, bytes]] = []
            self._split_or_list(s, 0, len(s), _INF, ranges, split=False)
            w.section(ns, ranges)
        msg = w.message()
        assert msg is not None
        return msg

    def _idlist(self, s: RangeSet, lo: int, hi: int) -> bytes:
        return _varint(hi - lo) + b"".join(i[:ID_PREFIX_LEN] for i in s.ids(lo, hi))

    def _split_or_list(self, s: RangeSet, lo: int, hi: int, upper: Bound,
                       ranges: list[tuple[Bound, int, bytes]], *, split: bool = True) -> None:
        n = hi - lo
        if not split and n:
            # the opening message: one fingerprint, so that no difference costs a few bytes
            _add_range(ranges, upper, FINGERPRINT, s.fingerprint(lo, hi))
            return
        if n <= self._threshold:
            _add_range(ranges, upper, IDLIST, self._idlist(s, lo, hi))
            return
        per, extra = divmod(n, self._buckets)
        start = lo
        for b in range(self._buckets):
            end = start + per + (1 if b < extra else 0)
            bound = upper if end >= hi else _minimal_bound(s.key(end - 1), s.key(end))
            _add_range(ranges, bound, FINGERPRINT, s.fingerprint(start, end))
            start = end
            if end >= hi:
                break

    def receive(self, msg: bytes) -> bytes | None:
        """Process a peer's message; return the reply, or ``None`` when reconciliation is done.

        Raises ``DecodeError`` for a malformed or inconsistent message.
        """
        if len(msg) > MAX_MESSAGE_SIZE:
            raise DecodeError("oversize", f"reconcile message of {len(msg)} bytes")
        r = _Reader(bytes(msg))
        if r.done() or r.take(1)[0] != PROTOCOL_VERSION:
            raise DecodeError("version", "reconcile protocol version")
        self.rounds += 1
        w = _Writer()
        seen: set[str] = set()
        while not r.done():
            name_len = r.varint()
            if name_len > MAX_NS_LEN:
                raise DecodeError("field", "namespace name too long")
            try:
                ns = r.take(name_len).decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("field", "namespace name") from None
            if ns in seen or not ns.isidentifier():
                raise DecodeError("field", "duplicate or bad namespace")
            seen.add(ns)
            w.section(ns, self._receive_section(ns, r))
        return w.message()

    def _receive_section(self, ns: str, r: _Reader) -> list[tuple[Bound, int, bytes]]:
        s = self._set(ns)
        have = self.have.setdefault(ns, [])
        need = self.need.setdefault(ns, [])
        out: list[tuple[Bound, int, bytes]] = []
        n_ranges = r.varint()
        if n_ranges > len(r.data):
            raise DecodeError("field", "range count")
        prev_bound = _ZERO
        last_ts = 0
        for _ in range(n_ranges):
            code = r.varint()
            if code == 0:
                ts = _INF_TS
            else:
                ts = last_ts + code - 1
                last_ts = ts
            plen = r.varint()
            if plen > OP_ID_LEN:
                raise DecodeError("field", "bound prefix")
            bound: Bound = (ts, r.take(plen)) if ts < _INF_TS else _INF
            if bound < prev_bound:
                raise DecodeError("field", "bounds not ascending")
            lo, hi = s.index(prev_bound), s.index(bound)
            mode = r.varint()
            if mode == SKIP:
                _add_range(out, bound, SKIP, b"")
            elif mode == FINGERPRINT:
                theirs = r.take(FINGERPRINT_LEN)
                if s.fingerprint(lo, hi) == theirs:
                    _add_range(out, bound, SKIP, b"")
                else:
                    self._split_or_list(s, lo, hi, bound, out)
            elif mode == IDLIST:
                count = r.varint()
                if count * ID_PREFIX_LEN > len(r.data) - r.pos:
                    raise DecodeError("field", "id count")
                their_ids = [r.take(ID_PREFIX_LEN) for _ in range(count)]
                mine = s.ids(lo, hi)
                mine_set = {i[:ID_PREFIX_LEN] for i in mine}
                their_set = set(their_ids)
                pushing = [i for i in mine if i[:ID_PREFIX_LEN] not in their_set]
                have.extend(pushing)
                bits = bytearray((count + 7) // 8)
                wanted = False
                for j, op_id in enumerate(their_ids):
                    if op_id not in mine_set:
                        bits[j >> 3] |= 1 << (j & 7)
                        need.append(op_id)
                        wanted = True
                if wanted or pushing:
                    _add_range(out, bound, IDLIST_REPLY,
                               _varint(count) + bytes(bits) + _varint(len(pushing)))
                else:
                    _add_range(out, bound, SKIP, b"")
            elif mode == IDLIST_REPLY:
                count = r.varint()
                if count != hi - lo:
                    raise DecodeError("field", "id list reply does not match our list")
                flags = r.take((count + 7) // 8)
                mine = s.ids(lo, hi)
                have.extend(op_id for j, op_id in enumerate(mine) if flags[j >> 3] >> (j & 7) & 1)
                self.expected[ns] = self.expected.get(ns, 0) + r.varint()
                _add_range(out, bound, SKIP, b"")
            else:
                raise DecodeError("field", f"range mode {mode}")
            prev_bound = bound
        return out
