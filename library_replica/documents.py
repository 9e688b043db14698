"""Library documents materialised from signed ops.

Theory of operation
-------------------
A document has a collection, a title, tags, a language and a body.  The body
is a pycrdt (Yjs) ``Text`` so that concurrent edits merge; the other fields
are last-writer-wins registers ordered by ``order_key`` (HLC, author, op id).
Deleting and restoring set a last-writer-wins ``deleted`` register; reverting
is an ordinary edit that restores an earlier version (``prepare_revert``) and
names the op it reverts.  Every change is therefore a new signed op, and
``history`` shows who changed what and when.

Op kinds and bodies (MessagePack maps, short keys):

==================  =========================================================
``library.create``  ``c`` collection, ``t`` title, ``g`` tags, ``l`` language,
                    ``u`` Yjs update of the initial body, ``sv`` state vector
                    it was made from (empty)
``library.edit``    ``sv`` the Yjs state vector the author edited from, ``u``
                    the Yjs update (optional), any of ``c t g l``, ``r`` the op
                    id this edit reverts (optional)
``library.delete``  ``{}``
``library.restore`` ``{}`` (the authoriser takes only authority keys)
``library.snapshot`` the document compacted (below): ``u`` its full Yjs state,
                    ``m`` its fields as ``[name, value, hlc, author, op id]``,
                    ``k`` superseded chain positions ``[author, first, last,
                    last op id]``, ``p`` earlier snapshots it supersedes,
                    ``n``/``h`` count and SHA-256 of the sorted ids of the ops
                    it newly supersedes, ``ch``/``uh`` created/updated hlc,
                    ``a`` authors, ``z`` true for a tombstone (text dropped)
==================  =========================================================

Snapshots (compaction).  A member (``may_compact``: the root, an authority or
an enrolled member, not revoked) replaces a document's history by a snapshot
(``prepare_snapshot``; when, says ``library_replica.compaction``).  It is an
unchained op (sync's ``seq`` 0, with the expiry ``SNAPSHOT_EXPIRY_MS``, which is
never reached), so a node holding none of the history applies it.  Applying it
merges its Yjs state and its fields (by order key, like any change) into the
document, forgets the ops it supersedes and rebuilds the document from the
snapshot and the ops after it; ``take_superseded`` hands the superseded ranges
to the node, which drops those ops from the op store.  Receivers check what
they can: the author may compact; the state holds every update of the
superseded ops they hold (not for a tombstone); and when they hold exactly the
``n`` ops a first snapshot names, their ids hash to ``h``.  A snapshot rewrites
items of every author's Yjs client, so only members may make one: a member can
already rewrite the text by editing it.  Ops a snapshot superseded that arrive
later are ``SUPERSEDED`` (sync refuses them first).

Seeded bodies (imports).  Two nodes that import the same file must end with
one copy of its text, but two Yjs inserts of the same text by two clients are
two copies.  So an import's ``library.create`` carries no Yjs update but the
text itself: ``x`` the text (a chunk of it), ``h`` SHA-256 of the whole
initial text, ``o`` the chunk's offset in UTF-16 units (0 in the create;
later chunks are ``library.edit`` ops with ``o`` > 0).  Every replica builds
the Yjs update itself (``seed_update``) as the insert of ``x`` by the *seed
client* ``yjs_client_id(doc_id ‖ h)``: the same file gives byte-identical
items at every node, and Yjs keeps one copy.  Nobody can forge a seed item,
because the update is derived from the text that names the client.

Several seeds in one document (two nodes imported different texts under the
same id without having seen each other's) would show both texts; the rule:
the seed of the latest create (``order_key``) wins and every other seed's
items are deleted, locally and deterministically (a delete-only Yjs update),
at every replica that holds both.  Edits made on a losing seed keep only what
they inserted.

pycrdt loses updates applied out of order, so each update is applied only when
the document's state vector dominates the ``sv`` the author edited from (and
after the document's create); otherwise the op waits in a pending list that is
retried after every apply.  The update may contain items of its author's Yjs
client only (``yjs_client_id``), and after applying it the document's state
vector must have reached the update's end clock: if not (a lying ``sv``), the
op is refused and the document rebuilt without it.

Each node keeps a block list of authors whose changes it hides and does not
relay: their ops are kept (so unblocking needs no re-sync) but not applied,
and ops that build on their text wait with them.  Changing the block list
rebuilds the documents from the kept ops.

Local changes are built by the ``prepare_*`` methods in a scratch Yjs document
whose client id is the author's; they return ``PreparedOp`` lists (a long body
is split so that every op body stays under sync's 60,000-byte limit) to be
signed and submitted in order.  One key must author from one replica only: two
devices sharing a key would reuse Yjs clocks.  An author cannot edit a
document while an op of its own on it is still waiting (``LocalProtocolError``).

This module is a pure core: no I/O and no clock reads.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from library_replica.compaction import DocStats
from library_replica.ops import (
    MAX_BODY_SIZE,
    SNAPSHOT_EXPIRY_MS,
    OpLike,
    Refused,
    body_fields,
    encode_body,
    hlc_wall_ms,
    order_key,
)
from library_replica.text import TextEdit, apply_edits, diff_edits, is_boundary, yjs_client_id
from meshd.core.codec import DropCounter, Fields, pack
from meshd.core.errors import DecodeError, LocalProtocolError
from sync.apply import SkipRange, covered, merge_ranges

if TYPE_CHECKING:
    from pycrdt import Doc, Text

__all__ = [
    "DEFAULT_COLLECTIONS",
    "KIND_CREATE",
    "KIND_DELETE",
    "KIND_EDIT",
    "KIND_RESTORE",
    "KIND_SNAPSHOT",
    "SNAPSHOT_EXPIRY_MS",
    "Applied",
    "DocumentView",
    "HistoryEntry",
    "Library",
    "PreparedOp",
    "decode_state_vector",
    "seed_client",
    "seed_update",
    "update_clock_ranges",
]

log = logging.getLogger(__name__)

KIND_CREATE = "library.create"
KIND_EDIT = "library.edit"
KIND_DELETE = "library.delete"
KIND_RESTORE = "library.restore"
KIND_SNAPSHOT = "library.snapshot"
KINDS = frozenset({KIND_CREATE, KIND_EDIT, KIND_DELETE, KIND_RESTORE, KIND_SNAPSHOT})
#: authors listed in a snapshot (the rest still show in the history of later changes)
MAX_SNAPSHOT_AUTHORS = 256
_REGISTERS = ("collection", "title", "tags", "lang", "deleted")

DEFAULT_COLLECTIONS = ("work", "social", "history", "know-how")
_COLLECTION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_TITLE = 200
MAX_TAG = 40
MAX_TAGS = 32
MAX_LANG = 16
MAX_BODY_CHARS = 200_000
MAX_UPDATE = MAX_BODY_SIZE
MAX_SV = 64 * 1024
#: ops waiting for their causal predecessors, over all documents
MAX_PENDING = 100_000
_ROOT = "body"


class Applied(enum.Enum):
    """What ``Library.apply`` did with an op."""

    APPLIED = "applied"
    PENDING = "pending"  # waits for ops it builds on
    DUPLICATE = "duplicate"
    HIDDEN = "hidden"  # its author is blocked here
    SUPERSEDED = "superseded"  # a snapshot here replaced it
    REFUSED = "refused"  # malformed or inconsistent: counted and dropped


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One change to a document: who (author key), when (HLC), what (kind and changed parts)."""

    op_id: bytes
    author: bytes
    hlc: int
    kind: str
    fields: tuple[str, ...]  # metadata fields set: collection, title, tags, lang
    inserted: int  # characters inserted into the body
    deleted: int  # characters deleted from the body
    reverts: bytes | None


