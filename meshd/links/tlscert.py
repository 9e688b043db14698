"""TLS certificates for neighbour links, and the one adapter that reads aioquic internals.

Each node's QUIC certificate is self-signed with its Ed25519 identity key
(DESIGN.md "Neighbour links").  Nobody trusts the certificate as such: the
link handshake (``meshd.links.handshake``) checks that its key is the key in the
peer's signed announcement, and the connecting side signs the SHA-256
fingerprint of the certificate it saw, so a machine in the middle presenting
its own certificate is caught.

aioquic 1.7.2 has no public accessor for the peer's certificate.
``peer_certificate_key`` is the only place in carmesh that reaches into
aioquic's TLS internals; ``tests/meshd/test_links_tlscert.py`` fails if they
change.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from meshd.core.errors import LocalProtocolError
from meshd.core.identity import Identity

__all__ = [
    "CERT_VALIDITY_DAYS",
    "certificate_fingerprint",
    "make_certificate",
    "peer_certificate_key",
]

#: validity of the self-signed link certificate; nothing checks dates beyond the TLS stack
CERT_VALIDITY_DAYS = 3650


def make_certificate(identity: Identity) -> tuple[x509.Certificate, Ed25519PrivateKey]:
    """Self-signed X.509 certificate over ``identity``'s Ed25519 key (CN = NodeId hex)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.hex)])
    # backdate a day so that peers with a slightly slow clock accept it
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.signing_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .sign(identity.signing_key, None)  # Ed25519 signs without a separate hash
    )
    return cert, identity.signing_key


def certificate_fingerprint(cert: x509.Certificate | bytes) -> bytes:
    """SHA-256 of the certificate's DER encoding (32 bytes)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(Encoding.DER)
    return hashlib.sha256(der).digest()


def _peer_certificate(quic_connection: Any) -> x509.Certificate | None:
    tls = getattr(quic_connection, "tls", None)
    if tls is None:
        raise LocalProtocolError("aioquic internals changed: QuicConnection has no 'tls' attribute"
                                 " (or the handshake has not started)")
    if not hasattr(tls, "_peer_certificate"):
        raise LocalProtocolError(
            "aioquic internals changed: tls.Context has no '_peer_certificate'")
    cert = tls._peer_certificate
    if cert is not None and not isinstance(cert, x509.Certificate):
        raise LocalProtocolError(f"aioquic internals changed: _peer_certificate is {type(cert)!r}")
    return cert


def peer_certificate(quic_connection: Any) -> x509.Certificate:
    """The certificate the peer presented on an aioquic ``QuicConnection`` (after its handshake)."""
    cert = _peer_certificate(quic_connection)
    if cert is None:
        raise LocalProtocolError("the peer presented no certificate (yet)")
    return cert


def peer_certificate_key(quic_connection: Any) -> bytes:
    """Raw 32-byte Ed25519 public key of the certificate the peer presented.

    Raises ``LocalProtocolError`` if aioquic's internals changed or no Ed25519
    certificate was seen.
    """
    key = peer_certificate(quic_connection).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise LocalProtocolError(f"peer certificate key is {type(key).__name__}, not Ed25519")
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
