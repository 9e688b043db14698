"""The safety page and signed ops from the browser: ``/safety``, ``POST /safety/op``.

The "browser" here is Python signing an op with its own Ed25519 key exactly as
``web/static/identity.js`` does (tests/web/test_browser.py drives the real
module in Chromium); the node is real (tests/web/conftest.py).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from library_replica.ops import encode_body
from library_replica.safety import KIND_NOTE, KIND_PERSON, person_id
from sync.envelope import Op, create_op
from tests.web.conftest import Running
from web.app import WebSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Browser:
    """A browser's key and chain (what identity.js keeps in IndexedDB)."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.nonce = os.urandom(16)
        self.seq = 0
        self.prev: bytes | None = None
        self.last_raw = b""

    def op(self, kind: str, doc_id: bytes, body: dict[str, Any]) -> Op:
        self.seq += 1
        op = create_op(self.key, kind=kind, doc_id=doc_id, body=encode_body(body), seq=self.seq,
                       prev=self.prev, hlc=int(time.time() * 1000) << 16)
        self.prev = op.op_id
        self.last_raw = op.raw
        return op

    def safe(self, name: str, **extra: Any) -> Op:
        return self.op(KIND_PERSON, person_id(self.pub, self.nonce),
                       {"b": name, "s": "safe", "i": self.nonce, "n": name, "r": "", "c": "",
                        **extra})


def _forge(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])  # the last byte of the signature


async def _post(c: Any, payload: Any, *, origin: str | None = "self",
                content_type: str = "application/json") -> Any:
    headers = {"Content-Type": content_type}
    if origin == "self":
        headers["Origin"] = f"http://{c.host}:{c.port}"
    elif origin is not None:
        headers["Origin"] = origin
    data = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    return await c.post("/safety/op", data=data, headers=headers)


async def test_signed_op_registers_the_browser_key_and_a_replay_is_refused(
        running: Running) -> None:
    b = Browser()
    op = b.safe("山田 花子", a="北小学校 体育館", t="家族は無事")
    c = await running.client()
    try:
        r = await _post(c, {"op": op.raw.hex()})
        assert r.status == 200, await r.text()
        res = await r.json()
        assert res["result"] == "applied" and res["op_id"] == op.op_id.hex()
        person = res["person"]
        assert person["registered_by"]["key"] == b.pub.hex()  # the browser's key, not the car's
        assert person["status"] == "safe" and person["place"] == "北小学校 体育館"
        assert person["registered_by"]["key"] != running.node.identity.ed25519_pub.hex()
        found = await running.call("safety.search", {"query": "山田"})
        assert [p["registered_by"]["key"] for p in found["people"]] == [b.pub.hex()]
        # the same op again: stored already, refused as a replay, nothing changes
        r = await _post(c, {"op": op.raw.hex()})
        assert r.status == 409 and "replayed" in (await r.json())["error"]
        assert len((await running.call("safety.search", {"query": "山田"}))["people"]) == 1
        # the next op of the chain (a correction of the same record) is taken
        r = await _post(c, {"op": b.safe("山田 花子", a="市民会館").raw.hex()})
        assert r.status == 200 and (await r.json())["person"]["place"] == "市民会館"
    finally:
        await c.close()


async def test_forged_signature_is_refused_with_a_clear_error(running: Running) -> None:
    b = Browser()
    op = b.safe("偽 太郎")
    c = await running.client()
    try:
        r = await _post(c, {"op": _forge(op.raw).hex()})
        assert r.status == 400
        assert "forged" in (await r.json())["error"] and "signature" in (await r.json())["error"]
        # an op signed by one key that names another as its author is the same forgery
        other = Browser()
        swapped = op.raw.replace(b.pub, other.pub)
        r = await _post(c, {"op": swapped.hex()})
        assert r.status == 400 and "forged" in (await r.json())["error"]
        assert (await running.call("safety.search", {"query": "偽"}))["people"] == []
    finally:
        await c.close()


