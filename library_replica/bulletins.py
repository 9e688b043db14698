"""Emergency bulletins from authority keys, and the community's trust configuration.

Theory of operation
-------------------
A community trusts one *root* key.  Its trust configuration lists the
*authority* keys allowed to publish bulletins, each with a role (maker, city,
dealer) and a name, the *member* keys its dealers enrolled (cars and phones:
their ops are outside the small pool that unknown authors share in the op
store), plus the keys it *revoked* (a removed authority, a lost or stolen
device: a node refuses a revoked key's new ops and links).  A node pins a root (a
``TrustConfig`` from a TOML file, or only the root's ``fingerprint`` until an
update from that root arrives), and the configuration is then replaced by
``trust.update`` ops carrying a higher version, whose body is signed by the
root key (and whose envelope is authored by it).  An update is a whole
configuration, so a node that missed versions needs only the newest.  Updates
the root's tool makes are ephemeral ops (an expiry, outside the key's chain):
an offline root used from any node can never fork its chain.

A bulletin (``bulletin.publish``) carries its title, text, issue time and
expiry inside a body signed by the publishing authority, so the expiry cannot
be changed by a relay, and the envelope's ``expiry_ms`` must equal it so that
sync drops the op everywhere once it expires.  The body also names the
community root it speaks for and the trust version at which its author is an
authority: a node at that version or later decides for itself, a node behind
(or with no trust at all) cannot.

Verdicts (``BulletinBoard.classify``, ``TrustStore.classify``):

* a body that does not verify against its author, or expired, or malformed,
  is refused everywhere, trust or no trust (a forgery stops at the first hop);
* a bulletin of an authority of our root is shown; of a revoked key, or of a
  key that is no authority at a version we hold, refused;
* anything else that verifies (no root pinned, another community, a version
  ahead of ours) is *carried*: stored and forwarded, never shown, checked
  again when trust changes (``library_replica.carried.CarriedPool`` bounds it);
* a root-signed update newer than ours is adopted; an older one of our root is
  kept (it is harmless, and refusing it would make every peer offer it again).

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

from library_replica.keycerts import (
    KIND_MEMBER,
    KeyRegistry,
    KeyStatement,
    MemberCertificate,
    Rank,
    parse_key_statement,
    parse_member_certificate,
)
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
    "FINGERPRINT_LEN",
    "KIND_PUBLISH",
    "KIND_TRUST_UPDATE",
    "MAX_LIFETIME_MS",
    "MAX_MEMBERS",
    "TRUST_DOC_ID",
    "TRUST_UPDATE_LIFETIME_MS",
    "Authority",
    "AuthorityRole",
    "Bulletin",
    "BulletinBoard",
    "TrustConfig",
    "TrustStore",
    "TrustVerdict",
    "fingerprint",
    "format_fingerprint",
    "parse_fingerprint",
    "parse_trust_update",
    "prepare_bulletin",
    "prepare_trust_update",
]

log = logging.getLogger(__name__)

KIND_PUBLISH = "bulletin.publish"
KIND_TRUST_UPDATE = "trust.update"
TRUST_DOC_ID = hashlib.sha256(b"carmesh/trust/1").digest()[:DOC_ID_LEN]
#: a bulletin lives at most 30 days
MAX_LIFETIME_MS = 30 * 24 * 3600 * 1000
#: the envelope expiry of a trust update the root's tool publishes (nodes keep the adopted
#: configuration in their state directory; the op itself only has to reach them)
TRUST_UPDATE_LIFETIME_MS = 365 * 24 * 3600 * 1000
#: tolerated clock skew for an issue time in the future
MAX_SKEW_MS = 5 * 60 * 1000
MAX_TITLE = 200
MAX_TEXT = 8000
MAX_AUTHORITIES = 256
MAX_REVOKED = 4096
#: members a configuration lists (a whole update must fit in one op body: 60 kB)
MAX_MEMBERS = 1024
MAX_COMMUNITY = 100
#: bytes of SHA-256 a root fingerprint keeps (128 bits: read aloud, typed at a dealer)
FINGERPRINT_LEN = 16
_BULLETIN_DOMAIN = "carmesh/bulletin/2"
_TRUST_DOMAIN = "carmesh/trust/2"
_FINGERPRINT_DOMAIN = b"carmesh/root/1\x00"

Signer = Callable[[bytes], bytes]


class AuthorityRole(enum.StrEnum):
    MAKER = "maker"
    CITY = "city"
    DEALER = "dealer"


def fingerprint(root: bytes) -> bytes:
    """The fingerprint of a community root key (what ``trust join FINGERPRINT`` pins)."""
    return hashlib.sha256(_FINGERPRINT_DOMAIN + root).digest()[:FINGERPRINT_LEN]


def format_fingerprint(fp: bytes) -> str:
    """A fingerprint for people: eight groups of four hex digits joined by ``-``."""
    h = fp.hex()
    return "-".join(h[i : i + 4] for i in range(0, len(h), 4))


def parse_fingerprint(text: str) -> tuple[bytes, bytes | None]:
    """``(fingerprint, root or None)`` from a fingerprint (any grouping) or a 64-hex root key.

    Raises ``LibraryError`` when it is neither.
    """
    h = "".join(c for c in text.strip().lower() if c not in "-: ")
    try:
        raw = bytes.fromhex(h)
    except ValueError:
        raise LibraryError("a fingerprint is 32 hex digits (a root key 64)") from None
    if len(raw) == AUTHOR_KEY_LEN:
        return fingerprint(raw), raw
    if len(raw) != FINGERPRINT_LEN:
        raise LibraryError("a fingerprint is 32 hex digits (a root key 64)")
    return raw, None


@dataclass(frozen=True, slots=True)
class Authority:
    """A key allowed to publish bulletins, with its role and display name."""

    key: bytes
    role: AuthorityRole
    name: str


@dataclass(frozen=True, slots=True)
class TrustConfig:
    """The community's root key, a version, its authority and member keys, the keys it revoked."""

    root: bytes
    version: int
    authorities: Mapping[bytes, Authority] = field(default_factory=dict)
    community: str = ""
    revoked: frozenset[bytes] = frozenset()
    members: frozenset[bytes] = frozenset()

    @classmethod
    def from_toml(cls, text: str) -> TrustConfig:
        """Parse the trust file; raises ``LibraryError`` on any problem."""
        try:
            data = tomllib.loads(text)
            root = bytes.fromhex(data["root"])
            version = data.get("version", 0)
            community = data.get("community", "")
            auths = [Authority(bytes.fromhex(a["key"]), AuthorityRole(a["role"]),
                               str(a.get("name", ""))) for a in data.get("authority", [])]
            revoked = [bytes.fromhex(k) for k in data.get("revoked", [])]
            members = [bytes.fromhex(k) for k in data.get("members", [])]
        except (tomllib.TOMLDecodeError, KeyError, ValueError, TypeError,
                AttributeError) as exc:
            raise LibraryError(f"trust configuration: {exc}") from None
        if len(root) != AUTHOR_KEY_LEN or type(version) is not int or not 0 <= version < 2**53:
            raise LibraryError("trust configuration: root is a 32-byte hex key, version an int")
        if any(len(a.key) != AUTHOR_KEY_LEN for a in auths) or \
                any(len(k) != AUTHOR_KEY_LEN for k in revoked + members):
            raise LibraryError("trust configuration: authority keys are 32 bytes")
        if type(community) is not str or len(community) > MAX_COMMUNITY:
            raise LibraryError("trust configuration: community is a short name")
        if (len(auths) > MAX_AUTHORITIES or len(revoked) > MAX_REVOKED
                or len(members) > MAX_MEMBERS):
            raise LibraryError("trust configuration: too many keys")
        return cls(root, version, {a.key: a for a in auths}, community, frozenset(revoked),
                   frozenset(members))

    @classmethod
    def load(cls, path: Path) -> TrustConfig:
        """Read the trust file at ``path``."""
        return cls.from_toml(path.read_text(encoding="utf-8"))

    def to_toml(self) -> str:
        """The trust file text (``from_toml`` reads it back)."""
        lines = ["# carmesh community trust configuration (enrolment file)",
                 f"# root fingerprint {format_fingerprint(fingerprint(self.root))}",
                 f'root = "{self.root.hex()}"', f"version = {self.version}"]
        if self.community:
            # a JSON string is a valid TOML basic string (same escapes)
            lines.append(f"community = {json.dumps(self.community, ensure_ascii=False)}")
        if self.revoked:
            lines.append("revoked = [" + ", ".join(f'"{k.hex()}"' for k in sorted(self.revoked))
                         + "]")
        if self.members:
            lines.append("members = [" + ", ".join(f'"{k.hex()}"' for k in sorted(self.members))
                         + "]")
        lines.append("")
        for a in sorted(self.authorities.values(), key=lambda a: (a.role, a.name, a.key)):
            lines += ["[[authority]]", f'key = "{a.key.hex()}"', f'role = "{a.role}"',
                      f"name = {json.dumps(a.name, ensure_ascii=False)}", ""]
        return "\n".join(lines)


