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

The opening is recency-aware.  Differences are usually recent (a car that was
away misses the newest ops), so instead of one fingerprint over the whole set
the initiator sends, per namespace, the ids of its newest ``OPENING_TAIL_IDS``
ops, then fingerprints of ranges ``OPENING_GROWTH`` times longer each going
back in time (newest 8 as ids, then ranges of 24, 96, 384, ... ops), and one
fingerprint over the older rest.  A difference among the newest few ops is
settled in one round trip (the peer answers the id list with a bitmap), and a
deeper recent one is located in the first round trip instead of after two or
three levels of splitting.  The whole opening stays within ``OPENING_BUDGET``
bytes (each namespace, in priority order, gets an equal share of what the ones
before it left; a namespace's detail is cut back from the coarse end, then the
tail), so a check that finds nothing is still one round trip of a few hundred
bytes.  This is the initiator's choice alone: the receiver answers any valid
range list the same way, and nothing on the wire marks an opening.

Both sides run the same code; the initiator only starts.  Reconciliation is
finished when a side has nothing but skips to say (``receive`` returns
``None``).  Namespaces travel in the same messages, in ``NAMESPACE_PRIORITY``
order, so checking all of them costs no extra round trip; the op transfer
then follows that order (see ``sync.service``).

Encoding (all integers are unsigned LEB128 varints)::

    message := 0x61 section+
    section := len(ns) ns n_ranges range+
    range   := bound mode payload
    bound   := ts_code prefix_len prefix
               ts_code 0 = infinity (prefix_len 0), else 1 + ts - ts of the previous
               finite bound of the section (0 before the first); the prefix is the
               shortest id prefix that separates the neighbouring items (negentropy's
               minimal bound)
    payload := SKIP: nothing | FINGERPRINT: 16 bytes | IDLIST: count, count x 16 bytes
             | IDLIST_REPLY: count, ceil(count / 8) bytes of bitmap (bit j of byte
               j // 8 = the j-th listed id is lacking), pushed count

Limits (a message that breaks one is refused whole with ``DecodeError`` and
changes nothing): at most ``MAX_MESSAGE_SIZE`` bytes; at least one section
and at most ``MAX_NAMESPACES``, each namespace once, its name an ASCII
identifier of at most ``MAX_NS_LEN`` bytes; at least one range per section;
bounds strictly ascending, finite timestamps below 2**64, prefixes of at most
32 bytes, nothing after the infinite bound; no repeated id in an id list; an
id-list reply only over a range where we hold as many ids as it counts, with
zero padding bits, announcing at most ``MAX_ANNOUNCED_PUSH`` ops; and a
session answers at most a few more messages than an honest exchange of 2**48
ops needs (``max_rounds``).
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshd.core.errors import DecodeError
from sync.envelope import NAMESPACE_PRIORITY, OP_ID_LEN

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_IDLIST_THRESHOLD",
    "MAX_MESSAGE_SIZE",
    "OPENING_BUDGET",
    "RangeSet",
    "Reconciler",
]

PROTOCOL_VERSION = 0x61
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
MAX_NS_LEN = 32
#: sections per message (and namespaces per reconciler)
MAX_NAMESPACES = 32
#: an id-list reply announcing more pushes than this is refused (progress only; no store
#: holds that many)
MAX_ANNOUNCED_PUSH = 2**32
FINGERPRINT_LEN = 16
DEFAULT_BUCKETS = 16
#: ranges with at most this many of our items are sent as id lists, not split further
DEFAULT_IDLIST_THRESHOLD = 64
#: the opening message, all namespaces together, stays within this many bytes when it can
OPENING_BUDGET = 448
#: the opening lists the ids of up to this many of a namespace's newest ops ...
OPENING_TAIL_IDS = 8
#: ... and fingerprints ranges this many times longer each, back from the newest end
OPENING_GROWTH = 4
#: id lists carry the first 16 bytes of each op id.  Nothing is ever requested by id
#: (each side pushes what the other lacks), so a prefix only has to tell ids apart: a
#: chance collision is 2**-128 per pair, and crafting an op to shadow someone else's
#: op is a 128-bit second preimage of SHA-256.
ID_PREFIX_LEN = 16
_INF_TS = 2**64
_MOD = 2**256
#: sessions are sized for sets of up to 2**48 ops (see ``Reconciler.max_rounds``)
_MAX_SET_BITS = 48

SKIP, FINGERPRINT, IDLIST, IDLIST_REPLY = 0, 1, 2, 3

Bound = tuple[int, bytes]
Range = tuple[Bound, int, bytes]
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


