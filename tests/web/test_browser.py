"""Tier 6: Debian's chromium (headless, via Playwright) on the web app of a real meshd.

Two daemons on loopback, a -- c.  a's key is the community's authority.  A
document added at a with ``meshctl`` reaches c by sync and is found in the
browser at c's ``/library?q=避難``; a bulletin published at a appears on the
browser's home page at c without a reload.  No Content-Security-Policy
violation is reported on any page.  "I am safe" typed in the browser at c is
signed by the browser's own key and found at a by ``meshctl safety search``
under that key; a browser without Ed25519 is refused on the page.  With ``CARMESH_SCREENSHOTS=DIR`` the test
also saves phone-size (390×844) screenshots of each page there (docs/web/).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.core.identity import Identity
from tests.daemons import Cluster, Daemon, free_udp_port, meshctl_ok, wait_until

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


_ok = meshctl_ok


def _has(d: Daemon, key: str, *args: str) -> Any:
    rc, res = d.meshctl(*args)
    return res[key] if rc == 0 and isinstance(res, dict) else None


class Mesh:
    def __init__(self, cl: Cluster, http: str, https: str) -> None:
        self.cl, self.http, self.https = cl, http, https


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    with Cluster(log_level="info") as cl:
        (cl.root / "a").mkdir()
        a_id = Identity.load_or_create(cl.root / "a")
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(Identity.generate().ed25519_pub, 1, {a_id.ed25519_pub: Authority(
            a_id.ed25519_pub, AuthorityRole.CITY, "市役所 防災課")}).to_toml())
        pa, pc = free_udp_port(), free_udp_port()
        http, https = _free_tcp_port(), _free_tcp_port()
        cl.add("a", ["--listen", f"127.0.0.1:{pa}", "--trust", str(trust), "--no-web"])
        cl.add("c", ["--listen", f"127.0.0.1:{pc}", "--trust", str(trust),
                     "--peer", f"127.0.0.1:{pa}", "--web-local", f"127.0.0.1:{http}",
                     "--web", f"127.0.0.1:{https}"])
        for d in cl:
            d.wait_ready(60)
        wait_until(lambda: "a" in cl["c"].neighbours(), 60, 0.3, "a -- c linked")
        yield Mesh(cl, f"http://127.0.0.1:{http}", f"https://127.0.0.1:{https}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()


# waits use locators, not wait_for_function("..."): Playwright polls a string predicate
# with eval, which the page's CSP (rightly) refuses

def _page(browser: Any, *, lang: str = "ja", https: bool = False) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                              has_touch=True, locale=lang, ignore_https_errors=https,
                              extra_http_headers={"Accept-Language": lang})
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


def test_document_added_at_a_is_found_in_the_browser_at_c(mesh: Mesh, browser: Any) -> None:
    a, c = mesh.cl["a"], mesh.cl["c"]
    doc = _ok(a, "library", "add", "--collection", "know-how", "--title", "避難所の開設状況",
              "--body", "# 北小学校\n\n避難所は**午前9時**に開設。給水は体育館前。\n\n"
              "- 毛布あり\n- ペット可\n\n[市の案内](https://example.org/)", "--lang", "ja")["doc_id"]
    wait_until(lambda: _has(c, "results", "library", "search", "避難"), 60, 0.3,
               "c holds the document")
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{mesh.http}/library?q=避難")
        link = page.locator(f'a[href="/library/{doc}"]')
        link.wait_for()
        assert link.inner_text() == "避難所の開設状況"
        assert page.locator("mark", has_text="避難").count() >= 1
        _shot(page, "library-search")
        link.click()
        page.wait_for_url(f"**/library/{doc}")
        assert page.locator("h1").inner_text() == "避難所の開設状況"  # the body's "#" is an h2
        assert page.locator(".md h2").inner_text() == "北小学校"
        assert page.locator(".md strong").inner_text() == "午前9時"
        _shot(page, "library-document")
        assert problems == [], problems
    finally:
        ctx.close()


def test_bulletin_published_at_a_appears_without_reload(mesh: Mesh, browser: Any) -> None:
    a = mesh.cl["a"]
    _ok(a, "situation", "set", "shelter", "--field", "name=北小学校 体育館", "--field",
        "capacity=300", "--field", "occupancy=112", "--field", 'needs=["毛布","乳児用ミルク"]')
    _ok(a, "situation", "set", "vehicle", "--field", "name=佐藤さんのEV", "--field",
        "battery_offer_kwh=12.5", "--field", "battery_soc_pct=80", "--field",
        'outlets=["AC100V 1500W"]')
    ctx, page, problems = _page(browser)
    try:
        page.goto(mesh.http + "/")
        page.locator("html[data-live=ready]").wait_for(state="attached")
        page.evaluate("window.__notReloaded = true")
        b = _ok(a, "bulletin", "publish", "--title", "避難指示（川沿いの地区）", "--body",
                "川沿いの地区の方は北小学校へ避難してください。", "--expires", "3600")
        item = page.locator(f"#b-{b['op_id']}")
        item.wait_for(timeout=60_000)
        assert item.locator("h3").inner_text() == "避難指示（川沿いの地区）"
        assert "市役所 防災課" in item.inner_text()
        assert page.evaluate("window.__notReloaded") is True
        notice = page.locator("#notice")
        assert notice.is_visible() and "避難指示" in notice.inner_text()
        assert page.locator("#no-bulletins").is_hidden()
        _shot(page, "home")
        assert problems == [], problems
    finally:
        ctx.close()


def test_every_page_over_https_in_english_without_csp_violations(mesh: Mesh,
                                                                  browser: Any) -> None:
    # the certificate verifies for the IP address it names
    host, port = mesh.https.removeprefix("https://").rsplit(":", 1)
    tls = ssl.create_default_context(cafile=str(mesh.cl["c"].state_dir / "web-cert.pem"))
    with socket.create_connection((host, int(port)), 10) as s, \
            tls.wrap_socket(s, server_hostname=host) as t:
        assert t.version() in ("TLSv1.2", "TLSv1.3")
    wait_until(lambda: len(_has(mesh.cl["c"], "records", "situation", "list") or []) >= 2,
               60, 0.3, "c holds a's records")
    ctx, page, problems = _page(browser, lang="en", https=True)
    try:
        for path, name, expect in (("/board", "board", "Shelters"),
                                   ("/people", "people", "Reachable devices"),
                                   ("/library", "library", "Library"),
                                   ("/call", "call", "Call")):
            page.goto(mesh.https + path)
            assert page.locator("html").get_attribute("lang") == "en"
            assert expect in page.inner_text("main")
            _shot(page, name)
        page.goto(mesh.https + "/board")
        assert "北小学校 体育館" in page.inner_text("main")
        assert "佐藤さんのEV" in page.inner_text("main")
        page.goto(f"{mesh.https}/call/{mesh.cl['a'].node_id}")
        page.locator('#call-state[data-state="idle"]').wait_for()
        _shot(page, "call-node")
        page.goto(mesh.https + "/people")
        assert page.locator(".records li", has_text="a").count() == 1
        # the switch: one tap to Japanese, the page stays where it was
        page.get_by_role("button", name="日本語").click()
        page.wait_for_url("**/people")
        assert page.locator("html").get_attribute("lang") == "ja"
        assert problems == [], problems
    finally:
        ctx.close()


def test_i_am_safe_from_the_browser_reaches_a_under_the_browsers_own_key(
        mesh: Mesh, browser: Any) -> None:
    a, c = mesh.cl["a"], mesh.cl["c"]
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{mesh.http}/safety")
        page.locator("html[data-identity=ready]").wait_for(state="attached")
        key = page.locator("#my-key").get_attribute("data-key")
        assert key is not None and len(key) == 64
        cars = {Identity.load_or_create(d.state_dir).ed25519_pub.hex() for d in (a, c)}
        assert key not in cars
        # the private key never leaves WebCrypto: not extractable
        assert page.evaluate("""async () => {
            const db = await new Promise((ok) => { const r = indexedDB.open('carmesh', 1);
                                                   r.onsuccess = () => ok(r.result); });
            const me = await new Promise((ok) => { const r = db.transaction('identity')
                .objectStore('identity').get('me'); r.onsuccess = () => ok(r.result); });
            return [me.privateKey.extractable, me.privateKey.algorithm.name, me.seq];
        }""") == [False, "Ed25519", 0]
        page.fill("input[name=name]", "山田 花子")
        page.fill("input[name=reading]", "やまだ はなこ")
        page.fill("input[name=place]", "北小学校 体育館")
        page.click("#safe-button")
        page.locator("#safe-result.ok").wait_for()
        assert "山田 花子" in page.inner_text("#safe-result")

        def at_a() -> Any:
            people = _has(a, "people", "safety", "search", "やまだ")
            return people[0] if people else None

        person = wait_until(at_a, 60, 0.3, "a holds the browser's registration")
        assert person["registered_by"]["key"] == key  # the browser is the author, not car c
        assert person["status"] == "safe" and person["place"] == "北小学校 体育館"
        # the same browser again (after a reload): the next op of its chain corrects its record
        page.reload()
        page.locator("html[data-identity=ready]").wait_for(state="attached")
        assert page.locator("#my-key").get_attribute("data-key") == key
        # the form starts from the registered name and reading (the record is replaced whole)
        assert page.input_value("input[name=name]") == "山田 花子"
        assert page.input_value("input[name=reading]") == "やまだ はなこ"
        page.fill("input[name=place]", "市民会館")
        page.click("#safe-button")
        page.locator("#safe-result.ok").wait_for()
        wait_until(lambda: (at_a() or {}).get("place") == "市民会館", 60, 0.3,
                   "a holds the correction")
        people = _has(a, "people", "safety", "search", "山田")
        assert len(people) == 1 and people[0]["registered_by"]["key"] == key
        # find a person on the page, escaped text, the browser's own key shown
        page.fill("input[name=q]", "やまだ")
        page.click("form.search button")
        page.wait_for_url("**/safety?q=*")
        found = page.locator("#people-found li")
        assert found.count() == 1 and "市民会館" in found.inner_text()
        assert found.locator("code.key").get_attribute("title") == key
        page.evaluate("window.scrollTo(0, document.getElementById('safe-button').offsetTop - 240)")
        _shot(page, "safety")
        assert problems == [], problems
    finally:
        ctx.close()


def test_a_browser_without_webcrypto_ed25519_signs_with_the_vendored_library(
        mesh: Mesh, browser: Any) -> None:
    a = mesh.cl["a"]
    ctx, page, problems = _page(browser, lang="en")
    # what an older browser does: WebCrypto without the Ed25519 algorithm
    ctx.add_init_script("""{
        const refuse = () => Promise.reject(new DOMException('Unrecognized name', 'NotSupportedError'));
        const ed = (alg) => alg === 'Ed25519' || (alg && alg.name === 'Ed25519');
        for (const f of ['generateKey', 'importKey', 'sign', 'verify']) {
            const real = crypto.subtle[f].bind(crypto.subtle);
            const at = f === 'importKey' ? 2 : 0;
            crypto.subtle[f] = (...args) => ed(args[at]) ? refuse() : real(...args);
        }
    }""")
    try:
        page.goto(f"{mesh.http}/safety")
        page.locator("html[data-identity=ready]").wait_for(state="attached")
        key = page.locator("#my-key").get_attribute("data-key")
        assert key is not None and len(key) == 64
        # the key is the vendored library's: 32 secret bytes in IndexedDB, no WebCrypto key
        assert page.evaluate("""async () => {
            const db = await new Promise((ok) => { const r = indexedDB.open('carmesh', 1);
                                                   r.onsuccess = () => ok(r.result); });
            const me = await new Promise((ok) => { const r = db.transaction('identity')
                .objectStore('identity').get('me'); r.onsuccess = () => ok(r.result); });
            return [me.privateKey, me.secret.length];
        }""") == [None, 32]
        # verifying falls back too: its own signature verifies, a changed byte does not
        assert page.evaluate("""async () => {
            const id = await import('/static/identity.js');
            const me = await id.identity(await id.openDb());
            const data = new TextEncoder().encode('carmesh');
            const sig = await id.sign(me, data);
            const bad = sig.slice(); bad[0] ^= 1;
            return [await id.verify(me.pub, sig, data), await id.verify(me.pub, bad, data)];
        }""") == [True, False]
        page.fill("input[name=name]", "古い 電話")
        page.fill("input[name=reading]", "ふるい でんわ")
        page.click("#safe-button")
        page.locator("#safe-result.ok").wait_for()
        # the cars verified the signature (a bad one is refused) and hold it under this key
        person = wait_until(lambda: (_has(a, "people", "safety", "search", "ふるい") or [None])[0],
                            60, 0.3, "a holds the registration")
        assert person["registered_by"]["key"] == key
        assert problems == [], problems
    finally:
        ctx.close()


def test_one_browser_registers_two_other_people_under_its_own_key(mesh: Mesh,
                                                                    browser: Any) -> None:
    a = mesh.cl["a"]
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{mesh.http}/safety")
        page.locator("html[data-identity=ready]").wait_for(state="attached")
        key = page.locator("#my-key").get_attribute("data-key")
        for name, reading, status, place in (("鈴木 一郎", "すずき いちろう", "injured", "市民病院"),
                                             ("鈴木 花", "すずき はな", "missing", "")):
            page.fill("#other-form input[name=name]", name)
            page.fill("#other-form input[name=reading]", reading)
            page.select_option("#other-form select[name=status]", status)
            page.fill("#other-form input[name=place]", place)
            page.click("#other-button")
            page.locator("#other-result.ok").wait_for()
            assert name in page.inner_text("#other-result")
            # shown and emptied in one task: the next person starts from an empty form
            assert page.input_value("#other-form input[name=name]") == ""

        def both() -> list[Any] | None:
            people = _has(a, "people", "safety", "search", "すずき") or []
            return people if len(people) == 2 else None

        people = {p["name"]: p for p in wait_until(both, 60, 0.3, "a holds both people")}
        assert set(people) == {"鈴木 一郎", "鈴木 花"}
        assert {p["registered_by"]["key"] for p in people.values()} == {key}
        assert people["鈴木 一郎"]["status"] == "injured"
        assert people["鈴木 一郎"]["place"] == "市民病院"
        assert people["鈴木 花"]["status"] == "missing"
        assert people["鈴木 一郎"]["id"] != people["鈴木 花"]["id"]
        assert problems == [], problems
    finally:
        ctx.close()


def test_a_phone_whose_clock_is_two_hours_ahead_still_registers(mesh: Mesh,
                                                                 browser: Any) -> None:
    a = mesh.cl["a"]
    ctx, page, problems = _page(browser)
    # no network time after the disaster: the phone's clock is 2 h fast (cars refuse ops
    # stamped more than 5 minutes ahead); the page carries the car's time
    ctx.add_init_script("{ const real = Date.now; Date.now = () => real() + 7200000; }")
    try:
        page.goto(f"{mesh.http}/safety")
        page.locator("html[data-identity=ready]").wait_for(state="attached")
        key = page.locator("#my-key").get_attribute("data-key")
        page.fill("input[name=name]", "時計 進子")
        page.click("#safe-button")
        page.locator("#safe-result.ok").wait_for()
        person = wait_until(lambda: (_has(a, "people", "safety", "search", "時計") or [None])[0],
                            60, 0.3, "a holds the registration")
        assert person["registered_by"]["key"] == key
        assert abs(person["registered_ms"] / 1000 - time.time()) < 600  # the car's time
        assert problems == [], problems
    finally:
        ctx.close()
