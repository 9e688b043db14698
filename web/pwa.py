"""The app shell: static files served compressed from memory, the manifest, the service worker.

Static files (``/static/NAME``) are read once per change (size and mtime are
checked on each request), kept in memory with a gzip copy (level 9, made once)
for text types, and answered with a strong ETag and ``Cache-Control: no-cache``:
the browser revalidates (304) and the service worker answers from its cache at
once.  Pages (``text/html``) and JSON are gzip-compressed per response when the
client accepts it (``compress`` middleware).

``/sw.js`` is the service worker (``web/sw.js`` with this build's version and
shell list filled in; scope ``/``; it is a same-origin script, so the strict
Content-Security-Policy allows it with ``script-src 'self'`` and
``worker-src 'self'``).  Its version is a hash of every static file and of the
offline page's template, so a new build installs a new worker that drops the
old caches.  It precaches the shell (stylesheet, scripts, icons, manifest and
``/offline``), answers static files from the cache while refreshing them
(stale-while-revalidate), and pages network-first: a fresh page when the car
answers within a few seconds, else the copy saved on the last visit (public
pages only: home, library, a document, board, people, ``/ca``; not ``/safety``,
whose car clock the browser signs by would be stale), else
``/offline``.  The live stream (``/events``), forms and every other method go
to the network untouched.  ``/manifest.webmanifest`` makes the app installable.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import mimetypes
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

__all__ = ["SHELL", "add_routes", "compress", "gzip_size"]

Render = Callable[..., web.Response]

_HERE = Path(__file__).parent
_STATIC = _HERE / "static"
#: what the service worker precaches: all a page needs to show without the car
SHELL: Final = ("/offline", "/manifest.webmanifest", "/static/app.css", "/static/live.js",
                "/static/pwa.js", "/static/icon.svg", "/static/icon-192.png")
_NAME = re.compile(r"^(?:[A-Za-z0-9_-][A-Za-z0-9._-]*/)*[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_TYPES: Final = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml", ".png": "image/png", ".json": "application/json",
                 ".webmanifest": "application/manifest+json", ".txt": "text/plain",
                 ".woff2": "font/woff2", ".ico": "image/x-icon"}
_COMPRESSIBLE = ("text/", "application/json", "application/manifest+json", "image/svg+xml")
MAX_STATIC = 8 * 1024 * 1024
_MIN_COMPRESS = 512
_SYNC_COMPRESS = 64 * 1024
OFFLINE: Final = {
    "ja": ("オフライン", "車とつながっていません。車の近くで、車の Wi-Fi に入ってからもう一度開いて"
                        "ください。一度開いたページは、つながっていなくても読めます。"),
    "en": ("Offline", "This phone is not connected to a car. Come near a car, join its Wi-Fi "
                      "and open the page again. Pages you have opened before can be read "
                      "without a connection."),
}


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` gzip-compressed as the shell is served."""
    return len(gzip.compress(data, 9, mtime=0))


@dataclass(frozen=True, slots=True)
class _File:
    stamp: tuple[int, int]
    body: bytes
    gz: bytes | None
    etag: str
    content_type: str


