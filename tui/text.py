"""Text from the mesh made safe for the terminal.

Names, messages, bulletin bodies and situation fields come from other nodes.
Shown raw they could move the cursor or change colours (C0/C1 control
characters, ESC sequences), reorder what is around them (bidi overrides), or be
read as Rich markup (``[red]``).  ``clean`` replaces every such character with
a visible escape and ``plain`` wraps the result in a ``rich.text.Text``, which
Textual never parses as markup.  (When ``meshd.core.text`` lands, this module
should delegate to it.)
"""

from __future__ import annotations

import unicodedata
from typing import Final

from rich.text import Text

__all__ = ["clean", "plain", "truncate"]

#: bidi controls that can reorder surrounding text (Trojan Source, CVE-2021-42574)
_BIDI: Final = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
                         "\u061c")


def _visible(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def clean(s: str, *, newlines: bool = False) -> str:
    """``s`` with control, format-bidi and separator characters replaced by ``\\xNN``/``\\uNNNN``.

    Tabs become a space; newlines are kept when ``newlines`` (documents, message
    bodies shown in full), else shown as `` ⏎ ``.
    """
    out: list[str] = []
    for ch in s:
        if ch == "\t":
            out.append(" ")
        elif ch == "\n":
            out.append("\n" if newlines else " ⏎ ")
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co",
                                                         "Cn"):
            if ch == "\u200d":  # zero-width joiner: part of emoji sequences, harmless
                out.append(ch)
            else:
                out.append(_visible(ch))
        else:
            out.append(ch)
    return "".join(out)


def plain(s: object, style: str = "", *, newlines: bool = False) -> Text:
    """``clean(str(s))`` as a ``Text`` (never parsed as markup)."""
    return Text(clean(str(s), newlines=newlines), style=style)


def truncate(t: Text | str, width: int) -> Text:
    """``t`` cut to ``width`` terminal cells, ending in ``…`` when cut."""
    text = t.copy() if isinstance(t, Text) else Text(t)
    if text.cell_len > width:
        text.truncate(max(0, width), overflow="ellipsis")
    return text
