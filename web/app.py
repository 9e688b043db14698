"""The citizens' web app: server-rendered pages over the node's own control operations.

Theory of operation
-------------------
``make_app`` builds an aiohttp ``Application`` around two seams: ``call``
(method, params) -> result, which is the node's control handler of that name
(the same functions ``meshctl`` reaches over the Unix socket: one command
surface, two transports), and ``subscribe``, which hands every event the node
publishes to a callback.  The web may call only the operations in ``WEB_METHODS``
(reads, and ops signed by the browser's own key); nothing administrative (import, export, publishing bulletins,
trust) is reachable from a browser at all.

Pages are rendered by Jinja2 with autoescaping, so every string that comes
from the mesh (names, titles, snippets, bulletin text) is escaped; library
bodies go through ``web.render.markdown_html``.  No page has an inline script
or style: the one script is ``/static/live.js``, an ES module that opens
``/events`` (server-sent events) and adds new bulletins to the page.

Browser identities: ``/safety`` loads ``/static/identity.js``, which makes the
browser's own Ed25519 key (WebCrypto, non-extractable, kept in IndexedDB) and
signs whole ``safety.person`` op envelopes with it; ``POST /safety/op`` hands
them to ``safety.publish``, which verifies and stores them as a peer's, so the
browser is the registrant in its own name.  That route has its own, tighter
per-client bucket (``write_rate_per_s``) and answers JSON.

Every request passes, in order: security headers on whatever is answered
(a strict Content-Security-Policy among them); a Host check (an IP literal or
``localhost``: a DNS-rebinding page cannot talk to us under its own name); the
per-client rate limit (``RateLimiter`` by peer address, 429 with Retry-After);
the body size limit (413); and for any method other than GET/HEAD a
same-origin check (the ``Origin`` header must be this site, 403 otherwise).

The app shell (static files compressed from memory, the service worker, the
manifest, ``/offline``) is ``web.pwa``; the community certificate page
(``/ca``, ``/ca.crt``) is ``web.ca``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jinja2
import markupsafe
from aiohttp import web

from meshd.core.errors import ControlError
from web import ca as ca_routes
from web import pwa
from web.i18n import LANGS, TEXT, pick_language
from web.limits import RateLimiter
from web.render import markdown_html, snippet_parts

__all__ = ["CSP", "WEB_METHODS", "Caller", "Subscribe", "WebSettings", "make_app"]

log = logging.getLogger(__name__)

Caller = Callable[[str, dict[str, Any]], Awaitable[Any]]
Listener = Callable[[str, dict[str, Any]], None]
Subscribe = Callable[[Listener], Callable[[], None]]

#: the only control methods the web may call: reads, and publishing ops the browser signed
#: with its own key (``library.prepare`` composes such a change and stores nothing)
WEB_METHODS: Final = frozenset({"status", "routes", "library.search", "library.show",
                                "bulletin.list", "situation.list", "safety.search",
                                "safety.publish", "library.history", "library.prepare",
                                "library.publish", "trust.marks",
                                # leaves (web/messages.py): ciphertext in and out, no admin
                                "leaf.challenge", "leaf.attach", "leaf.held", "leaf.release",
                                "leaf.send", "leaf.key",
                                # reachable browsers for /people: name, key, car only
                                "leaf.directory",
                                # mail a browser leaf sealed and signed itself, and its own
                                # sealed mail held at the car (library_replica/browser_mail.py)
                                "mail.publish", "mail.inbox"})

CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
              "connect-src 'self'; manifest-src 'self'; worker-src 'self'; "
              "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: then Chromium sends "Origin: null" on forms
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), geolocation=(), payment=(), usb=()",
}
_STATUS: Final = {"bad_request": 400, "not_found": 404, "ambiguous": 400, "unreachable": 502,
                  "timeout": 504, "failed": 500, "unknown_method": 500}
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_HERE = Path(__file__).parent
MAX_QUERY = 256
SEARCH_LIMIT = 20
MAX_SAFETY_QUERY = 200



@dataclass(frozen=True, slots=True)
class WebSettings:
    """Limits of one web app (defaults suit a car serving a street's phones)."""

    rate_per_s: float = 20.0
    burst: int = 120
    max_body: int = 16 * 1024
    #: a library correction (its text, or one signed op of it) may be larger
    max_edit_body: int = 256 * 1024
    #: live connections of each kind (event streams; call sockets): a street of phones,
    #: each holding one of each while a page is open (200 phones on one car: 2.5x spare)
    max_streams: int = 512
    heartbeat_s: float = 15.0
    stream_queue: int = 64
    #: signed ops posted by one client address (a tighter bucket beside the request one)
    write_rate_per_s: float = 0.2
    write_burst: int = 10


class _State:
    """What the handlers share: the seams, the limits, the templates, refusal counts."""

    def __init__(self, call: Caller, subscribe: Subscribe, settings: WebSettings,
                 clock: Callable[[], float], wall_clock: Callable[[], float]) -> None:
        self.call = call
        self.subscribe = subscribe
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.limiter = RateLimiter(settings.rate_per_s, settings.burst)
        self.write_limiter = RateLimiter(settings.write_rate_per_s, settings.write_burst)
        self.streams: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = set()
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True)
        self.env.filters["when"] = _when
        self.env.filters["iso"] = _iso
        self.refused: dict[str, int] = {}

    def refuse(self, why: str, request: web.Request) -> None:
        n = self.refused[why] = self.refused.get(why, 0) + 1
        if n == 1:  # logged once per reason; counted always
            log.warning("web: refused %s %s from %s (%s)", request.method, request.rel_url,
                        request.remote, why)

    async def op(self, method: str, params: dict[str, Any]) -> Any:
        if method not in WEB_METHODS:
            raise ControlError("unknown_method", f"{method} is not served on the web")
        return await self.call(method, params)