class _Static:
    """Files under ``root`` from memory, each read and compressed once per change."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files: dict[str, _File] = {}

    def get(self, name: str) -> _File | None:
        if len(name) > 200 or not _NAME.match(name):
            return None
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file() or st.st_size > MAX_STATIC:
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self.files.get(name)
        if hit is not None and hit.stamp == stamp:
            return hit
        body = path.read_bytes()
        ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] \
            or "application/octet-stream"
        gz = None
        if ctype.startswith(_COMPRESSIBLE) and len(body) >= _MIN_COMPRESS:
            packed = gzip.compress(body, 9, mtime=0)
            gz = packed if len(packed) < len(body) else None
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        f = _File(stamp, body, gz, etag, ctype)
        self.files[name] = f
        return f

    async def handle(self, request: web.Request) -> web.Response:
        f = self.get(request.match_info["name"])
        if f is None:
            raise web.HTTPNotFound()
        return _answer(request, f.body, f.gz, f.etag, f.content_type)


def _accepts_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


def _answer(request: web.Request, body: bytes, gz: bytes | None, etag: str, ctype: str,
            cache: str = "no-cache") -> web.Response:
    headers = {"ETag": etag, "Cache-Control": cache, "Vary": "Accept-Encoding"}
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if ctype.startswith("text/") or ctype.endswith("json") else None
    if gz is not None and _accepts_gzip(request):
        headers["Content-Encoding"] = "gzip"
        body = gz
    return web.Response(body=body, content_type=ctype, charset=charset, headers=headers)


def _version(static: Path, extra: bytes) -> str:
    h = hashlib.sha256(extra)
    for p in sorted(static.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(static).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _manifest(lang: str) -> bytes:
    ja = lang == "ja"
    doc = {
        "name": "carmesh", "short_name": "carmesh", "lang": lang,
        "description": "車がつなぐ地域の連絡網: お知らせ、安否、図書館、掲示板" if ja else
                       "The community mesh your car serves: bulletins, safety, library, board",
        "start_url": "/", "scope": "/", "id": "/", "display": "standalone",
        "background_color": "#fafafa", "theme_color": "#0b57d0",
        "icons": [{"src": "/static/icon.svg", "sizes": "any", "type": "image/svg+xml"},
                  {"src": "/static/icon-192.png", "sizes": "192x192", "type": "image/png"},
                  {"src": "/static/icon-512.png", "sizes": "512x512", "type": "image/png"}],
    }
    return json.dumps(doc, ensure_ascii=False, indent=1).encode()


def add_routes(app: web.Application, render: Render,
               lang: Callable[[web.Request], str]) -> None:
    """Static files, ``/sw.js``, ``/manifest.webmanifest`` and ``/offline`` on ``app``."""
    static = _Static(_STATIC)
    template = (_HERE / "sw.js").read_text(encoding="utf-8")
    offline_template = (_HERE / "templates" / "offline.html").read_bytes()
    version = _version(_STATIC, template.encode() + offline_template)
    sw = (template.replace("__VERSION__", version)
          .replace('"__SHELL__"', json.dumps(list(SHELL)))).encode()
    sw_gz = gzip.compress(sw, 9, mtime=0)
    sw_etag = f'"sw-{version}"'
    manifests = {code: _manifest(code) for code in ("ja", "en")}

    async def service_worker(request: web.Request) -> web.Response:
        # no-cache: the browser checks for a new worker on every visit (it does anyway
        # once a day); the scope is this path's folder, "/"
        return _answer(request, sw, sw_gz, sw_etag, "text/javascript")

    async def manifest(request: web.Request) -> web.Response:
        code = lang(request)
        body = manifests[code]
        return _answer(request, body, gzip.compress(body, 9, mtime=0),
                       f'"m-{code}-{version}"', "application/manifest+json")

    async def offline(request: web.Request) -> web.Response:
        title, text = OFFLINE[lang(request)]
        resp = render(request, "offline.html", title=title, text=text)
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    app.router.add_get("/static/{name:.+}", static.handle)
    app.router.add_get("/sw.js", service_worker)
    app.router.add_get("/manifest.webmanifest", manifest)
    app.router.add_get("/offline", offline)
    app.middlewares.append(compress)


@web.middleware
async def compress(request: web.Request,
                   handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """gzip a page or JSON answer (not a stream, not what is compressed already)."""
    resp = await handler(request)
    body = resp.body if type(resp) is web.Response else None
    if (isinstance(body, bytes) and len(body) >= _MIN_COMPRESS
            and "Content-Encoding" not in resp.headers
            and (resp.content_type == "text/html" or resp.content_type.endswith("json"))
            and _accepts_gzip(request)):
        assert isinstance(resp, web.Response)
        resp.headers["Vary"] = "Accept-Encoding"
        if len(body) <= _SYNC_COMPRESS:
            # a page is a few KB: compressing it here (~0.1 ms) beats aiohttp's hop to a
            # thread for anything over 4 KB, which a loaded car pays in latency
            resp.body = gzip.compress(body, 6, mtime=0)
            resp.headers["Content-Encoding"] = "gzip"
        else:
            resp.enable_compression(web.ContentCoding.gzip)  # in a thread
    return resp
