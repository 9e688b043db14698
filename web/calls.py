"""Browser calls: the call page and the WebSocket between a browser and its car.

Theory of operation
-------------------
``/call/NODE`` is the call page (``templates/call.html`` and ``static/call.js``).
The page opens ``/call/ws``, a WebSocket carrying small JSON messages, and the
car turns them into the voice service's browser operations (``browser.dial``,
``browser.offer``, ``browser.answer``, ``hangup``, ``decline``: see
``voice.service``), which travel the mesh sealed and signed as every call does.
The browser's SDP is signed by the browser's own Ed25519 key
(``static/identity.js``) over its DTLS fingerprints; the car passes key and
signature on and the far end checks them (``voice.browser``).  Media never
touches this module: the browser sends it to the call's relay socket, opened
on the address this connection came in on, and the car relays it as opaque
UDP.

Browser -> car: ``{"t": "dial", "node", "call_id", "sdp", "key", "sig"}``,
``{"t": "offer", "call_id"}`` (an incoming call's offer, to answer it: any
call ringing at this car, whichever page showed it),
``{"t": "answer", "call_id", "sdp", "key", "sig"}``, ``{"t": "hangup"|"decline",
"call_id"}``, ``{"t": "refuse", "call_id", "why"}`` (the far fingerprints are not
signed by the far node: the call fails, the far end is told).  Car -> browser: ``state`` (every change: state, reason, detail),
``answer`` / ``offer`` (an SDP whose only candidate is the car's socket, with
the far node's signature over its fingerprints and the far node's keys, and
the far browser's key and signature if a browser made it: the page checks
them, ``static/callcheck.js``, and hangs up on a mismatch),
``audio`` (media flows: setup time), ``incoming`` (a call rings this car),
``error``.  A connection may act only on calls it dialled or was offered; when
it closes, its live calls are hung up.  The upgrade is same-origin only, its
messages are bounded in size and rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final

from aiohttp import WSMsgType, web

from meshd.core.errors import ControlError
from web.app import _lang, _render, _same_origin, _state
from web.limits import RateLimiter

__all__ = ["add_routes"]

log = logging.getLogger(__name__)

#: largest WebSocket message (an SDP with its signature is about 4 KB)
MAX_MESSAGE: Final = 24 * 1024
#: messages a connection may send per second (burst below)
MESSAGE_RATE: Final = 4.0
MESSAGE_BURST: Final = 20
#: events queued for a connection that does not read
QUEUE: Final = 64
#: node events forwarded to the connection that owns the call
_CALL_EVENTS: Final = frozenset({"call.state", "call.ended", "call.audio", "call.browser",
                                 "call.incoming"})
_CALLS_KEY: Final = web.AppKey("browser_calls", set)
#: what the page checks the far SDP's fingerprints with (``voice.service._far_keys``)
_FAR_KEYS: Final = ("key", "sig", "node_sig", "node_key", "x", "peer", "name")

WORDS: Final = {
    "ja": {"title": "通話", "call": "発信", "hangup": "切る", "mute": "ミュート", "speaker": "スピーカー",
           "unmute": "ミュート解除", "answer": "応答", "decline": "拒否",
           "incoming": "着信", "to": "相手", "who": "メッシュでつながっている相手に無料で電話できます",
           "nobody": "いまつながっている相手はいません。", "hops": "経路コスト"},
    "en": {"title": "Call", "call": "Call", "hangup": "Hang up", "mute": "Mute",
           "speaker": "Speaker",
           "unmute": "Unmute", "answer": "Answer", "decline": "Decline",
           "incoming": "Incoming call", "to": "To",
           "who": "Free calls to anyone reachable on the mesh",
           "nobody": "Nobody is reachable right now.", "hops": "route cost"},
}


async def call_page(request: web.Request) -> web.Response:
    """The call page for one node (name, id or id prefix: resolved when calling)."""
    node = request.match_info["node"]
    lang = _lang(request)
    return _render(request, "call.html", title=f"{WORDS[lang]['title']} · {node}", node=node,
                   w=WORDS[lang])


async def call_index(request: web.Request) -> web.Response:
    """Whom this browser can call: every node reachable on the mesh now."""
    st = _state(request)
    lang = _lang(request)
    routes = (await st.call("routes", {}))["routes"]
    reachable = sorted((r for r in routes if r["reachable"]),
                       key=lambda r: (r["metric"], r["name"]))
    return _render(request, "call_index.html", title=WORDS[lang]["title"], routes=reachable,
                   w=WORDS[lang])


def _out(event: str, data: dict[str, Any]) -> dict[str, Any]:
    if event == "call.browser":
        return {"t": data.get("kind"), "call_id": data.get("call_id"), "sdp": data.get("sdp"),
                **{k: data.get(k) for k in _FAR_KEYS}}
    if event == "call.audio":
        return {"t": "audio", "call_id": data.get("call_id"), "setup_ms": data.get("setup_ms"),
                "answer_ms": data.get("answer_ms")}
    if event == "call.incoming":
        return {"t": "incoming", "call_id": data.get("call_id"),
                "peer_name": data.get("peer_name"), "peer": data.get("peer"),
                "person": data.get("person")}
    return {"t": "state", "call_id": data.get("call_id"), "state": data.get("state"),
            "reason": data.get("reason"), "detail": data.get("detail"),
            "setup_ms": data.get("setup_ms"), "answer_ms": data.get("answer_ms")}


class _Connection:
    """One browser's WebSocket: the calls it may act on, and its outgoing queue."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, host: str) -> None:
        self.st = _state(request)
        self.ws = ws
        self.host = host
        self.owned: set[str] = set()  # dialled, or offered to this browser
        self.incoming: set[str] = set()  # rang while this connection was open
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(QUEUE)
        self.limiter = RateLimiter(MESSAGE_RATE, MESSAGE_BURST)

    def listener(self, event: str, data: dict[str, Any]) -> None:
        if event not in _CALL_EVENTS:
            return
        cid = data.get("call_id")
        if not isinstance(cid, str):
            return
        if event == "call.incoming":
            if data.get("auto_answer"):
                return
            self.incoming.add(cid)
        elif cid not in self.owned and not (event == "call.state" and cid in self.incoming):
            return
        try:
            self.queue.put_nowait(_out(event, data))
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    async def pump(self) -> None:
        try:
            while (item := await self.queue.get()) is not None:
                await self.ws.send_json(item)
            await self.ws.close()  # a client that does not read: closed
        except (ConnectionResetError, RuntimeError):
            pass  # the socket went away: the handler's loop ends too

    async def handle(self, doc: dict[str, Any]) -> None:
        t = doc.get("t")
        cid = doc.get("call_id")
        if not isinstance(cid, str) or len(cid) != 32:
            raise ControlError("bad_request", "call_id: 32 hex digits")
        call = self.st.call
        if t == "dial":
            params = {k: doc.get(k) for k in ("node", "call_id", "sdp", "key", "sig")}
            self.owned.add(cid)  # events may come before browser.dial returns
            try:
                res = await call("browser.dial", {**params, "host": self.host})
            except ControlError:
                self.owned.discard(cid)
                raise
            await self.ws.send_json(_out("call.state", res))
        elif t == "offer":  # voice checks that it rings in here (any page may have shown it)
            res = await call("browser.offer", {"call": cid, "host": self.host})
            self.owned.add(cid)
            await self.ws.send_json({"t": "offer", "call_id": cid, "sdp": res["sdp"],
                                     **{k: res.get(k) for k in _FAR_KEYS}})
        elif t == "answer":
            if cid not in self.owned:
                raise ControlError("not_found", "no such call offered here")
            res = await call("browser.answer", {k: doc.get(k)
                                                for k in ("call_id", "sdp", "key", "sig")})
            await self.ws.send_json(_out("call.state", res))
        elif t == "refuse":  # the page's own check of the far fingerprints failed
            if cid not in self.owned:
                raise ControlError("not_found", "no such call here")
            await call("browser.refuse", {"call": cid, "why": doc.get("why")})
        elif t in ("hangup", "decline"):
            if cid not in self.owned and cid not in self.incoming:
                raise ControlError("not_found", "no such call here")
            await call(str(t), {"call": cid})
        else:
            raise ControlError("bad_request", "unknown message")

    async def hang_up_all(self) -> None:
        for cid in list(self.owned):
            with contextlib.suppress(ControlError):
                await self.st.call("hangup", {"call": cid})


