"""Signed operation envelopes and the hybrid logical clock.

Theory of operation
-------------------
The unit of replication is an immutable, signed ``Op``.  Its wire form
(``raw``) is a MessagePack array::

    [version, kind, doc_id, author, seq, prev, hlc, expiry_ms, body, sig]

and the signature is Ed25519 over ``_SIG_DOMAIN ‖ pack(array without sig)``.
The op id is SHA-256 of ``raw``.  ``decode_op`` refuses oversized input before
parsing, checks every field's type and range, re-encodes the fields and
requires the result to equal the input byte for byte (so one signed op has
exactly one wire form and one id: no malleability through non-minimal
MessagePack), and verifies the signature (libsodium through PyNaCl).

Chains.  An author's durable ops form a chain: ``seq`` counts from 1 and
``prev`` is the op id of the author's op at ``seq - 1`` (``None`` at 1).  The
store applies a chain in order and treats two ops at one position as a fork.
Ops that carry an expiry are *ephemeral*: they have ``seq == 0`` and no
``prev`` and stand outside the chain, because an expired op is purged
everywhere and a chain that waited for it would wait for ever.

Time.  ``hlc`` is a hybrid logical clock value ``(wall_ms << 16) | counter``
(Kulkarni et al., "Logical Physical Clocks", 2014): it follows the wall clock
but never goes backwards and stays above every timestamp observed from peers
that is within the tolerated skew.  Wall time is always passed in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from meshd.core.codec import pack, unpack
from meshd.core.errors import DecodeError, VerificationError
from sync.errors import ClockSkew, SyncLocalError

__all__ = [
    "DOC_ID_LEN",
    "MAX_BODY_SIZE",
    "MAX_OP_SIZE",
    "MAX_SKEW_MS",
    "NAMESPACE_PRIORITY",
    "OP_ID_LEN",
    "Authorizer",
    "HybridClock",
    "Op",
    "create_op",
    "decode_op",
    "hlc_wall_ms",
]

ENVELOPE_VERSION = 1
#: whole signed envelope; checked before any parsing
MAX_OP_SIZE = 65536
#: application body inside it
MAX_BODY_SIZE = 60000
MAX_KIND_LEN = 64
DOC_ID_LEN = 16
OP_ID_LEN = 32
KEY_LEN = 32
SIG_LEN = 64
#: a timestamp more than this ahead of our wall clock is refused (tolerated clock skew)
MAX_SKEW_MS = 300_000
HLC_COUNTER_BITS = 16
_MAX_HLC = 2**63 - 1
_SIG_DOMAIN = b"carmesh/op/1\x00"
#: msgpack bin8 header of a 64-byte signature
_SIG_BIN8 = b"\xc4\x40"
_KIND_RE = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_.]*\Z")

#: reconciliation and transfer order: trust first (a revocation must arrive no later than
#: the bulletins it withdraws, and an update before the bulletins it makes verifiable),
#: then bulletins, then the safety registry, library last
NAMESPACE_PRIORITY: tuple[str, ...] = ("trust", "bulletin", "safety", "situation", "mail",
                                       "library")


@dataclass(frozen=True, slots=True)
class Op:
    """One immutable, signed, verified operation (see the module docstring for the wire form)."""

    op_id: bytes
    kind: str
    doc_id: bytes
    author: bytes
    seq: int
    prev: bytes | None
    hlc: int
    expiry_ms: int | None
    body: bytes
    sig: bytes
    raw: bytes

    @property
    def namespace(self) -> str:
        """The part of ``kind`` before the first dot: the unit of authorisation and priority."""
        return self.kind.split(".", 1)[0]


#: (op, wall_now_ms) -> None, or raises ``sync.errors.Unauthorized``; one per namespace
Authorizer = Callable[[Op, int], None]


def hlc_wall_ms(hlc: int) -> int:
    """The wall-clock milliseconds part of a hybrid logical clock value."""
    return hlc >> HLC_COUNTER_BITS


def _kw(kind: str, doc_id: bytes, author: bytes, seq: int,
        prev: bytes | None, hlc: int, expiry_ms: int | None, body: bytes) -> dict[str, Any]:
    return {"kind": kind, "doc_id": doc_id, "author": author, "seq": seq, "prev": prev,
            "hlc": hlc, "expiry_ms": expiry_ms, "body": body}


def _check_fields(*, kind: str, doc_id: bytes, author: bytes, seq: int, prev: bytes | None,
                  hlc: int, expiry_ms: int | None, body: bytes) -> str | None:
    """Return why these envelope fields are invalid, or None when they are valid."""
    if len(kind) > MAX_KIND_LEN or not _KIND_RE.match(kind):
        return "kind"
    if len(doc_id) != DOC_ID_LEN:
        return "doc_id"
    if len(author) != KEY_LEN:
        return "author"
    if not 0 <= hlc <= _MAX_HLC:
        return "hlc"
    if len(body) > MAX_BODY_SIZE:
        return "body"
    if expiry_ms is not None:
        if not 0 <= expiry_ms <= _MAX_HLC or seq != 0 or prev is not None:
            return "ephemeral ops (with expiry) have seq 0 and no prev"
        return None
    if not 1 <= seq <= 2**62:
        return "seq"
    if (seq == 1) != (prev is None):
        return "prev is None exactly when seq == 1"
    if prev is not None and len(prev) != OP_ID_LEN:
        return "prev"
    return None


def _unsigned(*, kind: str, doc_id: bytes, author: bytes, seq: int, prev: bytes | None,
              hlc: int, expiry_ms: int | None, body: bytes) -> list[object]:
    return [ENVELOPE_VERSION, kind, doc_id, author, seq, prev, hlc, expiry_ms, body]


def create_op(signing_key: Ed25519PrivateKey, *, kind: str, doc_id: bytes, body: bytes,
              seq: int, prev: bytes | None, hlc: int, expiry_ms: int | None = None) -> Op:
    """Sign a new op; raises ``SyncLocalError`` if a field is out of range."""
    author = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    why = _check_fields(**_kw(kind, doc_id, author, seq, prev, hlc, expiry_ms, body))
    if why is not None:
        raise SyncLocalError(f"invalid op field: {why}")
    fields = _unsigned(**_kw(kind, doc_id, author, seq, prev, hlc, expiry_ms, body))
    sig = signing_key.sign(_SIG_DOMAIN + pack(fields))
    raw = pack([*fields, sig])
    if len(raw) > MAX_OP_SIZE:
        raise SyncLocalError(f"op of {len(raw)} bytes exceeds {MAX_OP_SIZE}")
    return Op(hashlib.sha256(raw).digest(), kind, doc_id, author, seq, prev, hlc, expiry_ms,
              body, sig, raw)


def decode_op(raw: bytes, *, verify: bool = True) -> Op:
    """Decode and verify one signed op; raises ``DecodeError`` or ``VerificationError``.

    ``verify=False`` skips only the signature check: for ops read back from our own store,
    which verified them before committing.
    """
    if len(raw) > MAX_OP_SIZE:
        raise DecodeError("oversize", f"op of {len(raw)} > {MAX_OP_SIZE}")
    raw = bytes(raw)
    obj = unpack(raw, MAX_OP_SIZE, max_items=16)
    if type(obj) is not list or len(obj) != 10:
        raise DecodeError("malformed", "op is not a 10-element array")
    version, kind, doc_id, author, seq, prev, hlc, expiry_ms, body, sig = obj
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise DecodeError("version", f"op version {version!r}")
    if (type(kind) is not str or type(doc_id) is not bytes or type(author) is not bytes
            or type(seq) is not int or not (prev is None or type(prev) is bytes)
            or type(hlc) is not int or not (expiry_ms is None or type(expiry_ms) is int)
            or type(body) is not bytes or type(sig) is not bytes or len(sig) != SIG_LEN):
        raise DecodeError("field", "op field types")
    why = _check_fields(kind=kind, doc_id=doc_id, author=author, seq=seq, prev=prev, hlc=hlc,
                        expiry_ms=expiry_ms, body=body)
    if why is not None:
        raise DecodeError("field", why)
    signed = pack([ENVELOPE_VERSION, kind, doc_id, author, seq, prev, hlc, expiry_ms, body])
    # canonical form: the 10-array is the signed 9-array (fixarray 0x99) with its header
    # bumped to 0x9a and the signature appended as bin8; one encoding instead of two
    if raw != b"\x9a" + signed[1:] + _SIG_BIN8 + sig:
        raise DecodeError("noncanonical", "op is not in canonical encoding")
    if verify:
        try:
            # libsodium: strict (refuses non-canonical S, small-order keys and R), about
            # half the instructions of OpenSSL's Ed25519, and it releases the GIL, so
            # verification threads use every core; ``author`` is 32 bytes (checked above)
            crypto_sign_open(sig + _SIG_DOMAIN + signed, author)
        except (BadSignatureError, ValueError, TypeError):
            raise VerificationError("signature", "op signature does not verify") from None
    return Op(hashlib.sha256(raw).digest(), kind, doc_id, author, seq, prev, hlc, expiry_ms,
              body, sig, raw)


class HybridClock:
    """Hybrid logical clock: ``now(wall_ms)`` for new ops, ``observe()`` for received ones."""

    __slots__ = ("_last", "max_skew_ms")

    def __init__(self, last: int = 0, max_skew_ms: int = MAX_SKEW_MS) -> None:
        self._last = last
        self.max_skew_ms = max_skew_ms

    @property
    def last(self) -> int:
        """The highest value issued or observed so far."""
        return self._last

    def now(self, wall_ms: int) -> int:
        """A timestamp above every one issued or observed; follows ``wall_ms`` when it is ahead.

        Bounded: when the last value lies more than ``max_skew_ms`` ahead of ``wall_ms`` it
        came from a clock that was wrong (ours before it was corrected, or persisted in the
        store from then), and every peer would refuse a stamp that far ahead as ``future``;
        the clock follows ``wall_ms`` again instead of keeping the node in the future.
        """
        candidate = wall_ms << HLC_COUNTER_BITS
        if hlc_wall_ms(self._last) > wall_ms + self.max_skew_ms:
            self._last = candidate
            return candidate
        self._last = candidate if candidate > self._last else self._last + 1
        return self._last

    def check(self, remote_hlc: int, wall_ms: int) -> None:
        """Raise ``ClockSkew`` if ``remote_hlc`` is ahead of ``wall_ms`` by more than the skew."""
        if hlc_wall_ms(remote_hlc) > wall_ms + self.max_skew_ms:
            raise ClockSkew(f"timestamp {hlc_wall_ms(remote_hlc) - wall_ms} ms ahead")

    def observe_trusted(self, hlc: int) -> None:
        """Move past a timestamp that was already checked (an op we committed)."""
        self._last = max(self._last, hlc)

    def observe(self, remote_hlc: int, wall_ms: int) -> None:
        """Move past an accepted remote timestamp; raises ``ClockSkew`` if it is too far ahead."""
        self.check(remote_hlc, wall_ms)
        self._last = max(self._last, remote_hlc)