def _trust_signed(root: bytes, version: int, auths: list[list[Any]], revoked: list[bytes],
                  community: str, members: list[bytes]) -> bytes:
    # members are signed only when there are some: updates made before members existed verify
    tail: list[Any] = [members] if members else []
    return pack([_TRUST_DOMAIN, root, version, auths, revoked, community, *tail])


def _auth_list(authorities: Iterable[Authority]) -> list[list[Any]]:
    return sorted([a.key, str(a.role), a.name] for a in authorities)


def prepare_trust_update(sign: Signer, root: bytes, version: int,
                         authorities: Iterable[Authority], *, revoked: Iterable[bytes] = (),
                         community: str = "",
                         members: Iterable[bytes] = ()) -> tuple[bytes, bytes]:
    """(doc_id, body) of a ``trust.update`` op; ``sign`` signs with the root key."""
    auths = _auth_list(authorities)
    rev = sorted(set(revoked))
    mem = sorted(set(members) - set(rev))
    if len(auths) > MAX_AUTHORITIES or len(rev) > MAX_REVOKED or len(mem) > MAX_MEMBERS:
        raise LocalProtocolError("too many authorities, members or revoked keys")
    if len(community) > MAX_COMMUNITY:
        raise LocalProtocolError("community name too long")
    if not 0 < version < 2**53:
        raise LocalProtocolError("version out of range")
    sig = sign(_trust_signed(root, version, auths, rev, community, mem))
    fields: dict[str, Any] = {"v": version, "a": auths, "r": rev, "n": community, "sig": sig}
    if mem:
        fields["m"] = mem
    return TRUST_DOC_ID, encode_body(fields)