async def call_ws(request: web.Request) -> web.StreamResponse:
    """The call signalling WebSocket (see the module docstring)."""
    st = _state(request)
    if not _same_origin(request):
        st.refuse("origin", request)
        raise web.HTTPForbidden(reason="cross-origin WebSocket")
    conns: set[_Connection] = request.app[_CALLS_KEY]
    if len(conns) >= st.settings.max_streams:
        st.refuse("streams", request)
        raise web.HTTPServiceUnavailable(reason="too many live connections")
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        raise web.HTTPServiceUnavailable(reason="no local address")
    ws = web.WebSocketResponse(heartbeat=st.settings.heartbeat_s, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    conn = _Connection(request, ws, str(sockname[0]))
    conns.add(conn)
    unsubscribe = st.subscribe(conn.listener)
    pump = asyncio.get_running_loop().create_task(conn.pump())
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            if not conn.limiter.allow("ws", st.clock()):
                st.refuse("ws-rate", request)
                await ws.send_json({"t": "error", "message": "too many messages"})
                continue
            try:
                doc = json.loads(msg.data)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
                await conn.handle(doc)
            except ValueError:
                st.refuse("ws-malformed", request)
                await ws.send_json({"t": "error", "message": "malformed message"})
            except ControlError as exc:
                cid = doc.get("call_id") if isinstance(doc, dict) else None
                await ws.send_json({"t": "error", "call_id": cid, "code": exc.code,
                                    "message": exc.message})
        return ws
    finally:
        unsubscribe()
        conns.discard(conn)
        await conn.hang_up_all()
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
            await pump


def add_routes(app: web.Application) -> None:
    """Register the call page and its WebSocket on ``app``."""
    app[_CALLS_KEY] = set()
    app.router.add_get("/call", call_index)
    app.router.add_get("/call/ws", call_ws)
    app.router.add_get(r"/call/{node:[A-Za-z0-9._-]{1,64}}", call_page)
