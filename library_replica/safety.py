"""The safety registry (安否確認): who is registered, and what others have noted since.

Theory of operation
-------------------
Person Finder's model: a *person record* plus *notes*.  Anyone may register a
person (a shelter desk registers all its evacuees, so a node writes many
records); anyone may add a note to any record; nothing overwrites what another
registrant wrote.  The record shows the newest status and place, and every
entry names its author.

Two op kinds in the ``safety`` namespace:

* ``safety.person`` -- a registration: name, reading (kana), status, place,
  note, contact, the registrant's display name and a random nonce.  The person
  id (the op's document id) is ``person_id(author, nonce)``, so the authoriser
  can tell, without any lookup, that only the registrant writes the record
  itself (a second ``safety.person`` by the same author and nonce corrects it:
  last writer wins over the whole record).  A lost device's successor corrects
  the records its predecessor registered: its ``safety.person`` names the
  registrant (``o``), so the authoriser still checks the id without a lookup,
  and the registry takes the correction only while the key registry says the
  author continues the registrant (``succeeds``, checked when the record is
  read, so a statement that arrives after the correction still counts); the
  correction's status, place and note are an entry like a note's.
* ``safety.note`` -- a note about person id ``doc_id``: status, place and/or
  text, plus the note author's display name.  Any key may write one.

Entries (the registration and every note) are ordered by (HLC, author, op id),
so replicas that saw the same ops agree whatever the arrival order; a note
that arrives before its person record is kept and shown once the record
arrives.  Latest status and place are those of the newest entry that carries
one.  Display names travel inside the signed body because the far end may
never have heard the author's announcement.

Names are matched through ``fold``: NFKC (full/half width), case folded,
katakana turned into hiragana, white space and middle dots removed; so 田中
ユキ, ﾀﾅｶ and たなか all find each other.  Pure core: no I/O, no clock.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from library_replica.ops import (
    AUTHOR_KEY_LEN,
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
    "KIND_NOTE",
    "KIND_PERSON",
    "Entry",
    "PersonView",
    "SafetyRegistry",
    "Status",
    "authorize_safety",
    "check_reading",
    "fold",
    "person_id",
    "prepare_note",
    "prepare_person",
]

log = logging.getLogger(__name__)

KIND_PERSON = "safety.person"
KIND_NOTE = "safety.note"
MAX_NAME = 100
MAX_READING = 100
MAX_PLACE = 200
MAX_NOTE = 1000
MAX_CONTACT = 200
MAX_BY = 64
NONCE_LEN = 16
MAX_BODY = 8 * 1024


class Status(enum.StrEnum):
    """A person's safety status (the J-anpi / Person Finder set)."""

    SAFE = "safe"
    NEEDS_HELP = "needs_help"
    INJURED = "injured"
    MISSING = "missing"
    DECEASED = "deceased"
    UNKNOWN = "unknown"


_STATUSES = frozenset(s.value for s in Status)
_HIRA0, _HIRA1 = 0x3041, 0x3096  # ぁ..ゖ
_KATA_SHIFT = 0x60  # ァ (U+30A1) - ぁ (U+3041)
#: removed by ``fold``: what separates the parts of a name
_SEPARATORS = frozenset(" \t\u3000・･·.")