def parse_trust_update(op: OpLike) -> TrustConfig:
    """The configuration inside a ``trust.update``, verified against its author as the root.

    Raises ``Refused`` (kind, body, signature): such an op is refused everywhere.
    """
    if op.kind != KIND_TRUST_UPDATE or op.doc_id != TRUST_DOC_ID:
        raise Refused("kind", op.kind)
    f = body_fields(op, 300 * 1024)
    try:
        version = f.int("v", 0, 2**53)
        raw = f.list("a", max_len=MAX_AUTHORITIES)
        rev = f.list("r", max_len=MAX_REVOKED)
        community = f.str("n", max_len=MAX_COMMUNITY)
        sig = f.bytes("sig", size=64)
        try:
            mem = f.list("m", max_len=MAX_MEMBERS)
        except DecodeError as exc:
            if exc.reason != "missing":  # an update with no members has no "m"
                raise
            mem = []
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
        if any(type(k) is not bytes or len(k) != AUTHOR_KEY_LEN for k in rev + mem):
            raise DecodeError("field", "revoked or member key")
    except (DecodeError, ValueError) as exc:
        raise Refused("body", str(exc)) from None
    if not verify_ed25519(op.author, sig,
                          _trust_signed(op.author, version, raw, rev, community, mem)):
        raise Refused("signature", "trust update not signed by its root key")
    return TrustConfig(op.author, version, {a.key: a for a in auths}, community, frozenset(rev),
                       frozenset(mem))


