"""Link handshake: both ends of a QUIC neighbour link prove their NodeId (pure core, no I/O).

Theory of operation
-------------------
aioquic authenticates only the accepting side's certificate, and it has no TLS
exporter to bind an application proof to the TLS session.  So, on the first
bidirectional stream of every link (DESIGN.md "Neighbour links")::

    connecting side (client)                accepting side (server)
    ------------------------                -----------------------
    Hello {v}                     ------>
                                  <------   Challenge {announcement, nonce(32)}
    (check: the certificate key the TLS stack saw == announcement's Ed25519
     key; announcement NodeId == the one expected, or learn it (TOFU);
     announcement not older than the last one we saw)
    Proof {announcement, fp, sig} ------>
        sig = Ed25519(domain ‖ nonce ‖ fp ‖ server id ‖ client id),
        fp  = SHA-256 of the DER certificate the client saw
                                            (check: fp is the server's OWN
                                             certificate; sig verifies with the
                                             announced key; not self)
                                  <------   Accept {}

A machine in the middle either presents the real server's certificate (and
cannot finish TLS without its private key) or its own, whose fingerprint the
real server will not accept; it cannot sign for the client either.  The fresh
nonce makes a recorded proof useless.  For the same reason the announcements'
wall-clock timestamps are not checked here: TLS and the nonce prove the peer is
live, and a neighbour whose clock is wrong must still link, so that hellos can
tell both ends their clock offset (``meshd.core.clock``; issue 11 item 3).
Freshness still guards announcements relayed by routing.  Nothing but this exchange is accepted
on a link before ``done`` (the adapter drops and counts early datagrams).

Refusals raise ``VerificationError``/``DecodeError`` (both
``RemoteProtocolError``) whose ``reason`` is one of ``REFUSAL_REASONS``; the
adapter closes the QUIC connection with that reason.  The whole exchange must
finish within ``HANDSHAKE_TIMEOUT_S`` of ``now`` at construction
(``check_timeout``).  Time is always passed in: ``now`` is monotonic seconds
for the timeout, ``wall_now`` is wall-clock seconds for announcement freshness.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from meshd import PROTOCOL_VERSION
from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import (
    DecodeError,
    LocalProtocolError,
    RemoteProtocolError,
    VerificationError,
)
from meshd.core.identity import (
    MAX_ANNOUNCEMENT_SIZE,
    Announcement,
    Identity,
    NodeId,
    short_id,
    verify_ed25519,
)

__all__ = [
    "HANDSHAKE_TIMEOUT_S",
    "MAX_HANDSHAKE_MESSAGE",
    "NONCE_LEN",
    "REFUSAL_REASONS",
    "ClientHandshake",
    "HandshakeState",
    "ServerHandshake",
    "proof_payload",
]

#: the whole exchange must complete within this many seconds (monotonic)
HANDSHAKE_TIMEOUT_S = 5.0
#: no handshake message is larger than this (an announcement is at most 512 bytes)
MAX_HANDSHAKE_MESSAGE = MAX_ANNOUNCEMENT_SIZE + 256
NONCE_LEN = 32
FINGERPRINT_LEN = 32
_PROOF_DOMAIN = b"carmesh/link-proof/1\x00"

#: stable refusal tokens (``RemoteProtocolError.reason``)
REFUSAL_REASONS = frozenset({
    "identity",      # the peer's NodeId is not the one we expected
    "cert-key",      # the certificate key is not the announced key
    "fingerprint",   # the client signed a certificate that is not ours
    "signature",     # the proof (or the announcement) does not verify
    "stale",         # announcement too old
    "future",        # announcement too far ahead of our clock
    "replay",        # announcement older than one we already saw from that node
    "self",          # we connected to ourselves
    "timeout",       # the exchange took longer than HANDSHAKE_TIMEOUT_S
    "unexpected",    # a message out of order
    "version",       # an unknown handshake version
    "role",          # an announcement with an unknown role (meshd.core.identity)
    "malformed", "oversize", "field", "type", "missing",  # from meshd.core.codec
})

# message type tags
_HELLO = "hello"
_CHALLENGE = "challenge"
_PROOF = "proof"
_ACCEPT = "accept"


class HandshakeState(enum.Enum):
    EXPECT_HELLO = "expect-hello"          # server: waiting for the client's hello
    EXPECT_CHALLENGE = "expect-challenge"  # client: hello sent, waiting for the challenge
    EXPECT_PROOF = "expect-proof"          # server: challenge sent
    EXPECT_ACCEPT = "expect-accept"        # client: proof sent
    DONE = "done"
    FAILED = "failed"


def proof_payload(nonce: bytes, fingerprint: bytes, server_id: NodeId, client_id: NodeId) -> bytes:
    """The bytes the client signs: domain ‖ server nonce ‖ certificate fingerprint ‖ both ids."""
    return _PROOF_DOMAIN + nonce + fingerprint + server_id + client_id


def _decode(data: bytes) -> tuple[str, Fields]:
    f = Fields(unpack(data, MAX_HANDSHAKE_MESSAGE, max_items=16))
    return f.str("t", max_len=16), f


def _announcement(f: Fields) -> Announcement:
    raw = f.bytes("ann", max_len=MAX_ANNOUNCEMENT_SIZE)
    try:
        return Announcement.decode(raw)
    except VerificationError:
        raise
    except RemoteProtocolError as exc:
        raise DecodeError(exc.reason, f"announcement: {exc.detail}") from None


def _check_not_replayed(ann: Announcement, known: Announcement | None) -> None:
    if known is not None and known.node_id == ann.node_id and ann.seqno < known.seqno:
        raise VerificationError(
            "replay", f"{short_id(ann.node_id)} announcement seq {ann.seqno} < {known.seqno} seen")


@dataclass(frozen=True, slots=True)
class _Deadline:
    at: float

    def check(self, now: float) -> None:
        if now > self.at:
            raise VerificationError("timeout", f"handshake not done within {HANDSHAKE_TIMEOUT_S} s")


class _Half:
    """What both halves share: the deadline, and failing for good on any refusal."""

    state: HandshakeState
    _deadline: _Deadline

    def check_timeout(self, now: float) -> None:
        """Raise ``VerificationError('timeout')`` once the deadline passed without completion."""
        if self.state not in (HandshakeState.DONE, HandshakeState.FAILED):
            try:
                self._deadline.check(now)
            except RemoteProtocolError:
                self.state = HandshakeState.FAILED
                raise

    def receive(self, data: bytes, now: float, wall_now: float) -> bytes | None:
        """Feed one handshake message from the other side; returns our reply, if any."""
        try:
            return self._receive(data, now, wall_now)
        except RemoteProtocolError:
            self.state = HandshakeState.FAILED
            raise

    def _receive(self, data: bytes, now: float, wall_now: float) -> bytes | None:
        raise NotImplementedError


class ServerHandshake(_Half):
    """The accepting side's half: sends the challenge, checks the client's proof.

    ``receive`` returns the message to send back (or None) and raises a
    ``RemoteProtocolError`` to refuse; after it, ``state`` is ``FAILED``.
    """

    def __init__(self, identity: Identity, announcement: Announcement, cert_fingerprint: bytes,
                 *, nonce: bytes, now: float,
                 known: Mapping[NodeId, Announcement] | None = None) -> None:
        if len(nonce) != NONCE_LEN or len(cert_fingerprint) != FINGERPRINT_LEN:
            raise LocalProtocolError("nonce and fingerprint are 32 bytes")
        if announcement.node_id != identity.node_id:
            raise LocalProtocolError("announcement is not of this identity")
        self._identity = identity
        self._announcement = announcement
        self._fingerprint = cert_fingerprint
        self._nonce = nonce
        self._deadline = _Deadline(now + HANDSHAKE_TIMEOUT_S)
        self._known = known if known is not None else {}
        self.state = HandshakeState.EXPECT_HELLO
        #: the client's verified announcement once ``state`` is DONE
        self.peer: Announcement | None = None

    def _receive(self, data: bytes, now: float, wall_now: float) -> bytes | None:
        self._deadline.check(now)
        kind, f = _decode(data)
        if self.state is HandshakeState.EXPECT_HELLO and kind == _HELLO:
            version = f.int("v", 0, 255)
            if version != PROTOCOL_VERSION:
                raise VerificationError("version", f"client speaks {version}")
            self.state = HandshakeState.EXPECT_PROOF
            return pack({"t": _CHALLENGE, "ann": self._announcement.raw, "nonce": self._nonce})
        if self.state is HandshakeState.EXPECT_PROOF and kind == _PROOF:
            ann = _announcement(f)
            fp = f.bytes("fp", size=FINGERPRINT_LEN)
            sig = f.bytes("sig", size=64)
            if ann.node_id == self._identity.node_id:
                raise VerificationError("self", "a connection from ourselves")
            if not hmac.compare_digest(fp, self._fingerprint):
                raise VerificationError(
                    "fingerprint", f"{short_id(ann.node_id)} signed a certificate that is not ours"
                    " (a machine in the middle?)")
            payload = proof_payload(self._nonce, fp, self._identity.node_id, ann.node_id)
            if not verify_ed25519(ann.ed25519_pub, sig, payload):
                raise VerificationError("signature", f"proof of {short_id(ann.node_id)}")
            _check_not_replayed(ann, self._known.get(ann.node_id))
            self.peer = ann
            self.state = HandshakeState.DONE
            return pack({"t": _ACCEPT})
        raise VerificationError("unexpected", f"{kind!r} in state {self.state.value}")


class ClientHandshake(_Half):
    """The connecting side's half: checks the server's certificate binding, signs its nonce.

    ``cert_key`` and ``cert_fingerprint`` are what the TLS stack saw (the
    server's certificate Ed25519 key and SHA-256 of its DER).  ``expect`` is
    the NodeId we want, or None to learn it (trust on first use).
    """

    def __init__(self, identity: Identity, announcement: Announcement, *, expect: NodeId | None,
                 cert_key: bytes, cert_fingerprint: bytes, now: float,
                 known: Mapping[NodeId, Announcement] | None = None) -> None:
        if len(cert_key) != 32 or len(cert_fingerprint) != FINGERPRINT_LEN:
            raise LocalProtocolError("certificate key and fingerprint are 32 bytes")
        if announcement.node_id != identity.node_id:
            raise LocalProtocolError("announcement is not of this identity")
        self._identity = identity
        self._announcement = announcement
        self._expect = expect
        self._cert_key = cert_key
        self._fingerprint = cert_fingerprint
        self._deadline = _Deadline(now + HANDSHAKE_TIMEOUT_S)
        self._known = known if known is not None else {}
        self.state = HandshakeState.EXPECT_CHALLENGE
        #: the server's verified announcement, set when its challenge checked out
        self.peer: Announcement | None = None

    def hello(self) -> bytes:
        """The first message (the client opens the handshake stream with it)."""
        return pack({"t": _HELLO, "v": PROTOCOL_VERSION})

    def _receive(self, data: bytes, now: float, wall_now: float) -> bytes | None:
        self._deadline.check(now)
        kind, f = _decode(data)
        if self.state is HandshakeState.EXPECT_CHALLENGE and kind == _CHALLENGE:
            ann = _announcement(f)
            nonce = f.bytes("nonce", size=NONCE_LEN)
            if not hmac.compare_digest(ann.ed25519_pub, self._cert_key):
                raise VerificationError(
                    "cert-key", f"certificate key is not the key of {short_id(ann.node_id)}")
            if self._expect is not None and ann.node_id != self._expect:
                raise VerificationError("identity", f"peer is {short_id(ann.node_id)},"
                                        f" expected {short_id(self._expect)}")
            if ann.node_id == self._identity.node_id:
                raise VerificationError("self", "connected to ourselves")
            _check_not_replayed(ann, self._known.get(ann.node_id))
            sig = self._identity.sign(
                proof_payload(nonce, self._fingerprint, ann.node_id, self._identity.node_id))
            self.peer = ann
            self.state = HandshakeState.EXPECT_ACCEPT
            return pack({"t": _PROOF, "ann": self._announcement.raw, "fp": self._fingerprint,
                         "sig": sig})
        if self.state is HandshakeState.EXPECT_ACCEPT and kind == _ACCEPT:
            self.state = HandshakeState.DONE
            return None
        raise VerificationError("unexpected", f"{kind!r} in state {self.state.value}")
