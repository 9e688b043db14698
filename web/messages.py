"""``/messages``: the browser as a leaf of the mesh, its sealed messages passing through the car.

Everything cryptographic happens in the browser (``web/static/leaf.js``): it seals
and signs its messages and opens the ones it receives.  These handlers only move
ciphertext through the node's ``leaf.*`` control operations (``meshd.services.leaves``),
the same ones a control client reaches: one command surface, two transports.

Routes (JSON in and out, all POST, so the guard's same-origin check applies):
``/messages/challenge`` and ``/messages/attach`` attach this browser (the answer sets
the ``leaf`` cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, naming a random
session of this app, not the key); ``/messages/held`` and ``/messages/release``
fetch and drop the ciphertext the car holds for the session's leaf; ``/messages/send``
forwards one sealed message signed by the leaf (a forged signature is refused with
400 and says so); ``/messages/key`` looks a node or browser up by name or id (its
public keys, to seal to).  Sends and attachments have their own per-client bucket.

Mail (``library_replica.browser_mail``): ``/messages/mail`` {op} hands a ``mail.sealed``
or ``mail.receipt`` op the browser signed to ``mail.publish`` (a message to someone with
no route, carried car to car by sync; a receipt for mail the browser opened);
``/messages/inbox`` {author?} answers the sealed mail any car brought for the session's
leaf (``mail.inbox``) and which of the browser's own mail has been acknowledged.

Live: ``live_filter`` lets ``/events`` carry a ``mail`` event (sender's name only) to
the session whose leaf has new mail held; ``live.js`` then has ``leaf.js`` fetch it.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from meshd.core.errors import ControlError
from web.limits import RateLimiter

__all__ = ["LEAF_COOKIE", "MESSAGE_METHODS", "add_routes", "live_filter", "session_leaf"]

LEAF_COOKIE: Final = "leaf"
#: control methods these pages call (added to the web's allow-list)
MESSAGE_METHODS: Final = frozenset({"leaf.challenge", "leaf.attach", "leaf.held",
                                    "leaf.release", "leaf.send", "leaf.key", "status",
                                    "mail.publish", "mail.inbox"})
MAX_SESSIONS = 4096
#: sealed sends and attachments per client address
SEND_RATE_PER_S = 2.0
SEND_BURST = 30


class _Messages:
    def __init__(self) -> None:
        self.sessions: OrderedDict[str, str] = OrderedDict()  # token -> leaf hex
        self.limiter = RateLimiter(SEND_RATE_PER_S, SEND_BURST)

    def new_session(self, leaf: str) -> str:
        token = os.urandom(18).hex()
        self.sessions[token] = leaf
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return token


_key: Final = web.AppKey("messages", _Messages)


def session_leaf(request: web.Request) -> str | None:
    """The leaf (NodeId hex) this request's session attached, or None."""
    m = request.app.get(_key)
    token = request.cookies.get(LEAF_COOKIE)
    if m is None or token is None:
        return None
    return m.sessions.get(token)


def _app() -> Any:
    from web import app  # web.app imports this module while it is built


    return app


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers={"Cache-Control": "no-store"})


async def _body(request: web.Request, keys: set[str]) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise _Refused(415, "send application/json")
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or not set(doc) <= keys or \
            not all(isinstance(v, str) or k == "ids" for k, v in doc.items()):
        raise _Refused(400, f"the body is a JSON object with {', '.join(sorted(keys))}")
    return doc


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Method = Callable[[web.Request, Any, str | None], Awaitable[web.Response]]


def _handler(method: Method, *, limited: bool = False,
             needs_leaf: bool = False) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        app = _app()
        st = app._state(request)
        if limited and not request.app[_key].limiter.allow(request.remote or "?", st.clock()):
            st.refuse("messages-rate", request)
            resp = _json({"error": app.TEXT[app._lang(request)]["too_many"]}, 429)
            resp.headers["Retry-After"] = "1"
            return resp
        leaf = session_leaf(request)
        if needs_leaf and leaf is None:
            return _json({"error": "this browser is not attached to this car: open /messages"},
                         401)
        try:
            return await method(request, st, leaf)
        except _Refused as exc:
            st.refuse("messages", request)
            return _json({"error": str(exc)}, exc.status)
        except ControlError as exc:
            st.refuse("messages", request)
            return _json({"error": exc.message}, app._STATUS.get(exc.code, 500))
    return handle