_EMPTY = RangeSet(())


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

    def left(self) -> int:
        return len(self.data) - self.pos

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

    def bound(self, last_ts: int) -> tuple[Bound, int]:
        """Read a bound; return it and the timestamp the next one is delta-coded from."""
        code = self.varint()
        plen = self.varint()
        if plen > OP_ID_LEN:
            raise DecodeError("field", "bound prefix")
        prefix = self.take(plen)
        if code == 0:
            if plen:
                raise DecodeError("field", "infinite bound with a prefix")
            return _INF, last_ts
        ts = last_ts + code - 1
        if ts >= _INF_TS:
            raise DecodeError("field", "bound timestamp")
        return (ts, prefix), ts


def _encode_section(ns: str, ranges: list[Range]) -> bytes:
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
    return bytes(out)


@dataclass(slots=True)
class _Writer:
    sections: list[bytes] = field(default_factory=list)

    def section(self, ns: str, ranges: list[Range]) -> None:
        # drop trailing skips: the rest of a section is implicitly skipped
        while ranges and ranges[-1][1] == SKIP:
            ranges.pop()
        if ranges:
            self.sections.append(_encode_section(ns, ranges))

    def message(self) -> bytes | None:
        if not self.sections:
            return None
        return bytes([PROTOCOL_VERSION]) + b"".join(self.sections)


@dataclass(slots=True)
class _Found:
    """What one section of a message taught us; applied only once the whole message parsed."""

    have: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)
    expected: int = 0


