"""Situation files: who is safe, what a shelter needs, which car can lend battery power.

Theory of operation
-------------------
A situation record belongs to one owner (an author key) and has a kind:
``person`` and ``household`` (safety, needs), ``shelter`` (capacity,
occupancy, supplies), ``shop`` and ``dealer`` (open, services) and ``vehicle``
(seats, battery energy on offer to the community).  Each kind has typed known
fields and also takes free fields (lower-case names, scalar values).

A record's document id is derived from its owner and kind
(``record_id(owner, kind)``), so the authoriser can refuse a write to someone
else's record without any lookup: only the owner writes its own record.

One op (``situation.set``) sets some fields; ``None`` clears one.  Every field
is a last-writer-wins register ordered by (HLC, author, op id), so ops may
arrive in any order and replicas still agree.  Pure core: no I/O, no clock.

Superseded values are purged by the owner: once its record has
``snapshot_due`` set ops, the owner's node writes a ``situation.snapshot``
(``prepare_snapshot``): ``k`` the kind, ``f`` every field as ``[name, value,
hlc, op id]`` (cleared ones with ``None``), ``r`` the chain positions of the
record's set ops it supersedes ``[first, last, last op id]``, ``p`` earlier
snapshots of the record, ``uh`` the record's updated hlc.  Like a library
snapshot it is unchained (``SNAPSHOT_EXPIRY_MS``), and only the owner writes
one (the record id names the owner); nodes that take it drop the ops it
supersedes from the op store (``take_superseded``, ``OpStore.supersede``).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from library_replica.ops import (
    DOC_ID_LEN,
    MAX_BODY_SIZE,
    SNAPSHOT_EXPIRY_MS,
    OpLike,
    Refused,
    body_fields,
    encode_body,
    order_key,
)
from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError, LocalProtocolError
from sync.apply import SkipRange, covered, merge_ranges

__all__ = [
    "KIND_SET",
    "KIND_SNAPSHOT",
    "SCHEMAS",
    "RecordKind",
    "Safety",
    "SituationBoard",
    "SituationRecord",
    "authorize_situation",
    "prepare_set",
    "record_id",
]

log = logging.getLogger(__name__)

KIND_SET = "situation.set"
KIND_SNAPSHOT = "situation.snapshot"
MAX_FIELDS = 64
MAX_STR = 500
MAX_LIST = 32
MAX_BODY = 16 * 1024
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class RecordKind(enum.StrEnum):
    PERSON = "person"
    HOUSEHOLD = "household"
    SHELTER = "shelter"
    SHOP = "shop"
    DEALER = "dealer"
    VEHICLE = "vehicle"


class Safety(enum.StrEnum):
    SAFE = "safe"
    NEEDS_HELP = "needs_help"
    INJURED = "injured"
    MISSING = "missing"
    UNKNOWN = "unknown"


class _T(enum.Enum):
    STR = "str"
    INT = "int"  # non-negative
    NUMBER = "number"  # non-negative, finite
    BOOL = "bool"
    STR_LIST = "str_list"
    COUNTS = "counts"  # map of item -> non-negative int
    SAFETY = "safety"


_COMMON = {"name": _T.STR, "location": _T.STR, "note": _T.STR, "contact": _T.STR}
#: known fields and their types per kind; other names are free fields (scalars)
SCHEMAS: Mapping[RecordKind, Mapping[str, _T]] = {
    RecordKind.PERSON: {**_COMMON, "safety": _T.SAFETY, "needs": _T.STR_LIST},
    RecordKind.HOUSEHOLD: {**_COMMON, "safety": _T.SAFETY, "needs": _T.STR_LIST,
                           "members": _T.INT, "members_safe": _T.INT},
    RecordKind.SHELTER: {**_COMMON, "capacity": _T.INT, "occupancy": _T.INT,
                         "supplies": _T.COUNTS, "needs": _T.STR_LIST, "open": _T.BOOL},
    RecordKind.SHOP: {**_COMMON, "open": _T.BOOL, "services": _T.STR_LIST, "hours": _T.STR},
    RecordKind.DEALER: {**_COMMON, "open": _T.BOOL, "services": _T.STR_LIST, "hours": _T.STR},
    RecordKind.VEHICLE: {**_COMMON, "seats": _T.INT, "battery_offer_kwh": _T.NUMBER,
                         "battery_soc_pct": _T.NUMBER, "available": _T.BOOL,
                         "outlets": _T.STR_LIST},
}


def record_id(owner: bytes, kind: RecordKind | str) -> bytes:
    """The document id of ``owner``'s record of ``kind``."""
    return hashlib.sha256(b"carmesh/situation/1\x00" + owner + str(kind).encode()).digest()[
        :DOC_ID_LEN]


