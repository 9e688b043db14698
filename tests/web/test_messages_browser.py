"""Tier 6: messages from and to a phone browser that is a leaf of the mesh (Chromium, netns).

Cars a -- b -- c in a line (real daemons in network namespaces, zeroconf on the veth
links) and a "phone" namespace with Debian's chromium and no meshd, linked to c only,
opening ``https://c/messages``.  The browser attaches to c; a's routes show it behind
c; a message typed in the browser (sealed and signed in the browser) reaches a's
``meshctl messages`` under the browser's own NodeId, and is shown delivered once a's
sealed acknowledgement comes back; a's ``meshctl send`` to the browser's name is
delivered and shown with a notification and an unread mark.  A forged send is refused
with a clear error.  With the page closed, a message to the browser is held at c as
ciphertext only (no file in c's state holds the text) and is opened when the page is
back.  With ``CARMESH_SCREENSHOTS=DIR`` the page is saved there at phone size.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import Cluster, meshctl_ok, meshctl_until, wait_until
from tests.netns.conftest import require_netns

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:  # pragma: no cover - make sysdeps installs it
    pytest.skip("Debian's chromium is not installed (make sysdeps)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

PHONE = {"width": 390, "height": 844}
WEB_PORT = 8443


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


class World:
    def __init__(self, net: DevNet, cl: Cluster, url: str, chromium: str) -> None:
        self.net, self.cl, self.url, self.chromium = net, cl, url, chromium


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_netns()
    from carmesh.dev.devnet import cleanup_stale

    cleanup_stale()
    with DevNet() as net:
        a, b, c = net.line(3)
        phone = net.add_node("phone")
        net.link(c, phone)
        car_addr = net.address(c, phone)
        # chromium runs in the phone namespace: Playwright drives it over a pipe
        wrapper = tmp_path_factory.mktemp("phone") / "chromium"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {phone.netns} {CHROMIUM} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        with Cluster(log_level="info") as cl:
            for node in (a, b, c):
                mesh_ifs = [net.ifname(node, other) for other in net.neighbours(node)
                            if other != phone]
                args = [x for i in mesh_ifs for x in ("--interface", i)]
                args += (["--web", f"{car_addr}:{WEB_PORT}"] if node == c else ["--no-web"])
                cl.add(node.name, args, prefix=_ns(node))
            for d in cl:
                d.wait_ready(60)
            meshctl_until(cl["a"], lambda r: any(x["name"] == "c" and x["reachable"]
                                                 for x in r["routes"]),
                          "routes", timeout=60, what="a route from a to c")
            yield World(net, cl, f"https://{car_addr}:{WEB_PORT}", str(wrapper))


@pytest.fixture(scope="module")
def browser(world: World) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=world.chromium, headless=True)
        try:
            yield b
        finally:
            b.close()


def _shot(page: Any, name: str) -> None:
    out = os.environ.get("CARMESH_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"))


def _route_to(world: World, at: str, name: str) -> Any:
    rc, res = world.cl[at].meshctl("routes")
    if rc != 0:
        return None
    return next((r for r in res["routes"] if r["name"] == name and r["reachable"]), None)


def test_messages_between_the_phone_browser_and_car_a(world: World, browser: Any) -> None:
    a, c = world.cl["a"], world.cl["c"]
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                              has_touch=True, locale="ja", ignore_https_errors=True,
                              extra_http_headers={"Accept-Language": "ja"})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(world.url + "/messages")
        page.locator("html[data-leaf=attached]").wait_for(state="attached", timeout=60_000)
        leaf = page.locator("#leaf").get_attribute("data-leaf-id")
        assert leaf is not None and len(leaf) == 32
        # a name on the mesh: attach again under it
        page.fill("#name-form input[name=name]", "hanako")
        page.click("#attach-button")
        page.locator("#attach-state", has_text="hanako").wait_for()

        # the browser is a leaf behind c: a routes to it through b
        route = wait_until(lambda: _route_to(world, "a", "hanako"), 60, 0.3,
                           "a has a route to the browser")
        assert route["destination"] == leaf and route["next_hop_name"] == "b"
        leaves = meshctl_ok(c, "leaves")["leaves"]
        assert [x["leaf"] for x in leaves] == [leaf] and leaves[0]["name"] == "hanako"

        # typed in the browser, sealed there, delivered to a
        page.locator("html[data-live=ready]").wait_for(state="attached")
        page.fill("#send-form input[name=to]", "a")
        page.fill("#send-form textarea[name=text]", "北小学校に着きました。みんな無事です")
        page.click("#send-button")
        page.locator(".msg.out[data-state=delivered]").wait_for(timeout=60_000)

        def at_a() -> Any:
            msgs = meshctl_ok(a, "messages")["messages"]
            return next((m for m in msgs if m["from"] == leaf), None)

        got = wait_until(at_a, 30, 0.3, "a's inbox holds the browser's message")
        assert got["text"] == "北小学校に着きました。みんな無事です"
        assert got["from_name"] == "hanako"

        # a replies by the browser's name: delivered (the browser acknowledged it), and the
        # page shows it with a notification and an unread mark, without a reload
        page.evaluate("window.__notReloaded = true")
        res = meshctl_ok(a, "send", "hanako", "了解です。迎えに行きます <script>x</script>",
                         "--timeout", "30")
        assert res["status"] == "delivered" and res["node_id"] == leaf
        notice = page.locator("#notice[data-kind=mail]")
        notice.wait_for(timeout=30_000)
        assert "新しいメッセージ" in notice.inner_text() and "a" in notice.inner_text()
        reply = page.locator(".msg.in .text", has_text="迎えに行きます")
        reply.wait_for()
        assert reply.inner_text() == "了解です。迎えに行きます <script>x</script>"  # text, not HTML
        conv = page.locator(f'#conversations li[data-peer="{a_id(world)}"]')
        assert conv.locator(".unread").inner_text().startswith("1")
        assert conv.locator(".msg.in.new").count() == 1
        _shot(page, "messages")
        reply.click()  # read: the mark goes
        conv.locator(".msg.in:not(.new)").wait_for()
        assert conv.locator(".unread").count() == 0
        assert page.evaluate("window.__notReloaded") is True

        assert problems == [], problems
        # a forged send (a bad signature over the sealed bytes) is refused, and says why
        forged = page.evaluate("""async () => {
            const m = await import('/static/leaf.js');
            const db = await m.openDb();
            const peer = await m.lookup('a');
            const { wire } = await m.sendSealed(db, peer, new Uint8Array([0x80]));
            const sig = m.unhex(wire.signature);
            sig[0] ^= 1;
            wire.signature = Array.from(sig, (x) => x.toString(16).padStart(2, '0')).join('');
            const r = await fetch('/messages/send', { method: 'POST', body: JSON.stringify(wire),
                                  headers: { 'Content-Type': 'application/json' } });
            return [r.status, (await r.json()).error];
        }""")
        assert forged[0] == 400 and "does not verify" in forged[1] and leaf[:8] in forged[1]
        assert problems == ["Failed to load resource: the server responded with a status of 400"
                            " (Bad Request)"], problems  # the forged request, nothing else
        page.close()
        _held_then_opened(world, ctx, leaf)
    finally:
        ctx.close()


def _held_then_opened(world: World, ctx: Any, leaf: str) -> None:
    a, c = world.cl["a"], world.cl["c"]
    # the page is closed: a's message is held at c, as ciphertext only
    secret = "合言葉は さくら 42"
    rc, res = a.meshctl("send", "hanako", secret, "--timeout", "3")
    assert rc != 0 and res["error"]["code"] == "timeout", (rc, res)
    wait_until(lambda: meshctl_ok(c, "leaves")["leaves"][0]["held"] >= 1, 30, 0.3,
               "c holds the message for the browser")
    assert (c.state_dir / "leaves.json").exists()
    wait_until(lambda: leaf in (c.state_dir / "leaves.json").read_text(), 10, 0.2,
               "c saved what it holds")
    needles = [secret.encode(), "さくら".encode(), "さくら".encode("utf-16-le")]
    for f in c.state_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(n in data for n in needles), f"{f} holds the plaintext"
    # the browser comes back (the same browser: its keys are in its IndexedDB) and opens
    # the held message itself
    page = ctx.new_page()
    page.goto(world.url + "/messages")
    conv = page.locator(f'#conversations li[data-peer="{a_id(world)}"]')
    conv.locator(".unread").wait_for(timeout=60_000)  # closed, marked unread
    conv.locator("summary").click()
    text = conv.locator(".msg.in .text", has_text="さくら")
    text.wait_for()
    assert text.inner_text() == secret
    conv.locator(".unread").wait_for(state="detached")  # opened: read
    wait_until(lambda: meshctl_ok(c, "leaves")["leaves"][0]["held"] == 0, 30, 0.3,
               "the browser released what c held")


def a_id(world: World) -> str:
    return str(meshctl_ok(world.cl["a"], "status")["node_id"])
