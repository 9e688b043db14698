"""SVG snapshots of every view, fed fixed data (a snapshot of live RTTs would flap).

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report before committing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from tests.tui.fixtures import BRAVO, ME, NOW, filled_model
from tests.tui.helpers import screen_text
from tui.app import MeshConsole
from tui.model import MeshModel

SnapCompare = Callable[..., bool]


def console(model: MeshModel | None = None) -> MeshConsole:
    return MeshConsole(model=model if model is not None else filled_model(), clock=lambda: NOW,
                       utc=True)


@pytest.mark.parametrize("key", list("onrtcmeslbg"))
def test_each_view_at_80x24(snap_compare: SnapCompare, key: str) -> None:
    assert snap_compare(console(), press=[key], terminal_size=(80, 24))


@pytest.mark.parametrize("key", list("onrtcmeslbg"))
def test_each_view_at_160x45(snap_compare: SnapCompare, key: str) -> None:
    """Nothing cut at 160 columns (the trial: addresses, bulletins)."""
    assert snap_compare(console(), press=[key], terminal_size=(160, 45))


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_topology_highlights_the_selected_route(snap_compare: SnapCompare,
                                                size: tuple[int, int]) -> None:
    assert snap_compare(console(), press=["t", "down", "down"], terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_board_after_a_filter_on_another_view(snap_compare: SnapCompare,
                                              size: tuple[int, int]) -> None:
    """The trial: a filter typed in Routes stayed on in the Board and hid every row."""
    assert snap_compare(console(), press=["r", "slash", "d", "e", "l", "enter", "b"],
                        terminal_size=size)


def test_board_after_a_resize_from_80_to_160(snap_compare: SnapCompare) -> None:
    async def grow(pilot: Pilot[None]) -> None:
        await pilot.press("b")
        await pilot.pause()
        await pilot.resize_terminal(160, 45)
        await pilot.pause()
        await pilot.pause()

    assert snap_compare(console(), run_before=grow, terminal_size=(80, 24))


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_log_joins_repeated_events(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    m = filled_model()
    for i in range(724):
        m.apply_event("library.changed", {"doc_ids": ["d"], "count": 1}, NOW - 10 + i / 72.4,
                      NOW)
    assert snap_compare(console(m), press=["g"], terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_overview_alert_details(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    assert snap_compare(console(), press=["down", "down"], terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_place_call_form(snap_compare: SnapCompare, size: tuple[int, int]) -> None:
    assert snap_compare(console(), press=["c", "p", "b", "r"], terminal_size=size)


def test_help(snap_compare: SnapCompare) -> None:
    assert snap_compare(console(), press=["question_mark"], terminal_size=(80, 24))


def test_filter_keeps_matching_rows(snap_compare: SnapCompare) -> None:
    assert snap_compare(console(), press=["r", "slash", "d", "e", "l", "enter"],
                        terminal_size=(80, 24))


def test_disconnected_and_unavailable(snap_compare: SnapCompare) -> None:
    m = MeshModel()
    m.set_connected(True, "/tmp/cm/a/control.sock", NOW - 5)
    m.set_unavailable("routes")
    m.set_connected(False, "no daemon: /tmp/cm/a/control.sock does not exist", NOW)
    m.set_unavailable("routes")
    assert snap_compare(console(m), press=["r"], terminal_size=(80, 24))


async def test_every_view_renders_odd_daemon_values() -> None:
    """Wrong-typed fields from a daemon are shown as text or dashes, never raised."""
    m = MeshModel()
    m.set_connected(True, "s", NOW)
    m.apply("status", {"node_id": ME, "name": 7, "listen": 5, "interfaces": {"a": 1},
                       "ready": [], "uptime_s": "long", "drops": [1, 2], "role": None}, NOW)
    m.apply("neighbours", {"neighbours": [{"node_id": BRAVO, "name": None, "rtt_ms": True,
                                           "up_since": "x", "loss": -1}]}, NOW)
    m.apply("situation.list", {"records": [{"owner": 5, "kind": [], "fields": "free text"}]}, NOW)
    m.apply("bulletin.list", {"bulletins": [{"title": {"x": 1}, "body": None}]}, NOW)
    m.apply_search("q", {"results": [{"doc_id": "d", "title": None, "snippet": 5}]})
    m.apply_document({"title": ["t"], "tags": "x", "body": 3})
    app = console(m)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in "onrtcslbg":
            await pilot.press(key)
            await pilot.pause()
            assert screen_text(app).strip()
        await pilot.press("o")
        await pilot.pause()
        text = screen_text(app)
        assert "listen      5" in text and "ready       -" in text and "uptime      -" in text
