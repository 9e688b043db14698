"""A tiny op factory for library_replica tests: authors with real Ed25519 keys numbering their
own ops, signed by sync's own ``create_op`` so the pure cores see exactly what the store feeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sync.envelope import Op, create_op


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
           expiry_ms: int | None = None) -> Op:
        if expiry_ms is not None:  # ephemeral (bulletins, mail): outside the author's chain
            return create_op(self.key, kind=kind, doc_id=doc_id, body=body, seq=0, prev=None,
                             hlc=hlc, expiry_ms=expiry_ms)
        self.seq += 1
        op = create_op(self.key, kind=kind, doc_id=doc_id, body=body, seq=self.seq,
                       prev=self.prev, hlc=hlc)
        self.prev = op.op_id
        return op


def hlc(wall_ms: int, counter: int = 0) -> int:
    return (wall_ms << 16) | counter