_HINTS: Mapping[_T, str] = {
    _T.STR: "text", _T.INT: "a whole number >= 0", _T.NUMBER: "a number >= 0",
    _T.BOOL: "true or false", _T.STR_LIST: 'a list of text (water,food or ["water"])',
    _T.COUNTS: 'a map of counts ({"water": 20})',
    _T.SAFETY: " | ".join(s.value for s in Safety),
}


def _check_value(name: str, t: _T | None, v: Any) -> Any:
    """Return ``v`` in canonical form, or raise ValueError."""
    if v is None:
        return None
    if t is None:  # free field: a scalar
        if type(v) is str and len(v) <= MAX_STR:
            return v
        if type(v) is bool:
            return v
        if type(v) is int and abs(v) < 2**53:
            return v
        if type(v) is float and math.isfinite(v):
            return v
        if type(v) is str:
            raise ValueError(f"free field {name}: too long ({len(v)} characters, max {MAX_STR})")
        raise ValueError(f"free field {name}: a string, number or bool")
    if t is _T.STR and type(v) is str and len(v) <= MAX_STR:
        return v
    if t is _T.INT and type(v) is int and 0 <= v < 2**53:
        return v
    if t is _T.NUMBER and type(v) in (int, float) and math.isfinite(v) and v >= 0:
        return float(v)
    if t is _T.BOOL and type(v) is bool:
        return v
    if t is _T.SAFETY and type(v) is str and v in Safety.__members__.values():
        return v
    if t is _T.STR_LIST and type(v) in (list, tuple) and len(v) <= MAX_LIST and all(
            type(x) is str and 0 < len(x) <= 100 for x in v):
        return tuple(v)
    if t is _T.COUNTS and isinstance(v, dict) and len(v) <= MAX_LIST and all(
            type(k) is str and 0 < len(k) <= 100 and type(n) is int and 0 <= n < 2**53
            for k, n in v.items()):
        return dict(v)
    if t is _T.STR and type(v) is str:
        raise ValueError(f"{name}: too long ({len(v)} characters, max {MAX_STR})")
    if t is _T.STR_LIST and type(v) in (list, tuple) and len(v) > MAX_LIST:
        raise ValueError(f"{name}: too many items ({len(v)}, max {MAX_LIST})")
    if t is _T.STR_LIST and type(v) in (list, tuple) and any(
            type(x) is str and len(x) > 100 for x in v):
        raise ValueError(f"{name}: an item is too long (max 100 characters)")
    raise ValueError(f"{name}: expected {_HINTS[t]}")


def _check_fields(kind: RecordKind, fields: Mapping[str, Any]) -> dict[str, Any]:
    if not fields:
        raise ValueError("no fields")
    if len(fields) > MAX_FIELDS:
        raise ValueError("too many fields")
    schema = SCHEMAS[kind]
    out: dict[str, Any] = {}
    for name, v in fields.items():
        if type(name) is not str or not _FIELD_RE.match(name):
            raise ValueError(f"field name {name!r}")
        out[name] = _check_value(name, schema.get(name), v)
    return out


@dataclass(frozen=True, slots=True)
class _Parsed:
    kind: RecordKind
    fields: dict[str, Any]
    #: a snapshot's: per field (value, order key), superseded ranges, earlier snapshots
    regs: dict[str, tuple[Any, tuple[int, bytes, bytes]]] | None = None
    ranges: tuple[SkipRange, ...] = ()
    prior: tuple[bytes, ...] = ()
    updated_hlc: int = 0


