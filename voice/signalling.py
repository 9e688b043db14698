"""Call signalling messages: the body inside a sealed ``sig`` packet.

A ``SigMessage`` is MessagePack ``{"k": kind, "c": call id (16 B), "n": message
number, ...}``: ``offer`` and ``answer`` carry the SDP (``"sdp"``, whose
``a=fingerprint`` lines are thereby signed end to end by ``meshd.core.seal``) and a
generation (``"g"``: 0 for the first offer, +1 for each re-offer); ``offer``
carries the call's media flow id (``"f"``).  An offer or answer made by a
browser also carries the browser's own Ed25519 key (``"pk"``, 32 B) and its
signature over the SDP's DTLS fingerprints (``"ps"``, 64 B; see
``voice.browser.fingerprint_message``): the far end checks it, so the car that
serves the browser cannot swap fingerprints either.  Every offer and answer from
a node carries the sending node's signature over the same fingerprints
(``"ns"``, 64 B; ``voice.browser.node_message``), for a browser at the far end,
which cannot open the seal.  Every message but ``ack`` is
acknowledged with ``{"k": "ack", "c", "n": 0, "a": acked number}``.

Retransmission and duplicate suppression are ``meshd.services.outbox``'s
(``Outbox``, ``Dedup``), driven per call by ``voice.session.CallSession``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import DecodeError

__all__ = [
    "CALL_ID_LEN",
    "MAX_SDP",
    "Kind",
    "SigMessage",
]

CALL_ID_LEN = 16
#: an SDP larger than this is refused (an aiortc audio offer is about 1.3 KB)
MAX_SDP = 16 * 1024
MAX_BODY = MAX_SDP + 512


class Kind(enum.Enum):
    OFFER = "offer"
    RINGING = "ringing"
    ANSWER = "answer"
    BUSY = "busy"
    DECLINE = "decline"
    HANGUP = "hangup"
    TIMEOUT = "timeout"
    FAILED = "failed"  #: the sender's media could not be set up or was lost for good
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class SigMessage:
    """One signalling message; ``encode``/``decode`` are exact inverses."""

    kind: Kind
    call_id: bytes
    number: int
    sdp: str | None = None
    generation: int = 0
    flow_id: int = 0
    acked: int = 0
    #: a browser's own Ed25519 key and its signature over the SDP's fingerprints
    person_key: bytes | None = None
    person_sig: bytes | None = None
    #: the sending node's signature over the SDP's fingerprints (for a far browser)
    node_sig: bytes | None = None

    def encode(self) -> bytes:
        m: dict[str, object] = {"k": self.kind.value, "c": self.call_id, "n": self.number}
        if self.kind in (Kind.OFFER, Kind.ANSWER):
            m["sdp"] = self.sdp or ""
            m["g"] = self.generation
            if self.person_key is not None and self.person_sig is not None:
                m["pk"] = self.person_key
                m["ps"] = self.person_sig
            if self.node_sig is not None:
                m["ns"] = self.node_sig
        if self.kind is Kind.OFFER:
            m["f"] = self.flow_id
        if self.kind is Kind.ACK:
            m["a"] = self.acked
        return pack(m)

    @classmethod
    def decode(cls, data: bytes) -> SigMessage:
        """Parse a decrypted body; raise ``DecodeError`` for anything malformed."""
        f = Fields(unpack(data, MAX_BODY, max_items=16))
        try:
            kind = Kind(f.str("k", max_len=16))
        except ValueError:
            raise DecodeError("sig-kind", "unknown signalling kind") from None
        call_id = f.bytes("c", size=CALL_ID_LEN)
        number = f.int("n", 0, 2**31)
        sdp: str | None = None
        generation = flow_id = acked = 0
        person_key = person_sig = node_sig = None
        if kind in (Kind.OFFER, Kind.ANSWER):
            sdp = f.str("sdp", max_len=MAX_SDP)
            generation = f.int("g", 0, 1000)
            if "a=fingerprint:" not in sdp:
                raise DecodeError("sig-sdp", "SDP without a DTLS fingerprint")
            person_key = f.opt_bytes("pk", size=32)
            person_sig = f.opt_bytes("ps", size=64)
            if (person_key is None) != (person_sig is None):
                raise DecodeError("sig-person", "a browser key without its signature")
            node_sig = f.opt_bytes("ns", size=64)
        if kind is Kind.OFFER:
            flow_id = f.int("f", 1, 2**32 - 1)
        if kind is Kind.ACK:
            acked = f.int("a", 1, 2**31)
        return cls(kind, call_id, number, sdp, generation, flow_id, acked, person_key, person_sig,
                   node_sig)
