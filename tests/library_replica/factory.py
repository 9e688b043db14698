"""A tiny op factory for library_replica tests: real Ed25519 keys, sync's field names.

Not a model of sync's logic: it only builds envelope-shaped values so that the
pure cores can be fed ops the way sync's store will feed them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.codec import pack


@dataclass(frozen=True, slots=True)
class TestOp:
    __test__ = False  # not a pytest class

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

    @property
    def namespace(self) -> str:
        return self.kind.split(".")[0]


@dataclass(slots=True)
class Author:
    """An author with a real Ed25519 key, numbering its own ops."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    prev: bytes | None = None

    @property
    def pub(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def op(self, kind: str, doc_id: bytes, body: bytes, hlc: int,
           expiry_ms: int | None = None) -> TestOp:
        self.seq += 1
        signed = pack([kind, doc_id, self.pub, self.seq, self.prev, hlc, expiry_ms, body])
        sig = self.key.sign(signed)
        op_id = hashlib.sha256(signed + sig).digest()
        op = TestOp(op_id, kind, doc_id, self.pub, self.seq, self.prev, hlc, expiry_ms, body, sig)
        self.prev = op_id
        return op


def hlc(wall_ms: int, counter: int = 0) -> int:
    return (wall_ms << 16) | counter
