"""A street of phones on one car, and the home page's order (the issue's words).

- 200 phones hold the live event stream at once with the default limits (only the
  per-address rate limit is widened: here one loopback address stands for 200
  phones), and every one of them gets a new bulletin; past ``max_streams`` a
  stream is refused with 503 (EventSource retries), not queued forever.
- The home page: live emergency bulletins first, then "I am safe", find a
  person, call, messages (when served), library; in Japanese and in English.
- Bytes that are not UTF-8 from a browser (JSON bodies, a form, a query) are
  answered with a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from typing import Any

import aiohttp
import pytest

from tests.web.conftest import Running
from web.app import WebSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

PHONES = 200


async def _until_event(resp: aiohttp.ClientResponse, want: str) -> dict[str, Any]:
    event = ""
    while True:
        line = (await resp.content.readline()).decode()
        if not line:
            raise AssertionError(f"stream ended before {want}")
        line = line.rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == want:
            data: dict[str, Any] = json.loads(line[6:])
            return data


async def test_200_phones_hold_live_streams_and_all_get_a_new_bulletin(
        running: Running) -> None:
    assert WebSettings().max_streams >= PHONES
    settings = dataclasses.replace(WebSettings(), burst=4 * PHONES)
    c = await running.client(settings)
    streams: list[aiohttp.ClientResponse] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            streams = list(await asyncio.gather(
                *(s.get(c.make_url("/events")) for _ in range(PHONES))))
            assert [r.status for r in streams] == [200] * PHONES
            await asyncio.wait_for(asyncio.gather(
                *(_until_event(r, "ready") for r in streams)), 60)
            b = await running.call("bulletin.publish", {"title": "給水車 200", "body": "体育館前",
                                                       "expires_s": 600})
            got = await asyncio.wait_for(asyncio.gather(
                *(_until_event(r, "bulletin") for r in streams)), 60)
            assert {d["op_id"] for d in got} == {b["op_id"]}
            for r in streams:
                r.close()
    finally:
        await c.close()


async def test_streams_past_the_limit_are_refused_not_queued(running: Running) -> None:
    c = await running.client(dataclasses.replace(WebSettings(), max_streams=2))
    try:
        held = [await c.get("/events") for _ in range(2)]
        for r in held:
            await _until_event(r, "ready")
        extra = await c.get("/events")
        assert extra.status == 503
        held[0].close()
        await asyncio.sleep(0.2)  # the server notices the closed stream

        async def again() -> int:
            while True:
                r = await c.get("/events")
                if r.status == 200:
                    r.close()
                    return r.status
                await asyncio.sleep(0.1)

        assert await asyncio.wait_for(again(), 10) == 200
        held[1].close()
    finally:
        await c.close()


@pytest.mark.parametrize("lang", ["ja", "en"])
async def test_home_page_order_bulletins_safe_find_call_messages_library(
        running: Running, lang: str) -> None:
    await running.call("bulletin.publish", {"title": "避難指示", "body": "北小学校へ",
                                           "expires_s": 3600})
    c = await running.client()
    try:
        html = await (await c.get("/", headers={"Accept-Language": lang})).text()
        board = await (await c.get("/board", headers={"Accept-Language": lang})).text()
    finally:
        await c.close()
    main = html[html.index("<main>"):]
    order = [main.index('class="bulletin'),  # the live emergency bulletins
             main.index('href="/safety#safe-h"'), main.index('href="/safety#find-h"'),
             main.index('href="/call"')]
    if 'href="/messages"' in main:
        order.append(main.index('href="/messages"'))
    order.append(main.index('href="/library"'))
    assert order == sorted(order), order
    assert 'href="/safety#safe-h"' in board  # the board registers you as safe too
    words = re.sub(r"<[^>]+>", " ", main)
    want = (["私は無事です", "人を探す", "通話"] if lang == "ja"
            else ["I am safe", "Find a person", "Call"])
    assert all(w in words for w in want), words


async def test_invalid_utf8_from_a_browser_is_refused_in_words_not_a_crash(
        running: Running) -> None:
    """Bytes that are not UTF-8 (in a JSON body, a form, a query) get a 4xx, never a 500."""
    doc = (await running.call("library.add", {"collection": "know-how", "title": "壊れた文字",
                                              "body": "本文"}))["doc_id"]
    c = await running.client()
    try:
        origin = {"Origin": str(c.make_url("")).rstrip("/")}
        bad = b'{"op": "\xff\xfe\xc3\x28"}'
        for path in ("/safety/op", "/library/op", f"/library/{doc}/prepare"):
            r = await c.post(path, data=bad,
                             headers={**origin, "Content-Type": "application/json"})
            assert 400 <= r.status < 500, (path, r.status, await r.text())
        r = await c.post("/lang", data=b"lang=\xff\xfe&next=/\xc3\x28",
                         headers={**origin,
                                  "Content-Type": "application/x-www-form-urlencoded"})
        assert 300 <= r.status < 500, r.status
        for path in ("/library?q=%ff%fe", "/safety?q=%c3%28"):
            r = await c.get(path)
            assert r.status < 500, (path, r.status)
    finally:
        await c.close()
