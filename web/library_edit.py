"""Correcting the library from a browser, in the browser's own name; a document's history.

Theory of operation
-------------------
A browser has no Yjs, so the car composes the change and the browser signs it:

1. ``GET /library/ID/edit``: the document's Markdown in a form (``/static/edit.js``).
2. ``POST /library/ID/prepare`` ``{key, seq, prev, body, title}``: the car runs
   ``library.prepare`` (the control operation: the Yjs delta from the document as
   this car holds it to the new text, authored by ``key``), keeps the op bodies
   under a fresh random *nonce* for ``PREPARED_TTL_S`` and answers
   ``{nonce, doc_id, ops: [{kind, body}], inserted, deleted}``.
3. The browser shows what it is about to sign (the size of the change, its key),
   and on the user's confirmation signs each body as the next op of its own chain
   (``identity.js``) and posts ``POST /library/op`` ``{nonce, op}``.
4. The car checks that the op verifies, is authored by the key the nonce was
   prepared for, and carries exactly a kind, document and body it prepared under
   that nonce; then ``library.publish`` (the same operation the control API
   offers) stores it as a peer's op, and sync carries it to every car.

Trust model: the browser cannot read a Yjs update, so it trusts the car it is
attached to to compose the delta faithfully; it signs what it was shown (the
car's op bodies for the text it sent).  A car cannot make a browser sign
anything it did not prepare for that browser's request, and no one else can use
a prepared change (the nonce is bound to the key, and the op must be signed by
that key).  A dishonest car could compose a different delta; the browser would
then see, on the document page it returns to, a text other than the one it
typed (docs/web.md).

``GET /library/ID/history`` lists the document's changes (``library.history``):
who by name and short key (a browser has no node name: it is shown as a
browser), when, and how much.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from meshd.core.errors import ControlError, RemoteProtocolError
from sync.envelope import MAX_OP_SIZE, decode_op
from web.app import _STATUS, _json_error, _lang, _render, _State, _state
from web.i18n import TEXT

__all__ = ["PREPARED_TTL_S", "add_routes", "fingerprint"]

#: how long a prepared change may be signed and posted (a retry of a lost answer too)
PREPARED_TTL_S: Final = 600.0
#: prepared changes kept at most (the oldest is forgotten first)
MAX_PREPARED: Final = 256
#: the longest text a browser may send (characters; the library's own limit is larger)
MAX_EDIT_CHARS: Final = 60_000
_DOC: Final = r"{doc_id:[0-9a-fA-F]{4,32}}"
_prepared_key: Final = web.AppKey("library_prepared", OrderedDict)


def fingerprint(key_hex: str) -> str:
    """The first 64 bits of a key in groups of four (how the pages show a key)."""
    k = key_hex[:16]
    return " ".join(k[i:i + 4] for i in range(0, len(k), 4))


@dataclass(slots=True)
class _Prepared:
    key: bytes
    doc_id: bytes
    ops: list[tuple[str, bytes]]
    expires: float
    published: set[int] = field(default_factory=set)


def _prepared(request: web.Request) -> OrderedDict[str, _Prepared]:
    table: OrderedDict[str, _Prepared] = request.app[_prepared_key]
    return table


def _expire(table: OrderedDict[str, _Prepared], now: float) -> None:
    for nonce in [n for n, p in table.items() if p.expires <= now]:
        del table[nonce]
    while len(table) > MAX_PREPARED:
        table.popitem(last=False)


async def _json_body(request: web.Request, st: _State) -> dict[str, Any] | web.Response:
    if request.content_type != "application/json":
        st.refuse("content-type", request)
        return _json_error(415, "send application/json")
    try:
        doc = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        st.refuse("malformed", request)
        return _json_error(400, "the body is a JSON object")
    return doc


def _write_allowed(request: web.Request, st: _State) -> web.Response | None:
    if st.write_limiter.allow(request.remote or "?", st.clock()):
        return None
    st.refuse("write-rate", request)
    resp = _json_error(429, TEXT[_lang(request)]["too_many"])
    resp.headers["Retry-After"] = str(max(1, round(
        st.write_limiter.retry_after_s(request.remote or "?"))))
    return resp


async def edit_page(request: web.Request) -> web.Response:
    st = _state(request)
    doc = await st.op("library.show", {"id": request.match_info["doc_id"]})
    return _render(request, "document_edit.html", title=doc["title"], doc=doc,
                   now_ms=int(st.wall_clock() * 1000))


async def history_page(request: web.Request) -> web.Response:
    st = _state(request)
    doc = await st.op("library.show", {"id": request.match_info["doc_id"]})
    hist = (await st.op("library.history", {"id": doc["doc_id"]}))["history"]
    entries = [{**h, "fingerprint": fingerprint(h["author"])} for h in reversed(hist)]
    return _render(request, "document_history.html", title=doc["title"], doc=doc,
                   entries=entries)


async def prepare(request: web.Request) -> web.Response:
    """Compose a change for the browser's key to sign (see the module docstring)."""
    st = _state(request)
    doc = await _json_body(request, st)
    if isinstance(doc, web.Response):
        return doc
    body, title, key = doc.get("body"), doc.get("title"), doc.get("key")
    if not isinstance(body, str) or len(body) > MAX_EDIT_CHARS or \
            (title is not None and not isinstance(title, str)) or not isinstance(key, str):
        st.refuse("malformed", request)
        return _json_error(400, f"send {{key, seq, prev, body (at most {MAX_EDIT_CHARS} "
                                "characters), title}")
    params = {"id": request.match_info["doc_id"], "author": key, "seq": doc.get("seq"),
              "prev": doc.get("prev"), "body": body.replace("\r\n", "\n")}
    if isinstance(title, str) and title.strip():
        params["title"] = title.strip()
    try:
        res = await st.op("library.prepare", params)
    except ControlError as exc:
        return _json_error(_STATUS.get(exc.code, 500) if exc.code != "failed" else 409,
                           exc.message)
    if not res["ops"]:
        return web.json_response({"nonce": None, **res}, headers={"Cache-Control": "no-store"})
    table = _prepared(request)
    now = st.clock()
    _expire(table, now)
    key_b = bytes.fromhex(key)
    doc_id = bytes.fromhex(res["doc_id"])
    for n in [n for n, p in table.items() if p.key == key_b and not p.published]:
        del table[n]  # only the newest unsigned preparation of a key may be signed
    nonce = secrets.token_hex(16)
    table[nonce] = _Prepared(key_b, doc_id,
                             [(o["kind"], bytes.fromhex(o["body"])) for o in res["ops"]],
                             now + PREPARED_TTL_S)
    return web.json_response({"nonce": nonce, **res}, headers={"Cache-Control": "no-store"})


