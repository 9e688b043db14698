"""Character positions for pycrdt Text, and the only code that indexes one.

Theory of operation
-------------------
pycrdt 0.14 counts ``Text`` positions in UTF-8 bytes (``len(Text("避難所")) ==
9``); a position inside a character raises ``PanicException`` (a
BaseException) or garbles the edit, after which replicas can diverge with equal
state vectors.  So nothing in carmesh indexes a ``Text`` directly: callers speak
in *characters* (code points of the Python ``str``) through ``TextEdit`` and
this module converts each position to a byte offset.

"No edit ever splits a character" means more than valid UTF-8: ``diff_edits``
also widens every edit so that it never starts or ends inside a user-perceived
character (a base letter and its combining marks, an emoji ZWJ sequence, an
emoji with a skin-tone modifier or variation selector, a regional-indicator
flag pair).  ``apply_edits`` refuses edits whose ends are not boundaries.

Yjs client ids must fit in 53 bits (JavaScript's safe integers); an author's
client id is derived from its Ed25519 key, so every replica attributes the
same Yjs items to the same author.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from library_replica.ops import LibraryError

if TYPE_CHECKING:
    from pycrdt import Text

__all__ = [
    "YJS_CLIENT_ID_BITS",
    "TextEdit",
    "apply_edits",
    "byte_offset",
    "diff_edits",
    "is_boundary",
    "yjs_client_id",
]

YJS_CLIENT_ID_BITS = 53
#: beyond this many changed characters, replace the middle whole (SequenceMatcher is quadratic)
_MAX_FINE_DIFF = 4000


def yjs_client_id(author: bytes) -> int:
    """The Yjs client id (53 bits, never 0) of the author with Ed25519 key ``author``."""
    digest = hashlib.sha256(b"carmesh/yjs-client/1\x00" + author).digest()
    cid = int.from_bytes(digest[:8], "big") & ((1 << YJS_CLIENT_ID_BITS) - 1)
    return cid or 1


@dataclass(frozen=True, slots=True)
class TextEdit:
    """Replace ``delete`` characters at character position ``start`` with ``insert``."""

    start: int
    delete: int
    insert: str


def _extends(ch: str) -> bool:
    """True when ``ch`` attaches to the character before it (never starts a character)."""
    o = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or o == 0x200D  # zero width joiner
        or 0xFE00 <= o <= 0xFE0F  # variation selectors
        or 0xE0100 <= o <= 0xE01EF
        or 0x1F3FB <= o <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= o <= 0xE007F  # emoji tag characters
        or 0x3099 <= o <= 0x309A  # combining kana voiced marks
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def is_boundary(s: str, i: int) -> bool:
    """True when character position ``i`` of ``s`` lies between two user-perceived characters."""
    if i <= 0 or i >= len(s):
        return i == 0 or i == len(s)
    if _extends(s[i]) or s[i - 1] == "\u200d":
        return False
    if s[i - 1] == "\r" and s[i] == "\n":
        return False
    if _regional(s[i]) and _regional(s[i - 1]):
        # flags are pairs of regional indicators: split only after an even run
        run = 0
        j = i - 1
        while j >= 0 and _regional(s[j]):
            run += 1
            j -= 1
        return run % 2 == 0
    return True


def byte_offset(s: str, i: int) -> int:
    """The UTF-8 byte offset of character position ``i`` in ``s`` (what pycrdt Text indexes)."""
    if not 0 <= i <= len(s):
        raise LibraryError(f"character position {i} outside 0..{len(s)}")
    return len(s[:i].encode("utf-8"))


def apply_edits(text: Text, current: str, edits: Sequence[TextEdit]) -> str:
    """Apply ``edits`` in order (each in the coordinates left by the previous) to ``text``.

    ``current`` must equal ``str(text)``; the new string is returned.  Every edit
    is checked (range, character boundaries) before ``text`` is touched, so a
    refused edit leaves ``text`` unchanged.  Call inside a transaction to make
    the edits one Yjs update.
    """
    s = current
    planned: list[tuple[int, int, str]] = []
    for e in edits:
        if e.start < 0 or e.delete < 0 or e.start + e.delete > len(s):
            raise LibraryError(f"edit {e} outside text of {len(s)} characters")
        end = e.start + e.delete
        if not (is_boundary(s, e.start) and is_boundary(s, end)):
            raise LibraryError(f"edit {e} would split a character")
        b0 = byte_offset(s, e.start)
        b1 = b0 + len(s[e.start:end].encode("utf-8"))
        planned.append((b0, b1, e.insert))
        s = s[: e.start] + e.insert + s[end:]
    for b0, b1, ins in planned:
        if b1 > b0:
            del text[b0:b1]
        if ins:
            text.insert(b0, ins)
    return s


def _snap(s: str, i: int, down: bool) -> int:
    while not is_boundary(s, i):
        i += -1 if down else 1
    return i


def _common(a: str, b: str, n: int, part: Callable[[str, int], str]) -> int:
    """The largest k <= n with part(a, k) == part(b, k) (a common prefix or suffix length).

    By bisection over slice comparisons (in C): a long document with an edit near its
    end costs a few comparisons, not a Python loop over every character.
    """
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if part(a, mid) == part(b, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def diff_edits(old: str, new: str) -> list[TextEdit]:
    """Edits turning ``old`` into ``new``, to be applied in order; none splits a character.

    Common prefix and suffix are kept; the middle is diffed by character with
    ``SequenceMatcher`` (or replaced whole when it is very long).  Edits come
    last-first, so each one's position is also its position in ``old``.
    """
    if old == new:
        return []
    n = min(len(old), len(new))
    p = _common(old, new, n, lambda s, k: s[:k])
    q = _common(old, new, n - p, lambda s, k: s[len(s) - k:])
    a0, a1, b0, b1 = p, len(old) - q, p, len(new) - q
    # widen the changed window to character boundaries on both sides
    while True:
        na0 = min(_snap(old, a0, True), a0 - (b0 - _snap(new, b0, True)))
        na1 = max(_snap(old, a1, False), a1 + (_snap(new, b1, False) - b1))
        shift0 = a0 - na0
        shift1 = na1 - a1
        nb0, nb1 = b0 - shift0, b1 + shift1
        if (na0, na1, nb0, nb1) == (a0, a1, b0, b1):
            break
        a0, a1, b0, b1 = na0, na1, nb0, nb1
    ma, mb = old[a0:a1], new[b0:b1]
    if len(ma) + len(mb) > _MAX_FINE_DIFF:
        return [TextEdit(a0, len(ma), mb)]
    from difflib import SequenceMatcher  # an edit's first diff loads it (issue 18, memory)

    edits: list[TextEdit] = []
    sm = SequenceMatcher(None, ma, mb, autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        ends_ok = all(is_boundary(old, a0 + i) for i in (i1, i2)) and all(
            is_boundary(new, b0 + j) for j in (j1, j2)
        )
        if not ends_ok:
            # an opcode inside a character (a mark kept while its base changed):
            # replace the whole boundary-aligned window instead
            return [TextEdit(a0, len(ma), mb)]
        edits.append(TextEdit(a0 + i1, i2 - i1, mb[j1:j2]))
    edits.reverse()
    return edits
