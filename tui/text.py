"""Text from the mesh made safe for the terminal.

Names, messages, bulletin bodies and situation fields come from other nodes.
Shown raw they could move the cursor or change colours (C0/C1 control
characters, ESC sequences), reorder what is around them (bidi overrides), or be
read as Rich markup (``[red]``).  ``clean`` replaces every such character with
a visible escape (``meshd.core.text.terminal_safe``, shared with meshctl) and
``plain`` wraps the result in a ``rich.text.Text``, which Textual never parses
as markup.
"""

from __future__ import annotations

from rich.text import Text

from meshd.core.text import terminal_safe

__all__ = ["clean", "plain", "truncate"]

def clean(s: str, *, newlines: bool = False) -> str:
    """``s`` with control, bidi and other steering characters shown as escapes (``terminal_safe``).

    Tabs become a space; newlines are kept when ``newlines`` (documents, message
    bodies shown in full), else shown as `` ⏎ ``.
    """
    s = s.replace("\t", " ")
    if not newlines:
        s = s.replace("\n", " ⏎ ")
    return terminal_safe(s, multiline=newlines)


def plain(s: object, style: str = "", *, newlines: bool = False) -> Text:
    """``clean(str(s))`` as a ``Text`` (never parsed as markup)."""
    return Text(clean(str(s), newlines=newlines), style=style)


def truncate(t: Text | str, width: int) -> Text:
    """``t`` cut to ``width`` terminal cells, ending in ``…`` when cut."""
    text = t.copy() if isinstance(t, Text) else Text(t)
    if text.cell_len > width:
        text.truncate(max(0, width), overflow="ellipsis")
    return text