_state_key: Final = web.AppKey("state", _State)


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%m-%d %H:%M")


def _iso(ms: Any) -> str:
    if not isinstance(ms, int):
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def _state(request: web.Request) -> _State:
    return request.app[_state_key]


def _lang(request: web.Request) -> str:
    return pick_language(request.cookies.get("lang"), request.headers.get("Accept-Language"))


def _render(request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
    st = _state(request)
    lang = _lang(request)
    html = st.env.get_template(template).render(
        lang=lang, t=TEXT[lang], other=next(x for x in LANGS if x != lang),
        path=request.path, **ctx)
    return web.Response(body=html.encode("utf-8", "replace"), status=status,
                        content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


def _error_page(request: web.Request, status: int, message: str) -> web.Response:
    return _render(request, "error.html", status=status, title=str(status), status_code=status,
                   message=message)


# ------------------------------------------------------------------ middlewares

def _host_ok(request: web.Request) -> bool:
    host = request.url.host
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    return origin == f"{request.scheme}://{request.host}"


@web.middleware
async def _guard(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    st = _state(request)
    try:
        if not _host_ok(request):
            st.refuse("host", request)
            resp: web.StreamResponse = web.Response(status=400, text="bad Host header")
        elif not st.limiter.allow(request.remote or "?", st.clock()):
            st.refuse("rate", request)
            resp = _error_page(request, 429, TEXT[_lang(request)]["too_many"])
            resp.headers["Retry-After"] = str(max(1, round(
                st.limiter.retry_after_s(request.remote or "?"))))
        elif (request.content_length or 0) > (
                st.settings.max_edit_body if request.path.startswith("/library/")
                else st.settings.max_body):
            st.refuse("size", request)
            resp = web.Response(status=413, text="request body too large")
        elif request.method not in _SAFE_METHODS and not _same_origin(request):
            st.refuse("origin", request)
            resp = _error_page(request, 403, TEXT[_lang(request)]["forbidden"])
        else:
            resp = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "text/html":
            resp = _error_page(request, exc.status, exc.reason)
        else:
            resp = web.Response(status=exc.status, headers=exc.headers, body=exc.body)
    except ControlError as exc:
        resp = _error_page(request, _STATUS.get(exc.code, 500), exc.message)
    for k, v in _HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


# ------------------------------------------------------------------ pages

async def _bulletins(st: _State) -> list[dict[str, Any]]:
    res = await st.op("bulletin.list", {})
    return sorted(res["bulletins"], key=lambda b: b["issued_ms"], reverse=True)


async def home(request: web.Request) -> web.Response:
    st = _state(request)
    return _render(request, "home.html", title=TEXT[_lang(request)]["home"],
                   bulletins=await _bulletins(st))


async def library(request: web.Request) -> web.Response:
    st = _state(request)
    q = request.query.get("q", "").strip()
    results: list[dict[str, Any]] | None = None
    if q:
        if len(q) > MAX_QUERY:
            raise ControlError("bad_request", f"a search is at most {MAX_QUERY} characters")
        res = await st.op("library.search", {"query": q, "limit": SEARCH_LIMIT})
        results = [{**r, "parts": snippet_parts(r["snippet"])} for r in res["results"]]
    return _render(request, "library.html", title=TEXT[_lang(request)]["library"], q=q,
                   results=results)


async def document(request: web.Request) -> web.Response:
    st = _state(request)
    doc = await st.op("library.show", {"id": request.match_info["doc_id"]})
    body_html = await asyncio.to_thread(markdown_html, doc["body"])
    return _render(request, "document.html", title=doc["title"], doc=doc,
                   body_html=markupsafe.Markup(body_html))


def _fields(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == kind]


async def board(request: web.Request) -> web.Response:
    st = _state(request)
    records = (await st.op("situation.list", {}))["records"]
    needs: list[tuple[str, str]] = []
    for r in records:
        for item in r["fields"].get("needs") or []:
            if isinstance(item, str):
                needs.append((r["fields"].get("name") or r["name"] or r["owner"][:8], item))
    vehicles = [r for r in _fields(records, "vehicle")
                if (r["fields"].get("battery_offer_kwh") or 0) > 0
                and r["fields"].get("available", True) is not False]
    return _render(request, "board.html", title=TEXT[_lang(request)]["board"],
                   shelters=_fields(records, "shelter"), needs=needs, vehicles=vehicles,
                   bulletins=await _bulletins(st))


async def people(request: web.Request) -> web.Response:
    st = _state(request)
    me = await st.op("status", {})
    routes = (await st.op("routes", {}))["routes"]
    # attached browsers (mesh leaves, here or at other cars) are listed as browsers
    browsers = (await st.op("leaf.directory", {}))["browsers"]
    leaf_ids = {b["node_id"] for b in browsers}
    reachable = sorted((r for r in routes if r["reachable"] and r["destination"] not in leaf_ids),
                       key=lambda r: (r["metric"], r["name"]))
    marks = await st.op("trust.marks", {})  # verified marks; pinned contacts: contacts.js
    return _render(request, "people.html", title=TEXT[_lang(request)]["people"], me=me,
                   routes=reachable, browsers=browsers, marks=marks)


async def safety(request: web.Request) -> web.Response:
    """The safety registry: "I am safe" (signed in the browser) and find a person."""
    st = _state(request)
    q = request.query.get("q", "").strip()
    people_found: list[dict[str, Any]] | None = None
    if q:
        if len(q) > MAX_SAFETY_QUERY:
            raise ControlError("bad_request",
                               f"a search is at most {MAX_SAFETY_QUERY} characters")
        people_found = (await st.op("safety.search", {"query": q, "limit": SEARCH_LIMIT}))[
            "people"]
    # the car's clock, for a phone whose own clock is wrong (see identity.js)
    return _render(request, "safety.html", title=TEXT[_lang(request)]["safety_title"], q=q,
                   people_found=people_found, now_ms=int(st.wall_clock() * 1000))


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status,
                             headers={"Cache-Control": "no-store"})


async def publish_op(request: web.Request) -> web.Response:
    """A safety op signed by the browser's own key: verified and stored under that key.

    JSON ``{"op": hex}``; the guard has already checked origin, size and the request rate.
    Answers 200 ``safety.publish``'s result, 409 for an op stored already (a replay), 400
    with a message for anything refused (a forged signature among them), 415 for another
    content type, 429 when this client posts ops faster than ``write_rate_per_s``.
    """
    st = _state(request)
    if request.content_type != "application/json":
        st.refuse("content-type", request)
        return _json_error(415, "send application/json: {\"op\": hex}")
    if not st.write_limiter.allow(request.remote or "?", st.clock()):
        st.refuse("write-rate", request)
        resp = _json_error(429, TEXT[_lang(request)]["too_many"])
        resp.headers["Retry-After"] = str(max(1, round(
            st.write_limiter.retry_after_s(request.remote or "?"))))
        return resp
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or set(doc) != {"op"} or not isinstance(doc["op"], str):
        st.refuse("malformed", request)
        return _json_error(400, 'the body is {"op": hex of one signed op}')
    try:
        res = await st.op("safety.publish", {"op": doc["op"]})
    except ControlError as exc:
        st.refuse("op", request)
        return _json_error(_STATUS.get(exc.code, 500), exc.message)
    if res["result"] == "duplicate":
        st.refuse("replay", request)
        return _json_error(409, f"op {res['op_id']} is stored already (replayed)")
    return web.json_response(res, headers={"Cache-Control": "no-store"})


async def set_language(request: web.Request) -> web.Response:
    try:
        form = await request.post()
    except UnicodeDecodeError:  # a form that is not UTF-8
        raise web.HTTPBadRequest(reason="the form is not UTF-8") from None
    lang = form.get("lang")
    nxt = form.get("next")
    if lang not in LANGS:
        raise web.HTTPBadRequest(reason="lang is ja or en")
    target = nxt if isinstance(nxt, str) and nxt.startswith("/") and \
        not nxt.startswith("//") and "\\" not in nxt and len(nxt) < 512 else "/"
    resp = web.Response(status=303, headers={"Location": target})
    resp.set_cookie("lang", str(lang), max_age=365 * 24 * 3600, samesite="Strict",
                    httponly=True, secure=request.secure)
    return resp


# ------------------------------------------------------------------ live events

def _bulletin_event(b: Mapping[str, Any]) -> dict[str, Any]:
    return {"op_id": b["op_id"], "title": b["title"], "body": b["body"],
            "authority": b["authority"]["name"], "issued_ms": b["issued_ms"],
            "expires_ms": b["expires_ms"]}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    # json.dumps escapes CR/LF inside strings, so one data line can never be split
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: every bulletin in force at once, then new and expired ones."""
    st = _state(request)
    if len(st.streams) >= st.settings.max_streams:
        st.refuse("streams", request)
        raise web.HTTPServiceUnavailable(reason="too many live connections")
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(
        st.settings.stream_queue)
    from web import messages

    mail = messages.live_filter(request)  # "mail" for this browser's leaf, if attached

    def listener(event: str, data: dict[str, Any]) -> None:
        if mail is not None and (m := mail(event, data)) is not None:
            event, data = "sse", {"event": m[0], "data": m[1]}
        elif event not in ("bulletin.published", "bulletin.expired"):
            return
        try:
            queue.put_nowait((event, data))
        except asyncio.QueueFull:  # a client that does not read: end its stream
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    queue.get_nowait()
            queue.put_nowait(None)

    unsubscribe = st.subscribe(listener)
    st.streams.add(queue)
    try:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            **_HEADERS})
        await resp.prepare(request)
        await resp.write(b"retry: 3000\n\n")
        for b in reversed(await _bulletins(st)):
            await resp.write(_sse("bulletin", _bulletin_event(b)))
        if mail is not None and await messages.held_count(st, request):
            await resp.write(_sse("mail", {}))
        await resp.write(_sse("ready", {}))
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), st.settings.heartbeat_s)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            event, data = item
            if event == "sse":
                await resp.write(_sse(data["event"], data["data"]))
            elif event == "bulletin.published":
                await resp.write(_sse("bulletin", _bulletin_event(data["bulletin"])))
            else:
                await resp.write(_sse("expired", {"op_ids": list(data["op_ids"])}))
        return resp
    except ConnectionResetError:  # the browser went (a reload, a live.js reconnect)
        return resp
    except asyncio.CancelledError:
        raise
    finally:
        unsubscribe()
        st.streams.discard(queue)


async def _close_streams(app: web.Application) -> None:
    for q in list(app[_state_key].streams):
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(None)


# ------------------------------------------------------------------ the app

def make_app(call: Caller, subscribe: Subscribe, settings: WebSettings | None = None, *,
             clock: Callable[[], float] = time.monotonic,
             wall_clock: Callable[[], float] = time.time,
             ca_pem: bytes | None = None) -> web.Application:
    """The web app over ``call`` (control handlers by name) and ``subscribe`` (node events).

    ``clock`` paces the rate limits; ``wall_clock`` is the node's (mesh) time, given to the
    browser so that ops it signs carry a time the cars accept.  ``ca_pem`` is the community
    web CA's certificate, offered at ``/ca`` (``web.ca``).
    """
    settings = settings or WebSettings()
    app = web.Application(middlewares=[_guard],
                          client_max_size=max(settings.max_body, settings.max_edit_body))
    app[_state_key] = _State(call, subscribe, settings, clock, wall_clock)
    app.router.add_get("/", home)
    app.router.add_get("/library", library)
    app.router.add_get(r"/library/{doc_id:[0-9a-fA-F]{4,32}}", document)
    app.router.add_get("/board", board)
    app.router.add_get("/people", people)
    app.router.add_get("/safety", safety)
    app.router.add_post("/safety/op", publish_op)
    from web import library_edit
    library_edit.add_routes(app)
    app.router.add_get("/events", events)
    app.router.add_post("/lang", set_language)
    from web import messages
    from web.calls import add_routes as add_call_routes  # it imports this module

    add_call_routes(app)
    messages.add_routes(app)
    # over HTTPS a service worker registers only with a trusted certificate: pwa.js tries
    # there only when the car serves the community-signed one
    app[_state_key].env.globals["community_cert"] = ca_pem is not None
    pwa.add_routes(app, _render, _lang)  # /static/, /sw.js, /manifest.webmanifest, /offline
    ca_routes.add_routes(app, ca_pem, _render, _lang)  # /ca, /ca.crt
    app.on_shutdown.append(_close_streams)
    return app


def refused_counts(app: web.Application) -> dict[str, int]:
    """Requests refused so far, by reason (host, rate, size, origin, streams)."""
    return dict(app[_state_key].refused)
