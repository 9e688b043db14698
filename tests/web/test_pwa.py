"""The app shell: compressed static files, the manifest, the service worker and offline use."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.web.conftest import Running
from web.app import CSP, make_app
from web.pwa import SHELL

pytestmark = pytest.mark.asyncio(loop_scope="module")

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"


async def test_static_files_are_gzipped_from_memory_with_etags(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/static/app.css", headers={"Accept-Encoding": "gzip"},
                        auto_decompress=False)
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip"
        assert r.headers["Content-Type"].startswith("text/css")
        assert r.headers["Vary"] == "Accept-Encoding" and r.headers["Cache-Control"] == "no-cache"
        raw = await r.read()
        assert gzip.decompress(raw) == (STATIC / "app.css").read_bytes()
        assert len(raw) < (STATIC / "app.css").stat().st_size
        etag = r.headers["ETag"]
        r = await c.get("/static/app.css", headers={"If-None-Match": etag})
        assert r.status == 304 and await r.read() == b""
        r = await c.get("/static/app.css", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in r.headers
        assert await r.read() == (STATIC / "app.css").read_bytes()
        png = await c.get("/static/icon-192.png", headers={"Accept-Encoding": "gzip"})
        assert png.headers["Content-Type"] == "image/png" and "Content-Encoding" not in png.headers
        for bad in ("/static/.hidden", "/static/%2e%2e/app.py", "/static/../app.py",
                    "/static/a//b", "/static/nope.js", "/static/" + "a" * 300):
            assert (await c.get(bad)).status == 404, bad
        page = await c.get("/", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
        assert page.headers["Content-Encoding"] == "gzip"
        assert b"<!doctype html>" in gzip.decompress(await page.read())
    finally:
        await c.close()


async def test_manifest_and_service_worker(running: Running) -> None:
    c = await running.client()
    try:
        r = await c.get("/manifest.webmanifest", headers={"Accept-Language": "en"})
        assert r.status == 200 and r.headers["Content-Type"].startswith(
            "application/manifest+json")
        m = json.loads(await r.read())
        assert m["start_url"] == "/" and m["scope"] == "/" and m["display"] == "standalone"
        sizes = {i["sizes"] for i in m["icons"]}
        assert {"192x192", "512x512"} <= sizes
        for icon in m["icons"]:
            assert (await c.get(icon["src"])).status == 200
        sw = await c.get("/sw.js")
        assert sw.status == 200 and sw.headers["Content-Type"].startswith("text/javascript")
        assert sw.headers["Cache-Control"] == "no-cache"
        assert sw.headers["Content-Security-Policy"] == CSP
        assert "worker-src 'self'" in CSP and "manifest-src 'self'" in CSP
        text = await sw.text()
        assert "__VERSION__" not in text and json.dumps(list(SHELL)) in text
        for url in SHELL:  # everything precached exists
            assert (await c.get(url)).status == 200, url
        html = await (await c.get("/")).text()
        assert '<link rel="manifest" href="/manifest.webmanifest">' in html
        assert '<script type="module" src="/static/pwa.js"></script>' in html
    finally:
        await c.close()


CHROMIUM = shutil.which("chromium")


async def _shot(page: Any, name: str) -> None:
    out = os.environ.get("CARMESH_SCREENSHOTS")
    if out:
        await page.screenshot(path=str(Path(out) / f"{name}.png"))


_ACTIVATED = """navigator.serviceWorker.ready.then(r => r.active.state === "activated" ? "activated"
  : new Promise(done => r.active.addEventListener("statechange",
      e => { if (e.target.state === "activated") done("activated"); })))"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make sysdeps)")
async def test_second_visit_is_served_by_the_service_worker_offline(running: Running) -> None:
    async_api = pytest.importorskip("playwright.async_api")
    await running.call("library.add", {"collection": "know-how", "title": "オフラインの手引き",
                                       "body": "保存したページは圏外でも読めます。"})
    server = TestServer(make_app(running.call, running.subscribe), host="127.0.0.1")
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with async_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
            try:
                ctx = await browser.new_context(viewport={"width": 390, "height": 844},
                                                locale="ja")
                page = await ctx.new_page()
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text)
                        if m.type == "error" and "Content Security Policy" in m.text else None)
                await page.goto(base + "/")
                assert await page.evaluate(_ACTIVATED) == "activated"
                # the second visit: controlled by the worker, the shell from its cache
                resp = await page.goto(base + "/board")
                assert resp is not None and resp.ok
                assert await page.evaluate("navigator.serviceWorker.controller !== null")
                await page.goto(base + "/")
                await ctx.set_offline(True)
                resp = await page.goto(base + "/")  # the saved copy of the page
                assert resp is not None and resp.from_service_worker
                await page.locator("#offline-bar").wait_for()
                assert "オフライン" in await page.locator("#offline-bar").inner_text()
                await _shot(page, "offline-home")
                # the stylesheet came from the worker's cache: the page is styled
                color = await page.locator("header.top").evaluate(
                    "e => getComputedStyle(e).position")
                assert color == "sticky"
                resp = await page.goto(base + "/board")
                assert resp is not None and resp.from_service_worker
                # a page never saved (a search): the offline page
                resp = await page.goto(base + "/library?q=" + "手引き")
                assert resp is not None and resp.from_service_worker
                await page.locator("#offline-text").wait_for()
                await _shot(page, "offline")
                await ctx.set_offline(False)
                resp = await page.goto(base + "/library?q=手引き")
                assert resp is not None and resp.ok
                assert "オフラインの手引き" in await page.content()
                assert problems == []
            finally:
                await browser.close()
    finally:
        await server.close()
