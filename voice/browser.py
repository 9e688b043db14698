"""Browser calls, the pure part: what a browser signs about its SDP, and the check of it.

Theory of operation
-------------------
A phone browser is a person, not a car: it holds its own Ed25519 key
(``web/static/identity.js``).  When it offers or answers a call, it signs the
DTLS fingerprints of its SDP with that key (``fingerprint_message``), and the
car that serves it carries key and signature in the sealed signalling message
(``SigMessage.person_key``/``person_sig``).  The far end checks the signature
(``check_person``) before it rings or takes the answer; a fingerprint altered
in transit — by any car, the serving one included — is refused, so no car can
terminate DTLS and sit in the middle.  The cars relay the browser's media as
opaque UDP (``voice.relay.RelaySocket``); nothing here decrypts anything.

The signed text is ASCII, the same in the browser (``web/static/call.js``)::

    carmesh-call-fingerprint/1 LF call id (32 hex digits) LF kind LF fingerprint LF ...

with ``kind`` ``offer`` or ``answer`` and each fingerprint the text after
``a=fingerprint:`` of each such line, in SDP order, surrounding space removed.
"""

from __future__ import annotations

import re

from meshd.core.errors import DecodeError
from meshd.core.identity import verify_ed25519
from voice.signalling import CALL_ID_LEN, Kind, SigMessage

__all__ = ["FINGERPRINT_DOMAIN", "MAX_FINGERPRINTS", "check_person", "fingerprint_message",
           "fingerprints"]

FINGERPRINT_DOMAIN = "carmesh-call-fingerprint/1"
#: more fingerprint lines than this in one SDP are refused (one per media section at most)
MAX_FINGERPRINTS = 8
_FP = re.compile(r"^a=fingerprint:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.MULTILINE)


def fingerprints(sdp: str) -> list[str]:
    """The DTLS fingerprints of ``sdp`` in order; raise ``DecodeError`` if none or too many."""
    fps = _FP.findall(sdp)
    if not fps:
        raise DecodeError("sig-sdp", "SDP without a DTLS fingerprint")
    if len(fps) > MAX_FINGERPRINTS:
        raise DecodeError("sig-sdp", f"more than {MAX_FINGERPRINTS} fingerprints")
    return [str(f) for f in fps]


def fingerprint_message(call_id: bytes, kind: Kind, sdp: str) -> bytes:
    """The bytes a browser signs for its ``offer`` or ``answer`` SDP in call ``call_id``."""
    if len(call_id) != CALL_ID_LEN or kind not in (Kind.OFFER, Kind.ANSWER):
        raise ValueError("a call id and an offer or answer")
    lines = [FINGERPRINT_DOMAIN, call_id.hex(), kind.value, *fingerprints(sdp)]
    return "\n".join(lines).encode("ascii", "replace")


def check_person(msg: SigMessage) -> bytes | None:
    """The browser key that signed ``msg``'s fingerprints, None for a node's own endpoint.

    Raises ``DecodeError`` (``sig-person``) when the signature does not cover the
    fingerprints in the SDP: altered in transit.
    """
    if msg.person_key is None or msg.person_sig is None:
        return None
    if msg.sdp is None:
        raise DecodeError("sig-person", "a browser signature without an SDP")
    data = fingerprint_message(msg.call_id, msg.kind, msg.sdp)
    if not verify_ed25519(msg.person_key, msg.person_sig, data):
        raise DecodeError("sig-person",
                          "the browser's signature does not match the DTLS fingerprint "
                          "(altered in transit)")
    return msg.person_key
