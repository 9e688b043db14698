"""Markdown made safe for the browser, snippets, language choice, token buckets (pure)."""

from __future__ import annotations

import re

import pytest

from web.i18n import pick_language
from web.limits import RateLimiter
from web.render import markdown_html, safe_link, snippet_parts


@pytest.mark.parametrize("url", [
    "javascript:alert(1)", "JavaScript:alert(1)", "vbscript:x", "data:text/html,<script>",
    "file:///etc/passwd", "//evil.example/x", "java\tscript:alert(1)", "\x01javascript:x",
    "blob:https://x/y"])
def test_unsafe_links_are_refused(url: str) -> None:
    assert not safe_link(url)
    html = markdown_html(f"[x]({url}) <{url}>")
    assert "href" not in html


@pytest.mark.parametrize("url", ["https://example.org/a?b=1", "http://10.0.0.1/", "mailto:a@b.c",
                                 "/library/abcd", "#top", "page.html"])
def test_safe_links_are_kept(url: str) -> None:
    assert safe_link(url)
    assert f'href="{url}"' in markdown_html(f"[x]({url})")


def test_markdown_escapes_html_and_keeps_a_small_subset() -> None:
    html = markdown_html("# 見出し\n\n*強調* **太字** `code`\n\n- a\n- b\n\n> quote\n\n"
                         "<script>alert(1)</script>\n\n<div onclick=x>d</div>\n\n"
                         "![img](https://example.org/i.png)\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<h2>見出し</h2>" in html  # one level down: the page's <h1> is the title
    for tag in ("<em>", "<strong>", "<code>", "<ul>", "<blockquote>"):
        assert tag in html
    assert "&lt;script&gt;" in html and "<script" not in html
    assert "<div" not in html and "<img" not in html and "<table" not in html
    for tag in re.findall(r"<[a-z][^>]*>", html):  # escaped text may say onclick=; tags may not
        assert re.search(r"\son[a-z]+\s*=", tag) is None, tag


def test_invalid_text_and_deep_nesting_render() -> None:
    html = markdown_html("lone \ud800 surrogate")
    assert "\ufffd" in html
    html.encode("utf-8")  # encodable
    deep = markdown_html(">" * 5000 + " x\n\n" + "[" * 5000 + "\n\n" + "*" * 20000)
    assert deep.count("<blockquote>") <= 25


def test_snippet_parts_mark_hits() -> None:
    assert snippet_parts("…の«給水»は«午前»") == [("…の", False), ("給水", True), ("は", False),
                                                ("午前", True)]
    assert snippet_parts("") == []


@pytest.mark.parametrize(("cookie", "accept", "want"), [
    (None, None, "ja"), (None, "en-US,en;q=0.9", "en"), (None, "fr, en;q=0.5, ja;q=0.8", "ja"),
    (None, "en;q=0.2, ja;q=0.1", "en"), ("en", "ja", "en"), ("xx", "en", "en"),
    (None, "en;q=bogus, ja", "ja"), (None, "de", "ja")])
def test_language_choice(cookie: str | None, accept: str | None, want: str) -> None:
    assert pick_language(cookie, accept) == want


def test_rate_limiter_buckets() -> None:
    rl = RateLimiter(rate_per_s=2.0, burst=2, max_clients=2)
    assert rl.allow("a", 0.0) and rl.allow("a", 0.0) and not rl.allow("a", 0.0)
    assert rl.retry_after_s("a") == pytest.approx(0.5)
    assert rl.allow("a", 0.5) and not rl.allow("a", 0.5)
    assert rl.allow("b", 0.5)  # another client has its own bucket
    assert rl.allow("c", 0.5) and len(rl) == 2  # the least recently used is forgotten
    assert rl.refused == 2
    assert not RateLimiter(0.0, 1).allow("x", 0.0) or True
    zero = RateLimiter(0.0, 1)
    assert zero.allow("x", 0.0) and not zero.allow("x", 1e9)
