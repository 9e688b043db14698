"""Emergency bulletins from authority keys, and the community's trust configuration.

Theory of operation
-------------------
A community trusts one *root* key.  Its trust configuration lists the
*authority* keys allowed to publish bulletins, each with a role (maker, city,
dealer) and a name.  It starts from a TOML file (``TrustConfig.load``) and is
replaced by ``trust.update`` ops carrying a higher version, whose body is
signed by the root key (and whose envelope is authored by it).

A bulletin (``bulletin.publish``) carries its title, text, issue time and
expiry inside a body signed by the publishing authority, so the expiry cannot
be changed by a relay, and the envelope's ``expiry_ms`` must equal it so that
sync drops the op everywhere once it expires.  The authoriser refuses a
bulletin whose author is not an authority now, whose inner signature fails,
that has expired or lives longer than ``MAX_LIFETIME_MS``.  ``BulletinBoard``
shows only live bulletins of keys still trusted and ``purge`` forgets expired
ones.

The inner signatures do not depend on sync's envelope format: a bulletin can
be checked end to end from its body alone.  Pure core: wall time is passed in
as ``wall_now_ms``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library_replica.ops import (
    AUTHOR_KEY_LEN,
    DOC_ID_LEN,
    LibraryError,
    OpLike,
    Refused,
    body_fields,
    encode_body,
)
from meshd.core.codec import DropCounter, Fields, pack
from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import verify_ed25519

__all__ = [
    "KIND_PUBLISH",
    "KIND_TRUST_UPDATE",
    "MAX_LIFETIME_MS",
    "TRUST_DOC_ID",
    "Authority",
    "AuthorityRole",
    "Bulletin",
    "BulletinBoard",
    "TrustConfig",
    "TrustStore",
    "prepare_bulletin",
    "prepare_trust_update",
]

log = logging.getLogger(__name__)

KIND_PUBLISH = "bulletin.publish"
KIND_TRUST_UPDATE = "trust.update"
TRUST_DOC_ID = hashlib.sha256(b"carmesh/trust/1").digest()[:DOC_ID_LEN]
#: a bulletin lives at most 30 days
MAX_LIFETIME_MS = 30 * 24 * 3600 * 1000
#: tolerated clock skew for an issue time in the future
MAX_SKEW_MS = 5 * 60 * 1000
MAX_TITLE = 200
MAX_TEXT = 8000
MAX_AUTHORITIES = 256
_BULLETIN_DOMAIN = "carmesh/bulletin/1"
_TRUST_DOMAIN = "carmesh/trust/1"

Signer = Callable[[bytes], bytes]


class AuthorityRole(enum.StrEnum):
    MAKER = "maker"
    CITY = "city"
    DEALER = "dealer"


@dataclass(frozen=True, slots=True)
class Authority:
    """A key allowed to publish bulletins, with its role and display name."""

    key: bytes
    role: AuthorityRole
    name: str


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """The community's root key, a version, and its authority keys."""

    root: bytes
    version: int
    authorities: Mapping[bytes, Authority] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, text: str) -> TrustConfig:
        """Parse the trust file; raises ``LibraryError`` on any problem."""
        try:
            data = tomllib.loads(text)
            root = bytes.fromhex(data["root"])
            version = data.get("version", 0)
            auths = [Authority(bytes.fromhex(a["key"]), AuthorityRole(a["role"]),
                               str(a.get("name", ""))) for a in data.get("authority", [])]
        except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError) as exc:
            raise LibraryError(f"trust configuration: {exc}") from None
        if len(root) != AUTHOR_KEY_LEN or type(version) is not int or version < 0:
            raise LibraryError("trust configuration: root is a 32-byte hex key, version an int")
        if any(len(a.key) != AUTHOR_KEY_LEN for a in auths):
            raise LibraryError("trust configuration: authority keys are 32 bytes")
        return cls(root, version, {a.key: a for a in auths})

    @classmethod
    def load(cls, path: Path) -> TrustConfig:
        """Read the trust file at ``path``."""
        return cls.from_toml(path.read_text(encoding="utf-8"))

    def to_toml(self) -> str:
        """The trust file text (``from_toml`` reads it back)."""
        lines = ["# carmesh community trust configuration",
                 f'root = "{self.root.hex()}"', f"version = {self.version}", ""]
        for a in sorted(self.authorities.values(), key=lambda a: (a.role, a.name, a.key)):
            # a JSON string is a valid TOML basic string (same escapes)
            lines += ["[[authority]]", f'key = "{a.key.hex()}"', f'role = "{a.role}"',
                      f"name = {json.dumps(a.name, ensure_ascii=False)}", ""]
        return "\n".join(lines)


def _trust_signed(root: bytes, version: int, auths: list[list[Any]]) -> bytes:
    return pack([_TRUST_DOMAIN, root, version, auths])


def _auth_list(authorities: Iterable[Authority]) -> list[list[Any]]:
    return sorted([a.key, str(a.role), a.name] for a in authorities)


def prepare_trust_update(sign: Signer, root: bytes, version: int,
                         authorities: Iterable[Authority]) -> tuple[bytes, bytes]:
    """(doc_id, body) of a ``trust.update`` op; ``sign`` signs with the root key."""
    auths = _auth_list(authorities)
    if len(auths) > MAX_AUTHORITIES:
        raise LocalProtocolError("too many authorities")
    sig = sign(_trust_signed(root, version, auths))
    return TRUST_DOC_ID, encode_body({"v": version, "a": auths, "sig": sig})


