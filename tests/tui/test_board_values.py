"""The Board shows values and authority names as people write them (Textual Pilot)."""

from __future__ import annotations

import pytest

from tests.tui.fixtures import BRAVO, NOW, filled_model
from tests.tui.helpers import screen_text, wait_for_text
from tui.app import MeshConsole
from tui.screens.board import bulletin_from, describe_fields

KEY = "ab" * 32  # an authority's Ed25519 key: 64 hex, never shown whole


def _model():  # type: ignore[no-untyped-def]
    m = filled_model()
    m.apply("situation.list", {"records": [
        {"owner": BRAVO, "owner_name": "bravo", "kind": "shelter",
         "fields": {"needs": ["water", "blankets"], "open": True, "capacity": 120,
                    "note": "gym\nentrance", "generator": False, "load": 0.5}}]}, NOW)
    m.apply("bulletin.list", {"bulletins": [
        {"op_id": "cd" * 16, "title": "Boil water", "body": "Until further notice.",
         "author": KEY, "authority": {"name": "Sendai City", "role": "city"}},
        {"op_id": "ef" * 16, "title": "Road closed", "body": "Route 4.", "author": KEY}]}, NOW)
    return m


def test_values_as_people_write_them() -> None:
    assert describe_fields({"needs": ["water", "food"], "open": True, "x": None}) == \
        "needs: water, food · open: yes · x: -"
    assert bulletin_from({"author": KEY, "authority": {"name": "city", "role": "city"}},
                         filled_model()) == "city (city)"
    assert bulletin_from({"author": KEY}, filled_model()) == "abababab…"


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
async def test_board_shows_values_and_authority_names(size: tuple[int, int]) -> None:
    app = MeshConsole(model=_model(), clock=lambda: NOW, utc=True)
    async with app.run_test(size=size) as pilot:
        await pilot.press("b")
        text = await wait_for_text(pilot, lambda t: "Boil water" in t, 10, "the bulletins")
        assert "Sendai City (city)" in text and "abababab…" in text
        assert KEY not in text and KEY[:20] not in text
        assert "capacity: 120" in text
        assert "['" not in text and "True" not in text and "False" not in text
        if size[0] >= 160:
            assert "needs: water, blankets" in text and "open: yes" in text
            # a newline inside a one-line value is shown escaped, never as a line break
            assert "generator: no" in text and "note: gym\\x0aentrance" in text
        assert screen_text(app)
