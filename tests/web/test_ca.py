"""The community web CA: ``meshctl trust web-ca|web-cert``, the node serving the signed
certificate, ``/ca``, and TLS clients that trust the CA alone (Python's ssl; chromium with
the CA in its NSS database, no certificate error ignored)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from carmesh.meshctl import main as meshctl
from tests.web.conftest import Running
from web.cert import (
    CA_CERT_NAME,
    CERT_NAME,
    SIGNED_CERT_NAME,
    ensure_certificate,
    load_ca,
    make_ca,
    server_context,
    sign_node_certificate,
)
from web.service import WebService

aio = pytest.mark.asyncio(loop_scope="module")

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    rc = meshctl([*argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else None


def test_meshctl_makes_a_ca_offline_and_signs_a_node(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, ca_file = tmp_path / "car", tmp_path / "stick" / "web-ca.pem"
    ca_file.parent.mkdir()
    rc, doc = _run(capsys, "trust", "web-ca", "--ca", str(ca_file), "--community", "本町",
                   "--state-dir", str(state))
    assert rc == 0, doc
    assert stat.S_IMODE(ca_file.stat().st_mode) == 0o600
    key, cert = load_ca(ca_file)
    assert isinstance(key.curve, ec.SECP256R1)
    assert doc["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    nc = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = nc.value.permitted_subtrees or []
    assert ipaddress.ip_network("192.168.0.0/16") in [n.value for n in permitted]
    assert not any(isinstance(n, x509.IPAddress) and n.value.is_global for n in permitted)
    # never overwritten; never inside the node's state directory
    assert _run(capsys, "trust", "web-ca", "--ca", str(ca_file), "--state-dir", str(state))[
        0] == 1
    state.mkdir()
    assert _run(capsys, "trust", "web-ca", "--ca", str(state / "ca.pem"),
                "--state-dir", str(state))[0] == 2
    # the dealer visit: sign the car's web key for its addresses
    rc, doc = _run(capsys, "trust", "web-cert", "--ca", str(ca_file), "--address",
                   "192.168.7.1:8443", "--address", "[fd00::1]:8443", "--name", "car-1",
                   "--state-dir", str(state))
    assert rc == 0, doc
    assert set(doc["addresses"]) == {"192.168.7.1", "fd00::1", "127.0.0.1", "::1"}
    leaf = x509.load_pem_x509_certificate((state / SIGNED_CERT_NAME).read_bytes())
    leaf.verify_directly_issued_by(cert)
    assert (state / CA_CERT_NAME).read_bytes() == cert.public_bytes(serialization.Encoding.PEM)
    assert b"PRIVATE" not in (state / CA_CERT_NAME).read_bytes()  # the CA key stays on the stick
    # a public address is refused: the CA may not vouch for it
    rc, _ = _run(capsys, "trust", "web-cert", "--ca", str(ca_file), "--address", "8.8.8.8",
                 "--state-dir", str(state))
    assert rc == 2
    assert _run(capsys, "trust", "web-cert", "--ca", str(tmp_path / "nope"), "--address",
                "10.0.0.1", "--state-dir", str(state))[0] == 1


def test_node_serves_the_signed_certificate_while_it_fits(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key, ca = make_ca("test", now=NOW)
    sign_node_certificate(key, ca, tmp_path, ["10.0.0.5"], "car", now=NOW)
    cert, _ = ensure_certificate(tmp_path, ["10.0.0.5", "0.0.0.0"], "car", now=NOW)
    assert cert.name == SIGNED_CERT_NAME
    # a new address the signed certificate does not name: self-signed, and why
    with caplog.at_level(logging.WARNING, logger="web.cert"):
        cert, _ = ensure_certificate(tmp_path, ["10.0.0.6"], "car", now=NOW)
    assert cert.name == CERT_NAME and "does not name 10.0.0.6" in caplog.text
    # expired: self-signed
    later = NOW + datetime.timedelta(days=400)
    assert ensure_certificate(tmp_path, ["10.0.0.5"], "car", now=later)[0].name == CERT_NAME
    # signed by another CA than web-ca.pem: not served
    _, other = make_ca("other", now=NOW)
    (tmp_path / CA_CERT_NAME).write_bytes(other.public_bytes(serialization.Encoding.PEM))
    assert ensure_certificate(tmp_path, ["10.0.0.5"], "car", now=NOW)[0].name == CERT_NAME


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def signed_car(running: Running) -> AsyncIterator[tuple[str, Path, Path]]:
    """The running node's web service on HTTPS 127.0.0.1 with a CA-signed certificate."""
    state = Path(running.node.state_dir)
    ca_dir = state.parent / (state.name + "-stick")
    ca_dir.mkdir(exist_ok=True)
    key, ca = make_ca("本町")
    sign_node_certificate(key, ca, state, ["127.0.0.1"], "car-1")
    (ca_dir / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (ca_dir / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    svc = WebService(call=running.call, subscribe=running.subscribe, state_dir=state,
                     name="car-1", local=None, https=["127.0.0.1:0"])
    task = asyncio.create_task(svc.run())
    await svc.started.wait()
    try:
        yield svc.urls[0], ca_dir / "ca.crt", ca_dir / "key.pem"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await svc.close()
        shutil.rmtree(ca_dir, ignore_errors=True)
        for name in (SIGNED_CERT_NAME, CA_CERT_NAME):
            (state / name).unlink(missing_ok=True)


@aio
async def test_python_tls_verifies_the_car_by_ip_with_the_ca_as_only_anchor(
        signed_car: tuple[str, Path, Path]) -> None:
    url, ca_path, _ = signed_car
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(ctx.get_ca_certs()) == 1  # the community CA and nothing else
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/ca", ssl=ctx) as r:
            assert r.status == 200
            html = await r.text()
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        fp = ":".join(f"{b:02X}" for b in ca.fingerprint(hashes.SHA256()))
        assert fp in html and 'href="/ca.crt"' in html
        async with s.get(url + "/ca.crt", ssl=ctx) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/x-x509-ca-cert"
            assert await r.read() == ca.public_bytes(serialization.Encoding.DER)
        # without the CA the same certificate is refused
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await s.get(url + "/ca", ssl=ssl.create_default_context())
    # by the IP SAN: a name the certificate does not carry is refused
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, w = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="127.0.0.1")
    w.close()
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|match"):
        await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname="127.0.0.2")


