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

The signed text is ASCII, the same in the browser (``web/static/callcheck.js``)::

    carmesh-call-fingerprint/1 LF call id (32 hex digits) LF kind LF fingerprint LF ...

with ``kind`` ``offer`` or ``answer`` and each fingerprint the text after
``a=fingerprint:`` of each such line, in SDP order, surrounding space removed.

The other direction: a browser cannot open the sealed signalling, so every
offer and answer a node sends also carries that node's own signature over the
same lines under another domain, ``carmesh-node-fingerprint/1``
(``node_message``; ``SigMessage.node_sig``), whether the SDP is its aiortc
endpoint's or its own browser's (then the node vouches for what its browser
signed).  The car serving the far browser hands SDP, signature and the
signing node's two public keys to the page, which checks the signature and that
SHA-256(ed25519 ‖ x25519)[:16] is the NodeId it called or that rang it
(``web/static/callcheck.js``), so that car cannot swap the fingerprints
either.  A node checks a ``node_sig`` it receives too (``check_node``).
"""

from __future__ import annotations

import re

from meshd.core.errors import DecodeError
from meshd.core.identity import verify_ed25519
from voice.signalling import CALL_ID_LEN, Kind, SigMessage

__all__ = ["FINGERPRINT_DOMAIN", "MAX_FINGERPRINTS", "NODE_FINGERPRINT_DOMAIN", "check_node",
           "check_person", "fingerprint_message", "fingerprints", "node_message"]

FINGERPRINT_DOMAIN = "carmesh-call-fingerprint/1"
#: what a node signs about the fingerprints it sends (never confused with a browser's)
NODE_FINGERPRINT_DOMAIN = "carmesh-node-fingerprint/1"
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


def fingerprint_message(call_id: bytes, kind: Kind, sdp: str,
                        domain: str = FINGERPRINT_DOMAIN) -> bytes:
    """The bytes a browser signs for its ``offer`` or ``answer`` SDP in call ``call_id``."""
    if len(call_id) != CALL_ID_LEN or kind not in (Kind.OFFER, Kind.ANSWER):
        raise ValueError("a call id and an offer or answer")
    lines = [domain, call_id.hex(), kind.value, *fingerprints(sdp)]
    return "\n".join(lines).encode("ascii", "replace")


def node_message(call_id: bytes, kind: Kind, sdp: str) -> bytes:
    """The bytes a node signs for an ``offer`` or ``answer`` SDP it sends in call ``call_id``."""
    return fingerprint_message(call_id, kind, sdp, NODE_FINGERPRINT_DOMAIN)


def check_node(msg: SigMessage, ed25519_pub: bytes) -> None:
    """Raise ``DecodeError`` (``sig-node``) unless ``msg``'s node signature is the sender's.

    ``ed25519_pub`` is the key of the node that sealed ``msg``.  A message without
    a node signature passes here (the seal authenticates it node to node); the
    browser that would receive its SDP refuses it instead.
    """
    if msg.node_sig is None:
        return
    if msg.sdp is None or not verify_ed25519(ed25519_pub, msg.node_sig,
                                             node_message(msg.call_id, msg.kind, msg.sdp)):
        raise DecodeError("sig-node", "the node's signature does not match the DTLS fingerprint")


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
