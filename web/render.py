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

__all__ = ["SAFE_SCHEMES", "markdown_html", "plain_snippet", "safe_link", "snippet_parts"]

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


# Markdown syntax in a search snippet (a window cut anywhere in a document's source).  The
# snippet is shown as plain text, so these only tidy it: safety comes from autoescaping.
_MARK = "«»"
_URL = r"(?:[^()\s]|\([^()\s]*\))*"  # a link target, one level of parentheses inside
_IMAGE_OR_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\(" + _URL + r"(?:\s+\"[^\"]*\")?\)")
_REF_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\[[^\[\]\n]*\]")
_CUT_LINK_TAIL = re.compile(r"!?\[([^\[\]\n]*)\]\(" + _URL + "$")  # "[a](http://exa" at the end
_CUT_LINK_HEAD = re.compile(r"^…?[^\[\]()\s]*\)")  # "ple.org) more" at the window's start
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^<>\s]*)>", re.IGNORECASE)
# block markers: the library joins a snippet's lines with spaces, so they can be anywhere
_BLOCK = re.compile(r"(?:^|(?<=\s))(?:#{1,6}|[-*+]|(?:[-*_]\s*){3,}|```+|~~~+)(?=\s|$)"
                    r"|^\s*>+(?=\s)")
_EMPHASIS = re.compile(r"(\*{1,3}|~~|`+)(?=\S)(.+?)(?<=\S)\1", re.DOTALL)
_UNDERSCORE = re.compile(r"(?<!\w)(_{1,3})(?=\S)(.+?)(?<=\S)\1(?!\w)", re.DOTALL)
_STRAY = re.compile(r"(?<!\w)[*_]{2,3}|[*_]{2,3}(?!\w)|~~|`+")
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ESCAPED = 0xF0000  # escaped punctuation is held in a private-use plane while markers go
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069"
                      "\U000f0000-\U000fffff]")
_SPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # cannot be encoded for the response


def plain_snippet(snippet: str) -> str:
    """A search snippet's Markdown source as the text a reader sees (markers «» kept).

    Links and images become their text, emphasis, code, strike, heading, quote, list
    and rule markers are dropped, backslash escapes are resolved, control and
    direction-override characters removed and whitespace collapsed.  The result is
    still untrusted text: the template escapes it (``<script>`` stays visible, inert).
    """
    text = _CONTROL.sub("", _SURROGATE.sub("\ufffd", snippet))
    text = _ESCAPE.sub(lambda m: chr(_ESCAPED + ord(m.group(1))), text)
    for _ in range(3):  # nested constructs: a link inside emphasis inside a link's text
        before = text
        text = _IMAGE_OR_LINK.sub(r"\1", text)
        text = _REF_LINK.sub(r"\1", text)
        text = _EMPHASIS.sub(r"\2", text)
        text = _UNDERSCORE.sub(r"\2", text)
        if text == before:
            break
    text = _AUTOLINK.sub(r"\1", text)
    text = _CUT_LINK_TAIL.sub(r"\1", text)
    text = _CUT_LINK_HEAD.sub("…", text) if text.startswith("…") else text
    text = _BLOCK.sub("", text)
    text = _STRAY.sub("", text)
    text = "".join(chr(ord(c) - _ESCAPED) if ord(c) >= _ESCAPED else c for c in text)
    return _SPACE.sub(" ", text).strip()


def snippet_parts(snippet: str) -> list[tuple[str, bool]]:
    """A search snippet as plain text (``plain_snippet``), split into (text, highlighted)
    parts at its «» markers."""
    out: list[tuple[str, bool]] = []
    for i, piece in enumerate(re.split(f"[{_MARK}]", plain_snippet(snippet))):
        if piece:
            out.append((piece, i % 2 == 1))
    return out