async def _serve_leaf(tmp: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                      names: list[x509.GeneralName]) -> tuple[asyncio.Server, int]:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(ca.not_valid_before_utc)
            .not_valid_after(ca.not_valid_before_utc + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    ctx = server_context(tmp / "leaf.pem", tmp / "leaf-key.pem")

    async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0, ssl=ctx)
    return server, int(server.sockets[0].getsockname()[1])


@aio
async def test_a_stolen_ca_key_cannot_vouch_for_a_public_address_or_a_dns_name(
        tmp_path: Path) -> None:
    key, ca = make_ca("本町")
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    loop127 = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    for extra, ok in ((None, True), (x509.IPAddress(ipaddress.ip_address("8.8.8.8")), False),
                      (x509.DNSName("bank.example"), False)):
        server, port = await _serve_leaf(tmp_path, key, ca, [loop127] + ([extra] if extra else []))
        try:
            if ok:
                _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                     server_hostname="127.0.0.1")
                w.close()
            else:
                with pytest.raises(ssl.SSLCertVerificationError,
                                   match=r"subtree violation|[Nn]ame constraint"):
                    await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                  server_hostname="127.0.0.1")
        finally:
            server.close()
            await server.wait_closed()


@aio
async def test_ca_page_without_a_ca(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/ca", headers={"Accept-Language": "en"})
        assert r.status == 200 and "no community certificate" in await r.text()
        assert (await c.get("/ca.crt")).status == 404
    finally:
        await c.close()


CERTUTIL = shutil.which("certutil")
CHROMIUM = shutil.which("chromium")


def _nss_home(home: Path, ca: Path | None) -> None:
    """A HOME whose NSS database (what chromium on Linux trusts) holds ``ca`` as a TLS CA."""
    nss = home / ".pki" / "nssdb"
    nss.mkdir(parents=True)
    subprocess.run([str(CERTUTIL), "-N", "-d", f"sql:{nss}", "--empty-password"], check=True)
    if ca is not None:
        subprocess.run([str(CERTUTIL), "-A", "-d", f"sql:{nss}", "-n", "carmesh web CA",
                        "-t", "C,,", "-i", str(ca)], check=True)


@pytest.mark.slow
@aio
@pytest.mark.skipif(CERTUTIL is None or CHROMIUM is None,
                    reason="needs chromium and certutil (libnss3-tools; make sysdeps)")
async def test_chromium_trusts_the_car_through_the_ca_in_its_nss_database(
        signed_car: tuple[str, Path, Path], tmp_path: Path) -> None:
    """No certificate error is ignored: the chain to the CA in the NSS database is the proof."""
    async_api = pytest.importorskip("playwright.async_api")
    url, ca_path, _ = signed_car
    homes = {"trusting": tmp_path / "trusting", "plain": tmp_path / "plain"}
    await asyncio.to_thread(_nss_home, homes["trusting"], ca_path)
    await asyncio.to_thread(_nss_home, homes["plain"], None)
    async with async_api.async_playwright() as p:
        for which, home in homes.items():
            browser = await p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                env={**os.environ, "HOME": str(home)})
            try:
                # ignore_https_errors stays False
                page = await browser.new_page(viewport={"width": 390, "height": 844},
                                              locale="ja")
                if which == "trusting":
                    resp = await page.goto(url + "/ca")
                    assert resp is not None and resp.status == 200
                    if os.environ.get("CARMESH_SCREENSHOTS"):
                        await page.screenshot(path=str(Path(os.environ["CARMESH_SCREENSHOTS"])
                                                       / "ca.png"), full_page=True)
                    assert await page.evaluate("window.isSecureContext") is True
                    # a valid certificate lets the service worker register over HTTPS
                    scope = await page.evaluate(
                        "navigator.serviceWorker.ready.then(r => r.scope)")
                    assert scope == url + "/"
                else:
                    with pytest.raises(async_api.Error, match="ERR_CERT_AUTHORITY_INVALID"):
                        await page.goto(url + "/ca")
            finally:
                await browser.close()
