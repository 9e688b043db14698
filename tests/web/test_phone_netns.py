"""Tier 6: the issue's phone test in network namespaces, over HTTPS the phone trusts.

Cars ``a``–``b``–``c`` in a line; a "phone" namespace ``p`` linked to ``c`` runs
Debian's chromium and no meshd, so it has no IP route to ``a`` or ``b``.  Car
``c``'s web certificate is signed by the community web CA (``meshctl trust
web-ca`` / ``web-cert``, the dealer's visit) and the phone's NSS database holds
that CA: no certificate error is ignored.  ``a``'s key is the community's
authority.

- a document added at ``a`` is found in the browser at ``https://C/library?q=避難``;
- "I am safe" sent from the browser appears in ``a``'s safety registry under the
  browser's own key (not car ``c``'s); the name, holding ``<script>`` and
  ``javascript:``, comes back to the page as inert text;
- a bulletin published at ``a`` appears on the browser's home page without a reload;
  every page is usable with one thumb at 390×844 (targets of 44 px or more, no
  sideways scrolling).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, cleanup_stale, have_netns
from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.core.identity import Identity
from tests.daemons import MESHCTL, Cluster, Daemon, meshctl_ok, meshctl_until
from tests.web.phone import CERTUTIL, CHROMIUM, WEB_PORT, chromium_in, nss_home, start_car

pytestmark = [pytest.mark.netns, pytest.mark.slow]

if CHROMIUM is None or CERTUTIL is None:  # pragma: no cover - make sysdeps installs them
    pytest.skip("needs Debian's chromium and certutil (make sysdeps)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")


HOSTILE_NAME = "避難 花子<script>window.__pwned=1</script>"

#: one thumb on a phone: every link, button and field is a comfortable target (at least
#: 44 CSS px tall, Apple's and WCAG 2.5.5's size) and nothing makes the page scroll sideways
THUMB = """() => {
  const small = [...document.querySelectorAll('header a, header button, main a, main button,'
                                               + ' main input, main textarea, main select')]
    .filter((e) => e.offsetParent !== null && e.type !== 'hidden')
    .map((e) => [e.outerHTML.slice(0, 80), e.getBoundingClientRect().height])
    .filter(([, h]) => h < 44);
  return {small, wide: document.documentElement.scrollWidth > window.innerWidth};
}"""


class Line:
    def __init__(self, cl: Cluster, a: Daemon, c: Daemon, url: str, home: Path,
                 wrapper: Path) -> None:
        self.cl, self.a, self.c, self.url, self.home, self.wrapper = cl, a, c, url, home, wrapper


def _offline_meshctl(*args: str) -> None:
    r = subprocess.run([*MESHCTL, "--json", *args], check=False, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (args, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def line() -> Iterator[Line]:
    why = have_netns()
    if why is not None:
        pytest.skip(f"network-namespace test: {why}")
    cleanup_stale()
    with DevNet() as net, Cluster(log_level="info") as cl:
        a, b, c = net.line(3)
        p = net.add_node("p")
        net.link(c, p)
        (cl.root / "a").mkdir()
        a_key = Identity.load_or_create(cl.root / "a").ed25519_pub
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(Identity.generate().ed25519_pub, 1, {a_key: Authority(
            a_key, AuthorityRole.CITY, "市役所 防災課")}).to_toml())
        # the dealer's visit: a community web CA (kept off the car) signs c's web certificate
        web = f"{net.address(c, p)}:{WEB_PORT}"
        stick, c_state = cl.root / "stick", cl.root / "c"
        stick.mkdir()
        c_state.mkdir()
        _offline_meshctl("trust", "web-ca", "--ca", str(stick / "web-ca.pem"), "--community",
                         "本町", "--state-dir", str(c_state))
        _offline_meshctl("trust", "web-cert", "--ca", str(stick / "web-ca.pem"), "--address",
                         web, "--name", "c", "--state-dir", str(c_state))
        home = nss_home(cl.root / "phone-home", c_state / "web-ca.pem")
        da = start_car(net, cl, a, [], ["--trust", str(trust), "--no-web"])
        start_car(net, cl, b, [a], ["--trust", str(trust), "--no-web"])
        dc = start_car(net, cl, c, [b], ["--trust", str(trust), "--web", web])
        for d in cl:
            d.wait_ready(60)
        meshctl_until(dc, lambda r: any(x["destination"] == da.node_id and x["reachable"]
                                        for x in r["routes"]), "routes", timeout=60,
                      what="c has a route to a")
        yield Line(cl, da, dc, f"https://{web}", home, chromium_in(cl.root, p))


@pytest.fixture(scope="module")
def browser(line: Line) -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(line.wrapper), headless=True,
                               env={**os.environ, "HOME": str(line.home)})
        try:
            yield b
        finally:
            b.close()


def _page(browser: Any) -> tuple[Any, Any, list[str]]:
    # ignore_https_errors stays False: the phone trusts c through the CA in its NSS database
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                              has_touch=True, locale="ja",
                              extra_http_headers={"Accept-Language": "ja"})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return ctx, page, problems


def test_a_document_added_at_a_is_found_at_https_c_library(line: Line, browser: Any) -> None:
    doc = meshctl_ok(line.a, "library", "add", "--collection", "know-how", "--title",
                     "避難所の開設状況", "--body", "# 北小学校\n\n避難所は**午前9時**に開設。",
                     "--lang", "ja")["doc_id"]
    meshctl_until(line.c, lambda r: r["results"], "library", "search", "避難", timeout=60,
                  what="c holds a's document (through b)")
    ctx, page, problems = _page(browser)
    try:
        resp = page.goto(f"{line.url}/library?q=避難")
        assert resp is not None and resp.status == 200
        assert page.evaluate("window.isSecureContext") is True
        link = page.locator(f'a[href="/library/{doc}"]')
        assert link.inner_text() == "避難所の開設状況"
        assert page.locator("mark", has_text="避難").count() >= 1
        link.click()
        page.wait_for_url(f"**/library/{doc}")
        assert page.locator(".md strong").inner_text() == "午前9時"
        assert problems == [], problems
    finally:
        ctx.close()


def test_i_am_safe_from_the_browser_is_in_as_registry_under_its_own_key(
        line: Line, browser: Any) -> None:
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{line.url}/safety")
        page.locator("html[data-identity=ready]").wait_for(state="attached", timeout=20000)
        key = page.locator("#my-key").get_attribute("data-key")
        assert key is not None and len(key) == 64
        cars = {Identity.load_or_create(d.state_dir).ed25519_pub.hex() for d in line.cl}
        assert key not in cars
        page.fill("input[name=name]", HOSTILE_NAME)
        page.fill("input[name=place]", "javascript:window.__pwned=2")
        page.click("#safe-button")
        page.locator("#safe-result.ok").wait_for(timeout=20000)
        people = meshctl_until(line.a, lambda r: r["people"], "safety", "search", "避難 花子",
                               timeout=60, what="a holds the browser's registration")
        assert len(people) == 1
        assert people[0]["registered_by"]["key"] == key  # the browser is the author, not car c
        assert people[0]["status"] == "safe" and people[0]["name"] == HOSTILE_NAME
        # the name comes back to the phone as text: shown, never run, never a link
        page.goto(f"{line.url}/safety?q=避難")
        found = page.locator("#people-found li")
        assert found.count() == 1 and HOSTILE_NAME in found.inner_text()
        assert "javascript:window.__pwned=2" in found.inner_text()
        assert page.locator("#people-found script, #people-found a").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert problems == [], problems
    finally:
        ctx.close()


def test_a_bulletin_published_at_a_appears_on_the_home_page_without_reload(
        line: Line, browser: Any) -> None:
    ctx, page, problems = _page(browser)
    try:
        page.goto(line.url + "/")
        page.locator("html[data-live=ready]").wait_for(state="attached", timeout=20000)
        page.evaluate("window.__notReloaded = true")
        b = meshctl_ok(line.a, "bulletin", "publish", "--title", "避難指示（川沿いの地区）",
                       "--body", "北小学校へ避難してください。", "--expires", "3600")
        item = page.locator(f"#b-{b['op_id']}")
        item.wait_for(timeout=60_000)
        assert item.locator("h3").inner_text() == "避難指示（川沿いの地区）"
        assert "市役所 防災課" in item.inner_text()
        assert page.evaluate("window.__notReloaded") is True
        notice = page.locator("#notice")
        assert notice.is_visible() and "避難指示" in notice.inner_text()
        assert page.evaluate(THUMB) == {"small": [], "wide": False}
        for path in ("/safety", "/library?q=避難", "/board", "/people", "/call"):
            page.goto(line.url + path)
            assert page.evaluate(THUMB) == {"small": [], "wide": False}, path
        assert problems == [], problems
    finally:
        ctx.close()
