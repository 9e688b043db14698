"""The call page and its WebSocket, ``/call/NODE`` and ``/call/ws``, against a real node.

No media here (tests/web/test_browser_call.py makes real calls in Chromium):
the guards of the signalling socket — same origin only, bounded and typed
messages, a per-connection rate, the car's own check of the browser's
fingerprint signature — and the page's markup.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.web.conftest import Running
from voice.browser import fingerprint_message
from voice.signalling import Kind
from web.calls import MESSAGE_BURST

pytestmark = pytest.mark.asyncio(loop_scope="module")

FP = "sha-256 " + ":".join(["AB"] * 32)
SDP = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
       "a=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\n"
       f"a=fingerprint:{FP}\r\na=setup:actpass\r\n")


def _origin(c: Any) -> dict[str, str]:
    return {"Origin": f"http://{c.host}:{c.port}"}


async def test_call_page_has_no_inline_script_and_escapes(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/call/a<b>", headers={"Accept-Language": "en"})
        assert r.status == 404  # only name/id characters reach the page
        r = await c.get("/call/car-1", headers={"Accept-Language": "en"})
        html = await r.text()
        assert r.status == 200 and "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert '<script type="module" src="/static/call.js"></script>' in html
        assert "<script>" not in html and 'data-node="car-1"' in html
        assert '<audio id="call-audio"' in html
    finally:
        await c.close()


async def test_call_index_lists_whom_the_mesh_reaches(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/call", headers={"Accept-Language": "en"})
        html = await r.text()
        assert r.status == 200 and "Nobody is reachable right now." in html  # a lone node
        assert '<a href="/call" aria-current="page">Call</a>' in html
    finally:
        await c.close()


async def test_cross_origin_socket_is_refused(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/call/ws", headers={"Origin": "http://evil.example",
                                            "Connection": "Upgrade", "Upgrade": "websocket",
                                            "Sec-WebSocket-Version": "13",
                                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert r.status == 403
    finally:
        await c.close()


async def test_malformed_and_unknown_messages_are_answered_with_errors(running: Running) -> None:
    c = await running.client()
    try:
        ws = await c.ws_connect("/call/ws", headers=_origin(c))
        await ws.send_str("not json")
        assert (await ws.receive_json())["message"] == "malformed message"
        await ws.send_str("[1, 2]")
        assert (await ws.receive_json())["message"] == "malformed message"
        await ws.send_json({"t": "dial", "call_id": "zz"})
        assert (await ws.receive_json())["code"] == "bad_request"
        cid = secrets.token_hex(16)
        await ws.send_json({"t": "offer", "call_id": cid})
        assert (await ws.receive_json())["code"] == "not_found"
        await ws.send_json({"t": "hangup", "call_id": cid})  # not this connection's call
        assert (await ws.receive_json())["code"] == "not_found"
        await ws.close()
    finally:
        await c.close()


async def test_the_car_checks_the_browsers_signature_before_sending(running: Running) -> None:
    c = await running.client()
    try:
        ws = await c.ws_connect("/call/ws", headers=_origin(c))
        k = Ed25519PrivateKey.generate()
        pub = k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        cid = secrets.token_bytes(16)
        sig = k.sign(fingerprint_message(cid, Kind.OFFER, SDP))
        other = SDP.replace(FP, "sha-256 " + ":".join(["EE"] * 32))
        await ws.send_json({"t": "dial", "node": "ffff", "call_id": cid.hex(), "sdp": other,
                            "key": pub.hex(), "sig": sig.hex()})
        err = await ws.receive_json()
        assert err["code"] == "bad_request" and "altered" in err["message"], err
        calls = await running.call("calls", {})
        assert not [x for x in calls["calls"] if x["call_id"] == cid.hex()]
        await ws.close()
    finally:
        await c.close()


async def test_message_rate_is_bounded(running: Running) -> None:
    c = await running.client()
    try:
        ws = await c.ws_connect("/call/ws", headers=_origin(c))
        for _ in range(MESSAGE_BURST + 5):
            await ws.send_str("{}")
        answers = [await ws.receive_json() for _ in range(MESSAGE_BURST + 5)]
        assert any(a["message"] == "too many messages" for a in answers), answers
        await ws.close()
    finally:
        await c.close()
