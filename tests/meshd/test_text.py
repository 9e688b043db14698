"""terminal_safe: hostile remote text is shown, never obeyed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.text import terminal_safe

FAKE_SYSTEM = "\x1b[2J\x1b[H\x1b[1;31mSYSTEM: evacuate north\x1b[0m"


def test_escape_sequences_are_shown_not_run() -> None:
    assert terminal_safe(FAKE_SYSTEM) == (
        "\\x1b[2J\\x1b[H\\x1b[1;31mSYSTEM: evacuate north\\x1b[0m")
    assert terminal_safe("a\x07b\x00c\x7fd") == "a\\x07b\\x00c\\x7fd"
    assert terminal_safe("\x9b31m csi \x85") == "\\x9b31m csi \\x85"  # C1 CSI and NEL


def test_bidi_overrides_and_isolates() -> None:
    # "cafe" spelled backwards behind a right-to-left override reads as "cafe"
    assert terminal_safe("\u202eefac") == "\\u202eefac"
    for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C):
        assert terminal_safe(f"x{chr(cp)}y") == f"x\\u{cp:04x}y"


def test_line_breaks_single_and_multi_line() -> None:
    assert terminal_safe("car\nSYSTEM: go\r") == "car\\x0aSYSTEM: go\\x0d"
    assert terminal_safe("line 1\n\tline 2\r\n", multiline=True) == "line 1\n\tline 2\\x0d\n"
    assert terminal_safe("a\u2028b\u2029c") == "a\\u2028b\\u2029c"


def test_invisible_characters_and_lone_surrogates() -> None:
    assert terminal_safe("ca\u200bfe\ufeff") == "ca\\u200bfe\\ufeff"
    assert terminal_safe("x\ud800y") == "x\\ud800y"
    assert terminal_safe("\U000e0001") == "\\U000e0001"  # LANGUAGE TAG (deprecated, Cf)


def test_ordinary_text_is_unchanged() -> None:
    for s in ("car-1", "避難所は開いています", "Dealer Kobe", "مرحبا", "שלום", "naïve café",
              "👨\u200d👩\u200d👧", "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
              "a\u00a0b", "[red]not markup[/red]", ""):
        assert terminal_safe(s) == s


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_output_never_carries_a_control_or_bidi_character(s: str) -> None:
    out = terminal_safe(s)
    for ch in out:
        assert ord(ch) >= 0x20 and not 0x7F <= ord(ch) <= 0x9F
        assert not 0x202A <= ord(ch) <= 0x202E and not 0x2066 <= ord(ch) <= 0x2069
        assert not 0xD800 <= ord(ch) <= 0xDFFF
    if s.isprintable():
        assert out == s
