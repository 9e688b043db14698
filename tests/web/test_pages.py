"""The web app over a real node's handlers: every page, headers, escaping, and the guards."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from tests.web.conftest import Running
from web.app import CSP, WEB_METHODS, WebSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOSTILE_TITLE = '<script>alert("t")</script>避難の手引き'
HOSTILE_BODY = """# 避難所 <img src=x onerror=alert(1)>

<script>alert(document.cookie)</script>

[click](javascript:alert(1)) [also](JAVASCRIPT:alert(2)) <javascript:alert(3)>
[data](data:text/html;base64,PHNjcmlwdD4=) [ok](https://example.org/a?b=1) [rel](/library)
<a href="javascript:alert(4)">raw</a> <iframe src="https://evil"></iframe>
\u0000nul \x7f\u202e bidi \ufffd replacement (what import makes of invalid UTF-8)
"""


def _ok_headers(h: Any) -> None:
    assert h["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["X-Frame-Options"] == "DENY"
    assert h["Referrer-Policy"] == "same-origin"


def _no_inline_script(html: str) -> None:
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/static/' in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None  # no script has a body
    for tag in re.findall(r"<[a-zA-Z][^>]*>", html):  # no event handler or style on any tag
        assert re.search(r"\s(on[a-z]+|style)\s*=", tag, re.I) is None, tag
    assert "<style" not in html


async def test_home_shows_bulletins_first_and_links(running: Running) -> None:
    b = await running.call("bulletin.publish", {"title": "避難指示 <b>川沿い</b>",
                                               "body": "北小学校へ避難してください。<script>x</script>",
                                               "expires_s": 3600})
    c = await running.client()
    try:
        r = await c.get("/", headers={"Accept-Language": "ja,en;q=0.5"})
        assert r.status == 200
        _ok_headers(r.headers)
        html = await r.text()
        _no_inline_script(html)
        assert '<html lang="ja">' in html
        assert f'id="b-{b["op_id"]}"' in html
        assert "避難指示 &lt;b&gt;川沿い&lt;/b&gt;" in html and "<b>川沿い" not in html
        assert "&lt;script&gt;x&lt;/script&gt;" in html
        assert html.index("緊急のお知らせ") < html.index('href="/library"><strong>')
        en = await (await c.get("/", headers={"Accept-Language": "en-US,en;q=0.9,ja;q=0.8"})).text()
        assert '<html lang="en">' in en and "Emergency bulletins" in en
    finally:
        await c.close()


async def test_library_search_finds_short_japanese_words_and_reads_safely(
        running: Running) -> None:
    doc = (await running.call("library.add", {
        "collection": "know-how", "title": "給水所の案内", "body": "避難所の給水は午前9時から。",
        "tags": ["water"], "lang": "ja"}))["doc_id"]
    c = await running.client()
    try:
        for q in ("避難", "給水", "水"):
            r = await c.get("/library", params={"q": q})
            assert r.status == 200
            html = await r.text()
            assert f'href="/library/{doc}"' in html, q
        html = await (await c.get("/library", params={"q": "避難"})).text()
        assert "<mark>避難</mark>" in html
        html = await (await c.get("/library", params={"q": "存在しない語句"})).text()
        assert "見つかりませんでした" in html
        r = await c.get(f"/library/{doc[:8]}")
        assert r.status == 200
        _ok_headers(r.headers)
        html = await r.text()
        assert "<h1>給水所の案内</h1>" in html and "午前9時" in html
        assert (await c.get("/library/" + "0" * 32)).status == 404
        assert (await c.get("/library/zzzz")).status == 404  # not an id: no route
    finally:
        await c.close()


async def test_hostile_document_renders_inert(running: Running) -> None:
    res = await running.call("library.add", {"collection": "know-how", "title": HOSTILE_TITLE,
                                             "body": HOSTILE_BODY + "長い文章。" * 39_000})
    doc = res["doc_id"]
    c = await running.client()
    try:
        r = await c.get(f"/library/{doc}")
        assert r.status == 200
        raw = await r.read()
        html = raw.decode("utf-8")
        assert len(raw) > 500_000
        _no_inline_script(html)
        assert "<script>alert" not in html and "<img" not in html and "<iframe" not in html
        assert "<h1>&lt;script&gt;alert(&#34;t&#34;)&lt;/script&gt;避難の手引き</h1>" in html
        hrefs = re.findall(r'href="([^"]*)"', html)
        assert "https://example.org/a?b=1" in hrefs and "/library" in hrefs
        assert not [h for h in hrefs if ":" in h and not h.startswith(("https:", "http:"))]
        assert 'rel="nofollow noopener noreferrer"' in html
        assert "\ufffd" in html
        # the hostile title in search results is escaped too
        html = await (await c.get("/library", params={"q": "手引き"})).text()
        assert "&lt;script&gt;" in html and "<script>alert" not in html
    finally:
        await c.close()


async def test_bad_queries_are_answered_not_crashed(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/library?q=%FF%FE%E9%81")  # invalid UTF-8 in the query
        assert r.status in (200, 400)
        _ok_headers(r.headers)
        r = await c.get("/library", params={"q": "x" * 300})
        assert r.status == 400
        assert "256" in await r.text()
        r = await c.get("/library", params={"q": '"<script>'})
        assert r.status in (200, 400)
        html = await r.text()
        assert "<script>" not in html.replace('<script type="module" src="/static/live.js">', "")
    finally:
        await c.close()


async def test_board_shows_shelters_needs_vehicles_and_bulletins(running: Running) -> None:
    await running.call("situation.set", {"kind": "shelter", "fields": {
        "name": "北小学校 <i>体育館</i>", "capacity": 300, "occupancy": 120, "open": True,
        "needs": ["毛布", "<script>bad()</script>"]}})
    await running.call("situation.set", {"kind": "vehicle", "fields": {
        "name": "Kenji's EV", "battery_offer_kwh": 12.5, "battery_soc_pct": 80, "seats": 4,
        "outlets": ["AC100V"]}})
    c = await running.client()
    try:
        r = await c.get("/board", headers={"Accept-Language": "en"})
        assert r.status == 200
        _ok_headers(r.headers)
        html = await r.text()
        _no_inline_script(html)
        assert "北小学校 &lt;i&gt;体育館&lt;/i&gt;" in html
        assert "sheltering 120 / capacity 300" in html
        assert "毛布" in html and "&lt;script&gt;bad()&lt;/script&gt;" in html
        assert "Kenji&#39;s EV" in html and "12.5 kWh" in html and "AC100V" in html
        assert "Emergency bulletins" in html
        # register yourself or others: both forms on /safety, one tap from the board
        assert 'href="/safety#safe-h"' in html and 'href="/safety#other-h"' in html
        assert "Register someone else" in html
    finally:
        await c.close()


async def test_people_shows_this_node_escaped(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/people")
        assert r.status == 200
        _ok_headers(r.headers)
        html = await r.text()
        assert "car-&lt;b&gt;本町&lt;/b&gt;" in html and "<b>本町" not in html
        assert "まだ誰ともつながっていません" in html  # a node alone reaches nobody
    finally:
        await c.close()


async def test_static_module_and_stylesheet_are_served_with_headers(running: Running) -> None:
    c = await running.client()
    try:
        js = await c.get("/static/live.js")
        assert js.status == 200 and "javascript" in js.headers["Content-Type"]
        _ok_headers(js.headers)
        text = await js.text()
        assert "innerHTML" not in text and "textContent" in text
        css = await c.get("/static/app.css")
        assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
        assert (await c.get("/static/../app.py")).status in (403, 404)
    finally:
        await c.close()


async def test_language_switch_sets_a_cookie_only_from_this_site(running: Running) -> None:
    c = await running.client()
    try:
        origin = f"http://{c.host}:{c.port}"
        r = await c.post("/lang", data={"lang": "en", "next": "/board"},
                         headers={"Origin": origin}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/board"
        assert "lang=en" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
        html = await (await c.get("/board", headers={"Accept-Language": "ja"})).text()
        assert '<html lang="en">' in html  # the cookie wins over Accept-Language
        # an open redirect is not possible
        r = await c.post("/lang", data={"lang": "ja", "next": "//evil.example/"},
                         headers={"Origin": origin}, allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/"
        # another site's form is refused, and so is a POST that says nothing of its origin
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": f"https://{c.host}:{c.port}"}, {}):
            r = await c.post("/lang", data={"lang": "ja", "next": "/"}, headers=headers,
                             allow_redirects=False)
            assert r.status == 403, headers
            assert "Set-Cookie" not in r.headers
            _ok_headers(r.headers)
    finally:
        await c.close()


async def test_host_names_other_than_ip_literals_are_refused(running: Running) -> None:
    c = await running.client()
    try:
        assert (await c.get("/", headers={"Host": "attacker.example"})).status == 400
        assert (await c.get("/", headers={"Host": f"localhost:{c.port}"})).status == 200
        assert (await c.get("/", headers={"Host": f"[::1]:{c.port}"})).status == 200
    finally:
        await c.close()


async def test_request_body_over_the_limit_is_refused(running: Running) -> None:
    c = await running.client(WebSettings(max_body=1024))
    try:
        origin = f"http://{c.host}:{c.port}"
        r = await c.post("/lang", data={"lang": "en", "next": "/" + "a" * 4000},
                         headers={"Origin": origin}, allow_redirects=False)
        assert r.status == 413
        _ok_headers(r.headers)
        r = await c.post("/lang", data={"lang": "en", "next": "/"},
                         headers={"Origin": origin}, allow_redirects=False)
        assert r.status == 303  # a small one still passes
    finally:
        await c.close()


async def test_per_client_rate_limit(running: Running) -> None:
    now = [100.0]
    c = await running.client(WebSettings(rate_per_s=1.0, burst=3), clock=lambda: now[0])
    try:
        for _ in range(3):
            assert (await c.get("/static/app.css")).status == 200
        r = await c.get("/")
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        _ok_headers(r.headers)
        now[0] += 1.0  # one token back
        assert (await c.get("/static/app.css")).status == 200
        assert (await c.get("/static/app.css")).status == 429
    finally:
        await c.close()


async def test_no_admin_operation_is_reachable_from_the_web() -> None:
    admin = {"library.import", "library.export", "library.add", "library.edit",
             "bulletin.publish", "situation.set", "send", "ping", "web.status",
             "leaf.list"}
    assert not admin & WEB_METHODS
    # reads, the writes of ops the browser signed with its own key (safety, library;
    # library.prepare composes a change for the browser to sign and stores nothing), and a
    # leaf's ciphertext (web/messages.py: attachment with a proof, sealed mail in and out)
    assert all(m in {"status", "routes", "library.search", "library.show", "bulletin.list",
                     "situation.list", "safety.search", "safety.publish", "library.history",
                     "library.prepare", "library.publish", "trust.marks", "leaf.challenge",
                     "leaf.attach", "leaf.held", "leaf.release", "leaf.send", "leaf.key",
                     "leaf.directory", "mail.publish", "mail.inbox"}
               for m in WEB_METHODS)


async def _read_events(resp: Any, want: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    event = ""
    while len(out) < want:
        line = (await resp.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            out.append((event, json.loads(line[6:])))
    return out


async def test_events_stream_sends_bulletins_in_force_then_new_ones(running: Running) -> None:
    c = await running.client()
    try:
        resp = await c.get("/events")
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        _ok_headers(resp.headers)
        first = await asyncio.wait_for(_read_events(resp, 1), 30)
        assert first[0][0] in ("bulletin", "ready")
        while first[-1][0] != "ready":
            first += await asyncio.wait_for(_read_events(resp, 1), 30)
        b = await running.call("bulletin.publish", {"title": "給水車\n到着", "body": "体育館前",
                                                   "expires_s": 600})
        [(event, data)] = await asyncio.wait_for(_read_events(resp, 1), 30)
        assert event == "bulletin" and data["op_id"] == b["op_id"]
        assert data["title"] == "給水車\n到着" and data["authority"] == "市役所"
        resp.close()
    finally:
        await c.close()
