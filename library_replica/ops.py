"""The seam between library_replica and sync: what an operation looks like to us.

sync/ owns the signed op envelope (``sync.envelope.Op``); library_replica only
reads its fields, so it is written against ``OpLike``, a structural Protocol
that sync's ``Op`` satisfies.  An ``Authorizer`` is called by sync's store with
``(op, wall_now_ms)`` before an op is committed and raises to refuse it;
refused ops are never stored or relayed.

Every body is MessagePack decoded with ``meshd.core.codec.unpack`` under a size
limit, then read with strict types: a body from a peer is untrusted input.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import DecodeError, LocalProtocolError, MeshError, RemoteProtocolError
from sync.errors import Unauthorized

__all__ = [
    "AUTHOR_KEY_LEN",
    "DOC_ID_LEN",
    "MAX_BODY_SIZE",
    "SNAPSHOT_EXPIRY_MS",
    "Authorizer",
    "LibraryError",
    "OpLike",
    "Refused",
    "body_fields",
    "encode_body",
    "hlc_wall_ms",
    "new_doc_id",
    "order_key",
    "sync_authorizers",
]

DOC_ID_LEN = 16
AUTHOR_KEY_LEN = 32
#: the expiry of a snapshot op (library or situation): unchained ops carry one in sync's
#: envelope; this one is never reached
SNAPSHOT_EXPIRY_MS = 2**62
#: the largest op body (sync.envelope.MAX_BODY_SIZE; a document edit carries a Yjs update)
MAX_BODY_SIZE = 60_000


class LibraryError(MeshError):
    """Base of every error library_replica raises on purpose."""


class Refused(RemoteProtocolError, LibraryError):
    """An op we refuse (malformed, unauthorised, expired); ``reason`` is the drop key."""


class OpLike(Protocol):
    """The fields of sync's signed op envelope that library_replica reads."""

    @property
    def op_id(self) -> bytes: ...
    @property
    def kind(self) -> str: ...
    @property
    def doc_id(self) -> bytes: ...
    @property
    def author(self) -> bytes: ...
    @property
    def seq(self) -> int: ...
    @property
    def hlc(self) -> int: ...
    @property
    def expiry_ms(self) -> int | None: ...
    @property
    def body(self) -> bytes: ...


#: (op, wall_now_ms) -> None; raise ``Refused`` to refuse the op
Authorizer = Callable[[OpLike, int], None]


def hlc_wall_ms(hlc: int) -> int:
    """The wall-clock milliseconds inside an HLC value ((wall_ms << 16) | counter)."""
    return hlc >> 16


def order_key(op: OpLike) -> tuple[int, bytes, bytes]:
    """Total order used for last-writer-wins: HLC, then author key, then op id."""
    return (op.hlc, op.author, op.op_id)


def encode_body(obj: dict[str, Any]) -> bytes:
    """Encode an op body; refuses bodies over ``MAX_BODY_SIZE`` (local misuse)."""
    data = pack(obj)
    if len(data) > MAX_BODY_SIZE:
        raise LocalProtocolError(f"op body of {len(data)} bytes exceeds {MAX_BODY_SIZE}")
    return data


def body_fields(op: OpLike, max_size: int = MAX_BODY_SIZE) -> Fields:
    """Decode an op body (size limit first, strict reader after); raises ``Refused``."""
    if len(op.doc_id) != DOC_ID_LEN:
        raise Refused("doc_id", f"{len(op.doc_id)} bytes")
    if len(op.author) != AUTHOR_KEY_LEN:
        raise Refused("author", f"{len(op.author)} bytes")
    try:
        return Fields(unpack(op.body, max_size))
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None


def new_doc_id(seed: bytes) -> bytes:
    """A 16-byte document id derived from ``seed`` (use ``os.urandom`` for fresh documents)."""
    return hashlib.sha256(b"carmesh/doc/1\x00" + seed).digest()[:DOC_ID_LEN]


def sync_authorizers(by_namespace: Mapping[str, Authorizer]) -> dict[str, Authorizer]:
    """Authorisers for sync's store: each ``Refused`` becomes ``sync.errors.Unauthorized``.

    ``by_namespace`` maps namespaces (``library``, ``situation``, ``bulletin``,
    ``trust``) to this package's authorisers; sync counts any other exception
    as an authoriser failure, so the reason is carried over in the detail.
    """

    def wrap(fn: Authorizer) -> Authorizer:
        def authorize(op: OpLike, wall_now_ms: int) -> None:
            try:
                fn(op, wall_now_ms)
            except Refused as exc:
                raise Unauthorized(f"{exc.reason}: {exc.detail}" if exc.detail
                                   else exc.reason) from None

        return authorize

    return {ns: wrap(fn) for ns, fn in by_namespace.items()}