async def publish(request: web.Request) -> web.Response:
    """One op the browser signed over a prepared body: checked, then ``library.publish``."""
    st = _state(request)
    limited = _write_allowed(request, st)
    if limited is not None:
        return limited
    doc = await _json_body(request, st)
    if isinstance(doc, web.Response):
        return doc
    nonce, raw_hex = doc.get("nonce"), doc.get("op")
    if set(doc) != {"nonce", "op"} or not isinstance(nonce, str) or \
            not isinstance(raw_hex, str) or len(raw_hex) > 2 * MAX_OP_SIZE:
        st.refuse("malformed", request)
        return _json_error(400, 'the body is {"nonce": str, "op": hex of one signed op}')
    table = _prepared(request)
    _expire(table, st.clock())
    prep = table.get(nonce)
    if prep is None:
        st.refuse("nonce", request)
        return _json_error(400, "no change was prepared under this nonce here (or it "
                                "expired): prepare the change again")
    try:
        op = decode_op(bytes.fromhex(raw_hex))
    except ValueError:
        return _json_error(400, "op is the hex of one signed op")
    except RemoteProtocolError as exc:
        st.refuse("op", request)
        if exc.reason == "signature":
            return _json_error(400, "forged op refused: its signature does not verify for "
                                    "the key it names as its author")
        return _json_error(400, f"not a signed op ({exc})")
    if op.author != prep.key:
        st.refuse("op", request)
        return _json_error(400, "this change was prepared for another key")
    index = next((i for i, (kind, body) in enumerate(prep.ops)
                  if kind == op.kind and body == op.body and op.doc_id == prep.doc_id), None)
    if index is None:
        st.refuse("op", request)
        return _json_error(400, "the signed op is not the change this car prepared "
                                "(kind, document or body differs)")
    try:
        res = await st.op("library.publish", {"op": raw_hex})
    except ControlError as exc:
        st.refuse("op", request)
        return _json_error(_STATUS.get(exc.code, 500), exc.message)
    prep.published.add(index)
    if res["result"] == "duplicate":
        st.refuse("replay", request)
        return _json_error(409, f"op {res['op_id']} is stored already (replayed)")
    return web.json_response({**res, "remaining": len(prep.ops) - len(prep.published)},
                             headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    """Register the edit and history pages and their two JSON routes on ``app``."""
    app[_prepared_key] = OrderedDict()
    app.router.add_get(f"/library/{_DOC}/edit", edit_page)
    app.router.add_get(f"/library/{_DOC}/history", history_page)
    app.router.add_post(f"/library/{_DOC}/prepare", prepare)
    app.router.add_post("/library/op", publish)
