"""Library corrections signed by the browser's key: ``/library/ID/prepare``, ``/library/op``.

The "browser" is Python signing the car's prepared bodies with its own Ed25519 key, as
``web/static/edit.js`` does through ``identity.js`` (tests/web/test_browser_library.py
drives the real modules in Chromium); the node is real (tests/web/conftest.py).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sync.envelope import Op, create_op
from tests.web.conftest import Running
from web.library_edit import fingerprint

pytestmark = pytest.mark.asyncio(loop_scope="module")


class Browser:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.seq = 0
        self.prev: bytes | None = None

    def head(self) -> dict[str, Any]:
        return {"key": self.pub.hex(), "seq": self.seq,
                "prev": self.prev.hex() if self.prev else None}

    def sign(self, kind: str, doc_id: bytes, body: bytes) -> Op:
        self.seq += 1
        op = create_op(self.key, kind=kind, doc_id=doc_id, body=body, seq=self.seq,
                       prev=self.prev, hlc=int(time.time() * 1000) << 16)
        self.prev = op.op_id
        return op


async def _post(c: Any, path: str, payload: Any) -> Any:
    return await c.post(path, data=json.dumps(payload), headers={
        "Content-Type": "application/json", "Origin": f"http://{c.host}:{c.port}"})


async def _prepare(c: Any, b: Browser, doc: str, body: str, title: str = "") -> Any:
    r = await _post(c, f"/library/{doc}/prepare", {**b.head(), "body": body, "title": title})
    assert r.status == 200, await r.text()
    return await r.json()


async def _sign_and_publish(c: Any, b: Browser, prep: dict[str, Any]) -> list[Any]:
    out = []
    for o in prep["ops"]:
        op = b.sign(o["kind"], bytes.fromhex(prep["doc_id"]), bytes.fromhex(o["body"]))
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": op.raw.hex()})
        assert r.status == 200, await r.text()
        out.append((op, await r.json()))
    return out


async def _new_doc(running: Running, body: str) -> str:
    res = await running.call("library.add", {"collection": "know-how", "title": "給水所",
                                             "body": body})
    return str(res["doc_id"])


async def test_correction_is_authored_by_the_browser_key_and_shown_in_history(
        running: Running) -> None:
    doc = await _new_doc(running, "給水は午前9時から。\n\n場所: 体育館前")
    b = Browser()
    c = await running.client()
    try:
        r = await c.get(f"/library/{doc}/edit")
        assert r.status == 200
        html = await r.text()
        assert "給水は午前9時から。" in html and 'src="/static/edit.js"' in html
        prep = await _prepare(c, b, doc, "給水は午前10時から。\n\n場所: 体育館前")
        assert prep["inserted"] >= 1 and prep["deleted"] >= 1 and len(prep["ops"]) == 1
        assert prep["ops"][0]["kind"] == "library.edit"
        [(op, res)] = await _sign_and_publish(c, b, prep)
        assert res["result"] == "applied" and res["op_id"] == op.op_id.hex()
        shown = await running.call("library.show", {"id": doc})
        assert shown["body"] == "給水は午前10時から。\n\n場所: 体育館前"
        assert b.pub.hex() in shown["authors"]
        hist = (await running.call("library.history", {"id": doc}))["history"]
        assert hist[-1]["author"] == b.pub.hex() and hist[-1]["op_id"] == op.op_id.hex()
        page = await (await c.get(f"/library/{doc}/history")).text()
        assert fingerprint(b.pub.hex()) in page and "ブラウザの利用者" in page
        assert running.node.name.replace("<", "&lt;").replace(">", "&gt;") in page  # the creator
        # the same op again is a replay; the nonce's change was used
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": op.raw.hex()})
        assert r.status == 409 and "replayed" in (await r.json())["error"]
        # nothing to change: nothing to sign
        same = await _prepare(c, b, doc, shown["body"])
        assert same["ops"] == [] and same["nonce"] is None
    finally:
        await c.close()


async def test_only_the_prepared_change_signed_by_its_key_is_taken(running: Running) -> None:
    doc = await _new_doc(running, "毛布あり")
    b, other = Browser(), Browser()
    c = await running.client()
    try:
        prep = await _prepare(c, b, doc, "毛布なし")
        doc_id = bytes.fromhex(prep["doc_id"])
        body = bytes.fromhex(prep["ops"][0]["body"])
        # a body the car did not prepare (the browser, or someone in between, changed it)
        tampered = b.sign("library.edit", doc_id, body[:-1] + bytes([body[-1] ^ 1]))
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": tampered.raw.hex()})
        assert r.status == 400 and "not the change this car prepared" in (await r.json())["error"]
        b.seq, b.prev = 0, None  # that op was never stored: its chain position is free again
        # the right body signed by another key
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": other.sign(
            "library.edit", doc_id, body).raw.hex()})
        assert r.status == 400 and "another key" in (await r.json())["error"]
        # a forged signature
        good = b.sign("library.edit", doc_id, body)
        forged = good.raw[:-1] + bytes([good.raw[-1] ^ 1])
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": forged.hex()})
        assert r.status == 400 and "forged" in (await r.json())["error"]
        # an unknown nonce
        r = await _post(c, "/library/op", {"nonce": "00" * 16, "op": good.raw.hex()})
        assert r.status == 400 and "prepare the change again" in (await r.json())["error"]
        assert (await running.call("library.show", {"id": doc}))["body"] == "毛布あり"
        # and the genuine one is taken
        r = await _post(c, "/library/op", {"nonce": prep["nonce"], "op": good.raw.hex()})
        assert r.status == 200, await r.text()
        assert (await running.call("library.show", {"id": doc}))["body"] == "毛布なし"
        # a browser whose chain head the car does not hold: refused, nothing composed
        r = await _post(c, f"/library/{doc}/prepare", {**b.head(), "seq": 7, "body": "x"})
        assert r.status == 409 and "not reached this car" in (await r.json())["error"]
        # the car's own key cannot be used from the web
        r = await _post(c, f"/library/{doc}/prepare", {
            "key": running.node.identity.ed25519_pub.hex(), "seq": 0, "prev": None,
            "body": "x"})
        assert r.status == 400
    finally:
        await c.close()


async def test_concurrent_corrections_merge(running: Running) -> None:
    doc = await _new_doc(running, "一行目\n二行目\n三行目")
    b = Browser()
    c = await running.client()
    try:
        prep = await _prepare(c, b, doc, "一行目（訂正）\n二行目\n三行目")
        # meanwhile the car's own user changes another line
        await running.call("library.edit", {"id": doc, "body": "一行目\n二行目\n三行目（追記）"})
        await _sign_and_publish(c, b, prep)
        body = (await running.call("library.show", {"id": doc}))["body"]
        assert body == "一行目（訂正）\n二行目\n三行目（追記）"
    finally:
        await c.close()


async def test_hostile_correction_renders_inert(running: Running) -> None:
    doc = await _new_doc(running, "安全な文書")
    b = Browser()
    c = await running.client()
    try:
        hostile = ('<script>alert(1)</script>\n\n[押して](javascript:alert(1))\n\n'
                   '<img src=x onerror="alert(1)">\n\n**太字**')
        await _sign_and_publish(c, b, await _prepare(c, b, doc, hostile, "<b>題</b>"))
        r = await c.get(f"/library/{doc}")
        html = await r.text()
        assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html
        assert 'href="javascript' not in html.lower() and "<img" not in html
        assert "<strong>太字</strong>" in html and "&lt;b&gt;題&lt;/b&gt;" in html
        for page in (f"/library/{doc}/edit", f"/library/{doc}/history"):
            text = await (await c.get(page)).text()
            assert "<script>alert" not in text and "<b>題" not in text
    finally:
        await c.close()


async def test_a_long_correction_is_several_ops_and_a_second_one_follows(
        running: Running) -> None:
    doc = await _new_doc(running, "短い文書")
    b = Browser()
    c = await running.client()
    try:
        long_text = "短い文書\n\n" + "避難所の情報。" * 4000  # 28,000 characters, ~84 kB of UTF-8
        prep = await _prepare(c, b, doc, long_text)
        assert len(prep["ops"]) >= 2  # each op body stays under sync's limit
        done = await _sign_and_publish(c, b, prep)
        assert [r["remaining"] for _, r in done] == list(range(len(done) - 1, -1, -1))
        assert (await running.call("library.show", {"id": doc}))["body"] == long_text
        # the same browser again, from its new chain head: its Yjs clock continues
        prep = await _prepare(c, b, doc, "短い文書（改）")
        await _sign_and_publish(c, b, prep)
        shown = await running.call("library.show", {"id": doc})
        assert shown["body"] == "短い文書（改）" and b.pub.hex() in shown["authors"]
        hist = (await running.call("library.history", {"id": doc}))["history"]
        assert sum(h["author"] == b.pub.hex() for h in hist) == len(done) + 1
    finally:
        await c.close()


async def test_limits_of_a_correction(running: Running) -> None:
    doc = await _new_doc(running, "限度")
    b = Browser()
    c = await running.client()
    try:
        r = await _post(c, f"/library/{doc}/prepare", {**b.head(), "body": "a" * 60_001})
        assert r.status == 400 and "60000" in (await r.json())["error"]
        r = await _post(c, f"/library/{doc}/prepare", {**b.head(), "body": "x" * 300_000})
        assert r.status == 413  # over the edit routes' body limit, refused before it is read
        r = await _post(c, "/safety/op", {"op": "00" * 9000})
        assert r.status == 413  # the other routes keep their 16 KiB
        r = await c.post(f"/library/{doc}/prepare", data=json.dumps({**b.head(), "body": "x"}),
                         headers={"Content-Type": "application/json",
                                  "Origin": "http://evil.example"})
        assert r.status == 403
        assert (await running.call("library.show", {"id": doc}))["body"] == "限度"
    finally:
        await c.close()


async def test_trust_marks_name_members_and_authorities(running: Running) -> None:
    marks = await running.call("trust.marks", {})
    me = running.node.identity.ed25519_pub.hex()
    assert marks["nodes"][running.node.identity.node_id.hex()] == me
    assert marks["keys"][me] == {"member": True, "authority": "市役所", "role": "city"}
    assert marks["enrolling"] is False


async def test_edit_and_history_pages_in_english(running: Running) -> None:
    doc = await _new_doc(running, "water")
    c = await running.client()
    try:
        en = {"Accept-Language": "en"}
        page = await (await c.get(f"/library/{doc}", headers=en)).text()
        assert f'href="/library/{doc}/edit"' in page and "Edit or correct" in page
        assert f'href="/library/{doc}/history"' in page
        page = await (await c.get(f"/library/{doc}/edit", headers=en)).text()
        assert "Correct a document" in page and "Sign and publish" in page
        page = await (await c.get(f"/library/{doc}/history", headers=en)).text()
        assert "History" in page and "created" in page
        assert (await c.get("/library/ffffffffffffffffffffffffffffffff/history")).status == 404
    finally:
        await c.close()