class TrustStore:
    """The current trust configuration, advanced by root-signed ``trust.update`` ops."""

    def __init__(self, config: TrustConfig) -> None:
        self.config = config

    def _parse(self, op: OpLike) -> TrustConfig:
        if op.kind != KIND_TRUST_UPDATE or op.doc_id != TRUST_DOC_ID:
            raise Refused("kind", op.kind)
        if op.author != self.config.root:
            raise Refused("not_root", "trust updates are signed by the root key")
        f = body_fields(op, 64 * 1024)
        try:
            version = f.int("v", 0, 2**53)
            raw = f.list("a", max_len=MAX_AUTHORITIES)
            sig = f.bytes("sig", size=64)
            auths: list[Authority] = []
            for item in raw:
                if type(item) is not list or len(item) != 3:
                    raise DecodeError("field", "authority entry")
                key, role, name = item
                if type(key) is not bytes or len(key) != AUTHOR_KEY_LEN:
                    raise DecodeError("field", "authority key")
                if type(name) is not str or len(name) > MAX_TITLE:
                    raise DecodeError("field", "authority name")
                auths.append(Authority(key, AuthorityRole(role), name))
        except (DecodeError, ValueError) as exc:
            raise Refused("body", str(exc)) from None
        if not verify_ed25519(self.config.root, sig,
                              _trust_signed(self.config.root, version, raw)):
            raise Refused("signature", "trust update not signed by the root key")
        if version <= self.config.version:
            raise Refused("stale", f"version {version} <= {self.config.version}")
        return TrustConfig(self.config.root, version, {a.key: a for a in auths})

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``trust`` namespace: root-signed and newer than what we hold."""
        del wall_now_ms
        self._parse(op)

    def apply(self, op: OpLike) -> bool:
        """Adopt a newer configuration; False if the op is refused (stale, forged)."""
        try:
            self.config = self._parse(op)
        except Refused:
            return False
        return True

    def authority(self, key: bytes) -> Authority | None:
        """The authority entry of ``key``, or None if it is not trusted now."""
        return self.config.authorities.get(key)


@dataclass(frozen=True, slots=True)
class Bulletin:
    """A verified bulletin: who published it (authority), what, when, until when."""

    op_id: bytes
    doc_id: bytes
    author: bytes
    authority: Authority
    title: str
    text: str
    issued_ms: int
    expires_ms: int


def _bulletin_signed(doc_id: bytes, author: bytes, title: str, text: str, issued_ms: int,
                     expires_ms: int) -> bytes:
    return pack([_BULLETIN_DOMAIN, doc_id, author, title, text, issued_ms, expires_ms])


def prepare_bulletin(sign: Signer, author: bytes, doc_id: bytes, *, title: str, text: str,
                     issued_ms: int, expires_ms: int) -> bytes:
    """The body of a ``bulletin.publish`` op (the envelope's ``expiry_ms`` = ``expires_ms``)."""
    if len(title) > MAX_TITLE or len(text) > MAX_TEXT:
        raise LocalProtocolError("bulletin too long")
    if not issued_ms < expires_ms <= issued_ms + MAX_LIFETIME_MS:
        raise LocalProtocolError("expiry must be after issue and within 30 days")
    sig = sign(_bulletin_signed(doc_id, author, title, text, issued_ms, expires_ms))
    return encode_body({"t": title, "b": text, "i": issued_ms, "x": expires_ms, "sig": sig})


class BulletinBoard:
    """Live bulletins: authorises, verifies, lists and purges on expiry."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self._bulletins: dict[bytes, Bulletin] = {}
        self.drops = DropCounter(log)

    def _parse(self, op: OpLike, wall_now_ms: int) -> Bulletin:
        if op.kind != KIND_PUBLISH:
            raise Refused("kind", op.kind)
        authority = self.trust.authority(op.author)
        if authority is None:
            raise Refused("not_authority", "bulletins are published by authority keys only")
        f: Fields = body_fields(op, 32 * 1024)
        try:
            title = f.str("t", max_len=MAX_TITLE)
            text = f.str("b", max_len=MAX_TEXT)
            issued = f.int("i", 0, 2**53)
            expires = f.int("x", 0, 2**53)
            sig = f.bytes("sig", size=64)
        except DecodeError as exc:
            raise Refused("body", str(exc)) from None
        if not verify_ed25519(op.author, sig,
                              _bulletin_signed(op.doc_id, op.author, title, text, issued,
                                               expires)):
            raise Refused("signature", "bulletin body not signed by its author")
        if op.expiry_ms != expires:
            raise Refused("expiry", "envelope expiry differs from the signed expiry")
        if not issued < expires <= issued + MAX_LIFETIME_MS:
            raise Refused("expiry", "lifetime")
        if issued > wall_now_ms + MAX_SKEW_MS:
            raise Refused("future", f"issued {issued - wall_now_ms} ms ahead")
        if expires <= wall_now_ms:
            raise Refused("expired", "")
        return Bulletin(op.op_id, op.doc_id, op.author, authority, title, text, issued, expires)

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``bulletin`` namespace."""
        self._parse(op, wall_now_ms)

    def apply(self, op: OpLike, wall_now_ms: int) -> bool:
        """Keep a valid live bulletin; False (counted, logged once) when refused."""
        try:
            b = self._parse(op, wall_now_ms)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        self._bulletins[b.op_id] = b
        return True

    def active(self, wall_now_ms: int) -> list[Bulletin]:
        """Unexpired bulletins of keys that are authorities now, newest first."""
        live = [b for b in self._bulletins.values()
                if b.expires_ms > wall_now_ms and self.trust.authority(b.author) is not None]
        return sorted(live, key=lambda b: (b.issued_ms, b.op_id), reverse=True)

    def purge(self, wall_now_ms: int) -> list[bytes]:
        """Forget expired bulletins; returns their op ids (for the store to drop too)."""
        gone = [k for k, b in self._bulletins.items() if b.expires_ms <= wall_now_ms]
        for k in gone:
            del self._bulletins[k]
        return gone
