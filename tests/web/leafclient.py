"""A browser leaf in Python: what web/static/leaf.js does, over the same HTTP routes.

Its keys are an ``Identity`` (Ed25519 + X25519, so its NodeId is made as a node's), and it
seals with ``meshd.core.seal`` itself: the construction leaf.js must match byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from meshd.core.codec import pack
from meshd.core.identity import Identity
from meshd.core.seal import seal
from meshd.services.leaves import ATTACH_DOMAIN, SEND_DOMAIN

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
