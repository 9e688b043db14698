"""TLS certificates for neighbour links.

Each node's QUIC certificate is self-signed with its Ed25519 identity key
(DESIGN.md "Neighbour links").  Nobody trusts the certificate as such: the
link handshake (``meshd.links.handshake``) checks that its key is the key in the
peer's signed announcement, and the connecting side signs the SHA-256
fingerprint of the certificate it saw, so a machine in the middle presenting
its own certificate is caught.

Reading the certificate a peer presented needs aioquic internals: that is
``meshd.links.aioquic_internals.peer_certificate``.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from meshd.core.identity import Identity

__all__ = [
    "CERT_VALIDITY_DAYS",
    "certificate_fingerprint",
    "make_certificate",
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
