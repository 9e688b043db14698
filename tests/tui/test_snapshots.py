"""SVG snapshots of every view, fed fixed data (a snapshot of live RTTs would flap).

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report before committing.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.tui.fixtures import BRAVO, ME, NOW, filled_model
from tests.tui.helpers import screen_text
from tui.app import MeshConsole
from tui.model import MeshModel

SnapCompare = Callable[..., bool]


def console(model: MeshModel | None = None) -> MeshConsole:
    return MeshConsole(model=model if model is not None else filled_model(), clock=lambda: NOW,
                       utc=True)


@pytest.mark.parametrize("key", list("onrtcslbg"))
def test_each_view_at_80x24(snap_compare: SnapCompare, key: str) -> None:
    assert snap_compare(console(), press=[key], terminal_size=(80, 24))


@pytest.mark.parametrize("key", ["n", "t"])
def test_large_terminal_uses_the_space(snap_compare: SnapCompare, key: str) -> None:
    assert snap_compare(console(), press=[key], terminal_size=(160, 48))


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
