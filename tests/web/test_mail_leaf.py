"""Mail carried car to car for a browser leaf: the browser seals and signs a ``mail.sealed`` op
itself when its message finds no route, the car verifies and stores it like a peer's op, and
the recipient opens it when it links later; the reverse, mail for the browser held at a car
and opened by the browser, which acknowledges it with a receipt op it signs.

Two real nodes in-process on loopback (QUIC, SQLite stores, sync); the browser is
tests/web/leafclient.py, which builds the ops as web/static/leaf.js does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from carmesh.app import build_node, web_seams
from carmesh.dev.harness import free_udp_port
from meshd.config import Config
from meshd.core.errors import VerificationError
from meshd.node import Node
from sync.envelope import decode_op
from tests.web.leafclient import Leaf, mail_op, open_mail, receipt_op
from web.app import make_app

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _until(pred: Callable[[], Awaitable[Any]], what: str, timeout: float = 60) -> Any:
    """Poll ``pred`` until it is truthy (bounded: at most ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        v = await pred()
        if v:
            return v
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@dataclass
class Up:
    node: Node
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        return await self.node.control.handlers[method](params)

    async def down(self) -> None:
        self.stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _start(state: Path, name: str, port: int, peer: str | None = None) -> Up:
    node = await build_node(Config(state_dir=state, listen=(f"127.0.0.1:{port}",),
                                   peer=(peer,) if peer else (), no_web=True, name=name,
                                   metrics="off"))
    stop = asyncio.Event()
    up = Up(node, stop, asyncio.create_task(node.run(stop)))
    await up.call("bulletin.list", {})  # the library service has replayed
    return up


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tmp() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cmml", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _post(c: TestClient[Any, Any], path: str, payload: Any) -> Any:
    return await c.post(path, data=json.dumps(payload), headers={
        "Content-Type": "application/json", "Origin": f"http://{c.host}:{c.port}"})


async def _attach(c: TestClient[Any, Any], leaf: Leaf) -> None:
    ch = await (await _post(c, "/messages/challenge", {})).json()
    r = await _post(c, "/messages/attach", leaf.attachment(ch))
    assert r.status == 200, await r.text()


async def _route(up: Up, node_id: bytes) -> bool:
    return up.node.next_hop(node_id) is not None


async def test_browser_mail_to_an_unreachable_node_is_opened_when_it_links(tmp: Path) -> None:
    pa, pb = free_udp_port(), free_udp_port()
    a = await _start(tmp / "a", "car-a", pa)
    b = await _start(tmp / "b", "kenji", pb, peer=f"127.0.0.1:{pa}")
    b_id = b.node.identity.node_id
    c: TestClient[Any, Any] | None = None
    try:
        await _until(lambda: _route(a, b_id), "a route from a to kenji")
        await b.down()  # kenji drives away: a keeps its keys, loses the route
        await _until(lambda: _none(_route(a, b_id)), "a to lose the route to kenji", 120)

        call, subscribe = web_seams(a.node)
        c = TestClient(TestServer(make_app(call, subscribe)))
        await c.start_server()
        leaf = Leaf("hanako")
        await _attach(c, leaf)
        key = await (await _post(c, "/messages/key", {"node": "kenji"})).json()
        assert key["node_id"] == b_id.hex() and key["reachable"] is False
        # the sealed send finds no route ...
        wire = leaf.sealed(bytes.fromhex(key["x25519"]), b_id, {"k": "text", "text": "x"},
                           a.node.wall_ms())
        assert (await (await _post(c, "/messages/send", wire)).json())["status"] == "unreachable"
        # ... so the browser makes a mail op itself, signed by its own key
        text = "避難所にいます <script>alert(1)</script>"
        raw = mail_op(leaf, bytes.fromhex(key["x25519"]), b_id, text, a.node.wall_ms())
        r = await _post(c, "/messages/mail", {"op": raw.hex()})
        assert r.status == 200, await r.text()
        res = await r.json()
        assert res["result"] == "applied" and res["to"] == b_id.hex()
        again = await (await _post(c, "/messages/mail", {"op": raw.hex()})).json()
        assert again["result"] == "duplicate"
        # a forged op (one bit of the signature flipped) is refused with a clear error
        forged = raw[:-1] + bytes([raw[-1] ^ 1])
        r = await _post(c, "/messages/mail", {"op": forged.hex()})
        assert r.status == 400 and "signature" in (await r.json())["error"]
        # only this browser's own ops: another key's op (even a valid one) is refused here
        stranger = Leaf("stranger")
        theirs = mail_op(stranger, bytes.fromhex(key["x25519"]), b_id, "x", a.node.wall_ms())
        r = await _post(c, "/messages/mail", {"op": theirs.hex()})
        assert r.status == 400 and "another key" in (await r.json())["error"]
        # only mail ops go this way
        bad = await _post(c, "/messages/mail", {"op": "00"})
        assert bad.status == 400
        # the car carries it: it cannot open it
        assert (await a.call("mail.list", {}))["carried"] == 1

        # kenji links again: sync brings the mail, kenji opens it with the browser as sender
        b = await _start(tmp / "b", "kenji", pb, peer=f"127.0.0.1:{pa}")

        async def opened() -> Any:
            return [m for m in (await b.call("messages", {}))["messages"]
                    if m["from"] == leaf.id.hex()]

        [m] = await _until(opened, "kenji to open the browser's mail")
        assert m["text"] == text and m.get("from_name") == "hanako"
        # kenji's receipt comes back to the car: the browser sees its mail delivered
        op_id = decode_op(raw).op_id.hex()

        async def delivered() -> Any:
            ans = await (await _post(c, "/messages/inbox",
                                     {"author": leaf.ident.ed25519_pub.hex()})).json()
            return ans["delivered"].get(op_id)

        assert await _until(delivered, "kenji's receipt at the car")
    finally:
        if c is not None:
            await c.close()
        await b.down()
        await a.down()


async def _none(x: Awaitable[bool]) -> bool:
    return not await x


async def test_mail_for_a_browser_is_held_at_the_car_and_opened_by_it(tmp: Path) -> None:
    a = await _start(tmp / "a2", "car-a", free_udp_port())
    call, subscribe = web_seams(a.node)
    c: TestClient[Any, Any] = TestClient(TestServer(make_app(call, subscribe)))
    await c.start_server()
    try:
        leaf = Leaf("yuki")
        await _attach(c, leaf)
        assert a.node.mail_fallback is not None
        queued = await a.node.mail_fallback(leaf.id, "毛布を持っていきます")
        assert queued["status"] == "queued"
        inbox = await (await _post(c, "/messages/inbox", {})).json()
        [item] = inbox["mail"]
        assert item["from"] == a.node.identity.node_id.hex()
        body = open_mail(leaf, item)
        assert body["text"] == "毛布を持っていきます" and body["k"] == "text"
        # a carrier (another browser) cannot open it
        with pytest.raises(VerificationError):
            open_mail(Leaf("other"), item)
        raw = receipt_op(leaf, bytes.fromhex(item["from"]), bytes.fromhex(item["op_id"]),
                         a.node.wall_ms())
        r = await _post(c, "/messages/mail", {"op": raw.hex()})
        assert r.status == 200, await r.text()
        assert (await (await _post(c, "/messages/inbox", {})).json())["mail"] == []
        [out] = (await a.call("mail.list", {}))["outbox"]
        assert out["status"] == "delivered" and out["to"] == leaf.id.hex()
        # another session (not attached) reads nothing
        c2: TestClient[Any, Any] = TestClient(TestServer(make_app(call, subscribe)))
        await c2.start_server()
        try:
            assert (await _post(c2, "/messages/inbox", {})).status == 401
        finally:
            await c2.close()
    finally:
        await c.close()
        await a.down()


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make sysdeps)")
async def test_the_page_sends_mail_when_there_is_no_route_and_opens_mail_for_it(
        tmp: Path) -> None:
    """The real page in Chromium: leaf.js seals and signs the mail op itself."""
    async_api = pytest.importorskip("playwright.async_api")
    pa, pb = free_udp_port(), free_udp_port()
    a = await _start(tmp / "pa", "car-a", pa)
    b = await _start(tmp / "pb", "kenji", pb, peer=f"127.0.0.1:{pa}")
    b_id = b.node.identity.node_id
    call, subscribe = web_seams(a.node)
    c: TestClient[Any, Any] = TestClient(TestServer(make_app(call, subscribe)))
    await c.start_server()
    base = f"http://127.0.0.1:{c.port}"
    problems: list[str] = []
    try:
        await _until(lambda: _route(a, b_id), "a route from a to kenji")
        await b.down()
        await _until(lambda: _none(_route(a, b_id)), "a to lose the route to kenji", 120)
        async with async_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                ctx = await browser.new_context(viewport={"width": 390, "height": 844},
                                                locale="en",
                                                extra_http_headers={"Accept-Language": "en"})
                page = await ctx.new_page()
                page.on("console", lambda m: problems.append(m.text)
                        if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                await page.goto(base + "/messages")
                await page.locator("html[data-leaf=attached]").wait_for(state="attached",
                                                                        timeout=60_000)
                await page.fill("#name-form input[name=name]", "hanako")
                await page.click("#attach-button")
                await page.locator("#attach-state", has_text="hanako").wait_for()
                leaf = await page.locator("#leaf").get_attribute("data-leaf-id")
                assert leaf is not None and len(leaf) == 32
                text = "北小学校にいます。水があります <b>"
                await page.fill("#send-form input[name=to]", "kenji")
                await page.fill("#send-form textarea[name=text]", text)
                await page.click("#send-button")
                out = page.locator(".msg.out[data-state=mail]")
                await out.wait_for(timeout=30_000)
                assert "carried car to car" in await out.locator(".meta").inner_text()
                assert (await a.call("mail.list", {}))["carried"] == 1

                # kenji links again and opens it: the browser's key is the sender
                b = await _start(tmp / "pb", "kenji", pb, peer=f"127.0.0.1:{pa}")

                async def opened() -> Any:
                    return [m for m in (await b.call("messages", {}))["messages"]
                            if m["from"] == leaf]

                [m] = await _until(opened, "kenji to open the page's mail")
                assert m["text"] == text and m["from_name"] == "hanako"
                # its receipt reaches the car: the page shows the mail delivered
                await page.reload()
                await page.locator(".msg.out[data-state=delivered]").wait_for(
                    state="attached", timeout=60_000)  # in a closed conversation

                # mail for the browser held at the car: opened in the page, acknowledged
                assert a.node.mail_fallback is not None
                await page.locator("html[data-live=ready]").wait_for(state="attached")
                await page.evaluate("window.__notReloaded = true")
                await a.node.mail_fallback(bytes.fromhex(leaf), "毛布を持っていきます")
                # the live stream says so at once: a notice, without a reload
                await page.locator("#notice[data-kind=mail]").wait_for(timeout=15_000)
                assert await page.evaluate("window.__notReloaded") is True
                got = page.locator(".msg.in .text", has_text="毛布")
                await got.wait_for(state="attached", timeout=60_000)
                assert await got.text_content() == "毛布を持っていきます"
                assert await page.locator(".msg.in.new").count() == 1  # unread

                async def acknowledged() -> Any:
                    return [x for x in (await a.call("mail.list", {}))["outbox"]
                            if x["to"] == leaf and x["status"] == "delivered"]

                await _until(acknowledged, "the page's receipt at the car")
                assert problems == [], problems
                await ctx.close()
            finally:
                await browser.close()
    finally:
        await c.close()
        await b.down()
        await a.down()
