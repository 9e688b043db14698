"""End-to-end sealing of ``msg`` and ``sig`` payloads: relays see only routing headers.

Construction (all from ``cryptography``): the sender makes an ephemeral X25519
key, agrees with the recipient's X25519 key, derives a ChaCha20-Poly1305 key
with HKDF-SHA256 (salt = ephemeral public ‖ recipient public, info = domain ‖
context), and encrypts an inner message that carries the sender's public keys,
a wall-clock timestamp, a random message id and an Ed25519 signature over
(domain ‖ context ‖ recipient NodeId ‖ ephemeral public ‖ timestamp ‖ id ‖ body).
The recipient checks that the sender's keys hash to the packet's source NodeId,
so no relay can forge a sender, and ``ReplayCache`` refuses a replayed id.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import DecodeError, VerificationError
from meshd.core.identity import Identity, NodeId, node_id_of, verify_ed25519

__all__ = ["MAX_SEALED", "Opened", "ReplayCache", "open_sealed", "seal"]

MAX_SEALED = 64 * 1024
_DOMAIN = b"carmesh/seal/1\x00"
_NONCE = b"\x00" * 12  # the key is fresh for every message (ephemeral X25519), so a fixed nonce is safe
_TS = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class Opened:
    """A sealed message that decrypted and verified."""

    sender: NodeId
    sender_ed25519: bytes
    sender_x25519: bytes
    timestamp_ms: int
    message_id: bytes
    body: bytes


def _key(shared: bytes, eph_pub: bytes, rcpt_pub: bytes, context: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=eph_pub + rcpt_pub, info=_DOMAIN + context).derive(shared)


def _signed_part(context: bytes, recipient: NodeId, eph_pub: bytes, ts_ms: int, mid: bytes,
                 body: bytes) -> bytes:
    return _DOMAIN + context + b"\x00" + recipient + eph_pub + _TS.pack(ts_ms) + mid + body


def seal(sender: Identity, recipient_x25519: bytes, recipient: NodeId, body: bytes, *,
         context: bytes, timestamp_ms: int) -> bytes:
    """Encrypt and sign ``body`` for ``recipient``; ``context`` names the service (b"msg", b"sig")."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_x25519))
    mid = os.urandom(12)
    sig = sender.sign(_signed_part(context, recipient, eph_pub, timestamp_ms, mid, body))
    inner = pack({"ed": sender.ed25519_pub, "x": sender.x25519_pub, "t": timestamp_ms,
                  "id": mid, "b": body, "s": sig})
    ct = ChaCha20Poly1305(_key(shared, eph_pub, recipient_x25519, context)).encrypt(_NONCE, inner, None)
    return eph_pub + ct


def open_sealed(recipient: Identity, data: bytes, *, source: NodeId, context: bytes) -> Opened:
    """Decrypt and verify; raises ``DecodeError``/``VerificationError`` for anything else."""
    if len(data) > MAX_SEALED:
        raise DecodeError("oversize", f"sealed {len(data)}")
    if len(data) < 32 + 16:
        raise DecodeError("short", "sealed message")
    eph_pub, ct = data[:32], data[32:]
    try:
        shared = recipient.agreement_key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        inner = ChaCha20Poly1305(_key(shared, eph_pub, recipient.x25519_pub, context)).decrypt(
            _NONCE, ct, None)
    except (InvalidTag, ValueError):
        raise VerificationError("decrypt", "sealed message did not decrypt") from None
    f = Fields(unpack(inner, MAX_SEALED))
    ed, x = f.bytes("ed", size=32), f.bytes("x", size=32)
    ts, mid, body, sig = f.int("t", 0, 2**63), f.bytes("id", size=12), f.bytes("b", max_len=MAX_SEALED), f.bytes("s", size=64)
    sender = node_id_of(ed, x)
    if sender != source:
        raise VerificationError("sender", "sealed sender is not the packet source")
    if not verify_ed25519(ed, sig, _signed_part(context, recipient.node_id, eph_pub, ts, mid, body)):
        raise VerificationError("signature", "sealed message signature")
    return Opened(sender, ed, x, ts, mid, body)


class ReplayCache:
    """Remembers recent (sender, message id) pairs; refuses a repeat or a message too old to check."""

    def __init__(self, window_ms: int = 10 * 60 * 1000, max_entries: int = 65536) -> None:
        self._seen: OrderedDict[tuple[NodeId, bytes], int] = OrderedDict()
        self._window = window_ms
        self._max = max_entries

    def check(self, opened: Opened, wall_now_ms: int) -> None:
        """Raise ``VerificationError`` if replayed or outside the window; else remember it."""
        if abs(wall_now_ms - opened.timestamp_ms) > self._window:
            raise VerificationError("stale", "sealed message outside the replay window")
        key = (opened.sender, opened.message_id)
        if key in self._seen:
            raise VerificationError("replay", "sealed message seen before")
        self._seen[key] = opened.timestamp_ms
        while self._seen:
            _oldest_key, oldest_ts = next(iter(self._seen.items()))
            if len(self._seen) > self._max or oldest_ts < wall_now_ms - 2 * self._window:
                self._seen.popitem(last=False)
            else:
                break