def fold(text: str) -> str:
    """The search form of a name or reading (see the module docstring)."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFKC", text).casefold():
        if ch in _SEPARATORS or ch.isspace():
            continue
        o = ord(ch)
        if _HIRA0 + _KATA_SHIFT <= o <= _HIRA1 + _KATA_SHIFT:
            ch = chr(o - _KATA_SHIFT)
        out.append(ch)
    return "".join(out)


def _is_kana(ch: str) -> bool:
    o = ord(ch)
    return 0x3041 <= o <= 0x309F or 0x30A0 <= o <= 0x30FF or ch in " \u3000"


def check_reading(reading: str) -> str:
    """``reading`` in NFKC (half-width kana made full width); ValueError unless all kana."""
    r = unicodedata.normalize("NFKC", reading).strip()
    if len(r) > MAX_READING:
        raise ValueError(f"reading longer than {MAX_READING} characters")
    bad = [ch for ch in r if not _is_kana(ch)]
    if bad:
        raise ValueError(f"reading must be kana (hiragana or katakana), not {bad[0]!r}")
    return r


def _check_text(what: str, v: str, max_len: int, *, required: bool = False) -> str:
    v = v.strip()
    if required and not v:
        raise ValueError(f"{what} is empty")
    if len(v) > max_len:
        raise ValueError(f"{what} longer than {max_len} characters")
    allowed = "\n" if what == "note" else ""
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") and ch not in allowed for ch in v):
        raise ValueError(f"{what} contains control characters")
    return v


def _check_status(v: str) -> str:
    if v not in _STATUSES:
        raise ValueError(f"status is one of {', '.join(s.value for s in Status)}")
    return v


def person_id(author: bytes, nonce: bytes) -> bytes:
    """The id of the person record registered by ``author`` with ``nonce``."""
    return hashlib.sha256(b"carmesh/safety/1\x00" + author + nonce).digest()[:DOC_ID_LEN]


@dataclass(frozen=True, slots=True)
class _Person:
    name: str
    reading: str
    contact: str
    nonce: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """The registration, a successor's correction or one note: who wrote it, when, and what
    it says."""

    op_id: bytes
    kind: str  #: "registered", "corrected" or "note"
    author: bytes
    author_name: str
    hlc: int
    status: str | None
    place: str | None
    note: str | None

    @property
    def time_ms(self) -> int:
        return self.hlc >> 16


@dataclass(frozen=True, slots=True)
class PersonView:
    """A person record with its notes merged (entries oldest first)."""

    person_id: bytes
    name: str
    reading: str
    contact: str
    registrant: bytes  #: the key the person id derives from (successors correct it)
    entries: tuple[Entry, ...]
    nonce: bytes = b""

    @property
    def status(self) -> str:
        """The status of the newest entry that has one."""
        return next((e.status for e in reversed(self.entries) if e.status), Status.UNKNOWN.value)

    @property
    def place(self) -> str:
        """The place of the newest entry that has one ("" when none)."""
        return next((e.place for e in reversed(self.entries) if e.place), "")

    @property
    def registered(self) -> Entry:
        """The registrant's entry (a successor's correction until that arrives)."""
        return next((e for e in self.entries if e.kind == "registered"), self.entries[0])

    @property
    def updated_hlc(self) -> int:
        return max(e.hlc for e in self.entries)


@dataclass(frozen=True, slots=True)
class _Parsed:
    person: _Person | None
    entry_fields: tuple[str | None, str | None, str | None]  # status, place, note
    by: str
    registrant: bytes = b""  #: a person record's: the author, or the key it corrects for


def _parse(op: OpLike) -> _Parsed:
    if op.kind not in (KIND_PERSON, KIND_NOTE):
        raise Refused("kind", op.kind)
    f = body_fields(op, MAX_BODY)
    try:
        by = _check_text("by", f.str("b", max_len=MAX_BY * 4), MAX_BY)
        status = f.opt_str("s", max_len=16)
        if status is not None:
            _check_status(status)
        place = f.opt_str("a", max_len=MAX_PLACE * 4)
        note = f.opt_str("t", max_len=MAX_NOTE * 4)
        place = _check_text("place", place, MAX_PLACE) or None if place is not None else None
        note = _check_text("note", note, MAX_NOTE) or None if note is not None else None
        if op.kind == KIND_PERSON:
            nonce = f.bytes("i", size=NONCE_LEN)
            name = _check_text("name", f.str("n", max_len=MAX_NAME * 4), MAX_NAME,
                               required=True)
            reading = check_reading(f.str("r", max_len=MAX_READING * 4))
            contact = _check_text("contact", f.str("c", max_len=MAX_CONTACT * 4), MAX_CONTACT)
            registrant = f.opt_bytes("o", size=AUTHOR_KEY_LEN)
            if registrant == op.author:
                raise ValueError("o names the author itself")
            registrant = registrant or op.author
            if op.doc_id != person_id(registrant, nonce):
                raise Refused("not_owner", "a person record is written only by its registrant"
                              " (or a successor naming it)")
            return _Parsed(_Person(name, reading, contact, nonce), (status, place, note), by,
                           registrant)
        if status is None and place is None and note is None:
            raise ValueError("an empty note")
    except (DecodeError, ValueError) as exc:
        raise Refused("body", str(exc)) from None
    return _Parsed(None, (status, place, note), by)


def authorize_safety(op: OpLike, wall_now_ms: int) -> None:
    """Authoriser for the ``safety`` namespace: well-formed; records only by their registrant."""
    del wall_now_ms
    _parse(op)


def _body(by: str, status: str | None, place: str | None, note: str | None) -> dict[str, object]:
    body: dict[str, object] = {"b": _check_text("by", by, MAX_BY)}
    if status is not None:
        body["s"] = _check_status(status)
    if place:
        body["a"] = _check_text("place", place, MAX_PLACE)
    if note:
        body["t"] = _check_text("note", note, MAX_NOTE)
    return body


def prepare_person(author: bytes, nonce: bytes, *, by: str, name: str, reading: str = "",
                   status: str | None = Status.UNKNOWN.value, place: str = "", note: str = "",
                   contact: str = "", registrant: bytes | None = None) -> tuple[bytes, bytes]:
    """(person id, body) of a ``safety.person`` op; raises ``LocalProtocolError`` on bad input.

    ``registrant``: a successor's correction of the record ``registrant`` registered with
    ``nonce`` (``author`` is the successor's key)."""
    if len(nonce) != NONCE_LEN:
        raise LocalProtocolError(f"nonce of {NONCE_LEN} bytes expected")
    if registrant is not None and (len(registrant) != AUTHOR_KEY_LEN or registrant == author):
        raise LocalProtocolError("registrant is another 32-byte key")
    try:
        body = _body(by[:MAX_BY], status, place, note)
        body.update({"i": nonce, "n": _check_text("name", name, MAX_NAME, required=True),
                     "r": check_reading(reading),
                     "c": _check_text("contact", contact, MAX_CONTACT)})
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if registrant is not None:
        body["o"] = registrant
    return person_id(registrant or author, nonce), encode_body(body)


def prepare_note(*, by: str, status: str | None = None, place: str = "",
                 note: str = "") -> bytes:
    """The body of a ``safety.note`` op (its document id is the person id)."""
    try:
        body = _body(by[:MAX_BY], status, place, note)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if len(body) == 1:
        raise LocalProtocolError("a note needs a status, a place or a text")
    return encode_body(body)


_Write = tuple[tuple[int, bytes, bytes], bytes, _Person, Entry]


class SafetyRegistry:
    """Materialised person records and notes (see the module docstring).

    ``succeeds(later, earlier)`` is True when key ``later`` continues the records of key
    ``earlier`` (``KeyRegistry.continues``); without it no correction counts.
    """

    def __init__(self, succeeds: Callable[[bytes, bytes], bool] | None = None) -> None:
        self._succeeds = succeeds
        # person id -> (order key, registrant, person fields, registration entry)
        self._people: dict[bytes, _Write] = {}
        # person id -> corrector -> (order key, registrant, person fields, entry): the newest
        # correction of each key naming the registrant, taken while it succeeds it
        self._corrections: dict[bytes, dict[bytes, _Write]] = {}
        self._notes: dict[bytes, dict[bytes, Entry]] = {}
        self._changed: set[bytes] = set()
        self.drops = DropCounter(log)

    def __len__(self) -> int:
        return len(self.ids())

    def apply(self, op: OpLike) -> bool:
        """Merge one op; False (counted, logged once) when refused."""
        try:
            p = _parse(op)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        status, place, note = p.entry_fields
        if p.person is not None and p.registrant != op.author:  # a successor's correction
            entry = Entry(op.op_id, "corrected", op.author, p.by, op.hlc, status, place, note)
            key = order_key(op)
            by_author = self._corrections.setdefault(op.doc_id, {})
            old = by_author.get(op.author)
            if old is None or key > old[0]:
                by_author[op.author] = (key, p.registrant, p.person, entry)
        elif p.person is not None:
            entry = Entry(op.op_id, "registered", op.author, p.by, op.hlc, status, place, note)
            key = order_key(op)
            cur = self._people.get(op.doc_id)
            if cur is None or key > cur[0]:
                self._people[op.doc_id] = (key, op.author, p.person, entry)
        else:
            entry = Entry(op.op_id, "note", op.author, p.by, op.hlc, status, place, note)
            self._notes.setdefault(op.doc_id, {})[op.op_id] = entry
        self._changed.add(op.doc_id)
        return True

    def _accepted(self, pid: bytes) -> list[_Write]:
        """The corrections of ``pid`` whose authors continue its registrant now."""
        succeeds = self._succeeds
        if succeeds is None:
            return []
        return [w for author, w in self._corrections.get(pid, {}).items()
                if succeeds(author, w[1])]

    def get(self, pid: bytes) -> PersonView | None:
        """The record of person ``pid`` with its notes, or None (unknown, or only notes so far).

        Name, reading and contact are the newest write of the registrant or a successor."""
        writes = self._accepted(pid)
        cur = self._people.get(pid)
        if cur is not None:
            writes.append(cur)
        if not writes:
            return None
        _, registrant, person, _ = max(writes, key=lambda w: w[0])
        entries = [w[3] for w in writes] + list(self._notes.get(pid, {}).values())
        entries.sort(key=lambda e: (e.hlc, e.author, e.op_id))
        return PersonView(pid, person.name, person.reading, person.contact, registrant,
                          tuple(entries), person.nonce)

    def people(self) -> Iterator[PersonView]:
        """Every person record (in no particular order)."""
        for pid in self.ids():
            view = self.get(pid)
            if view is not None:
                yield view

    def ids(self) -> list[bytes]:
        """Every person id (records known only by a successor's correction included)."""
        return list(self._people) + [pid for pid in self._corrections
                                     if pid not in self._people and self._accepted(pid)]

    def successors_changed(self) -> int:
        """Who continues whom changed: mark every corrected record changed; how many."""
        self._changed |= self._corrections.keys()
        return len(self._corrections)

    def drain_changed(self) -> set[bytes]:
        """Person ids touched since the last call (records with no registration yet included)."""
        out, self._changed = self._changed, set()
        return out