async def page(request: web.Request) -> web.Response:
    app = _app()
    st = app._state(request)
    me = await st.op("status", {})
    lang = app._lang(request)
    resp: web.Response = app._render(request, "messages.html", title=app.TEXT[lang]["messages_nav"], me=me,
                       now_ms=int(st.wall_clock() * 1000))
    return resp


async def _challenge(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    await _body(request, set())
    from meshd import PROTOCOL_VERSION

    return _json({**await st.op("leaf.challenge", {}), "version": PROTOCOL_VERSION})


async def _attach(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"announcement", "signature", "proof", "challenge"})
    res = await st.op("leaf.attach", doc)
    token = request.app[_key].new_session(res["leaf"])
    resp = _json(res)
    resp.set_cookie(LEAF_COOKIE, token, httponly=True, samesite="Strict", secure=request.secure,
                    path="/", max_age=7 * 24 * 3600)
    return resp


async def _held(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    await _body(request, set())
    return _json(await st.op("leaf.held", {"leaf": leaf}))


async def _release(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"ids"})
    return _json(await st.op("leaf.release", {"leaf": leaf, "ids": doc.get("ids", [])}))


async def _send(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"to", "sealed", "signature"})
    if set(doc) != {"to", "sealed", "signature"}:
        raise _Refused(400, "the body is {to, sealed, signature}")
    return _json(await st.op("leaf.send", {"leaf": leaf, "destination": doc["to"],
                                           "sealed": doc["sealed"],
                                           "signature": doc["signature"]}))


async def _mail(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"op"})
    if set(doc) != {"op"}:
        raise _Refused(400, "the body is {op}")
    # only the attached browser's own ops: a session does not publish in another key's name
    me = await st.op("leaf.key", {"node": leaf})
    return _json(await st.op("mail.publish", {"op": doc["op"], "author": me["ed25519"]}))


async def _inbox(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"author"})
    params: dict[str, Any] = {"recipient": leaf}
    if "author" in doc:
        params["author"] = doc["author"]
    return _json(await st.op("mail.inbox", params))


async def _lookup(request: web.Request, st: Any, leaf: str | None) -> web.Response:
    doc = await _body(request, {"node"})
    return _json(await st.op("leaf.key", {"node": doc.get("node", "")}))


def add_routes(app: web.Application) -> None:
    app[_key] = _Messages()
    app.router.add_get("/messages", page)
    app.router.add_post("/messages/challenge", _handler(_challenge, limited=True))
    app.router.add_post("/messages/attach", _handler(_attach, limited=True))
    app.router.add_post("/messages/held", _handler(_held, needs_leaf=True))
    app.router.add_post("/messages/release", _handler(_release, needs_leaf=True))
    app.router.add_post("/messages/send", _handler(_send, limited=True, needs_leaf=True))
    app.router.add_post("/messages/key", _handler(_lookup))
    app.router.add_post("/messages/mail", _handler(_mail, limited=True, needs_leaf=True))
    app.router.add_post("/messages/inbox", _handler(_inbox, needs_leaf=True))


LiveFilter = Callable[[str, dict[str, Any]], tuple[str, dict[str, Any]] | None]


def live_filter(request: web.Request) -> LiveFilter | None:
    """For ``/events``: ``leaf.message`` and ``mail.arrived`` for this session's leaf: ``mail``."""
    leaf = session_leaf(request)
    if leaf is None:
        return None

    def f(event: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        if event == "mail.arrived" and data.get("to") == leaf:  # carried car to car
            return "mail", {"from_name": "", "id": data.get("message_id", "")}
        if event != "leaf.message" or data.get("leaf") != leaf:
            return None
        return "mail", {"from_name": data.get("from_name", ""), "id": data.get("id", "")}

    return f


async def held_count(st: Any, request: web.Request) -> int:
    """Messages held for this session's leaf (``/events`` says "mail" at once if any)."""
    leaf = session_leaf(request)
    if leaf is None:
        return 0
    return len((await st.op("leaf.held", {"leaf": leaf}))["messages"])
