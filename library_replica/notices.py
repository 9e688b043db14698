"""Bulletins that behave like notices: updates, retractions and receipts.

Theory of operation
-------------------
A bulletin (``bulletin.publish``, see ``bulletins``) is version 1 of a notice
whose id is the bulletin's document id.  Its publisher may later sign

* ``bulletin.update``: the same document id, a higher version ``v``, a new
  title, text and expiry — the notice shows the highest version everywhere;
* ``bulletin.retract``: the same document id and a version ``v``: the notice
  is hidden everywhere once a retraction at least as new as the newest update
  is known (a retraction wins a tie).

Both carry their content inside a body signed by the publishing authority (the
same construction as a bulletin: a relay can change nothing), the envelope's
``expiry_ms`` equals the signed expiry, and only the author of the original
bulletin changes it: an update or retraction by another key is kept but never
shown.  Ops may arrive in any order; the state is a per-(notice, author)
maximum, so every order gives the same result.

Receipts: a node that shows a bulletin writes one ``bulletin.seen`` op (empty
body, the document id of the notice, the notice's expiry): a grow-only set of
node keys per notice, carried by sync like everything else and dropped with
the notice.  The number of distinct keys is the notice's *reach* ("reached N
nodes").  Anyone may write a receipt: the figure counts keys, not verified
people.

Pure core: wall time is passed in as ``wall_now_ms``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from library_replica.bulletins import (
    MAX_LIFETIME_MS,
    MAX_SKEW_MS,
    MAX_TEXT,
    MAX_TITLE,
    Bulletin,
    Signer,
    TrustStore,
)
from library_replica.ops import OpLike, Refused, body_fields, encode_body
from meshd.core.codec import DropCounter, pack
from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import verify_ed25519

__all__ = [
    "KIND_RETRACT",
    "KIND_SEEN",
    "KIND_UPDATE",
    "NOTICE_KINDS",
    "Notice",
    "NoticeBoard",
    "prepare_retract",
    "prepare_seen",
    "prepare_update",
]

log = logging.getLogger(__name__)

KIND_UPDATE = "bulletin.update"
KIND_RETRACT = "bulletin.retract"
KIND_SEEN = "bulletin.seen"
NOTICE_KINDS = frozenset({KIND_UPDATE, KIND_RETRACT, KIND_SEEN})
MAX_VERSION = 2**31
_UPDATE_DOMAIN = "carmesh/bulletin-update/1"
_RETRACT_DOMAIN = "carmesh/bulletin-retract/1"
_EMPTY = pack({})


@dataclass(frozen=True, slots=True)
class Notice:
    """A bulletin as shown now: its newest version, and how many nodes showed it."""

    bulletin: Bulletin
    version: int
    reached: int


@dataclass(frozen=True, slots=True)
class _Change:
    version: int
    retract: bool
    title: str
    text: str
    issued_ms: int
    expires_ms: int

    def rank(self) -> tuple[int, bool]:
        return (self.version, self.retract)  # a retraction wins a tie


def _update_signed(doc_id: bytes, author: bytes, version: int, title: str, text: str,
                   issued_ms: int, expires_ms: int) -> bytes:
    return pack([_UPDATE_DOMAIN, doc_id, author, version, title, text, issued_ms, expires_ms])


def _retract_signed(doc_id: bytes, author: bytes, version: int, issued_ms: int,
                    expires_ms: int) -> bytes:
    return pack([_RETRACT_DOMAIN, doc_id, author, version, issued_ms, expires_ms])


def _check_times(issued: int, expires: int) -> None:
    if not issued < expires <= issued + MAX_LIFETIME_MS:
        raise LocalProtocolError("expiry must be after issue and within 30 days")


def prepare_update(sign: Signer, author: bytes, doc_id: bytes, *, version: int, title: str,
                   text: str, issued_ms: int, expires_ms: int) -> bytes:
    """The body of a ``bulletin.update`` op (envelope ``expiry_ms`` = ``expires_ms``)."""
    if len(title) > MAX_TITLE or len(text) > MAX_TEXT:
        raise LocalProtocolError("bulletin too long")
    if not 2 <= version < MAX_VERSION:
        raise LocalProtocolError("version out of range")
    _check_times(issued_ms, expires_ms)
    sig = sign(_update_signed(doc_id, author, version, title, text, issued_ms, expires_ms))
    return encode_body({"v": version, "t": title, "b": text, "i": issued_ms, "x": expires_ms,
                        "sig": sig})


def prepare_retract(sign: Signer, author: bytes, doc_id: bytes, *, version: int,
                    issued_ms: int, expires_ms: int) -> bytes:
    """The body of a ``bulletin.retract`` op (envelope ``expiry_ms`` = ``expires_ms``)."""
    if not 2 <= version < MAX_VERSION:
        raise LocalProtocolError("version out of range")
    _check_times(issued_ms, expires_ms)
    sig = sign(_retract_signed(doc_id, author, version, issued_ms, expires_ms))
    return encode_body({"v": version, "i": issued_ms, "x": expires_ms, "sig": sig})


def prepare_seen() -> bytes:
    """The body of a ``bulletin.seen`` receipt (envelope: the notice's id and expiry)."""
    return encode_body({})


class NoticeBoard:
    """Versions, retractions and receipts of bulletins (see the module docstring)."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        #: (notice id, author) -> newest change
        self._changes: dict[tuple[bytes, bytes], _Change] = {}
        #: notice id -> (keys that showed it, latest expiry of their receipts)
        self._seen: dict[bytes, tuple[set[bytes], int]] = {}
        self.drops = DropCounter(log)

    def _parse(self, op: OpLike, wall_now_ms: int) -> _Change | None:
        if op.kind not in NOTICE_KINDS:
            raise Refused("kind", op.kind)
        if op.kind == KIND_SEEN:
            body_fields(op, 256)  # id and key lengths, a well-formed body
            if op.body != _EMPTY:
                raise Refused("body", "a receipt has an empty body")
            exp = op.expiry_ms
            if exp is None or not wall_now_ms < exp <= wall_now_ms + MAX_LIFETIME_MS:
                raise Refused("expiry", "receipt expiry")
            return None
        if self.trust.authority(op.author) is None:
            raise Refused("not_authority", "bulletins are changed by authority keys only")
        f = body_fields(op, 32 * 1024)
        try:
            version = f.int("v", 2, MAX_VERSION - 1)
            issued = f.int("i", 0, 2**53)
            expires = f.int("x", 0, 2**53)
            sig = f.bytes("sig", size=64)
            if op.kind == KIND_UPDATE:
                title = f.str("t", max_len=MAX_TITLE)
                text = f.str("b", max_len=MAX_TEXT)
                signed = _update_signed(op.doc_id, op.author, version, title, text, issued,
                                        expires)
            else:
                title = text = ""
                signed = _retract_signed(op.doc_id, op.author, version, issued, expires)
        except DecodeError as exc:
            raise Refused("body", str(exc)) from None
        if not verify_ed25519(op.author, sig, signed):
            raise Refused("signature", "bulletin change not signed by its author")
        if op.expiry_ms != expires:
            raise Refused("expiry", "envelope expiry differs from the signed expiry")
        if not issued < expires <= issued + MAX_LIFETIME_MS:
            raise Refused("expiry", "lifetime")
        if issued > wall_now_ms + MAX_SKEW_MS:
            raise Refused("future", f"issued {issued - wall_now_ms} ms ahead")
        if expires <= wall_now_ms:
            raise Refused("expired", "")
        return _Change(version, op.kind == KIND_RETRACT, title, text, issued, expires)

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the notice kinds of the ``bulletin`` namespace."""
        self._parse(op, wall_now_ms)

    def apply(self, op: OpLike, wall_now_ms: int) -> bool:
        """Keep a valid change or receipt; False (counted, logged once) when refused."""
        try:
            change = self._parse(op, wall_now_ms)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        if change is None:
            keys, exp = self._seen.get(op.doc_id, (set(), 0))
            keys.add(op.author)
            self._seen[op.doc_id] = (keys, max(exp, op.expiry_ms or 0))
            return True
        key = (op.doc_id, op.author)
        cur = self._changes.get(key)
        if cur is None or change.rank() > cur.rank():
            self._changes[key] = change
        return True

    def seen_by(self, doc_id: bytes, key: bytes) -> bool:
        """True once ``key`` wrote a receipt for the notice ``doc_id``."""
        entry = self._seen.get(doc_id)
        return entry is not None and key in entry[0]

    def latest_version(self, b: Bulletin) -> int:
        """The newest version (update or retraction) of ``b`` known here (1: none)."""
        cur = self._changes.get((b.doc_id, b.author))
        return cur.version if cur is not None else 1

    def show(self, bulletins: list[Bulletin], wall_now_ms: int) -> list[Notice]:
        """The live bulletins as notices: newest versions, retracted and expired ones left out."""
        out: list[Notice] = []
        for b in bulletins:
            cur = self._changes.get((b.doc_id, b.author))
            version = 1
            if cur is not None:
                if cur.retract:
                    continue
                if cur.expires_ms <= wall_now_ms:
                    continue
                b = replace(b, title=cur.title, text=cur.text, issued_ms=cur.issued_ms,
                            expires_ms=cur.expires_ms)
                version = cur.version
            keys = self._seen.get(b.doc_id)
            out.append(Notice(b, version, len(keys[0]) if keys else 0))
        return out

    def retracted(self, b: Bulletin) -> bool:
        """True when the newest change of ``b`` is a retraction."""
        cur = self._changes.get((b.doc_id, b.author))
        return cur is not None and cur.retract

    def next_expiry_ms(self) -> int | None:
        """When ``purge`` next has something to forget (None: nothing held)."""
        return min([*(c.expires_ms for c in self._changes.values()),
                    *(exp for _, exp in self._seen.values())], default=None)

    def purge(self, wall_now_ms: int) -> None:
        """Forget expired changes and receipts."""
        for key in [k for k, c in self._changes.items() if c.expires_ms <= wall_now_ms]:
            del self._changes[key]
        for doc in [d for d, (_, exp) in self._seen.items() if exp <= wall_now_ms]:
            del self._seen[doc]
