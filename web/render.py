"""Library text made safe for a browser: a small Markdown subset and highlighted snippets.

Everything a document says is untrusted (any node can write the library).
Markdown goes through markdown-it with raw HTML off (every ``<`` is escaped),
only a small set of rules on (paragraphs, headings, lists, emphasis, quotes,
code, rules, links, line breaks), no images (no request leaves the page), and
headings moved one level down (the title is the page's ``<h1>``), links kept only when they are relative or http(s)/mailto: ``javascript:``,
``data:`` and every other scheme become plain text.  Links get
``rel="nofollow noopener noreferrer"``.  Nesting is capped (markdown-it's
``maxNesting``), so a quote bomb cannot recurse deeply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt

__all__ = ["SAFE_SCHEMES", "markdown_html", "safe_link", "snippet_parts"]

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*):")
_MAX_NESTING = 20


def safe_link(url: str) -> bool:
    """Whether ``url`` (already normalised by markdown-it) may be an ``href``."""
    if not url or any(ord(c) < 0x21 or c in "\\\x7f" for c in url):
        return False
    m = _SCHEME.match(url)
    if m is None:
        # relative: "path", "/path", "#frag", "?q" (but not "//host", a scheme-relative URL)
        return not url.startswith("//")
    return m.group(1).lower() in SAFE_SCHEMES


def _make() -> MarkdownIt:
    md = MarkdownIt("zero", {"html": False, "linkify": False, "typographer": False,
                             "maxNesting": _MAX_NESTING})
    md.enable(["heading", "lheading", "list", "blockquote", "code", "fence", "hr", "newline",
               "escape", "backticks", "emphasis", "link", "autolink", "entity",
               "strikethrough"])
    md.validateLink = safe_link  # type: ignore[method-assign]

    def link_open(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return str(self.renderToken(tokens, idx, options, env))

    def heading(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
        # the page's <h1> is the document's title: its own headings start at <h2>
        tok = tokens[idx]
        tok.tag = f"h{min(6, int(tok.tag[1]) + 1)}"
        return str(self.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("heading_open", heading)
    md.add_render_rule("heading_close", heading)
    return md


_MD = _make()


def markdown_html(text: str) -> str:
    """``text`` (Markdown) as HTML that contains no script, handler, style or unsafe link."""
    # lone surrogates cannot be encoded for the response; show them as U+FFFD
    text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    html: str = _MD.render(text)
    return html


def snippet_parts(snippet: str) -> list[tuple[str, bool]]:
    """A search snippet split into (text, highlighted) parts at its «» markers."""
    out: list[tuple[str, bool]] = []
    for i, piece in enumerate(re.split(r"[«»]", snippet)):
        if piece:
            out.append((piece, i % 2 == 1))
    return out
