"""resolve_node: full NodeId, unique prefix, unique display name, ambiguity, nothing."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import ControlError
from meshd.names import resolve_node

A = "0123abcd" + "0" * 24
B = "0123abef" + "1" * 24
C = "9999ffff" + "2" * 24
D = "cafe0000" + "3" * 24
KNOWN = [(A, "car-1"), (B, "car-2"), (C, "避難所"), (D, "Dealer Kobe")]


def test_full_node_id_any_case() -> None:
    assert resolve_node(A, KNOWN) == A
    assert resolve_node(C.upper(), KNOWN) == C
    # a well-formed full id resolves even if not known yet
    unknown = "f" * 32
    assert resolve_node(unknown, KNOWN) == unknown


def test_unique_prefix() -> None:
    assert resolve_node("0123abc", KNOWN) == A
    assert resolve_node("0123abe", KNOWN) == B
    assert resolve_node("9999", KNOWN) == C
    assert resolve_node("CAFE", KNOWN) == D
    assert resolve_node(" 9999ffff ", KNOWN) == C


def test_ambiguous_prefix_lists_candidates() -> None:
    with pytest.raises(ControlError) as ei:
        resolve_node("0123", KNOWN)
    assert ei.value.code == "ambiguous"
    assert ei.value.data == {"candidates": [{"node_id": A, "name": "car-1"},
                                            {"node_id": B, "name": "car-2"}]}
    assert "0123abcd" in ei.value.message and "0123abef" in ei.value.message


def test_unique_display_name() -> None:
    assert resolve_node("car-2", KNOWN) == B
    assert resolve_node("避難所", KNOWN) == C
    assert resolve_node("dealer kobe", KNOWN) == D  # case-insensitive fallback


def test_name_normalised_nfc() -> None:
    decomposed = "ka\u0301fe"  # a + combining acute
    known = [(A, "k\u00e1fe")]
    assert resolve_node(decomposed, known) == A


def test_ambiguous_display_name() -> None:
    known = [*KNOWN, ("abcd" + "4" * 28, "car-1")]
    with pytest.raises(ControlError) as ei:
        resolve_node("car-1", known)
    assert ei.value.code == "ambiguous"
    assert [c["node_id"] for c in ei.value.data["candidates"]] == [A, "abcd" + "4" * 28]


def test_exact_name_beats_case_insensitive() -> None:
    known = [(A, "Bus"), (B, "bus")]
    assert resolve_node("bus", known) == B
    assert resolve_node("Bus", known) == A
    with pytest.raises(ControlError) as ei:
        resolve_node("BUS", known)
    assert ei.value.code == "ambiguous"


def test_prefix_and_name_both_matching_is_ambiguous() -> None:
    """The issue's case: a node whose id was ground to start with "cafe" must not get cafe's mail."""
    known = [(D, "x"), (A, "cafe")]
    with pytest.raises(ControlError) as ei:
        resolve_node("cafe", known)
    assert ei.value.code == "ambiguous"
    assert ei.value.data == {"candidates": [{"node_id": A, "name": "cafe"},
                                            {"node_id": D, "name": "x"}]}
    assert "cafe (0123abcd)" in ei.value.message and "x (cafe0000)" in ei.value.message
    known2 = [(D, "x"), ("cafe1111" + "5" * 24, "y"), (A, "cafe")]
    with pytest.raises(ControlError) as ei:
        resolve_node("cafe", known2)
    assert ei.value.code == "ambiguous"
    assert len(ei.value.data["candidates"]) == 3
    # a longer prefix, or the full id, still reaches D
    assert resolve_node("cafe0", known) == D
    assert resolve_node(D, known) == D


def test_name_and_prefix_of_the_same_node_resolve() -> None:
    known = [(D, "cafe"), (A, "x")]
    assert resolve_node("cafe", known) == D


def test_name_beats_a_prefix_shorter_than_four() -> None:
    """``ping e`` reached the node whose id starts with e: a 1-3 digit prefix is no prefix."""
    e_node = "ea98" + "6" * 28
    known = [(e_node, "cafe"), (A, "e"), (D, "d")]
    assert resolve_node("e", known) == A
    assert resolve_node("d", known) == D
    with pytest.raises(ControlError) as ei:
        resolve_node("ea9", known)
    assert ei.value.code == "not_found"
    assert "at least 4 hex digits" in ei.value.message
    assert resolve_node("ea98", known) == e_node


def test_duplicates_of_one_node_are_not_ambiguous() -> None:
    known = [(A, ""), (A.upper(), "car-1"), (A, "car-1")]
    assert resolve_node("0123", known) == A
    assert resolve_node("car-1", known) == A


def test_not_found_and_bad_query() -> None:
    with pytest.raises(ControlError) as ei:
        resolve_node("nobody", KNOWN)
    assert ei.value.code == "not_found"
    with pytest.raises(ControlError) as ei:
        resolve_node("0124", KNOWN)
    assert ei.value.code == "not_found"
    with pytest.raises(ControlError) as ei:
        resolve_node("anything", [])
    assert ei.value.code == "not_found"
    for bad in ("", "   ", "x" * 300):
        with pytest.raises(ControlError) as ei:
            resolve_node(bad, KNOWN)
        assert ei.value.code == "bad_request"
    # empty display names never match
    with pytest.raises(ControlError):
        resolve_node("", [(A, "")])


hex_ids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
names = st.text(min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(hex_ids, names), max_size=20), st.text(max_size=40))
def test_resolution_is_total_and_sound(known: list[tuple[str, str]], query: str) -> None:
    """Any query either resolves to a candidate that matches it, or raises ControlError."""
    try:
        got = resolve_node(query, known)
    except ControlError as exc:
        assert exc.code in ("bad_request", "not_found", "ambiguous")
        if exc.code == "ambiguous":
            assert len(exc.data["candidates"]) > 1
        return
    q = query.strip()
    ids = {nid for nid, _ in known}
    assert got == q.lower() or got in ids
    def fold(s: str) -> str:
        return unicodedata.normalize("NFC", s).casefold()

    if got != q.lower():
        assert got.startswith(q.lower()) or any(
            nid == got and name and fold(name) == fold(q) for nid, name in known)


@settings(max_examples=200, deadline=None)
@given(st.lists(hex_ids, min_size=1, max_size=30, unique=True))
def test_every_known_node_resolves_by_full_id_and_shortest_unique_prefix_of_four_or_more(ids: list[str]) -> None:
    known = [(nid, "") for nid in ids]
    for nid in ids:
        assert resolve_node(nid, known) == nid
        n = next(n for n in range(4, 33) if sum(o.startswith(nid[:n]) for o in ids) == 1)
        assert resolve_node(nid[:n], known) == nid
        with pytest.raises(ControlError) as ei:
            resolve_node(nid[:3], known)
        assert ei.value.code == "not_found"
        if n > 4:
            with pytest.raises(ControlError) as ei:
                resolve_node(nid[:n - 1], known)
            assert ei.value.code == "ambiguous"