class TrustVerdict(enum.Enum):
    """What a node does with a ``trust.update`` that verifies."""

    ADOPT = "adopt"  #: our root, newer than ours
    STALE = "stale"  #: our root, not newer: kept, not applied
    CARRY = "carry"  #: not checkable here (no root pinned, another community)


class TrustStore:
    """The pinned root and current trust configuration, advanced by root-signed updates.

    ``config`` is None while no configuration is known: nothing pinned, or only a root
    fingerprint (``pinned``) until an update from that root arrives.
    """

    def __init__(self, config: TrustConfig | None = None, *,
                 pinned: bytes | None = None) -> None:
        self.config = config
        self.pinned = fingerprint(config.root) if config is not None else pinned
        #: dealers' member certificates and verified key statements (revocations, successors)
        self.keys = KeyRegistry()

    @property
    def root(self) -> bytes | None:
        """The pinned root key, when known."""
        return self.config.root if self.config is not None else None

    @property
    def version(self) -> int:
        """The version held (0 with no configuration)."""
        return self.config.version if self.config is not None else 0

    def classify(self, op: OpLike) -> tuple[TrustVerdict, TrustConfig]:
        """The verdict on a trust update; raises ``Refused`` for a forged or malformed one."""
        config = parse_trust_update(op)
        if self.pinned is None or fingerprint(config.root) != self.pinned:
            return TrustVerdict.CARRY, config
        if config.version > self.version:
            return TrustVerdict.ADOPT, config
        return TrustVerdict.STALE, config

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``trust`` namespace when nothing is carried (see the module doc)."""
        del wall_now_ms
        verdict, _ = self.classify(op)
        if verdict is TrustVerdict.CARRY:
            raise Refused("not_root", "trust updates are signed by the pinned root key")

    def apply(self, op: OpLike) -> bool:
        """Adopt a newer configuration of our root; False otherwise (stale, foreign, forged)."""
        try:
            verdict, config = self.classify(op)
        except Refused:
            return False
        if verdict is not TrustVerdict.ADOPT:
            return False
        self.config = config
        return True

    def pin(self, config: TrustConfig) -> bool:
        """Join with an enrolment file; True if the configuration changed.

        Raises ``LibraryError`` when another root is pinned already.
        """
        if self.pinned is not None and fingerprint(config.root) != self.pinned:
            raise LibraryError("this node is pinned to another community root")
        if self.config is not None and config.version <= self.config.version:
            return False
        self.config = config
        self.pinned = fingerprint(config.root)
        return True

    def pin_fingerprint(self, fp: bytes) -> bool:
        """Join by root fingerprint; True if it changed.  Raises ``LibraryError`` on a conflict."""
        if self.pinned is not None:
            if self.pinned != fp:
                raise LibraryError("this node is pinned to another community root")
            return False
        self.pinned = fp
        return True

    def authority(self, key: bytes) -> Authority | None:
        """The authority entry of ``key``, or None if it is not trusted now."""
        if self.config is None or self.revoked(key):
            return None
        return self.config.authorities.get(key)

    def dealer(self, key: bytes) -> bool:
        """True for a dealer authority of our configuration (not revoked)."""
        a = self.authority(key)
        return a is not None and a.role is AuthorityRole.DEALER

    def revoked(self, key: bytes) -> bool:
        """True when our configuration or a verified key statement revoked ``key``."""
        return (self.config is not None and key in self.config.revoked) or self.keys.revoked(key)

    def member(self, key: bytes) -> bool:
        """True for a member key (not revoked): the root, an authority, a listed member, a key
        a current dealer certified, or the successor of a member."""
        if self.config is None or self.revoked(key):
            return False
        return self._enrolled(key)

    def _enrolled(self, key: bytes) -> bool:
        c = self.config
        assert c is not None
        seen: set[bytes] = set()
        while key not in seen:  # the predecessor chain is bounded and acyclic (KeyRegistry)
            seen.add(key)
            if key == c.root or key in c.authorities or key in c.members:
                return True
            if any(self.dealer(d) for d in self.keys.dealers_of(key)):
                return True
            pred = self.keys.predecessor(key)
            if pred is None:
                return False
            key = pred
        return False

    def enrols(self) -> bool:
        """True when the community enrols members (a members list or a dealer certificate)."""
        return self.config is not None and (bool(self.config.members)
                                            or self.keys.has_certificates())

    def classify_key(self, op: OpLike) -> tuple[TrustVerdict, MemberCertificate | KeyStatement,
                                                 Rank | None]:
        """The verdict on a ``trust.member`` or ``trust.revoke`` op: ``ADOPT`` (with the
        statement's rank) or ``CARRY`` (cannot be checked here yet); raises ``Refused`` for a
        forged one, or one whose signer may not make it."""
        c = self.config
        if op.kind == KIND_MEMBER:
            cert = parse_member_certificate(op)
            if c is None or cert.root != c.root:
                return TrustVerdict.CARRY, cert, None
            if self.dealer(cert.dealer):
                return TrustVerdict.ADOPT, cert, None
            if cert.trust_version > c.version:
                return TrustVerdict.CARRY, cert, None
            raise Refused("not_dealer", "members are enrolled by dealer authorities")
        st = parse_key_statement(op)
        if st.signer == st.subject:
            return TrustVerdict.ADOPT, st, Rank.SELF  # made in advance by the key's owner
        if self.pinned is not None and fingerprint(st.signer) == self.pinned:
            return TrustVerdict.ADOPT, st, Rank.ROOT
        if c is None:
            return TrustVerdict.CARRY, st, None
        if self.dealer(st.signer):
            if st.signer in self.keys.dealers_of(st.subject):
                return TrustVerdict.ADOPT, st, Rank.DEALER
            return TrustVerdict.CARRY, st, None  # its certificate may still be on the way
        raise Refused("not_owner", "a key is revoked by itself, the root, or its dealer")

    def take_key(self, op: OpLike) -> bool | None:
        """Keep a verified certificate or statement: True if it changed the registry, False if
        not, None when it is carried (cannot be checked yet); raises ``Refused``."""
        verdict, item, rank = self.classify_key(op)
        if verdict is TrustVerdict.CARRY:
            return None
        if isinstance(item, MemberCertificate):
            return self.keys.add_certificate(item)
        assert rank is not None
        return self.keys.add_statement(item, rank)


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
                     expires_ms: int, root: bytes, trust_version: int) -> bytes:
    return pack([_BULLETIN_DOMAIN, doc_id, author, title, text, issued_ms, expires_ms, root,
                 trust_version])


def prepare_bulletin(sign: Signer, author: bytes, doc_id: bytes, *, title: str, text: str,
                     issued_ms: int, expires_ms: int, root: bytes, trust_version: int) -> bytes:
    """The body of a ``bulletin.publish`` op (the envelope's ``expiry_ms`` = ``expires_ms``).

    ``root`` is the community root the author is an authority of, since ``trust_version``.
    """
    if len(title) > MAX_TITLE or len(text) > MAX_TEXT:
        raise LocalProtocolError("bulletin too long")
    if not issued_ms < expires_ms <= issued_ms + MAX_LIFETIME_MS:
        raise LocalProtocolError("expiry must be after issue and within 30 days")
    if len(root) != AUTHOR_KEY_LEN or not 0 <= trust_version < 2**53:
        raise LocalProtocolError("root is a 32-byte key, trust_version an int")
    sig = sign(_bulletin_signed(doc_id, author, title, text, issued_ms, expires_ms, root,
                                trust_version))
    return encode_body({"t": title, "b": text, "i": issued_ms, "x": expires_ms, "r": root,
                        "tv": trust_version, "sig": sig})


class BulletinBoard:
    """Live bulletins: classifies (show, carry, refuse), lists and purges on expiry."""

    def __init__(self, trust: TrustStore) -> None:
        self.trust = trust
        self._bulletins: dict[bytes, Bulletin] = {}
        self.drops = DropCounter(log)

    def classify(self, op: OpLike, wall_now_ms: int) -> Bulletin | None:
        """The bulletin to show, or None to carry it unverified; raises ``Refused``."""
        if op.kind != KIND_PUBLISH:
            raise Refused("kind", op.kind)
        f: Fields = body_fields(op, 32 * 1024)
        try:
            title = f.str("t", max_len=MAX_TITLE)
            text = f.str("b", max_len=MAX_TEXT)
            issued = f.int("i", 0, 2**53)
            expires = f.int("x", 0, 2**53)
            root = f.bytes("r", size=AUTHOR_KEY_LEN)
            tv = f.int("tv", 0, 2**53)
            sig = f.bytes("sig", size=64)
        except DecodeError as exc:
            raise Refused("body", str(exc)) from None
        if not verify_ed25519(op.author, sig, _bulletin_signed(
                op.doc_id, op.author, title, text, issued, expires, root, tv)):
            raise Refused("signature", "bulletin body not signed by its author")
        if op.expiry_ms != expires:
            raise Refused("expiry", "envelope expiry differs from the signed expiry")
        if not issued < expires <= issued + MAX_LIFETIME_MS:
            raise Refused("expiry", "lifetime")
        if issued > wall_now_ms + MAX_SKEW_MS:
            raise Refused("future", f"issued {issued - wall_now_ms} ms ahead")
        if expires <= wall_now_ms:
            raise Refused("expired", "")
        if self.trust.root is None or root != self.trust.root:
            return None  # no trust here, or another community's: carry it
        if self.trust.revoked(op.author):
            raise Refused("revoked", "the community revoked this key")
        authority = self.trust.authority(op.author)
        if authority is not None:
            return Bulletin(op.op_id, op.doc_id, op.author, authority, title, text, issued,
                            expires)
        if tv > self.trust.version:
            return None  # it relies on a trust version we do not have yet
        raise Refused("not_authority", "bulletins are published by authority keys only")

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``bulletin`` namespace when nothing is carried."""
        if self.classify(op, wall_now_ms) is None:
            raise Refused("not_authority", "cannot verify the publishing authority here")

    def apply(self, op: OpLike, wall_now_ms: int) -> bool:
        """Keep a valid live bulletin to show; False (refusals counted, logged once) otherwise."""
        try:
            b = self.classify(op, wall_now_ms)
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        if b is None:
            return False
        self._bulletins[b.op_id] = b
        return True

    def add(self, b: Bulletin) -> None:
        """Keep a bulletin ``classify`` verified."""
        self._bulletins[b.op_id] = b

    def drop_untrusted(self) -> list[bytes]:
        """Forget bulletins whose author is no authority now (revoked, removed); their op ids."""
        gone = [k for k, b in self._bulletins.items() if self.trust.authority(b.author) is None]
        for k in gone:
            del self._bulletins[k]
        return gone

    def active(self, wall_now_ms: int) -> list[Bulletin]:
        """Unexpired bulletins of keys that are authorities now, newest first."""
        live = [b for b in self._bulletins.values()
                if b.expires_ms > wall_now_ms and self.trust.authority(b.author) is not None]
        return sorted(live, key=lambda b: (b.issued_ms, b.op_id), reverse=True)

    def next_expiry_ms(self) -> int | None:
        """When ``purge`` next has something to forget (None: nothing held)."""
        return min((b.expires_ms for b in self._bulletins.values()), default=None)

    def purge(self, wall_now_ms: int) -> list[bytes]:
        """Forget expired bulletins; returns their op ids (for the store to drop too)."""
        gone = [k for k, b in self._bulletins.items() if b.expires_ms <= wall_now_ms]
        for k in gone:
            del self._bulletins[k]
        return gone
