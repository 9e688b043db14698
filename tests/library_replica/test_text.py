"""Character positions over pycrdt's byte-indexed Text (library_replica.text)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from library_replica.ops import LibraryError
from library_replica.text import (
    TextEdit,
    apply_edits,
    byte_offset,
    diff_edits,
    is_boundary,
    yjs_client_id,
)


def _doc(initial: str = "") -> tuple[Doc, Text]:
    doc = Doc(client_id=yjs_client_id(b"a" * 32))
    text = doc.get("body", type=Text)
    if initial:
        text.insert(0, initial)
    return doc, text


def test_client_id_is_53_bits_and_stable() -> None:
    ids = {yjs_client_id(bytes([i]) * 32) for i in range(200)}
    assert len(ids) == 200
    assert all(0 < i < 2**53 for i in ids)
    # pinned: every replica must derive the same id from a key, across versions
    assert yjs_client_id(b"k" * 32) == 1768962712944238
    assert yjs_client_id(bytes(32)) == 2251033217388155
    assert yjs_client_id(bytes([1]) * 32) == 1656609686451419


def test_byte_offset_counts_utf8() -> None:
    s = "避難所へ🚗a"
    assert byte_offset(s, 0) == 0
    assert byte_offset(s, 1) == 3
    assert byte_offset(s, 4) == 12
    assert byte_offset(s, 5) == 16
    assert byte_offset(s, 6) == 17
    with pytest.raises(LibraryError):
        byte_offset(s, 7)


def test_insert_and_delete_japanese_by_character() -> None:
    doc, text = _doc("避難所")
    with doc.transaction():
        s = apply_edits(text, "避難所", [TextEdit(2, 0, "と給水所")])
    assert s == str(text) == "避難と給水所所"
    s = apply_edits(text, s, [TextEdit(0, 2, "")])
    assert s == str(text) == "と給水所所"


def test_boundaries_of_combining_marks_emoji_and_flags() -> None:
    s = "e\u0301👩\u200d💻👍🏽🇯🇵🇺🇸"
    assert is_boundary(s, 0) and is_boundary(s, len(s))
    assert not is_boundary(s, 1)  # inside e + combining acute
    assert is_boundary(s, 2)
    assert not is_boundary(s, 3)  # before the ZWJ
    assert not is_boundary(s, 4)  # after the ZWJ
    assert is_boundary(s, 5)
    assert not is_boundary(s, 6)  # before the skin-tone modifier
    assert is_boundary(s, 7)
    assert not is_boundary(s, 8)  # inside the first flag
    assert is_boundary(s, 9)
    assert not is_boundary(s, 10)


def test_edit_that_splits_a_character_is_refused_and_text_untouched() -> None:
    s = "cafe\u0301!"
    _, text = _doc(s)
    with pytest.raises(LibraryError):
        apply_edits(text, s, [TextEdit(4, 1, "")])
    with pytest.raises(LibraryError):
        apply_edits(text, s, [TextEdit(0, 1, "x"), TextEdit(4, 0, "y")])
    assert str(text) == s


def test_diff_keeps_prefix_and_suffix() -> None:
    old = "避難所は小学校の体育館です。"
    new = "避難所は中学校の体育館です。"
    edits = diff_edits(old, new)
    assert edits == [TextEdit(4, 1, "中")]


def test_diff_widens_over_combining_mark() -> None:
    edits = diff_edits("cafe", "cafe\u0301")
    assert edits == [TextEdit(3, 1, "e\u0301")]
    _, text = _doc("cafe")
    assert apply_edits(text, "cafe", edits) == str(text) == "cafe\u0301"


def test_diff_never_splits_an_emoji_sequence() -> None:
    old = "運転手👩\u200d🔧です"
    new = "運転手👩\u200d💻です"
    edits = diff_edits(old, new)
    for e in edits:
        assert is_boundary(old, e.start) and is_boundary(old, e.start + e.delete)
    _, text = _doc(old)
    assert apply_edits(text, old, edits) == str(text) == new


_alphabet = st.sampled_from(
    [
        *"避難所給水充電スマートグリッドあいうabc \n",
        "e\u0301", "👩\u200d💻", "👍🏽", "🇯🇵", "\u0301", "\u200d", "🚗", "が", "か\u3099",
    ]
)
_texts = st.lists(_alphabet, max_size=30).map("".join)


@settings(max_examples=300, deadline=None)
@given(_texts, st.lists(_texts, min_size=1, max_size=5))
def test_random_diffs_roundtrip_through_pycrdt(start: str, versions: list[str]) -> None:
    doc, text = _doc(start)
    current = start
    for new in versions:
        edits = diff_edits(current, new)
        with doc.transaction():
            current = apply_edits(text, current, edits)
        assert current == new
        assert str(text) == new
        str(text).encode("utf-8")  # valid UTF-8 throughout
    # a replica built from the update holds the same text
    replica = Doc()
    replica.apply_update(doc.get_update())
    assert str(replica.get("body", type=Text)) == current


@settings(max_examples=300, deadline=None)
@given(_texts, st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5), _texts), max_size=6))
def test_random_raw_edits_never_panic(start: str, raw: list[tuple[int, int, str]]) -> None:
    _, text = _doc(start)
    current = start
    for pos, length, ins in raw:
        with contextlib.suppress(LibraryError):  # a refused edit leaves the Text untouched
            current = apply_edits(text, current, [TextEdit(pos, length, ins)])
        assert str(text) == current
        str(text).encode("utf-8")
