"""The web certificate (P-256, IP SANs, 0600 key) and the web flags of meshd."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from carmesh.cli import build_parser, config_flags
from meshd.config import Config, ConfigError
from web.cert import VALIDITY_DAYS, ensure_certificate

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def _sans(cert_path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_certificate_is_p256_names_addresses_and_key_is_private(tmp_path: Path) -> None:
    cert_path, key_path = ensure_certificate(tmp_path, ["192.168.7.1", "0.0.0.0"], "car-1",
                                             now=NOW)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    assert _sans(cert_path) == {"192.168.7.1", "127.0.0.1", "::1"}  # 0.0.0.0 is not named
    assert cert.issuer == cert.subject  # self-signed
    assert cert.not_valid_after_utc - NOW <= datetime.timedelta(days=VALIDITY_DAYS)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_certificate_is_kept_then_remade_for_new_addresses_or_expiry(tmp_path: Path) -> None:
    c1, k1 = ensure_certificate(tmp_path, ["10.1.0.1"], "car", now=NOW)
    pem1, key1 = c1.read_bytes(), k1.read_bytes()
    ensure_certificate(tmp_path, ["10.1.0.1"], "car", now=NOW + datetime.timedelta(days=10))
    assert c1.read_bytes() == pem1  # same addresses, far from expiry: kept
    ensure_certificate(tmp_path, ["10.1.0.2"], "car", now=NOW)
    assert c1.read_bytes() != pem1 and _sans(c1) == {"10.1.0.2", "127.0.0.1", "::1"}
    assert k1.read_bytes() == key1  # the key is kept
    pem2 = c1.read_bytes()
    ensure_certificate(tmp_path, ["10.1.0.2"], "car",
                       now=NOW + datetime.timedelta(days=VALIDITY_DAYS - 10))
    assert c1.read_bytes() != pem2  # renewed a month before expiry
    with pytest.raises(ValueError):
        ensure_certificate(tmp_path, ["not-an-ip"], "car", now=NOW)


def test_web_flags() -> None:
    p = build_parser()
    args = config_flags(p.parse_args(["--web", "192.168.7.1:8443", "--web", "[fd00::1]:8443",
                                      "--web-local", "127.0.0.1:9000", "--no-web"]))
    c = Config().merged(args)
    assert c.web == ("192.168.7.1:8443", "[fd00::1]:8443")
    assert c.web_local == "127.0.0.1:9000" and c.no_web is True
    assert Config().web_local == "127.0.0.1:7480" and not Config().no_web and Config().web == ()
    with pytest.raises(ConfigError, match="loopback only"):
        Config().merged({"web_local": "192.168.7.1:80"})
    with pytest.raises(ConfigError):
        Config().merged({"web": ["192.168.7.1"]})  # a port is required
    with pytest.raises(ConfigError):
        Config().merged({"no-web": "yes"})
    assert Config().merged({"web": "10.0.0.1:443"}).web == ("10.0.0.1:443",)
    assert ipaddress.ip_address("::1").is_loopback


def test_meshd_does_not_import_web() -> None:
    root = Path(__file__).resolve().parents[2] / "meshd"
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import web" not in text and "from web" not in text, path
