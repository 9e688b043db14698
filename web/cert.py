"""The web app's HTTPS certificate: ECDSA P-256, self-signed, naming the listen addresses.

Browsers refuse Ed25519 certificates, so the web listener cannot reuse the
node's link identity: each node makes a separate P-256 key (``web-key.pem``,
mode 0600) and a certificate (``web-cert.pem``) in its state directory.  The
certificate names every listen address as an IP subjectAltName (phones reach a
car by address; there is no DNS on the mesh) and is remade when the addresses
change or it comes within a month of expiry; the key is kept.  Validity is 397
days, the most Apple and Chromium accept for a TLS server certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CERT_NAME", "KEY_NAME", "VALIDITY_DAYS", "ensure_certificate", "server_context"]

log = logging.getLogger(__name__)

CERT_NAME = "web-cert.pem"
KEY_NAME = "web-key.pem"
VALIDITY_DAYS = 397
_RENEW_BEFORE = datetime.timedelta(days=30)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _load_or_create_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        pass
    else:
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            return key
        log.warning("%s is not a P-256 key; making a new one", path)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key


def _current(path: Path, key: ec.EllipticCurvePrivateKey, ips: set[IPAddress],
             now: datetime.datetime) -> bool:
    """Whether the stored certificate is for ``key``, names exactly ``ips`` and is not expiring."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - now < _RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(san.get_values_for_type(x509.IPAddress)) == ips


def ensure_certificate(state_dir: Path, addresses: Iterable[str], name: str, *,
                       now: datetime.datetime | None = None) -> tuple[Path, Path]:
    """(certificate, key) paths in ``state_dir`` for HTTPS on ``addresses`` (IP literals).

    Unspecified addresses (0.0.0.0, ::) are not named; loopback always is, so the
    node's own user can open ``https://127.0.0.1:PORT`` too.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    ips: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if not ip.is_unspecified:
            ips.add(ip)
    key_path, cert_path = state_dir / KEY_NAME, state_dir / CERT_NAME
    key = _load_or_create_key(key_path)
    if _current(cert_path, key, ips, now):
        return cert_path, key_path
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carmesh"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "carmesh")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ip) for ip in sorted(ips, key=lambda i: (i.version, int(i)))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    tmp = cert_path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, cert_path)
    log.info("web: new HTTPS certificate for %s", ", ".join(str(i) for i in sorted(
        ips, key=lambda i: (i.version, int(i)))))
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) with this certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