async def test_only_safety_ops_well_formed_json_and_same_origin_are_taken(
        running: Running) -> None:
    b = Browser()
    c = await running.client()
    try:
        lib = b.op("library.doc", os.urandom(16), {"t": "x"})
        r = await _post(c, {"op": lib.raw.hex()})
        assert r.status == 400 and "only safety.person and safety.note" in (await r.json())["error"]
        # a person record written under someone else's person id: the authoriser refuses
        bad = b.op(KIND_PERSON, os.urandom(16), {"b": "x", "i": b.nonce, "n": "x", "r": "",
                                                  "c": ""})
        r = await _post(c, {"op": bad.raw.hex()})
        assert r.status == 400 and "not_owner" in (await r.json())["error"]
        # a note about nobody in particular with no content
        r = await _post(c, {"op": b.op(KIND_NOTE, os.urandom(16), {"b": "x"}).raw.hex()})
        assert r.status == 400
        for payload in ({"op": "zz"}, {"op": 5}, {"op": "00", "x": 1}, b"not json", "[]"):
            r = await _post(c, payload)
            assert r.status == 400, payload
        r = await _post(c, {"op": "00"}, content_type="application/x-www-form-urlencoded")
        assert r.status == 415
        good = Browser().safe("別 サイト")
        for origin in ("http://evil.example", "null", None):
            r = await _post(c, {"op": good.raw.hex()}, origin=origin)
            assert r.status == 403, origin
        assert (await running.call("safety.search", {"query": "別"}))["people"] == []
    finally:
        await c.close()


async def test_oversize_op_is_refused_before_it_is_read(running: Running) -> None:
    b = Browser()
    big = b.safe("大きい", t="あ" * 900, a="い" * 190)
    c = await running.client(WebSettings(max_body=1024))
    try:
        assert len(big.raw.hex()) > 1024
        r = await _post(c, {"op": big.raw.hex()})
        assert r.status == 413
        # and with the default limit (16 KiB) a body over it is refused too
    finally:
        await c.close()
    c = await running.client()
    try:
        r = await _post(c, {"op": "00" * 9000})
        assert r.status == 413
        r = await _post(c, {"op": big.raw.hex()})
        assert r.status == 200  # the same op within the limit is taken
    finally:
        await c.close()


async def test_signed_ops_have_their_own_rate_limit(running: Running) -> None:
    now = [10.0]
    c = await running.client(WebSettings(write_rate_per_s=0.5, write_burst=2),
                             clock=lambda: now[0])
    try:
        b = Browser()
        assert (await _post(c, {"op": b.safe("速い 一郎").raw.hex()})).status == 200
        assert (await _post(c, {"op": b.safe("速い 一郎").raw.hex()})).status == 200
        r = await _post(c, {"op": b.safe("速い 一郎").raw.hex()})
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await c.get("/safety")).status == 200  # pages are not held back
        now[0] += 2.0  # one token back: the refused op (never stored) is taken now
        assert (await _post(c, {"op": b.last_raw.hex()})).status == 200
    finally:
        await c.close()


async def test_safety_page_searches_and_escapes(running: Running) -> None:
    await running.call("safety.add", {"name": "<script>alert(1)</script>鈴木", "status": "safe",
                                      "place": '<img src=x onerror="x()">公民館'})
    c = await running.client()
    try:
        r = await c.get("/safety", params={"q": "鈴木"})
        assert r.status == 200
        html = await r.text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;鈴木" in html
        assert "<script>alert" not in html and "<img src=x" not in html
        assert 'src="/static/identity.js"' in html and 'id="safe-form"' in html
        assert "無事" in html
        r = await c.get("/safety", params={"q": "存在しない名前"})
        assert "登録されている人は見つかりませんでした" in await r.text()
        assert (await c.get("/safety", params={"q": "x" * 201})).status == 400
        js = await c.get("/static/identity.js")
        assert js.status == 200 and "javascript" in js.headers["Content-Type"]
    finally:
        await c.close()