def _parse_snapshot(op: OpLike) -> _Parsed:
    if op.seq != 0 or op.expiry_ms != SNAPSHOT_EXPIRY_MS:
        raise Refused("body", "a snapshot is unchained, with the snapshot expiry")
    f = body_fields(op, MAX_BODY_SIZE)
    try:
        kind = RecordKind(f.str("k", max_len=16))
        regs: dict[str, tuple[Any, tuple[int, bytes, bytes]]] = {}
        for item in f.list("f", max_len=MAX_FIELDS * 4):
            if (type(item) is not list or len(item) != 4 or type(item[0]) is not str
                    or item[0] in regs or type(item[2]) is not int
                    or not 0 <= item[2] < 2**63 or type(item[3]) is not bytes
                    or len(item[3]) != 32):
                raise Refused("body", "snapshot field")
            value = _check_fields(kind, {item[0]: item[1]})[item[0]]
            regs[item[0]] = (value, (item[2], op.author, item[3]))
        ranges: list[SkipRange] = []
        for item in f.list("r", max_len=MAX_BODY_SIZE // 40):
            if (type(item) is not list or len(item) != 3 or type(item[0]) is not int
                    or type(item[1]) is not int or not 1 <= item[0] <= item[1] <= 2**62
                    or type(item[2]) is not bytes or len(item[2]) != 32):
                raise Refused("body", "snapshot range")
            ranges.append((item[0], item[1], item[2]))
        prior = f.list("p", max_len=MAX_BODY_SIZE // 34)
        if any(type(i) is not bytes or len(i) != 32 for i in prior):
            raise Refused("body", "snapshot prior ids")
        updated = f.int("uh", 0, 2**63 - 1)
    except (DecodeError, ValueError) as exc:
        raise Refused("body", str(exc)) from None
    if op.doc_id != record_id(op.author, kind):
        raise Refused("not_owner", "a record is written only by its owner")
    return _Parsed(kind, {}, regs, tuple(merge_ranges((), ranges)), tuple(prior), updated)


def _parse(op: OpLike) -> _Parsed:
    if op.kind == KIND_SNAPSHOT:
        return _parse_snapshot(op)
    if op.kind != KIND_SET:
        raise Refused("kind", op.kind)
    f = body_fields(op, MAX_BODY)
    try:
        kind = RecordKind(f.str("k", max_len=16))
        raw = f.raw("f")
        if not isinstance(raw, dict):
            raise Refused("body", "fields")
        fields = _check_fields(kind, raw)
    except (DecodeError, ValueError) as exc:
        raise Refused("body", str(exc)) from None
    if op.doc_id != record_id(op.author, kind):
        raise Refused("not_owner", "a record is written only by its owner")
    return _Parsed(kind, fields)


def authorize_situation(op: OpLike, wall_now_ms: int) -> None:
    """Authoriser for the ``situation`` namespace: only the owner writes its record."""
    del wall_now_ms
    _parse(op)




def _from_user(kind: RecordKind, fields: Mapping[str, Any]) -> dict[str, Any]:
    """What a person typed, in the schema's types: ``water, food`` for a list of text."""
    schema = SCHEMAS[kind]
    out = dict(fields)
    for name, v in fields.items():
        if schema.get(name) is _T.STR_LIST and type(v) is str:
            out[name] = [x.strip() for x in v.split(",") if x.strip()]
    return out


def prepare_set(owner: bytes, kind: RecordKind | str, fields: Mapping[str, Any]) -> tuple[
        bytes, bytes]:
    """(doc_id, body) of a ``situation.set`` op by ``owner``; ``None`` clears a field."""
    try:
        k = RecordKind(kind)
        checked = _check_fields(k, _from_user(k, fields))
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    wire = {n: (list(v) if isinstance(v, tuple) else v) for n, v in checked.items()}
    return record_id(owner, k), encode_body({"k": str(k), "f": wire})


@dataclass(frozen=True, slots=True)
class SituationRecord:
    """One owner's record of one kind: current field values (cleared fields left out)."""

    owner: bytes
    kind: RecordKind
    fields: Mapping[str, Any]
    updated_hlc: int


class SituationBoard:
    """Materialised situation records with per-field last-writer-wins.

    ``person`` maps a key to the first key of its chain of successors
    (``KeyRegistry.person``): the records of a lost device and of the device that
    carries it on read as one record, each field the newest write of either, owned by
    the key that wrote last.
    """

    def __init__(self, person: Callable[[bytes], bytes] | None = None) -> None:
        self._person = person
        self._fields: dict[tuple[bytes, RecordKind], dict[str, tuple[Any, tuple[int, bytes,
                                                                                bytes]]]] = {}
        self._updated: dict[tuple[bytes, RecordKind], int] = {}
        #: per record, the chain positions of the set ops applied since its last snapshot,
        #: and its snapshots in force (op id -> their ranges)
        self._ops: dict[tuple[bytes, RecordKind], list[tuple[int, bytes]]] = {}
        self._snaps: dict[tuple[bytes, RecordKind], dict[bytes, tuple[SkipRange, ...]]] = {}
        self._to_supersede: list[tuple[bytes, bytes, tuple[tuple[bytes, SkipRange], ...],
                                       tuple[bytes, ...]]] = []
        self.drops = DropCounter(log)

    def apply(self, op: OpLike) -> bool:
        """Merge one op; False (counted, logged once) when refused."""
        try:
            parsed = _parse(op)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        key = (op.author, parsed.kind)
        regs = self._fields.setdefault(key, {})
        if parsed.regs is not None:
            for name, (value, k) in parsed.regs.items():
                cur = regs.get(name)
                if cur is None or k > cur[1]:
                    regs[name] = (value, k)
            self._updated[key] = max(self._updated.get(key, 0), parsed.updated_hlc)
            snaps = self._snaps.setdefault(key, {})
            if op.op_id not in snaps:
                for p in parsed.prior:
                    snaps.pop(p, None)
                snaps[op.op_id] = parsed.ranges
                held = self._ops.get(key, [])
                self._ops[key] = [(s, i) for s, i in held if not covered(parsed.ranges, s)]
                self._to_supersede.append((op.op_id, op.doc_id,
                                           tuple((op.author, r) for r in parsed.ranges),
                                           (*parsed.prior, *(i for s, i in held
                                                             if covered(parsed.ranges, s)))))
            return True
        k = order_key(op)
        for name, value in parsed.fields.items():
            cur = regs.get(name)
            if cur is None or k > cur[1]:
                regs[name] = (value, k)
        self._updated[key] = max(self._updated.get(key, 0), op.hlc)
        if op.seq:
            self._ops.setdefault(key, []).append((op.seq, op.op_id))
        return True

    def take_superseded(self) -> list[tuple[bytes, bytes, tuple[tuple[bytes, SkipRange], ...],
                                            tuple[bytes, ...]]]:
        """Snapshots applied since the last call: ``(snapshot id, doc id, ranges, op ids)``
        (``op ids``: earlier snapshots and the updates held here that it supersedes)."""
        out, self._to_supersede = self._to_supersede, []
        return out

    def snapshot_due(self, owner: bytes, threshold: int) -> list[RecordKind]:
        """``owner``'s records with at least ``threshold`` set ops since their last snapshot."""
        return [k for (o, k), ops in self._ops.items() if o == owner and len(ops) >= threshold]

    def prepare_snapshot(self, owner: bytes, kind: RecordKind | str) -> bytes | None:
        """The body of a ``situation.snapshot`` of ``owner``'s record (see the module
        docstring), or None when there is nothing to supersede.  Sign it as an unchained op
        with the expiry ``SNAPSHOT_EXPIRY_MS`` and the doc id ``record_id(owner, kind)``."""
        key = (owner, RecordKind(kind))
        ops = sorted(self._ops.get(key, []))
        if not ops:
            return None
        runs: list[SkipRange] = []
        for seq, op_id in ops:
            if runs and runs[-1][1] + 1 == seq:
                runs[-1] = (runs[-1][0], seq, op_id)
            else:
                runs.append((seq, seq, op_id))
        snaps = self._snaps.get(key, {})
        ranges = merge_ranges([r for rs in snaps.values() for r in rs], runs)
        fields = [[n, list(v) if isinstance(v, tuple) else v, k[0], k[2]]
                  for n, (v, k) in sorted(self._fields[key].items())]
        body = encode_body({"k": str(key[1]), "f": fields, "r": [list(r) for r in ranges],
                            "p": sorted(snaps), "uh": self._updated[key]})
        return body

    def _record(self, keys: list[tuple[bytes, RecordKind]]) -> SituationRecord:
        regs: dict[str, tuple[Any, tuple[int, bytes, bytes]]] = {}
        for key in keys:
            for name, (v, k) in self._fields[key].items():
                cur = regs.get(name)
                if cur is None or k > cur[1]:
                    regs[name] = (v, k)
        fields = {n: v for n, (v, _) in sorted(regs.items()) if v is not None}
        last = max(keys, key=lambda k: (self._updated[k], k[0]))
        return SituationRecord(last[0], last[1], fields, self._updated[last])

    def _groups(self, want: Callable[[tuple[bytes, RecordKind]], bool]
                ) -> list[list[tuple[bytes, RecordKind]]]:
        """The stored keys ``want`` keeps, grouped by (person, kind)."""
        groups: dict[tuple[bytes, RecordKind], list[tuple[bytes, RecordKind]]] = {}
        for key in self._fields:
            if want(key):
                person = self._person(key[0]) if self._person else key[0]
                groups.setdefault((person, key[1]), []).append(key)
        return list(groups.values())

    def _same_person(self, owner: bytes) -> Callable[[bytes], bool]:
        if self._person is None:
            return lambda k: k == owner
        person = self._person
        p = person(owner)
        return lambda k: k == owner or person(k) == p

    def get(self, owner: bytes, kind: RecordKind | str) -> SituationRecord | None:
        """``owner``'s record of ``kind`` (with its predecessors'), if any."""
        rk = RecordKind(kind)
        same = self._same_person(owner)
        groups = self._groups(lambda k: k[1] == rk and same(k[0]))
        return self._record(groups[0]) if groups else None

    def records(self, kind: RecordKind | str | None = None) -> Iterator[SituationRecord]:
        """All records, or those of one kind, most recently updated first."""
        rk = None if kind is None else RecordKind(kind)
        recs = [self._record(g) for g in self._groups(lambda k: rk is None or k[1] == rk)]
        recs.sort(key=lambda r: r.updated_hlc, reverse=True)
        yield from recs

    def of_owner(self, owner: bytes) -> list[SituationRecord]:
        """Every record of one owner (with its predecessors')."""
        same = self._same_person(owner)
        return [self._record(g) for g in self._groups(lambda k: same(k[0]))]
