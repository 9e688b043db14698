"""Tier 6: correcting the library and pinning contacts in Debian's chromium (Playwright).

Three real daemons on loopback: a -- c -- s.  a's key is the community's
authority and a is called "kenji"; s is a stranger that calls itself "kenji" too.
A document added at a is corrected in the browser at c: the car composes the
change, the browser signs it with its own key, and a's ``meshctl library show``
has the new text with the browser's key among the authors; c's history page
shows that key.  A hostile correction renders inert.  On c's /people the user
pins a by key: a shows the pinned label and fingerprint (and its verified mark),
the same-named stranger s a warning, also after a reload.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.core.identity import Identity
from tests.daemons import Cluster, Daemon, free_udp_port, meshctl_ok, wait_until
from web.library_edit import fingerprint

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None:  # pragma: no cover - make sysdeps installs it
    pytest.skip("Debian's chromium is not installed (make sysdeps)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")

PHONE = {"width": 390, "height": 844}


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has(d: Daemon, key: str, *args: str) -> Any:
    rc, res = d.meshctl(*args)
    return res[key] if rc == 0 and isinstance(res, dict) else None


class Mesh:
    def __init__(self, cl: Cluster, http: str, keys: dict[str, str]) -> None:
        self.cl, self.http, self.keys = cl, http, keys


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with Cluster(log_level="info") as cl:
        keys = {}
        for n in ("a", "c", "s"):
            (cl.root / n).mkdir()
            keys[n] = Identity.load_or_create(cl.root / n).ed25519_pub.hex()
        a_key = bytes.fromhex(keys["a"])
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(Identity.generate().ed25519_pub, 1, {a_key: Authority(
            a_key, AuthorityRole.CITY, "市役所 防災課")}).to_toml())
        pa, pc, ps = free_udp_port(), free_udp_port(), free_udp_port()
        http = _free_tcp_port()
        cl.add("a", ["--listen", f"127.0.0.1:{pa}", "--trust", str(trust), "--no-web",
                     "--name", "kenji"])
        cl.add("c", ["--listen", f"127.0.0.1:{pc}", "--trust", str(trust),
                     "--peer", f"127.0.0.1:{pa}", "--web-local", f"127.0.0.1:{http}"])
        cl.add("s", ["--listen", f"127.0.0.1:{ps}", "--trust", str(trust), "--no-web",
                     "--peer", f"127.0.0.1:{pc}", "--name", "kenji"])
        for d in cl:
            d.wait_ready(60)
        def linked() -> bool:
            rc, data = cl["c"].meshctl("neighbours")
            return rc == 0 and sum(n.get("state") == "up" for n in data["neighbours"]) == 2

        wait_until(linked, 60, 0.3, "a -- c -- s linked")
        yield Mesh(cl, f"http://127.0.0.1:{http}", keys)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                              has_touch=True, locale="ja",
                              extra_http_headers={"Accept-Language": "ja"})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return ctx, page, problems


def _shot(page: Any, name: str) -> None:
    out = os.environ.get("CARMESH_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"))


def _browser_key(page: Any) -> str:
    key = page.evaluate("""async () => {
        const db = await new Promise((ok) => { const r = indexedDB.open('carmesh', 1);
                                               r.onsuccess = () => ok(r.result); });
        const me = await new Promise((ok) => { const r = db.transaction('identity')
            .objectStore('identity').get('me'); r.onsuccess = () => ok(r.result); });
        return Array.from(me.pub, (b) => b.toString(16).padStart(2, '0')).join('');
    }""")
    assert isinstance(key, str) and len(key) == 64
    return key


def _correct(page: Any, http: str, doc: str, body: str, shot: str = "") -> None:
    page.goto(f"{http}/library/{doc}")
    page.click("#edit-link")
    page.wait_for_url(f"**/library/{doc}/edit")
    page.locator("html[data-identity=ready]").wait_for(state="attached")
    page.fill("textarea[name=body]", body)
    page.click("#edit-save")
    page.locator("#edit-confirm").wait_for(state="visible")
    assert int(page.inner_text("#edit-count")) >= 1
    if shot:
        page.locator("#edit-confirm").scroll_into_view_if_needed()
        _shot(page, shot)
    page.click("#edit-sign")
    page.locator("#edit-result.ok").wait_for()


def test_correction_in_the_browser_at_c_reaches_a_under_the_browsers_key(
        mesh: Mesh, browser: Any) -> None:
    a, c = mesh.cl["a"], mesh.cl["c"]
    doc = meshctl_ok(a, "library", "add", "--collection", "know-how", "--title", "給水所",
                     "--body", "給水は午前9時から。\n\n場所: 体育館前", "--lang", "ja")["doc_id"]
    wait_until(lambda: _has(c, "body", "library", "show", doc), 60, 0.3, "c holds the document")
    ctx, page, problems = _page(browser)
    try:
        corrected = "給水は午前10時から（訂正）。\n\n場所: 体育館前"
        _correct(page, mesh.http, doc, corrected, shot="library-edit")
        key = _browser_key(page)
        assert key not in mesh.keys.values()  # the browser's own key, not a car's

        def at_a() -> Any:
            shown = _has(a, "authors", "library", "show", doc)
            return shown if shown and key in shown else None

        wait_until(at_a, 60, 0.3, "a holds the browser's correction")
        rc, shown = a.meshctl("library", "show", doc)
        assert rc == 0 and shown["body"] == corrected and key in shown["authors"]
        hist = _has(a, "history", "library", "history", doc)
        assert hist[-1]["author"] == key and hist[0]["author"] == mesh.keys["a"]
        # c's history page: the browser by its key, the creator by name
        page.goto(f"{mesh.http}/library/{doc}")
        page.click("#history-link")
        page.wait_for_url(f"**/library/{doc}/history")
        first = page.locator("#history li").first
        assert first.get_attribute("data-author") == key
        assert fingerprint(key) in first.inner_text() and "ブラウザの利用者" in first.inner_text()
        assert "kenji" in page.locator("#history li").last.inner_text()
        _shot(page, "library-history")
        assert problems == [], problems
    finally:
        ctx.close()


def test_hostile_correction_renders_inert(mesh: Mesh, browser: Any) -> None:
    a, c = mesh.cl["a"], mesh.cl["c"]
    doc = meshctl_ok(a, "library", "add", "--collection", "know-how", "--title", "毛布",
                     "--body", "毛布は体育館にあります。")["doc_id"]
    wait_until(lambda: _has(c, "body", "library", "show", doc), 60, 0.3, "c holds the document")
    ctx, page, problems = _page(browser)
    try:
        hostile = ("<script>window.__pwned = 1</script>\n\n[押して](javascript:window.__pwned=2)"
                   "\n\n<img src=x onerror=\"window.__pwned=3\">\n\n**太字**")
        _correct(page, mesh.http, doc, hostile)
        page.goto(f"{mesh.http}/library/{doc}")
        assert page.evaluate("window.__pwned") is None
        md = page.locator(".md")
        assert md.locator("script").count() == 0 and md.locator("img").count() == 0
        assert page.locator("a[href^='javascript' i]").count() == 0
        assert "<script>window.__pwned = 1</script>" in md.inner_text()  # shown as text
        assert md.locator("strong").inner_text() == "太字"
        page.goto(f"{mesh.http}/library/{doc}/edit")
        assert page.evaluate("window.__pwned") is None
        assert page.input_value("textarea[name=body]") == hostile
        assert problems == [], problems
    finally:
        ctx.close()


def test_pinned_contact_and_a_same_named_stranger(mesh: Mesh, browser: Any) -> None:
    a_key, s_key = mesh.keys["a"], mesh.keys["s"]
    wait_until(lambda: {r["destination"] for r in _has(mesh.cl["c"], "routes", "routes") or []
                        if r["reachable"]} >= {Identity.load_or_create(
                            mesh.cl[n].state_dir).node_id.hex() for n in ("a", "s")},
               60, 0.3, "c reaches a and s")
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{mesh.http}/people")
        page.locator("html[data-contacts=ready]").wait_for(state="attached")
        a_li = page.locator(f"#reachable li[data-key='{a_key}']")
        s_li = page.locator(f"#reachable li[data-key='{s_key}']")
        assert a_li.get_attribute("data-name") == s_li.get_attribute("data-name") == "kenji"
        # verified: a is the community's authority; the stranger is not enrolled
        assert "市役所 防災課" in a_li.locator(".verified").inner_text()
        assert s_li.locator(".verified").count() == 0
        # nothing pinned yet: no marks, no warnings
        assert page.locator(".contact-mark, .contact-warning").count() == 0
        a_li.locator("button.pin").click()
        for _ in range(2):  # at once, and after a reload (kept in the browser)
            mark = a_li.locator(".contact-mark")
            assert "kenji" in mark.inner_text() and fingerprint(a_key) in mark.inner_text()
            assert a_li.get_attribute("data-contact") == "pinned"
            assert s_li.get_attribute("data-contact") == "stranger"
            warning = s_li.locator(".contact-warning")
            assert fingerprint(s_key) in warning.inner_text() and "別の鍵" in warning.inner_text()
            assert s_li.locator(".contact-mark").count() == 0
            contacts = page.locator("#contacts li")
            assert contacts.count() == 1 and contacts.get_attribute("data-key") == a_key
            _shot(page, "people-contacts")
            page.reload()
            page.locator("html[data-contacts=ready]").wait_for(state="attached")
        # unpinned: the stranger is just another "kenji" again
        a_li.locator("button.pin").click()
        assert page.locator(".contact-mark, .contact-warning").count() == 0
        assert problems == [], problems
    finally:
        ctx.close()
