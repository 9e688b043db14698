"""A browser leaf in Python: what web/static/leaf.js does, over the same HTTP routes.

Its keys are an ``Identity`` (Ed25519 + X25519, so its NodeId is made as a node's), and it
seals with ``meshd.core.seal`` itself: the construction leaf.js must match byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from meshd.core.codec import pack, unpack
from meshd.core.identity import Identity
from meshd.core.seal import open_sealed, seal
from meshd.services.leaves import ATTACH_DOMAIN, SEND_DOMAIN
from sync.envelope import create_op

#: what leaf.js takes off the car's 7-day mail lifetime (a phone clock a little ahead)
MAIL_MARGIN_MS = 10 * 60 * 1000
MAIL_LIFETIME_MS = 7 * 24 * 3600 * 1000

ANNOUNCE_DOMAIN = b"carmesh/announce/1\x00"


class Leaf:
    def __init__(self, name: str = "leaf") -> None:
        self.ident = Identity.generate()
        self.name = name
        self.seq = 0

    @property
    def id(self) -> bytes:
        return self.ident.node_id

    def attachment(self, challenge: dict[str, Any], *, forge_proof: bool = False
                   ) -> dict[str, str]:
        gw, ch = bytes.fromhex(challenge["gateway"]), bytes.fromhex(challenge["challenge"])
        self.seq = max(self.seq + 1, challenge["now_ms"] // 1000)
        body = pack({"v": challenge["version"], "ed": self.ident.ed25519_pub,
                     "x": self.ident.x25519_pub, "seq": self.seq, "ts": challenge["now_ms"],
                     "name": self.name, "role": "phone", "gw": gw})
        proof = self.ident.sign(ATTACH_DOMAIN + ch + gw + self.id)
        if forge_proof:
            proof = proof[:-1] + bytes([proof[-1] ^ 1])
        return {"announcement": body.hex(), "signature": self.ident.sign(ANNOUNCE_DOMAIN + body).hex(),
                "proof": proof.hex(), "challenge": challenge["challenge"]}

    def sealed(self, x25519: bytes, dest: bytes, body: dict[str, Any], ts_ms: int,
               *, forge: bool = False) -> dict[str, str]:
        data = seal(self.ident, x25519, dest, pack(body), context=b"msg", timestamp_ms=ts_ms)
        sig = self.ident.sign(SEND_DOMAIN + self.id + dest + data)
        if forge:
            sig = sig[:-1] + bytes([sig[-1] ^ 1])
        return {"to": dest.hex(), "sealed": data.hex(), "signature": sig.hex()}


def origin_headers(base: str) -> dict[str, str]:
    return {"Origin": base, "Content-Type": "application/json"}


def dumps(obj: Any) -> str:
    return json.dumps(obj)


def mail_op(leaf: Leaf, x25519: bytes, dest: bytes, text: str, car_ms: int) -> bytes:
    """The ``mail.sealed`` op leaf.js makes for a message with no route (raw bytes).

    The text sealed with context ``b"mail"`` to the recipient, the body ``{x, s}``, an
    ephemeral op (seq 0, no prev) expiring 7 days (less a margin) after the car's time.
    """
    inner = pack({"k": "text", "text": text, "n": leaf.name})
    sealed = seal(leaf.ident, x25519, dest, inner, context=b"mail", timestamp_ms=car_ms)
    op = create_op(leaf.ident.signing_key, kind="mail.sealed", doc_id=dest,
                   body=pack({"x": leaf.ident.x25519_pub, "s": sealed}), seq=0, prev=None,
                   hlc=car_ms << 16, expiry_ms=car_ms + MAIL_LIFETIME_MS - MAIL_MARGIN_MS)
    return op.raw


def receipt_op(leaf: Leaf, sender: bytes, op_id: bytes, car_ms: int) -> bytes:
    """The ``mail.receipt`` op leaf.js signs after opening mail ``op_id`` from ``sender``."""
    op = create_op(leaf.ident.signing_key, kind="mail.receipt", doc_id=sender,
                   body=pack({"x": leaf.ident.x25519_pub, "r": op_id}), seq=0, prev=None,
                   hlc=(car_ms << 16) + 1, expiry_ms=car_ms + MAIL_LIFETIME_MS - MAIL_MARGIN_MS)
    return op.raw


def open_mail(leaf: Leaf, item: dict[str, Any]) -> dict[str, Any]:
    """Open one ``mail.inbox`` entry as leaf.js does: the seal's key must be the op's author."""
    opened = open_sealed(leaf.ident, bytes.fromhex(item["sealed"]),
                         source=bytes.fromhex(item["from"]), context=b"mail")
    assert opened.sender_ed25519.hex() == item["author"]
    body: dict[str, Any] = unpack(opened.body, 40000)
    return body
