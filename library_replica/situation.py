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
    OpLike,
    Refused,
    body_fields,
    encode_body,
    order_key,
)
from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError, LocalProtocolError

__all__ = [
    "KIND_SET",
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


def _parse(op: OpLike) -> _Parsed:
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
        k = order_key(op)
        for name, value in parsed.fields.items():
            cur = regs.get(name)
            if cur is None or k > cur[1]:
                regs[name] = (value, k)
        self._updated[key] = max(self._updated.get(key, 0), op.hlc)
        return True

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
