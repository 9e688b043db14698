"""``/ca``: the community web CA's certificate for phones to install, and how.

A car whose web certificate was signed at a dealer visit (``meshctl trust
web-cert``) holds the community CA's certificate (``web-ca.pem``); ``/ca``
explains what installing it means, shows its SHA-256 fingerprint (to compare
with the one the dealer shows) and links ``/ca.crt``, the certificate in DER as
``application/x-x509-ca-cert``: the type Android's certificate installer and
iOS Safari's profile download both take.  A car without a CA says so, and
``/ca.crt`` answers 404.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

__all__ = ["TEXT", "add_routes"]

Render = Callable[..., web.Response]

TEXT: Final[Mapping[str, Mapping[str, str]]] = {
    "ja": {
        "title": "この地域の証明書",
        "intro": "この証明書を一度入れておくと、地域のどの車のページも警告なしで開けます。"
                 "販売店の人が表示する指紋と同じか確かめてから入れてください。",
        "scope": "この証明書が保証できるのは地域の車の内部アドレスだけで、"
                 "インターネット上のサイトには使えません。",
        "fingerprint": "SHA-256 指紋", "name": "名前", "until": "有効期限",
        "download": "証明書をダウンロード",
        "android": "Android",
        "android_steps": "ダウンロードする|設定 → セキュリティとプライバシー → その他のセキュリティ設定 → "
                         "暗号化と認証情報 → 証明書のインストール → CA 証明書|"
                         "「インストールする」を選び、ダウンロードした carmesh-ca.crt を選ぶ|"
                         "Chrome でこのページを開き直す",
        "ios": "iPhone / iPad",
        "ios_steps": "Safari でダウンロードし「許可」を押す|"
                     "設定 → 一般 → VPN とデバイス管理 → ダウンロード済みプロファイル → インストール|"
                     "設定 → 一般 → 情報 → 証明書信頼設定 で、この証明書をオンにする|"
                     "Safari でこのページを開き直す",
        "none": "この車は地域の証明書を持っていません(自己署名の証明書で通信しています)。"
                "ブラウザの警告を確かめてから進んでください。",
    },
    "en": {
        "title": "The community certificate",
        "intro": "Install this certificate once and every car's page in the community opens "
                 "without a warning. Check that the fingerprint matches the one the dealer "
                 "shows you first.",
        "scope": "It can vouch only for the cars' private addresses, never for a site on "
                 "the Internet.",
        "fingerprint": "SHA-256 fingerprint", "name": "Name", "until": "Valid until",
        "download": "Download the certificate",
        "android": "Android",
        "android_steps": "Download it|Settings → Security & privacy → More security settings → "
                         "Encryption & credentials → Install a certificate → CA certificate|"
                         "Choose Install anyway, then carmesh-ca.crt from Downloads|"
                         "Open this page again in Chrome",
        "ios": "iPhone / iPad",
        "ios_steps": "Download it in Safari and tap Allow|"
                     "Settings → General → VPN & Device Management → the downloaded profile → "
                     "Install|Settings → General → About → Certificate Trust Settings: turn the "
                     "certificate on|Open this page again in Safari",
        "none": "This car has no community certificate (it uses a self-signed one). Check the "
                "browser's warning before you go on.",
    },
}


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def add_routes(app: web.Application, ca_pem: bytes | None, render: Render,
               lang: Callable[[web.Request], str]) -> None:
    """``GET /ca`` (the page, rendered by ``render``) and ``GET /ca.crt`` (DER)."""
    cert = x509.load_pem_x509_certificate(ca_pem) if ca_pem else None
    info: dict[str, Any] | None = None
    der = b""
    if cert is not None:
        der = cert.public_bytes(serialization.Encoding.DER)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        info = {"fingerprint": _colons(cert.fingerprint(hashes.SHA256())),
                "name": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
                "until": f"{cert.not_valid_after_utc:%Y-%m-%d}"}

    async def page(request: web.Request) -> web.Response:
        c = TEXT[lang(request)]
        return render(request, "ca.html", title=c["title"], c=c, ca=info,
                      android_steps=c["android_steps"].split("|"),
                      ios_steps=c["ios_steps"].split("|"))

    async def download(request: web.Request) -> web.Response:
        if cert is None:
            raise web.HTTPNotFound(reason="this car has no community certificate")
        return web.Response(body=der, content_type="application/x-x509-ca-cert", headers={
            "Content-Disposition": 'attachment; filename="carmesh-ca.crt"',
            "Cache-Control": "no-cache"})

    app.router.add_get("/ca", page)
    app.router.add_get("/ca.crt", download)
