"""The web app's HTTPS certificate: ECDSA P-256, self-signed, naming the listen addresses.

Browsers refuse Ed25519 certificates, so the web listener cannot reuse the
node's link identity: each node makes a separate P-256 key (``web-key.pem``,
mode 0600) and a certificate (``web-cert.pem``) in its state directory.  The
certificate names every listen address as an IP subjectAltName (phones reach a
car by address; there is no DNS on the mesh) and is remade when the addresses
change or it comes within a month of expiry; the key is kept.  Validity is 397
days, the most Apple and Chromium accept for a TLS server certificate.

A community web CA (``meshctl trust web-ca``; its key kept offline like the
root key) lets phones trust every car at once.  At a dealer visit
``meshctl trust web-cert`` signs the node's web key for its addresses
(``sign_node_certificate``) and leaves two files in the state directory:
``web-cert-ca.pem`` (the signed certificate) and ``web-ca.pem`` (the CA's
certificate, which the web app offers at ``/ca``).  ``ensure_certificate``
serves the signed certificate while it is for this key, names every listen
address, is signed by that CA and has not expired; otherwise (a new address, a
lapsed certificate) it falls back to the self-signed one and says why.  The CA
certificate carries critical name constraints: it may vouch for private,
link-local and loopback IP addresses only, and for no DNS name, so a phone that
installed it trusts it for the community's cars and for nothing on the Internet,
even if its key were stolen.
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_CERT_NAME", "CA_VALIDITY_DAYS", "CERT_NAME", "KEY_NAME", "PERMITTED_NETWORKS",
           "SIGNED_CERT_NAME", "VALIDITY_DAYS", "ca_certificate", "ensure_certificate",
           "load_ca", "make_ca", "server_context", "sign_node_certificate", "write_ca"]

log = logging.getLogger(__name__)

CERT_NAME = "web-cert.pem"
KEY_NAME = "web-key.pem"
SIGNED_CERT_NAME = "web-cert-ca.pem"
CA_CERT_NAME = "web-ca.pem"
VALIDITY_DAYS = 397
CA_VALIDITY_DAYS = 10 * 365
#: what the community CA may vouch for: the addresses cars serve phones on, nothing public
PERMITTED_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10",
    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"))
#: the only DNS subtree permitted (a reserved name that never resolves): no DNS name at all
_NO_DNS = "carmesh.invalid"
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
    signed = state_dir / SIGNED_CERT_NAME
    if signed.exists():
        why = _signed_unusable(state_dir, key, ips, now)
        if why is None:
            return signed, key_path
        log.warning("web: not serving the community-signed certificate %s: %s; serving a "
                    "self-signed one (sign again: meshctl trust web-cert)", signed, why)
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


def _signed_unusable(state_dir: Path, key: ec.EllipticCurvePrivateKey, ips: set[IPAddress],
                     now: datetime.datetime) -> str | None:
    """Why the CA-signed certificate in ``state_dir`` cannot be served (None: it can)."""
    try:
        cert = x509.load_pem_x509_certificate((state_dir / SIGNED_CERT_NAME).read_bytes())
        ca = x509.load_pem_x509_certificate((state_dir / CA_CERT_NAME).read_bytes())
    except FileNotFoundError as exc:
        return f"{exc.filename} is missing"
    except ValueError as exc:
        return f"not a certificate ({exc})"
    if cert.public_key() != key.public_key():
        return "it is for another key"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return f"it is not signed by {CA_CERT_NAME}"
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return f"it is valid {cert.not_valid_before_utc:%Y-%m-%d} to " \
               f"{cert.not_valid_after_utc:%Y-%m-%d} only"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "it names no address"
    missing = ips - set(san.get_values_for_type(x509.IPAddress))
    if missing:
        return "it does not name " + ", ".join(sorted(str(i) for i in missing))
    if cert.not_valid_after_utc - now < _RENEW_BEFORE:
        log.warning("web: the community-signed certificate expires on %s: sign it again "
                    "(meshctl trust web-cert)", f"{cert.not_valid_after_utc:%Y-%m-%d}")
    return None


def ca_certificate(state_dir: Path) -> bytes | None:
    """The community web CA's certificate (PEM) in ``state_dir``, if the node has one."""
    try:
        pem = (state_dir / CA_CERT_NAME).read_bytes()
        x509.load_pem_x509_certificate(pem)
    except (FileNotFoundError, ValueError):
        return None
    return pem


def _ca_name(community: str) -> x509.Name:
    label = f"{community} web CA" if community else "carmesh community web CA"
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carmesh"),
                      x509.NameAttribute(NameOID.COMMON_NAME, label[:64])])


def make_ca(community: str, *, now: datetime.datetime | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new community web CA: a P-256 key and its self-signed, name-constrained certificate."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _ca_name(community)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.IPAddress(n) for n in PERMITTED_NETWORKS]
            + [x509.DNSName(_NO_DNS)], excluded_subtrees=None), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def write_ca(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    """Create ``path`` (mode 0600, never over an existing file): the CA's certificate and key."""
    text = (_CA_HEADER.encode() + cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


_CA_HEADER = """\
# carmesh community web CA.  KEEP IT OFFLINE (beside the root key): whoever holds this
# file can make a certificate that every phone with the CA installed trusts for the
# community's private addresses.  Its certificate alone (meshctl trust web-cert copies
# it to each node as web-ca.pem) is public.
"""


def load_ca(path: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """(key, certificate) from a web CA file; raises ``ValueError`` with the reason."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(data)
        start = data.index(b"-----BEGIN PRIVATE KEY-----")
        key = serialization.load_pem_private_key(data[start:], password=None)
    except ValueError as exc:
        raise ValueError(f"{path} is not a web CA file ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.public_key() != key.public_key():
        raise ValueError(f"{path}: the key is not the CA certificate's")
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not bc.ca:
        raise ValueError(f"{path}: the certificate is not a CA's")
    return key, cert


def sign_node_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                          state_dir: Path, addresses: Iterable[str], name: str, *,
                          now: datetime.datetime | None = None) -> Path:
    """Sign the node's web key (made if missing) for ``addresses`` with the community CA.

    Writes ``web-cert-ca.pem`` and ``web-ca.pem`` into ``state_dir`` and returns the
    first.  Loopback is always named.  Raises ``ValueError`` for an address the CA may
    not vouch for (a public one) or a CA that has expired.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    ips: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for a in addresses:
        ip = ipaddress.ip_address(a)
        if ip.is_unspecified:
            raise ValueError(f"{a} is not an address a phone can open: name the car's address")
        if not any(ip in n for n in PERMITTED_NETWORKS):
            raise ValueError(f"{a} is not a private, link-local or loopback address: the "
                             "community CA may not vouch for it")
        ips.add(ip)
    if now >= ca_cert.not_valid_after_utc:
        raise ValueError(f"the web CA expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}")
    state_dir.mkdir(parents=True, exist_ok=True)
    key = _load_or_create_key(state_dir / KEY_NAME)
    not_after = min(now + datetime.timedelta(days=VALIDITY_DAYS), ca_cert.not_valid_after_utc)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carmesh"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or "carmesh")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ip) for ip in sorted(ips, key=lambda i: (i.version, int(i)))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    for fname, pem in ((CA_CERT_NAME, ca_cert.public_bytes(serialization.Encoding.PEM)),
                       (SIGNED_CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))):
        tmp = state_dir / (fname + ".tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, state_dir / fname)
    return state_dir / SIGNED_CERT_NAME


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) with this certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