@dataclass(frozen=True, slots=True)
class DocumentView:
    """A read-only snapshot of a materialised document."""

    doc_id: bytes
    collection: str
    title: str
    body: str
    tags: tuple[str, ...]
    lang: str
    deleted: bool
    authors: frozenset[bytes]
    created_hlc: int
    updated_hlc: int


@dataclass(frozen=True, slots=True)
class PreparedOp:
    """An op to sign and submit (through sync) for a local change: kind and body."""

    kind: str
    body: bytes


#: UTF-8 bytes of inserted text per op: its Yjs update stays well inside sync's body limit
CHUNK_BYTES = 40_000
#: budgeted Yjs bytes per edit besides its text (ids, origins, delete ranges)
_EDIT_OVERHEAD = 24


def _chunk_edits(edits: list[TextEdit]) -> list[list[TextEdit]]:
    """Group sequential edits so that each group's update fits in one op.

    A long insert is split at character boundaries into inserts at successive
    positions; the sequence stays valid because edits come last-first.
    """
    pieces: list[TextEdit] = []
    for e in edits:
        ins, pos, delete = e.insert, e.start, e.delete
        while len(ins.encode("utf-8")) > CHUNK_BYTES:
            k = min(len(ins), CHUNK_BYTES // 4)  # at most 4 bytes per character
            while k > 1 and not is_boundary(ins, k):
                k -= 1
            pieces.append(TextEdit(pos, delete, ins[:k]))
            pos, delete, ins = pos + k, 0, ins[k:]
        pieces.append(TextEdit(pos, delete, ins))
    groups: list[list[TextEdit]] = []
    cost = 0
    for e in pieces:
        c = len(e.insert.encode("utf-8")) + _EDIT_OVERHEAD
        if groups and cost + c <= CHUNK_BYTES:
            groups[-1].append(e)
            cost += c
        else:
            groups.append([e])
            cost = c
    return groups


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("state_vector", "truncated varuint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def decode_state_vector(data: bytes) -> dict[int, int]:
    """Decode a Yjs v1 state vector (varuint count, then client/clock pairs); strict."""
    if len(data) > MAX_SV:
        raise DecodeError("state_vector", "oversize")
    count, pos = _read_varuint(data, 0)
    if count > len(data):
        raise DecodeError("state_vector", "count")
    out: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        out[client] = clock
    if pos != len(data):
        raise DecodeError("state_vector", "trailing bytes")
    return out


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_varuint(data, pos)
    if pos + n > len(data):
        raise DecodeError("update", "truncated string")
    try:
        return data[pos : pos + n].decode("utf-8"), pos + n
    except UnicodeDecodeError:
        raise DecodeError("update", "string not UTF-8") from None


# Yjs v1 struct info bits (yjs/src/utils/encoding.js, structs/Item.js)
_BIT8_ORIGIN = 0x80
_BIT7_RIGHT_ORIGIN = 0x40
_BIT6_PARENT_SUB = 0x20
_CONTENT_GC = 0
_CONTENT_DELETED = 1
_CONTENT_STRING = 4
_CONTENT_SKIP = 10


def update_clock_ranges(update: bytes) -> dict[int, tuple[int, int]]:
    """The (first, end) Yjs clock of the structs per client in a v1 update; strict.

    Only what a text body uses is accepted (strings, deleted content, GC and
    skip structs); anything else is refused as ``DecodeError``.  String lengths
    count UTF-16 code units, as Yjs clocks do.  The delete set is checked for
    shape.  (pycrdt's ``get_state(update)`` cannot serve: it reports only
    structs that integrate into an empty document.)
    """
    data = update
    n_clients, pos = _read_varuint(data, 0)
    if n_clients > len(data):
        raise DecodeError("update", "client count")
    out: dict[int, tuple[int, int]] = {}
    for _ in range(n_clients):
        n_structs, pos = _read_varuint(data, pos)
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        if n_structs > len(data) or client in out:
            raise DecodeError("update", "struct count")
        start = clock
        for _ in range(n_structs):
            if pos >= len(data):
                raise DecodeError("update", "truncated struct")
            info = data[pos]
            pos += 1
            ref = info & 0x1F
            if ref in (_CONTENT_GC, _CONTENT_SKIP):
                length, pos = _read_varuint(data, pos)
                clock += length
                continue
            if info & _BIT8_ORIGIN:
                _, pos = _read_varuint(data, pos)
                _, pos = _read_varuint(data, pos)
            if info & _BIT7_RIGHT_ORIGIN:
                _, pos = _read_varuint(data, pos)
                _, pos = _read_varuint(data, pos)
            if not info & (_BIT8_ORIGIN | _BIT7_RIGHT_ORIGIN):
                has_key, pos = _read_varuint(data, pos)
                if has_key == 1:
                    _, pos = _read_string(data, pos)
                else:
                    _, pos = _read_varuint(data, pos)
                    _, pos = _read_varuint(data, pos)
                if info & _BIT6_PARENT_SUB:
                    _, pos = _read_string(data, pos)
            if ref == _CONTENT_STRING:
                text, pos = _read_string(data, pos)
                length = len(text.encode("utf-16-le")) // 2
            elif ref == _CONTENT_DELETED:
                length, pos = _read_varuint(data, pos)
            else:
                raise DecodeError("update", f"content type {ref} in a text body")
            if length == 0:
                raise DecodeError("update", "empty struct")
            clock += length
        out[client] = (start, clock)
    n_ds, pos = _read_varuint(data, pos)
    if n_ds > len(data):
        raise DecodeError("update", "delete set count")
    for _ in range(n_ds):
        _, pos = _read_varuint(data, pos)
        n_ranges, pos = _read_varuint(data, pos)
        if n_ranges > len(data):
            raise DecodeError("update", "delete range count")
        for _ in range(n_ranges):
            _, pos = _read_varuint(data, pos)
            _, pos = _read_varuint(data, pos)
    if pos != len(data):
        raise DecodeError("update", "trailing bytes")
    return out


def seed_client(doc_id: bytes, text_hash: bytes) -> int:
    """The Yjs client id of a seeded body: derived from the document and its initial text."""
    return yjs_client_id(b"carmesh/seed/1\x00" + doc_id + text_hash)


def _utf16_len(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def seed_update(client: int, offset: int, text: str) -> bytes:
    """The Yjs update inserting ``text`` by ``client`` after its first ``offset`` clocks.

    Deterministic: built in a scratch document whose first ``offset`` clocks are
    ASCII placeholders (their content is not part of the update, only the origin
    ``(client, offset - 1)`` is), so every replica derives the same bytes.
    """
    scratch = _new_doc(client)
    text_ = _text_of(scratch)
    if offset:
        text_.insert(0, "a" * offset)  # one byte and one UTF-16 unit per character
    sv = scratch.get_state()
    text_.insert(offset, text)
    return scratch.get_update(sv)


def _varuint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _delete_only_update(client: int, end: int) -> bytes:
    """A Yjs v1 update with no structs that deletes ``client``'s clocks ``0..end``."""
    return (_varuint(0) + _varuint(1) + _varuint(client) + _varuint(1) + _varuint(0)
            + _varuint(end))


def _dominates(have: dict[int, int], need: dict[int, int]) -> bool:
    return all(have.get(c, 0) >= k for c, k in need.items())


@dataclass(slots=True)
class _Register:
    value: Any
    key: tuple[int, bytes, bytes]


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A library op body checked for shape and types."""

    kind: str
    sv: dict[int, int]
    update: bytes | None
    update_end: int  # author's Yjs clock after the update (0 without one)
    meta: dict[str, Any]
    reverts: bytes | None
    client: int = 0  # the Yjs client of the update's items (the author's, or a seed's)
    seed: int = 0  # a seeded body's client (0 when the body is not seeded)
    snap: _Snap | None = None  # a snapshot's contents


@dataclass(frozen=True, slots=True)
class _Snap:
    """The checked contents of a ``library.snapshot`` body (see the module docstring)."""

    regs: dict[str, _Register]
    ranges: tuple[tuple[bytes, SkipRange], ...]
    prior: tuple[bytes, ...]
    count: int
    digest: bytes
    created_hlc: int
    updated_hlc: int
    authors: tuple[bytes, ...]
    purged: bool
    clients: dict[int, tuple[int, int]]


def _present(f: Fields, key: str) -> bool:
    try:
        return f.raw(key) is not None
    except DecodeError:
        return False


def _parse_tags(raw: list[Any]) -> tuple[str, ...]:
    tags: list[str] = []
    for t in raw:
        if type(t) is not str or not 0 < len(t) <= MAX_TAG:
            raise Refused("body", "tag")
        tags.append(t)
    return tuple(dict.fromkeys(tags))


def _parse(op: OpLike) -> _Parsed:
    if op.kind not in KINDS:
        raise Refused("kind", op.kind)
    f: Fields = body_fields(op)
    if op.kind == KIND_SNAPSHOT:
        return _parse_snapshot(op, f)
    try:
        meta: dict[str, Any] = {}
        if f.opt_str("c", max_len=32) is not None:
            c = f.str("c", max_len=32)
            if not _COLLECTION_RE.match(c):
                raise Refused("body", "collection name")
            meta["collection"] = c
        if f.opt_str("t", max_len=MAX_TITLE) is not None:
            meta["title"] = f.str("t", max_len=MAX_TITLE)
        if _present(f, "g"):
            meta["tags"] = _parse_tags(f.list("g", max_len=MAX_TAGS))
        if f.opt_str("l", max_len=MAX_LANG) is not None:
            meta["lang"] = f.str("l", max_len=MAX_LANG)
        update = f.opt_bytes("u", max_len=MAX_UPDATE)
        sv: dict[int, int] = {}
        reverts: bytes | None = None
        if op.kind in (KIND_CREATE, KIND_EDIT):
            sv = decode_state_vector(f.bytes("sv", max_len=MAX_SV))
            reverts = f.opt_bytes("r", size=32)
        if op.kind == KIND_CREATE:
            if {"collection", "title"} - meta.keys():
                raise Refused("body", "create needs collection and title")
            if sv:
                raise Refused("body", "create starts from an empty document")
        seed_text = f.opt_str("x", max_len=MAX_UPDATE)
        if seed_text is not None:
            return _parse_seeded(op, f, seed_text, update, sv, meta)
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None
    end = 0
    if update is not None:
        try:
            ranges = update_clock_ranges(update)
        except DecodeError as exc:
            raise Refused("update", str(exc)) from None
        cid = yjs_client_id(op.author)
        if set(ranges) - {cid}:
            raise Refused("update", "items of another author's Yjs client")
        end = ranges[cid][1] if cid in ranges else 0
    return _Parsed(op.kind, sv, update, end, meta, reverts, yjs_client_id(op.author))


def _register_value(name: str, value: Any) -> Any:
    """A snapshot's field value checked like the op that set it; ``Refused`` if bad."""
    if name == "collection" and type(value) is str and _COLLECTION_RE.match(value):
        return value
    if name == "title" and type(value) is str and len(value) <= MAX_TITLE:
        return value
    if name == "lang" and type(value) is str and len(value) <= MAX_LANG:
        return value
    if name == "tags" and type(value) is list and len(value) <= MAX_TAGS:
        return _parse_tags(value)
    if name == "deleted" and type(value) is bool:
        return value
    raise Refused("body", f"snapshot field {name!r}")


def _parse_snapshot(op: OpLike, f: Fields) -> _Parsed:
    if op.seq != 0 or op.expiry_ms != SNAPSHOT_EXPIRY_MS:
        raise Refused("body", "a snapshot is unchained, with the snapshot expiry")
    try:
        update = f.bytes("u", max_len=MAX_UPDATE)
        regs: dict[str, _Register] = {}
        for item in f.list("m", max_len=len(_REGISTERS)):
            if (type(item) is not list or len(item) != 5 or item[0] not in _REGISTERS
                    or item[0] in regs or type(item[2]) is not int or not 0 <= item[2] < 2**63
                    or type(item[3]) is not bytes or len(item[3]) != 32
                    or type(item[4]) is not bytes or len(item[4]) != 32):
                raise Refused("body", "snapshot field entry")
            regs[item[0]] = _Register(_register_value(item[0], item[1]),
                                      (item[2], item[3], item[4]))
        if {"collection", "title"} - regs.keys():
            raise Refused("body", "a snapshot needs collection and title")
        ranges: list[tuple[bytes, SkipRange]] = []
        for item in f.list("k", max_len=MAX_BODY_SIZE // 70):
            if (type(item) is not list or len(item) != 4 or type(item[0]) is not bytes
                    or len(item[0]) != 32 or type(item[1]) is not int
                    or type(item[2]) is not int or not 1 <= item[1] <= item[2] <= 2**62
                    or type(item[3]) is not bytes or len(item[3]) != 32):
                raise Refused("body", "snapshot range")
            ranges.append((item[0], (item[1], item[2], item[3])))
        prior = f.list("p", max_len=MAX_BODY_SIZE // 34)
        if any(type(i) is not bytes or len(i) != 32 for i in prior):
            raise Refused("body", "snapshot prior ids")
        authors = f.list("a", max_len=MAX_SNAPSHOT_AUTHORS)
        if any(type(a) is not bytes or len(a) != 32 for a in authors):
            raise Refused("body", "snapshot authors")
        count = f.int("n", 0, 2**62)
        digest = f.bytes("h", size=32)
        created = f.int("ch", 0, 2**63 - 1)
        updated = f.int("uh", 0, 2**63 - 1)
        purged = f.bool("z")
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None
    try:
        clients = update_clock_ranges(update)
    except DecodeError as exc:
        raise Refused("update", str(exc)) from None
    if purged and clients:
        raise Refused("body", "a tombstone carries no text")
    snap = _Snap(regs, tuple(ranges), tuple(prior), count, digest, created, updated,
                 tuple(authors), purged, clients)
    return _Parsed(op.kind, {}, update, 0, {}, None, 0, 0, snap)


def _parse_seeded(op: OpLike, f: Fields, text: str, update: bytes | None,
                  sv: dict[int, int], meta: dict[str, Any]) -> _Parsed:
    """A seeded body (see the module docstring): the update is derived, never carried."""
    if update is not None or sv:
        raise Refused("body", "a seeded body carries text, not a Yjs update")
    if op.kind not in (KIND_CREATE, KIND_EDIT):
        raise Refused("body", "seed text in a delete or restore")
    h = f.bytes("h", size=32)
    offset = f.int("o", 0, MAX_BODY_CHARS * 2)
    if (offset == 0) != (op.kind == KIND_CREATE):
        raise Refused("body", "a seed starts in its create, later chunks are edits")
    if not text or len(text.encode("utf-8")) > CHUNK_BYTES + 4:
        raise Refused("body", "seed chunk size")
    client = seed_client(op.doc_id, h)
    upd = seed_update(client, offset, text)
    return _Parsed(op.kind, {client: offset} if offset else {}, upd,
                   offset + _utf16_len(text), meta, None, client, client)


def _new_doc(client_id: int | None = None) -> Doc[Any]:
    # pycrdt (about 6 MB) loads with the first document, not with the node
    from pycrdt import Doc

    return Doc() if client_id is None else Doc(client_id=client_id)


def _text_of(ydoc: Doc[Any]) -> Text:
    from pycrdt import Text

    text: Text = ydoc.get(_ROOT, type=Text)
    return text


@dataclass(slots=True)
class _DocState:
    doc_id: bytes
    ydoc: Doc[Any] = field(default_factory=_new_doc)
    text_cache: str = ""
    created: bool = False
    created_hlc: int = 0
    updated_hlc: int = 0
    regs: dict[str, _Register] = field(default_factory=dict)
    authors: set[bytes] = field(default_factory=set)
    applied: list[OpLike] = field(default_factory=list)  # in apply order
    history: list[HistoryEntry] = field(default_factory=list)
    #: seed client -> order key of the latest create naming it (the latest seed wins)
    seeds: dict[int, tuple[int, bytes, bytes]] = field(default_factory=dict)
    #: XOR of the applied op ids: the document's head, whatever the apply order
    head: int = 0
    #: a tombstone's snapshot applied: the text is gone
    purged: bool = False

    @property
    def text(self) -> Text:
        return _text_of(self.ydoc)

    def sv(self) -> dict[int, int]:
        return decode_state_vector(self.ydoc.get_state())

    def meta(self, name: str, default: Any) -> Any:
        reg = self.regs.get(name)
        return default if reg is None else reg.value


def _integrate_snapshot(st: _DocState, op: OpLike, snap: _Snap,
                        update: bytes) -> tuple[str, str] | None:
    before = st.text_cache
    try:
        st.ydoc.apply_update(update)
    except ValueError as exc:
        return ("update", str(exc))
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        return ("update", "pycrdt panic")
    have = st.sv()
    if any(have.get(c, 0) < end for c, (_, end) in snap.clients.items()):
        return ("sv_mismatch", "snapshot state did not integrate")
    after = str(st.text)
    if len(after) > MAX_BODY_CHARS:
        return ("body_size", str(len(after)))
    st.text_cache = after
    for name, reg in snap.regs.items():
        old = st.regs.get(name)
        if old is None or reg.key > old.key:
            st.regs[name] = reg
    if not st.created or snap.created_hlc < st.created_hlc:
        st.created_hlc = snap.created_hlc
    st.created = True
    st.updated_hlc = max(st.updated_hlc, snap.updated_hlc)
    st.authors.update(snap.authors)
    st.applied.append(op)
    st.head ^= int.from_bytes(op.op_id[:16], "big")
    st.purged = st.purged or snap.purged
    inserted = sum(len(e.insert) for e in diff_edits(before, after))
    st.history.append(HistoryEntry(op.op_id, op.author, op.hlc, op.kind,
                                   tuple(sorted(snap.regs)), inserted, 0, None))
    return None


def _integrate(st: _DocState, op: OpLike, parsed: _Parsed) -> tuple[str, str] | None:
    """Apply one ready op to ``st``; return (reason, detail) if it must be refused instead."""
    if parsed.snap is not None:
        assert parsed.update is not None
        return _integrate_snapshot(st, op, parsed.snap, parsed.update)
    before = st.text_cache
    inserted = deleted = 0
    if parsed.update is not None:
        try:
            st.ydoc.apply_update(parsed.update)
        except ValueError as exc:
            return ("update", str(exc))
        except BaseException as exc:
            # Yrs panics surface as pyo3's PanicException, a BaseException: a hostile
            # update must not take the node down; the document is rebuilt without it
            if type(exc).__name__ != "PanicException":
                raise
            return ("update", "pycrdt panic")
        if st.sv().get(parsed.client, 0) < parsed.update_end:
            # the update did not integrate: its sv lied about what it builds on
            return ("sv_mismatch", "")
        if parsed.kind == KIND_CREATE and parsed.seed:
            key = order_key(op)
            if key > st.seeds.get(parsed.seed, (0, b"", b"")):
                st.seeds[parsed.seed] = key
        _delete_losing_seeds(st)
        after = str(st.text)
        if len(after) > MAX_BODY_CHARS:
            return ("body_size", str(len(after)))
        for e in diff_edits(before, after):
            inserted += len(e.insert)
            deleted += e.delete
        st.text_cache = after
    key = order_key(op)
    for name, value in parsed.meta.items():
        reg = st.regs.get(name)
        if reg is None or key > reg.key:
            st.regs[name] = _Register(value, key)
    if parsed.kind in (KIND_DELETE, KIND_RESTORE):
        reg = st.regs.get("deleted")
        if reg is None or key > reg.key:
            st.regs["deleted"] = _Register(parsed.kind == KIND_DELETE, key)
    if parsed.kind == KIND_CREATE and (not st.created or op.hlc < st.created_hlc):
        st.created_hlc = op.hlc
    st.created = True
    st.updated_hlc = max(st.updated_hlc, op.hlc)
    st.authors.add(op.author)
    st.applied.append(op)
    st.head ^= int.from_bytes(op.op_id[:16], "big")
    st.history.append(HistoryEntry(op.op_id, op.author, op.hlc, op.kind,
                                   tuple(sorted(parsed.meta)), inserted, deleted,
                                   parsed.reverts))
    return None


def _ids_digest(ids: Iterable[bytes]) -> bytes:
    """SHA-256 of the sorted op ids: a snapshot's ``h``."""
    h = hashlib.sha256()
    for i in sorted(ids):
        h.update(i)
    return h.digest()


def _delete_losing_seeds(st: _DocState) -> None:
    """Delete every seed's items but the latest create's (a no-op with one seed)."""
    if len(st.seeds) < 2:
        return
    winner = max(st.seeds, key=lambda c: st.seeds[c])
    sv = st.sv()
    for client in st.seeds:
        if client != winner and sv.get(client, 0):
            st.ydoc.apply_update(_delete_only_update(client, sv[client]))


class Library:
    """Materialises library documents from ops applied in causal order per author.

    Feed it every committed op of the ``library`` namespace with ``apply``;
    read documents with ``get``/``documents``; build local changes with the
    ``prepare_*`` methods, which return op bodies for sync to sign.
    """

    def __init__(self, blocked: Iterable[bytes] = (),
                 may_restore: Callable[[bytes], bool] | None = None,
                 may_compact: Callable[[bytes], bool] | None = None) -> None:
        #: who may restore a deleted document (an authority); None: anyone
        self._may_restore = may_restore
        #: who may make snapshots (a member: see the module docstring); None: nobody
        self._may_compact = may_compact
        #: per author, the chain positions snapshots here superseded; superseded snapshot ids
        self._skips: dict[bytes, list[SkipRange]] = {}
        self._superseded: set[bytes] = set()
        #: (snapshot id, doc id, ranges, prior ids) applied here, for the op store
        self._to_supersede: list[tuple[bytes, bytes, tuple[tuple[bytes, SkipRange], ...],
                                       tuple[bytes, ...]]] = []
        self._docs: dict[bytes, _DocState] = {}
        self._log: dict[bytes, list[OpLike]] = {}  # every accepted op per document, arrival order
        self._seen: set[bytes] = set()
        self._pending: dict[bytes, list[tuple[OpLike, _Parsed]]] = {}
        self._pending_count = 0
        self._refused: set[bytes] = set()
        self._blocked: frozenset[bytes] = frozenset(blocked)
        self._changed: set[bytes] = set()
        self.drops = DropCounter(log)

    # -- feeding ops ------------------------------------------------------

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``library`` namespace: refuse (raise ``Refused``) malformed ops."""
        del wall_now_ms  # library ops do not expire (a snapshot's expiry is never reached)
        _parse(op)
        if op.kind == KIND_SNAPSHOT and (self._may_compact is None
                                         or not self._may_compact(op.author)):
            raise Refused("not_member", "only a member makes snapshots")
        if op.kind == KIND_RESTORE and self._may_restore is not None \
                and not self._may_restore(op.author):
            raise Refused("not_authority", "only an authority restores a deleted document")

    def apply(self, op: OpLike) -> Applied:
        """Apply one committed op; malformed ones are counted, logged once and dropped."""
        if op.op_id in self._seen:
            return Applied.DUPLICATE
        if self._is_superseded(op):
            self.drops.drop("superseded", op.author.hex()[:8])
            return Applied.SUPERSEDED
        try:
            parsed = _parse(op)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return Applied.REFUSED
        if parsed.snap is not None:
            return self._apply_snapshot(op, parsed, parsed.snap)
        self._seen.add(op.op_id)
        self._log.setdefault(op.doc_id, []).append(op)
        return self._feed(op, parsed)

    def _is_superseded(self, op: OpLike) -> bool:
        if op.seq == 0:
            return op.op_id in self._superseded
        return covered(self._skips.get(op.author, ()), op.seq)

    def _covered_by(self, op: OpLike, ranges: dict[bytes, list[SkipRange]],
                    prior: set[bytes]) -> bool:
        if op.seq == 0:
            return op.op_id in prior
        return covered(ranges.get(op.author, ()), op.seq)

    def _apply_snapshot(self, op: OpLike, parsed: _Parsed, snap: _Snap) -> Applied:
        """Check a snapshot against the history held here, then replace that history by it."""
        if op.author in self._blocked:
            # kept like any hidden op, history and all: nothing is superseded by an author
            # this node does not follow (unblocking merges the snapshot's state)
            self._seen.add(op.op_id)
            self._log.setdefault(op.doc_id, []).append(op)
            return Applied.HIDDEN
        ranges: dict[bytes, list[SkipRange]] = {}
        for author, rng in snap.ranges:
            ranges.setdefault(author, []).append(rng)
        ranges = {a: merge_ranges((), r) for a, r in ranges.items()}
        prior = set(snap.prior)
        problem = _integrate(_DocState(op.doc_id), op, parsed)
        if problem is not None:
            self.drops.drop(problem[0], op.author.hex()[:8], problem[1])
            self._refused.add(op.op_id)
            return Applied.REFUSED
        log_ = self._log.get(op.doc_id, [])
        held = [o for o in log_ if self._covered_by(o, ranges, prior)]
        chained = [o for o in held if o.seq]
        if not snap.purged:
            for o in chained:
                try:
                    p = _parse(o)
                except Refused:
                    continue
                if p.update is not None and p.update_end and \
                        snap.clients.get(p.client, (0, 0))[1] < p.update_end:
                    self.drops.drop("snapshot_mismatch", op.author.hex()[:8],
                                    "state lacks a superseded update")
                    self._refused.add(op.op_id)
                    return Applied.REFUSED
        if not snap.prior and len(chained) == snap.count and \
                _ids_digest(o.op_id for o in chained) != snap.digest:
            self.drops.drop("snapshot_mismatch", op.author.hex()[:8], "superseded ids")
            self._refused.add(op.op_id)
            return Applied.REFUSED
        self._seen.add(op.op_id)
        for a, r in ranges.items():
            self._skips[a] = merge_ranges(self._skips.get(a, ()), r)
        self._superseded |= prior
        gone = {o.op_id for o in held}
        for key, waiting in list(self._pending.items()):
            keep = [(o, p) for o, p in waiting if not self._covered_by(o, ranges, prior)]
            self._pending_count -= len(waiting) - len(keep)
            self._pending[key] = keep
        # the snapshot first, then the ops after it (each waits for what it builds on)
        self._log[op.doc_id] = [op] + [o for o in log_ if o.op_id not in gone]
        self._rebuild_doc(op.doc_id)
        self._to_supersede.append((op.op_id, op.doc_id, snap.ranges, tuple(dict.fromkeys(
            [*snap.prior, *(o.op_id for o in held)]))))
        return Applied.APPLIED

    def take_superseded(self) -> list[tuple[bytes, bytes, tuple[tuple[bytes, SkipRange], ...],
                                            tuple[bytes, ...]]]:
        """Snapshots applied since the last call: ``(snapshot id, doc id, ranges, op ids)``.

        ``op ids``: the earlier snapshots and the ops held here that it supersedes.  The
        caller drops those ops from the op store (``OpStore.supersede``).
        """
        out, self._to_supersede = self._to_supersede, []
        return out

    def _feed(self, op: OpLike, parsed: _Parsed) -> Applied:
        if op.author in self._blocked:
            return Applied.HIDDEN
        st = self._docs.get(op.doc_id)
        if st is None:
            st = self._docs[op.doc_id] = _DocState(op.doc_id)
        if not self._ready(st, parsed):
            if self._pending_count >= MAX_PENDING:
                self.drops.drop("pending_full", op.author.hex()[:8])
                return Applied.REFUSED
            self._pending.setdefault(op.doc_id, []).append((op, parsed))
            self._pending_count += 1
            return Applied.PENDING
        result = self._apply_now(st, op, parsed)
        if result is Applied.APPLIED:
            self._drain(st)
        return result

    def _ready(self, st: _DocState, parsed: _Parsed) -> bool:
        if parsed.snap is not None:
            return True
        if parsed.kind != KIND_CREATE and not st.created:
            return False
        return not parsed.sv or _dominates(st.sv(), parsed.sv)

    def _drain(self, st: _DocState) -> None:
        waiting = self._pending.get(st.doc_id)
        progress = True
        while waiting and progress:
            progress = False
            for i, (op, parsed) in enumerate(waiting):
                if self._ready(st, parsed):
                    del waiting[i]
                    self._pending_count -= 1
                    self._apply_now(st, op, parsed)
                    progress = True
                    break
        if not waiting:
            self._pending.pop(st.doc_id, None)

    def _apply_now(self, st: _DocState, op: OpLike, parsed: _Parsed) -> Applied:
        problem = _integrate(st, op, parsed)
        if problem is not None:
            return self._refuse_and_rebuild(st, op, *problem)
        self._changed.add(st.doc_id)
        return Applied.APPLIED

    def _refuse_and_rebuild(self, st: _DocState, op: OpLike, reason: str, detail: str) -> Applied:
        self.drops.drop(reason, op.author.hex()[:8], detail)
        self._refused.add(op.op_id)
        self._rebuild_doc(st.doc_id)
        return Applied.REFUSED

    def _rebuild_doc(self, doc_id: bytes) -> None:
        """Re-materialise one document from its kept ops (block list or refusal changed)."""
        dropped = len(self._pending.pop(doc_id, []))
        self._pending_count -= dropped
        self._docs.pop(doc_id, None)
        self._changed.add(doc_id)
        for op in self._log.get(doc_id, []):
            if op.op_id not in self._refused:
                self._feed(op, _parse(op))

    # -- block list --------------------------------------------------------

    @property
    def blocked(self) -> frozenset[bytes]:
        """Authors whose changes this node hides and does not relay."""
        return self._blocked

    def set_blocked(self, authors: Iterable[bytes]) -> None:
        """Replace the local block list and rebuild the affected documents."""
        new = frozenset(authors)
        changed = new ^ self._blocked
        self._blocked = new
        for doc_id, ops in list(self._log.items()):
            if any(op.author in changed for op in ops):
                self._rebuild_doc(doc_id)

    def relayable(self, op: OpLike) -> bool:
        """False for ops this node must not relay (blocked author or refused here)."""
        return op.author not in self._blocked and op.op_id not in self._refused

    # -- reading -------------------------------------------------------------

    def _view(self, st: _DocState) -> DocumentView:
        return DocumentView(
            doc_id=st.doc_id,
            collection=st.meta("collection", ""),
            title=st.meta("title", ""),
            body=st.text_cache,
            tags=st.meta("tags", ()),
            lang=st.meta("lang", ""),
            deleted=bool(st.meta("deleted", False)),
            authors=frozenset(st.authors),
            created_hlc=st.created_hlc,
            updated_hlc=st.updated_hlc,
        )

    def get(self, doc_id: bytes) -> DocumentView | None:
        """The document, deleted ones included (check ``deleted``); None if never created here."""
        st = self._docs.get(doc_id)
        return self._view(st) if st is not None and st.created else None

    def documents(self, include_deleted: bool = False) -> Iterator[DocumentView]:
        """Every created document (not deleted ones unless asked)."""
        for st in self._docs.values():
            if st.created and (include_deleted or not st.meta("deleted", False)):
                yield self._view(st)

    def history(self, doc_id: bytes) -> list[HistoryEntry]:
        """Applied changes of a document in the order they were applied here."""
        st = self._docs.get(doc_id)
        return list(st.history) if st is not None else []

    def pending_count(self) -> int:
        """Ops waiting for the ops they build on."""
        return self._pending_count

    def state_vector(self, doc_id: bytes) -> dict[int, int]:
        """The Yjs state vector of a document's body (empty if unknown)."""
        st = self._docs.get(doc_id)
        return st.sv() if st is not None else {}

    def drain_changed(self) -> set[bytes]:
        """Ids of documents changed since the last call (for the search index)."""
        out, self._changed = self._changed, set()
        return out

    # -- local changes -------------------------------------------------------

    def _scratch(self, st: _DocState | None, author: bytes) -> tuple[Doc[Any], bytes]:
        if st is not None:
            for op, _ in self._pending.get(st.doc_id, []):
                if op.author == author:
                    raise LocalProtocolError("own earlier edit still waits; cannot edit yet")
        scratch = _new_doc(yjs_client_id(author))
        if st is not None:
            scratch.apply_update(st.ydoc.get_update())
        return scratch, scratch.get_state()

    @staticmethod
    def _meta_body(collection: str | None, title: str | None, tags: Iterable[str] | None,
                   lang: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if collection is not None:
            if not _COLLECTION_RE.match(collection):
                raise LocalProtocolError(f"bad collection name {collection!r}")
            body["c"] = collection
        if title is not None:
            if len(title) > MAX_TITLE:
                raise LocalProtocolError("title too long")
            body["t"] = title
        if tags is not None:
            tl = list(dict.fromkeys(tags))
            if len(tl) > MAX_TAGS or any(not 0 < len(t) <= MAX_TAG for t in tl):
                raise LocalProtocolError("bad tags")
            body["g"] = tl
        if lang is not None:
            body["l"] = lang[:MAX_LANG]
        return body

    @staticmethod
    def _text_ops(scratch: Doc[Any], current: str, new: str) -> list[tuple[bytes, bytes]]:
        """(sv, update) pairs turning ``current`` into ``new``, each under the op size limit."""
        out: list[tuple[bytes, bytes]] = []
        text = _text_of(scratch)
        for group in _chunk_edits(diff_edits(current, new)):
            sv = scratch.get_state()
            with scratch.transaction():
                current = apply_edits(text, current, group)
            out.append((sv, scratch.get_update(sv)))
        return out

    def prepare_create(self, author: bytes, *, collection: str, title: str, body: str,
                       tags: Iterable[str] = (), lang: str = "") -> list[PreparedOp]:
        """Ops (a ``library.create``, then edits for a long body) of a new document.

        Submit them in order, all with the same document id.
        """
        if len(body) > MAX_BODY_CHARS:
            raise LocalProtocolError("body too long")
        scratch, sv0 = self._scratch(None, author)
        out = self._meta_body(collection, title, tags, lang)
        parts = self._text_ops(scratch, "", body) or [(sv0, scratch.get_update(sv0))]
        out["sv"], out["u"] = parts[0]
        ops = [PreparedOp(KIND_CREATE, encode_body(out))]
        ops += [PreparedOp(KIND_EDIT, encode_body({"sv": sv, "u": u})) for sv, u in parts[1:]]
        return ops

    def prepare_edit(self, doc_id: bytes, author: bytes, *, body: str | None = None,
                     title: str | None = None, tags: Iterable[str] | None = None,
                     lang: str | None = None, collection: str | None = None,
                     reverts: bytes | None = None) -> list[PreparedOp]:
        """``library.edit`` ops changing what is given (None = unchanged); submit in order."""
        st = self._docs.get(doc_id)
        if st is None or not st.created:
            raise LocalProtocolError("no such document here")
        out = self._meta_body(collection, title, tags, lang)
        scratch, sv0 = self._scratch(st, author)
        parts: list[tuple[bytes, bytes]] = []
        if body is not None and body != st.text_cache:
            if len(body) > MAX_BODY_CHARS:
                raise LocalProtocolError("body too long")
            parts = self._text_ops(scratch, st.text_cache, body)
        out["sv"] = sv0
        if parts:
            out["sv"], out["u"] = parts[0]
        if reverts is not None:
            out["r"] = reverts
        ops = [PreparedOp(KIND_EDIT, encode_body(out))]
        ops += [PreparedOp(KIND_EDIT, encode_body({"sv": sv, "u": u})) for sv, u in parts[1:]]
        return ops

    def version_before(self, doc_id: bytes, op_id: bytes) -> DocumentView:
        """The document as it was just before ``op_id`` was applied here."""
        st = self._docs.get(doc_id)
        if st is None or all(op.op_id != op_id for op in st.applied):
            raise LocalProtocolError("no such change in this document")
        old = _DocState(doc_id)
        for op in st.applied:
            if op.op_id == op_id:
                break
            _integrate(old, op, _parse(op))
        return self._view(old)

    def prepare_revert(self, doc_id: bytes, author: bytes, op_id: bytes) -> list[PreparedOp]:
        """The body of a ``library.edit`` op restoring the version from before ``op_id``."""
        old = self.version_before(doc_id, op_id)
        return self.prepare_edit(doc_id, author, body=old.body, title=old.title or None,
                                 tags=old.tags, lang=old.lang or None,
                                 collection=old.collection or None, reverts=op_id)

    @staticmethod
    def prepare_seeded_create(doc_id: bytes, *, collection: str, title: str, body: str,
                              tags: Iterable[str] = (), lang: str = "") -> list[PreparedOp]:
        """Ops of a document whose initial body is *seeded* (see the module docstring).

        Whoever prepares them for the same ``doc_id`` and ``body`` builds the same
        Yjs items: two nodes importing one file end with one copy of its text.
        A long body is a ``library.create`` and ``library.edit`` chunks; submit in order.
        """
        if len(body) > MAX_BODY_CHARS:
            raise LocalProtocolError("body too long")
        meta = Library._meta_body(collection, title, tags, lang)
        h = hashlib.sha256(body.encode("utf-8")).digest()
        chunks: list[str] = []
        rest = body
        while len(rest.encode("utf-8")) > CHUNK_BYTES:
            k = min(len(rest), CHUNK_BYTES // 4)
            while k > 1 and not is_boundary(rest, k):
                k -= 1
            chunks.append(rest[:k])
            rest = rest[k:]
        chunks.append(rest)
        ops: list[PreparedOp] = []
        offset = 0
        for i, chunk in enumerate(chunks):
            if not chunk:  # an empty body: a create with no text at all
                ops.append(PreparedOp(KIND_CREATE, encode_body({**meta, "sv": b"\x00"})))
                break
            part: dict[str, Any] = {"x": chunk, "h": h, "o": offset, "sv": b"\x00"}
            if i == 0:
                part.update(meta)
            ops.append(PreparedOp(KIND_CREATE if i == 0 else KIND_EDIT, encode_body(part)))
            offset += _utf16_len(chunk)
        return ops

    def create_authors(self) -> set[bytes]:
        """Authors of at least one ``library.create`` applied here (legacy import ids need them)."""
        return {h.author for st in self._docs.values() for h in st.history
                if h.kind == KIND_CREATE}

    def version(self) -> dict[str, tuple[str, int]]:
        """Per collection: (digest of its documents' heads, documents), deleted ones included.

        A document's head is the XOR of the op ids applied to it, so two replicas
        holding the same ops have the same digest whatever order they applied them in.
        """
        per: dict[str, list[tuple[bytes, int]]] = {}
        for st in self._docs.values():
            if st.created:
                per.setdefault(st.meta("collection", ""), []).append((st.doc_id, st.head))
        out: dict[str, tuple[str, int]] = {}
        for coll, heads in sorted(per.items()):
            h = hashlib.sha256()
            for doc_id, head in sorted(heads):
                h.update(doc_id + head.to_bytes(16, "big"))
            out[coll] = (h.hexdigest()[:16], len(heads))
        return out

    # -- compaction ----------------------------------------------------------------------

    def compaction_stats(self) -> Iterator[DocStats]:
        """Per document, what ``plan_compaction`` decides on (times as wall ms)."""
        for st in self._docs.values():
            if not st.created:
                continue
            ops = [o for o in st.applied if o.kind != KIND_SNAPSHOT]
            deleted = st.regs.get("deleted")
            yield DocStats(st.doc_id, len(ops), sum(len(o.body) for o in ops),
                           hlc_wall_ms(st.updated_hlc),
                           deleted=bool(deleted and deleted.value),
                           deleted_ms=hlc_wall_ms(deleted.key[0]) if deleted else 0,
                           purged=st.purged)

    def prepare_snapshot(self, doc_id: bytes, *, purge: bool = False,
                         max_size: int = MAX_BODY_SIZE) -> tuple[PreparedOp, int] | None:
        """A ``library.snapshot`` of the document as held here, and how many ops it supersedes.

        Sign it as an unchained op with the expiry ``SNAPSHOT_EXPIRY_MS``.  It covers
        every op applied to the document here (earlier snapshots' ranges included), the
        oldest first as far as ``max_size`` allows; None when even the state and the
        earlier ranges do not fit (the document stays as it is) or when there is nothing
        to supersede.  ``purge`` makes a tombstone of a deleted document (its text dropped).
        """
        st = self._docs.get(doc_id)
        if st is None or not st.created:
            raise LocalProtocolError("no such document here")
        if purge and not st.meta("deleted", False):
            raise LocalProtocolError("only a deleted document becomes a tombstone")
        if self._pending.get(doc_id):
            return None  # ops still wait for what they build on: compact once they apply
        prior = [o for o in st.applied if o.kind == KIND_SNAPSHOT]
        chained = sorted((o for o in st.applied if o.seq), key=lambda o: (o.author, o.seq))
        # runs of consecutive chain positions of this document's ops, per author
        runs: list[tuple[int, bytes, SkipRange, list[bytes]]] = []  # (first hlc, author, ..)
        for o in chained:
            if runs and runs[-1][1] == o.author and runs[-1][2][1] + 1 == o.seq:
                hlc, a, (first, _, _), ids = runs[-1]
                runs[-1] = (hlc, a, (first, o.seq, o.op_id), [*ids, o.op_id])
            else:
                runs.append((o.hlc, o.author, (o.seq, o.seq, o.op_id), [o.op_id]))
        if not runs and len(prior) < 2 and not (purge and not st.purged):
            return None
        runs.sort(key=lambda r: r[0])  # the oldest first, when not all fit
        earlier: list[tuple[bytes, SkipRange]] = []
        for p in prior:
            snap = _parse(p).snap
            assert snap is not None
            earlier.extend(snap.ranges)
        update = b"\x00\x00" if purge else st.ydoc.get_update()
        regs = [[name, reg.value if name != "tags" else list(reg.value), *reg.key]
                for name, reg in sorted(st.regs.items()) if name in _REGISTERS]
        authors = sorted(st.authors)[:MAX_SNAPSHOT_AUTHORS]

        def body(n: int) -> bytes:
            per: dict[bytes, list[SkipRange]] = {}
            for a, r in earlier + [(a, r) for _, a, r, _ in runs[:n]]:
                per.setdefault(a, []).append(r)
            ranges = [[a, *r] for a in sorted(per) for r in merge_ranges((), per[a])]
            ids = [i for run in runs[:n] for i in run[3]]
            return pack({"u": update, "m": regs, "k": ranges,
                                "p": [p.op_id for p in prior], "n": len(ids),
                                "h": _ids_digest(ids), "ch": st.created_hlc,
                                "uh": st.updated_hlc, "a": authors, "z": purge})

        max_size = min(max_size, MAX_BODY_SIZE)
        lo, hi = 0, len(runs)
        if len(body(hi)) > max_size:  # the most runs that fit, by bisection
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if len(body(mid)) <= max_size:
                    lo = mid
                else:
                    hi = mid - 1
            if lo == 0 and len(body(0)) > max_size:
                return None
        return PreparedOp(KIND_SNAPSHOT, body(hi)), sum(len(r[3]) for r in runs[:hi])

    @staticmethod
    def prepare_delete(restore: bool = False) -> PreparedOp:
        """A ``library.delete`` op, or ``library.restore`` with ``restore``."""
        return PreparedOp(KIND_RESTORE if restore else KIND_DELETE, encode_body({}))

