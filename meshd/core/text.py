"""Remote-supplied text made safe to print on a terminal or show in a console (pure).

Names, message texts, titles, bulletins and situation values come from other
nodes.  Printed raw, an ESC sequence can clear the screen and draw a fake
"SYSTEM:" line, and a right-to-left override (U+202E) can make one node's name
read as another's.  ``terminal_safe`` replaces every character that steers the
terminal or the text direction with a visible escape (``\\x1b``, ``\\u202e``),
so what a person reads is what was sent, and nothing more happens.

Escaped: C0 and C1 controls and DEL (category Cc), lone surrogates (Cs, which
would also crash ``print``), line and paragraph separators (Zl, Zp), and
format characters (Cf: the bidi embeddings, overrides and isolates U+202A-E
and U+2066-9, marks U+200E/F and U+061C, zero-width spaces, BOM), except the
zero-width joiner and the tag characters that build emoji sequences.
``multiline=True`` keeps newlines and tabs (a message body, a document).
"""

from __future__ import annotations

import unicodedata

__all__ = ["human_duration", "terminal_safe"]

#: format characters that only build emoji sequences (ZWJ, tags): harmless, keep them
_KEEP_CF = frozenset({0x200D, *range(0xE0020, 0xE0080)})
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Cf"})


def _escape(ch: str) -> str:
    cp = ord(ch)
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _unsafe(ch: str, multiline: bool) -> bool:
    if ch.isprintable():  # False for every Cc, Cf, Cs, Zl, Zp (and some harmless ones)
        return False
    if multiline and ch in "\n\t":
        return False
    if ch == " ":
        return False
    cat = unicodedata.category(ch)
    return cat in _ESCAPED_CATEGORIES and ord(ch) not in _KEEP_CF


def terminal_safe(text: str, *, multiline: bool = False) -> str:
    """``text`` with control, bidi and other invisible steering characters shown as escapes."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if _unsafe(ch, multiline) else ch for ch in text)


def human_duration(seconds: object) -> str:
    """``95`` -> ``1m35s``, ``4000`` -> ``1h06m``; ``-`` for anything but a non-negative number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
