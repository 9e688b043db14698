"""Search snippets are a document's Markdown source cut anywhere: shown as plain text, escaped."""

from __future__ import annotations

import re

import pytest

from tests.web.conftest import Running
from web.render import plain_snippet, snippet_parts

HOSTILE = ("# 避難所の**案内** <script>alert(2)</script> [ここ](javascript:alert(1)) "
           "![地図](http://evil/p.png) `code` ~~古い~~ _注意_ \\*星\\* "
           "<a href=\"javascript:alert(3)\" onclick=\"x()\">raw</a> \u202eRLO \x00nul")


def test_markdown_syntax_is_stripped_to_the_text_a_reader_sees() -> None:
    assert plain_snippet("# 見出し **太字** と _斜体_ と `code` と ~~取消~~") == \
        "見出し 太字 と 斜体 と code と 取消"
    assert plain_snippet("see [the «map»](http://x/y(1)) and ![alt](p.png) [ref][1]") == \
        "see the «map» and alt ref"
    assert plain_snippet("> quoted ## Head * item --- end") == "quoted Head item end"
    # list items joined into one line by the library
    assert plain_snippet("体育館前。 - 毛布あり - ペット可 + 水") == "体育館前。 毛布あり ペット可 水"
    assert plain_snippet("well-known e-mail") == "well-known e-mail"
    # a window cut through a link at either end
    assert plain_snippet("…ple.org/a) rest [tail](http://exa") == "… rest tail"
    # escapes stay literal; intraword underscores are not emphasis
    assert plain_snippet(r"\*not em\* snake_case_name <http://a.b/c>") == \
        "*not em* snake_case_name http://a.b/c"
    assert plain_snippet("a\u202eb\u2066c\x00d\x1be") == "abcde"
    assert plain_snippet("x \ud800 y") == "x \ufffd y"  # a lone surrogate cannot be sent


def test_snippet_parts_keep_highlights_through_markup() -> None:
    assert snippet_parts("…**«避難»**の[«給水»](http://x)") == [
        ("…", False), ("避難", True), ("の", False), ("給水", True)]
    parts = snippet_parts(HOSTILE)
    text = "".join(p for p, _ in parts)
    assert "**" not in text and "](" not in text and "`" not in text and "~~" not in text
    assert "javascript:alert(1)" not in text  # a link's target is never shown
    assert "<script>alert(2)</script>" in text  # HTML is not Markdown: kept as text, escaped later


@pytest.mark.asyncio(loop_scope="module")
async def test_hostile_snippet_renders_as_escaped_plain_text(running: Running) -> None:
    doc = (await running.call("library.add", {
        "collection": "know-how", "title": "スニペット試験", "body": HOSTILE, "lang": "ja"}))[
        "doc_id"]
    c = await running.client()
    try:
        html = await (await c.get("/library", params={"q": "案内"})).text()
        m = re.search(rf'href="/library/{doc}">.*?<p class="snippet">(.*?)</p>', html, re.S)
        assert m is not None, html
        snippet = m.group(1)
        assert "<mark>案内</mark>" in snippet
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in snippet
        assert re.search(r"<(?!/?mark>)", snippet) is None  # no tag but the highlight
        assert "**" not in snippet and "](" not in snippet and "javascript:alert(1)" not in snippet
        assert "\u202e" not in snippet and "\x00" not in snippet
    finally:
        await c.close()
