"""Ops a node carries for others without being able to verify their authority.

Theory of operation
-------------------
In a disaster the cars that carry a bulletin are whoever drives by: a car
with no trust configuration, or one behind on trust updates, cannot tell
whether a bulletin's author is an authority, but the receiver can.  Such an
op whose own signatures verify is *carried*: stored and forwarded by sync,
shown to nobody here, and checked again whenever this node's trust changes
(``library_replica.bulletins`` decides which ops those are).

``CarriedPool`` bounds what a node carries this way, so unverifiable ops from
any number of keys cannot fill a head unit's disk: at most ``max_ops`` ops
and ``max_bytes`` bytes, only ops with an expiry (no later than
``max_lifetime_ms`` ahead), and each leaves when it expires.  A full pool
refuses new ops (they stay with the neighbour that offered them) rather than
evict ones it already forwards.  Pure core: wall time is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from library_replica.ops import OpLike, Refused

__all__ = ["CARRY_MAX_BYTES", "CARRY_MAX_LIFETIME_MS", "CARRY_MAX_OPS", "CarriedOp",
           "CarriedPool"]

CARRY_MAX_OPS = 512
CARRY_MAX_BYTES = 4 * 1024 * 1024
#: a carried op expires within this (a trust update lives a year, a bulletin 30 days)
CARRY_MAX_LIFETIME_MS = 366 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class CarriedOp:
    """One op carried unverified: its id, kind, author, size and expiry."""

    op_id: bytes
    kind: str
    author: bytes
    size: int
    expiry_ms: int
    admitted_ms: int


class CarriedPool:
    """The bounded set of ops this node carries unverified (see the module docstring)."""

    def __init__(self, max_ops: int = CARRY_MAX_OPS, max_bytes: int = CARRY_MAX_BYTES,
                 max_lifetime_ms: int = CARRY_MAX_LIFETIME_MS) -> None:
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.max_lifetime_ms = max_lifetime_ms
        self._ops: dict[bytes, CarriedOp] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._ops)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ops

    def __iter__(self) -> Iterator[CarriedOp]:
        return iter(list(self._ops.values()))

    def _entry(self, op: OpLike, size: int, wall_now_ms: int) -> CarriedOp:
        if op.expiry_ms is None:
            raise Refused("carry_no_expiry", "only ops with an expiry are carried unverified")
        if op.expiry_ms > wall_now_ms + self.max_lifetime_ms:
            raise Refused("carry_expiry", "expiry too far ahead to carry unverified")
        return CarriedOp(op.op_id, op.kind, op.author, size, op.expiry_ms, wall_now_ms)

    def admit(self, op: OpLike, size: int, wall_now_ms: int) -> None:
        """Take ``op`` (``size`` bytes on the wire) in; raises ``Refused`` when it cannot."""
        if op.op_id in self._ops:
            return
        entry = self._entry(op, size, wall_now_ms)
        if len(self._ops) + 1 > self.max_ops or self.bytes + size > self.max_bytes:
            raise Refused("carry_full", f"carrying {len(self._ops)} ops, {self.bytes} bytes")
        self._ops[op.op_id] = entry
        self.bytes += size

    def restore(self, op: OpLike, size: int, wall_now_ms: int) -> bool:
        """Count an op the store already holds (on start); False if it should not be kept."""
        if op.op_id in self._ops:
            return True
        try:
            entry = self._entry(op, size, wall_now_ms)
        except Refused:
            return False
        self._ops[op.op_id] = entry
        self.bytes += size
        return True

    def discard(self, op_id: bytes) -> bool:
        """Stop counting ``op_id`` (verified now, refused now, or gone); True if it was here."""
        entry = self._ops.pop(op_id, None)
        if entry is None:
            return False
        self.bytes -= entry.size
        return True

    def next_expiry_ms(self) -> int | None:
        """When ``expire`` next has something to forget (None: nothing held)."""
        return min((e.expiry_ms for e in self._ops.values()), default=None)

    def expire(self, wall_now_ms: int) -> list[bytes]:
        """Forget expired entries (the store purges the ops themselves); their op ids."""
        gone = [k for k, e in self._ops.items() if e.expiry_ms <= wall_now_ms]
        for k in gone:
            self.discard(k)
        return gone

    def retain(self, stored: Callable[[bytes], bool], wall_now_ms: int,
               grace_ms: int = 60_000) -> list[bytes]:
        """Forget entries the store does not hold (admitted, then refused by a later check).

        An entry admitted less than ``grace_ms`` ago may still be on its way to the disk.
        """
        gone = [k for k, e in self._ops.items()
                if e.admitted_ms <= wall_now_ms - grace_ms and not stored(k)]
        for k in gone:
            self.discard(k)
        return gone