def _add_range(ranges: list[Range], bound: Bound, mode: int, payload: bytes) -> None:
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
        if len(names) > MAX_NAMESPACES:
            raise ValueError(f"at most {MAX_NAMESPACES} namespaces")
        self.namespaces: list[str] = sorted(names, key=lambda n: (order.get(n, len(order)), n))
        #: per namespace, ids we hold that the peer lacks (push them)
        self.have: dict[str, list[bytes]] = {}
        #: per namespace, id prefixes the peer holds that we lack (it will push them)
        self.need: dict[str, list[bytes]] = {}
        #: per namespace, how many ops the peer announced it will push that are not in ``need``
        self.expected: dict[str, int] = {}
        #: messages received and accepted so far
        self.rounds = 0
        #: messages this side accepts in a session: each split divides a side's count in a
        #: range by ``buckets`` at least every second message, so an honest exchange over
        #: sets of up to 2**48 ops fits with room to spare; a peer that goes on is refused
        self.max_rounds = 4 + math.ceil(_MAX_SET_BITS / math.log2(buckets))

    def incoming(self) -> int:
        """How many ops this session will bring us (known ids plus announced pushes)."""
        return sum(len(v) for v in self.need.values()) + sum(self.expected.values())

    def outgoing(self) -> int:
        """How many ops this session found the peer lacks."""
        return sum(len(v) for v in self.have.values())

    def _set(self, ns: str) -> RangeSet:
        return self._sets.get(ns, _EMPTY)

    def initiate(self) -> bytes:
        """The first message: per namespace, a recency-aware cut of the set (see ``_opening``).

        The whole message stays within ``OPENING_BUDGET`` bytes when it can: each namespace,
        in priority order, gets an equal share of what the ones before it left over.
        """
        left = OPENING_BUDGET - 1
        sections: list[bytes] = []
        for i, ns in enumerate(self.namespaces):
            section = self._opening(ns, left // (len(self.namespaces) - i))
            left -= len(section)
            sections.append(section)
        return bytes([PROTOCOL_VERSION]) + b"".join(sections)

    def _opening(self, ns: str, share: int) -> bytes:
        """The opening section of ``ns``, with as much recency detail as fits in ``share`` bytes.

        Detail grows in this order: the ids of the newest 1, 2, ... ``OPENING_TAIL_IDS`` ops,
        then fingerprints of ranges ``OPENING_GROWTH`` times longer each, from the newest end
        back; one fingerprint always covers the older rest.  The least detail (one
        fingerprint, or an empty id list for an empty set) is sent even over the share.
        """
        s = self._set(ns)
        best = _encode_section(ns, self._opening_ranges(s, 0, 0))
        plans = [(t, 0) for t in range(1, min(len(s), OPENING_TAIL_IDS) + 1)]
        plans += [(OPENING_TAIL_IDS, c) for c in range(1, 64)]
        last_count = 0
        for tail, cuts in plans:
            ranges = self._opening_ranges(s, tail, cuts)
            if cuts and len(ranges) == last_count:
                break  # no further cut fits inside the set
            last_count = len(ranges)
            section = _encode_section(ns, ranges)
            if len(section) > share:
                break
            best = section
        return best

    def _opening_ranges(self, s: RangeSet, tail: int, cuts: int) -> list[Range]:
        """Ranges of ``s``: the newest ``tail`` items as ids, ``cuts`` geometric fingerprints."""
        n = len(s)
        if n == 0:
            return [(_INF, IDLIST, _varint(0))]
        if tail == 0:
            return [(_INF, FINGERPRINT, s.fingerprint(0, n))]
        starts = [max(0, n - tail)]
        depth = tail
        for _ in range(cuts):
            depth *= OPENING_GROWTH
            if depth >= n:
                break
            starts.append(n - depth)
        if starts[-1] > 0:
            starts.append(0)
        starts.reverse()
        ranges: list[Range] = []
        for lo, hi in zip(starts, [*starts[1:], n], strict=True):
            if hi == n:
                ranges.append((_INF, IDLIST, self._idlist(s, lo, hi)))
            else:
                bound = _minimal_bound(s.key(hi - 1), s.key(hi))
                ranges.append((bound, FINGERPRINT, s.fingerprint(lo, hi)))
        return ranges

    def _idlist(self, s: RangeSet, lo: int, hi: int) -> bytes:
        return _varint(hi - lo) + b"".join(i[:ID_PREFIX_LEN] for i in s.ids(lo, hi))

    def _split_or_list(self, s: RangeSet, lo: int, hi: int, upper: Bound,
                       ranges: list[Range]) -> None:
        n = hi - lo
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

        Raises ``DecodeError`` for a malformed, oversized or inconsistent message, which then
        leaves this reconciler as it was (see the limits in the module docstring).
        """
        if len(msg) > MAX_MESSAGE_SIZE:
            raise DecodeError("oversize", f"reconcile message of {len(msg)} bytes")
        if self.rounds >= self.max_rounds:
            raise DecodeError("state", f"reconciliation past {self.max_rounds} messages")
        r = _Reader(bytes(msg))
        if r.done() or r.take(1)[0] != PROTOCOL_VERSION:
            raise DecodeError("version", "reconcile protocol version")
        if r.done():
            raise DecodeError("field", "no namespace")
        w = _Writer()
        found: dict[str, _Found] = {}
        while not r.done():
            if len(found) >= MAX_NAMESPACES:
                raise DecodeError("field", "too many namespaces")
            name_len = r.varint()
            if name_len > MAX_NS_LEN:
                raise DecodeError("field", "namespace name too long")
            try:
                ns = r.take(name_len).decode("ascii")
            except UnicodeDecodeError:
                raise DecodeError("field", "namespace name") from None
            if ns in found or not ns.isidentifier():
                raise DecodeError("field", "duplicate or bad namespace")
            found[ns] = _Found()
            w.section(ns, self._receive_section(self._set(ns), r, found[ns]))
        for ns, f in found.items():
            self.have.setdefault(ns, []).extend(f.have)
            self.need.setdefault(ns, []).extend(f.need)
            if f.expected:
                self.expected[ns] = self.expected.get(ns, 0) + f.expected
        self.rounds += 1
        return w.message()

    def _receive_section(self, s: RangeSet, r: _Reader, found: _Found) -> list[Range]:
        out: list[Range] = []
        n_ranges = r.varint()
        if n_ranges == 0 or n_ranges > r.left() // 3:  # a range takes 3 bytes at least
            raise DecodeError("field", "range count")
        prev_bound = _ZERO
        last_ts = 0
        for _ in range(n_ranges):
            bound, last_ts = r.bound(last_ts)
            if bound <= prev_bound:
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
                if count * ID_PREFIX_LEN > r.left():
                    raise DecodeError("field", "id count")
                their_ids = [r.take(ID_PREFIX_LEN) for _ in range(count)]
                their_set = set(their_ids)
                if len(their_set) != count:
                    raise DecodeError("field", "repeated id in an id list")
                mine = s.ids(lo, hi)
                mine_set = {i[:ID_PREFIX_LEN] for i in mine}
                pushing = [i for i in mine if i[:ID_PREFIX_LEN] not in their_set]
                found.have.extend(pushing)
                bits = bytearray((count + 7) // 8)
                wanted = False
                for j, op_id in enumerate(their_ids):
                    if op_id not in mine_set:
                        bits[j >> 3] |= 1 << (j & 7)
                        found.need.append(op_id)
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
                if count & 7 and flags[-1] >> (count & 7):
                    raise DecodeError("field", "id list reply padding")
                announced = r.varint()
                if announced > MAX_ANNOUNCED_PUSH:
                    raise DecodeError("field", "announced push count")
                mine = s.ids(lo, hi)
                found.have.extend(op_id for j, op_id in enumerate(mine)
                                  if flags[j >> 3] >> (j & 7) & 1)
                found.expected += announced
                _add_range(out, bound, SKIP, b"")
            else:
                raise DecodeError("field", f"range mode {mode}")
            prev_bound = bound
        return out
