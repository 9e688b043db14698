"""Member certificates from dealers, and key statements: revocations and successors.

Theory of operation
-------------------
Two signed statements about node keys travel in the ``trust`` namespace beside
the root's ``trust.update``.  Like a bulletin, each is checked from its body
alone: the op's envelope is authored by whichever node published it.

* A *member certificate* (``trust.member``) is a dealer authority's signature
  over (member key, community root, trust version, issue time): the dealer desk
  enrols a car or a phone with its own key, not the root's.  A node counts the
  certificate while its dealer is a dealer authority of the configuration it
  holds (``TrustStore.member``): removing or revoking the dealer ends the
  memberships it granted (``meshctl trust authority remove`` of a dealer, without
  ``--revoke``, copies them into the root-signed members list first).

* A *key statement* (``trust.revoke``) revokes its ``subject`` key, and may
  name a ``successor``: the key of the device that carries on the subject's
  person record.  It is signed by the subject itself (made in advance, at the
  dealer or at setup, and kept offline by the owner: whoever holds it is the
  *owner* of the key, the way a PGP revocation certificate works), by the
  community root, or by a dealer authority holding a certificate for the
  subject (a dealer revokes and re-enrols the members it enrolled).  A
  revocation cannot be taken back: a node that verified one refuses the key's
  new ops and links (``KeyRegistry.revoked``).

Successors rank by signer: root over dealer over the key itself.  When the
highest rank names two different successors (a thief holding the old key signs
one too) the record is *contested* and continued by nobody until a higher rank
(the dealer, seeing the owner in person) names one.  ``KeyRegistry.person``
follows successors back to the first key: readers merge the records of one
person (``SituationBoard`` with ``person``).  Pure core: no I/O, no clock.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from library_replica.ops import (
    AUTHOR_KEY_LEN,
    DOC_ID_LEN,
    OpLike,
    Refused,
    body_fields,
    encode_body,
)
from meshd.core.codec import pack
from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import verify_ed25519

__all__ = [
    "KIND_MEMBER",
    "KIND_REVOKE",
    "MAX_CHAIN",
    "STATEMENT_LIFETIME_MS",
    "KeyRegistry",
    "KeyStatement",
    "MemberCertificate",
    "Rank",
    "member_doc_id",
    "parse_key_statement",
    "parse_member_certificate",
    "prepare_key_statement",
    "prepare_member_certificate",
    "statement_doc_id",
]

KIND_MEMBER = "trust.member"
KIND_REVOKE = "trust.revoke"
#: the envelope expiry a node gives a statement it publishes (ephemeral, like trust updates;
#: the root's next ``trust.update`` folds revocations into its signed configuration)
STATEMENT_LIFETIME_MS = 365 * 24 * 3600 * 1000
#: successors followed back at most (a person's chain of devices)
MAX_CHAIN = 16
#: certificates and statements a registry holds at most (each op is also in the bounded store)
MAX_CERTS = 65536
MAX_STATEMENTS = 16384
#: distinct statements about one subject kept (a thief cannot grow one subject's list)
MAX_PER_SUBJECT = 8
_MEMBER_DOMAIN = "carmesh/member/1"
_STATEMENT_DOMAIN = "carmesh/revoke/1"

Signer = Callable[[bytes], bytes]


class Rank(enum.IntEnum):
    """Who signed a key statement (a higher rank's successor wins)."""

    SELF = 1  #: the subject key itself, made in advance by its owner
    DEALER = 2  #: the dealer authority that enrolled the subject
    ROOT = 3  #: the community root


def member_doc_id(member: bytes) -> bytes:
    """The document id of the certificates for ``member``."""
    return hashlib.sha256(b"carmesh/member/1\x00" + member).digest()[:DOC_ID_LEN]


def statement_doc_id(subject: bytes) -> bytes:
    """The document id of the statements about ``subject``."""
    return hashlib.sha256(b"carmesh/revoke/1\x00" + subject).digest()[:DOC_ID_LEN]


@dataclass(frozen=True, slots=True)
class MemberCertificate:
    """A dealer's enrolment of ``member`` in the community of ``root``."""

    member: bytes
    dealer: bytes
    root: bytes
    trust_version: int
    issued_ms: int


@dataclass(frozen=True, slots=True)
class KeyStatement:
    """``signer`` revokes ``subject``; ``successor`` carries on its person record."""

    subject: bytes
    signer: bytes
    successor: bytes | None
    made_ms: int


def _member_signed(c: MemberCertificate) -> bytes:
    return pack([_MEMBER_DOMAIN, c.member, c.dealer, c.root, c.trust_version, c.issued_ms])


def _statement_signed(s: KeyStatement) -> bytes:
    return pack([_STATEMENT_DOMAIN, s.subject, s.signer, s.successor or b"", s.made_ms])


def _check_key(key: bytes, what: str) -> None:
    if len(key) != AUTHOR_KEY_LEN:
        raise LocalProtocolError(f"{what} is a 32-byte key")


def prepare_member_certificate(sign: Signer, dealer: bytes, member: bytes, *, root: bytes,
                               trust_version: int, issued_ms: int) -> tuple[bytes, bytes]:
    """(doc_id, body) of a ``trust.member`` op; ``sign`` signs with the dealer's key."""
    for key, what in ((dealer, "dealer"), (member, "member"), (root, "root")):
        _check_key(key, what)
    if not 0 <= trust_version < 2**53 or not 0 <= issued_ms < 2**53:
        raise LocalProtocolError("trust_version and issued_ms are non-negative ints")
    cert = MemberCertificate(member, dealer, root, trust_version, issued_ms)
    return member_doc_id(member), encode_body({
        "m": member, "d": dealer, "r": root, "tv": trust_version, "i": issued_ms,
        "sig": sign(_member_signed(cert))})


def parse_member_certificate(op: OpLike) -> MemberCertificate:
    """The certificate in a ``trust.member`` op; raises ``Refused`` for a forged one."""
    if op.kind != KIND_MEMBER:
        raise Refused("kind", op.kind)
    f = body_fields(op, 4096)
    try:
        cert = MemberCertificate(f.bytes("m", size=AUTHOR_KEY_LEN),
                                 f.bytes("d", size=AUTHOR_KEY_LEN),
                                 f.bytes("r", size=AUTHOR_KEY_LEN),
                                 f.int("tv", 0, 2**53), f.int("i", 0, 2**53))
        sig = f.bytes("sig", size=64)
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None
    if op.doc_id != member_doc_id(cert.member):
        raise Refused("doc_id", "a certificate's document is its member's")
    if not verify_ed25519(cert.dealer, sig, _member_signed(cert)):
        raise Refused("signature", "member certificate not signed by its dealer")
    return cert


def prepare_key_statement(sign: Signer, signer: bytes, subject: bytes, *,
                          successor: bytes | None = None,
                          made_ms: int) -> tuple[bytes, bytes]:
    """(doc_id, body) of a ``trust.revoke`` op; ``sign`` signs with ``signer``'s key."""
    _check_key(signer, "signer")
    _check_key(subject, "subject")
    if successor is not None:
        _check_key(successor, "successor")
        if successor == subject:
            raise LocalProtocolError("a key is not its own successor")
    if not 0 <= made_ms < 2**53:
        raise LocalProtocolError("made_ms is a non-negative int")
    st = KeyStatement(subject, signer, successor, made_ms)
    fields: dict[str, object] = {"s": subject, "by": signer, "i": made_ms,
                                 "sig": sign(_statement_signed(st))}
    if successor is not None:
        fields["n"] = successor
    return statement_doc_id(subject), encode_body(fields)


def parse_key_statement(op: OpLike) -> KeyStatement:
    """The statement in a ``trust.revoke`` op; raises ``Refused`` for a forged one."""
    if op.kind != KIND_REVOKE:
        raise Refused("kind", op.kind)
    f = body_fields(op, 4096)
    try:
        st = KeyStatement(f.bytes("s", size=AUTHOR_KEY_LEN), f.bytes("by", size=AUTHOR_KEY_LEN),
                          f.opt_bytes("n", size=AUTHOR_KEY_LEN), f.int("i", 0, 2**53))
        sig = f.bytes("sig", size=64)
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None
    if op.doc_id != statement_doc_id(st.subject):
        raise Refused("doc_id", "a statement's document is its subject's")
    if st.successor == st.subject:
        raise Refused("body", "a key is not its own successor")
    if not verify_ed25519(st.signer, sig, _statement_signed(st)):
        raise Refused("signature", "key statement not signed by its signer")
    return st


class KeyRegistry:
    """Verified member certificates and key statements (see the module docstring).

    The caller verifies a certificate's dealer and a statement's rank against its trust
    (``TrustStore.classify_key``); the registry only keeps and answers.
    """

    def __init__(self) -> None:
        self._certs: dict[bytes, dict[bytes, MemberCertificate]] = {}
        self._statements: dict[bytes, dict[tuple[bytes, bytes], tuple[KeyStatement, Rank]]] = {}
        self._n_certs = 0
        self._n_statements = 0
        self._pred: dict[bytes, bytes] | None = None  # successor -> subject, rebuilt on change
        #: bumped on every change (the node re-checks what it carries)
        self.generation = 0

    def add_certificate(self, cert: MemberCertificate) -> bool:
        """Keep a certificate; True when it is new."""
        by_dealer = self._certs.setdefault(cert.member, {})
        old = by_dealer.get(cert.dealer)
        if old is not None and old.issued_ms >= cert.issued_ms:
            return False
        if old is None:
            if self._n_certs >= MAX_CERTS:
                return False
            self._n_certs += 1
        by_dealer[cert.dealer] = cert
        self.generation += 1
        return True

    def add_statement(self, st: KeyStatement, rank: Rank) -> bool:
        """Keep a verified statement of ``rank``; True when it is new."""
        about = self._statements.setdefault(st.subject, {})
        k = (st.signer, st.successor or b"")
        old = about.get(k)
        if old is not None and old[1] >= rank:
            return False
        if old is None:
            if len(about) >= MAX_PER_SUBJECT:
                # full (a thief signing successors with the old key): a higher rank
                # replaces the lowest; the subject stays revoked either way
                low = min(about, key=lambda x: about[x][1])
                if about[low][1] >= rank:
                    return False
                del about[low]
                self._n_statements -= 1
            if self._n_statements >= MAX_STATEMENTS:
                if not about:
                    del self._statements[st.subject]
                return False
            self._n_statements += 1
        about[k] = (st, rank)
        self._pred = None
        self.generation += 1
        return True

    def revoked(self, key: bytes) -> bool:
        """True when a verified statement revoked ``key``."""
        return bool(self._statements.get(key))

    def revocations(self) -> Iterator[bytes]:
        """Every key a statement revoked."""
        return (k for k, v in self._statements.items() if v)

    def statements(self) -> Iterator[tuple[KeyStatement, Rank]]:
        """Every verified statement with its rank."""
        for about in self._statements.values():
            yield from about.values()

    def certificates(self) -> Iterator[MemberCertificate]:
        """Every certificate kept."""
        for by_dealer in self._certs.values():
            yield from by_dealer.values()

    def has_certificates(self) -> bool:
        """True when any dealer enrolled anyone."""
        return self._n_certs > 0

    def dealers_of(self, member: bytes) -> list[bytes]:
        """The dealers holding a certificate for ``member``."""
        return list(self._certs.get(member, {}))

    def successor(self, key: bytes) -> bytes | None:
        """The key continuing ``key``'s record: the highest rank's single successor, or None
        (no successor named, or contested at the highest rank that names one)."""
        named = [(rank, st.successor) for st, rank in self._statements.get(key, {}).values()
                 if st.successor is not None]
        if not named:
            return None
        top = max(rank for rank, _ in named)
        chosen = {s for rank, s in named if rank == top}
        return chosen.pop() if len(chosen) == 1 else None

    def contested(self, key: bytes) -> bool:
        """True when statements name successors for ``key`` but none wins."""
        return self.successor(key) is None and any(
            st.successor is not None for st, _ in self._statements.get(key, {}).values())

    def predecessor(self, key: bytes) -> bytes | None:
        """The key ``key`` succeeded, if any."""
        if self._pred is None:
            pred: dict[bytes, bytes] = {}
            for subject in self._statements:
                s = self.successor(subject)
                if s is not None and s not in pred:
                    pred[s] = subject
            self._pred = pred
        return self._pred.get(key)

    def person(self, key: bytes) -> bytes:
        """The first key of ``key``'s chain of successors (the person record's key)."""
        seen = {key}
        for _ in range(MAX_CHAIN):
            p = self.predecessor(key)
            if p is None or p in seen:
                break
            seen.add(p)
            key = p
        return key
