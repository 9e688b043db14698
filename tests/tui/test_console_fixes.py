"""What the trial of issue 17 found, each pinned: columns that follow the terminal, a resize
that redraws every table, a filter per view, the log's repeats joined, alerts with details,
remote text escaped, topology as a graph, and the console's actions with their words."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from meshd.control.server import ControlServer
from meshd.core.errors import ControlError
from tests.tui.fixtures import BRAVO, CHARLIE, DELTA, ME, NOW, filled_model
from tests.tui.helpers import screen_text, wait_for_text
from tui.app import MeshConsole
from tui.model import MeshModel
from tui.screens.base import Column, fit_widths
from tui.screens.topology import render_graph, route_path


def console(model: MeshModel | None = None) -> MeshConsole:
    return MeshConsole(model=model if model is not None else filled_model(), clock=lambda: NOW,
                       utc=True)


# ------------------------------------------------------------------ columns and resize

def test_fit_widths_gives_content_room_then_leaves_out_optional_then_squeezes() -> None:
    cols = [Column("NAME", squeeze=True, min=4), Column("ADDRESS"),
            Column("HIST", grow=True, optional=True, min=8, max=30)]
    rows = [["charlie", "10.88.23.145:7420", ""]]
    assert fit_widths(cols, rows, 160) == [7, 17, 30]  # all of it, the sparkline grows
    assert fit_widths(cols, rows, 42) == [7, 17, 12]  # sparkline takes what is left
    assert fit_widths(cols, rows, 32) == [7, 17, 0]  # sparkline left out, no text cut
    assert fit_widths(cols, rows, 25) == [4, 17, 0]  # then the name gives way, not the address


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
async def test_neighbour_addresses_are_never_cut(size: tuple[int, int]) -> None:
    app = console()
    async with app.run_test(size=size) as pilot:
        await pilot.press("n")
        await pilot.pause()
        text = screen_text(app)
        assert "10.88.23.121:7421" in text and "10.88.23.122:7422" in text
        if size[0] == 160:
            assert "charlie" in text and "LOSS hist" in text  # nothing cut, sparklines shown


async def test_resize_from_80_to_160_redraws_the_bulletin_table() -> None:
    body_end = "at most 20 litres a household."
    app = console()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await pilot.pause()
        assert body_end not in screen_text(app) and "…" in screen_text(app)
        await pilot.resize_terminal(160, 45)
        text = await wait_for_text(pilot, lambda t: body_end in t, 5, "the whole bulletin")
        assert "Water point open" in text
        await pilot.resize_terminal(80, 24)  # and back: cut again, not overflowing
        await wait_for_text(pilot, lambda t: body_end not in t, 5, "the bulletin cut again")


# ------------------------------------------------------------------ filter per view

async def test_a_filter_belongs_to_its_view_and_is_shown() -> None:
    app = console()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("r", "slash", *"delta", "enter")
        await pilot.pause()
        text = screen_text(app)
        assert "filter: delta" in text and "1 of 3 rows shown" in text
        assert "charlie" not in text.split("filter “delta”")[-1]
        await pilot.press("b")  # the Board has no filter: every row shows
        await pilot.pause()
        text = screen_text(app)
        assert "filter:" not in text and "rows shown" not in text
        assert "bravo" in text and "Water point open" in text
        await pilot.press("r")  # back: the routes' filter is still there, and said
        await pilot.pause()
        assert "filter: delta" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert "filter:" not in screen_text(app) and "charlie" in screen_text(app)


# ------------------------------------------------------------------ log and alerts

async def test_the_log_joins_repeated_events() -> None:
    m = filled_model()
    for i in range(724):
        m.apply_event("library.changed", {"doc_ids": ["d"], "count": 1}, NOW - 10 + i / 72.4,
                      NOW)
    app = console(m)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("g")
        await pilot.pause()
        text = screen_text(app)
        assert "library.changed    ×724 in 10 s count=1" in text
        assert text.count("library.changed") == 1


async def test_enter_on_an_alert_leads_to_the_peer() -> None:
    app = console()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        # the first alert's details: which peer, where, how bad
        assert "charlie (c3c3c3c3" in text and "10.88.23.122:7422" in text
        await pilot.press("enter")
        await pilot.pause()
        table = app.query_one("#nb-table", DataTable)
        assert app.current_view.id == "neighbours"
        assert list(table.rows)[table.cursor_row].value == CHARLIE
        await pilot.press("o", "down", "down")
        await pilot.pause()
        assert "2 × bad_hello: hellos that did not parse" in screen_text(app)


# ------------------------------------------------------------------ remote text

async def test_names_and_messages_are_escaped_for_the_terminal() -> None:
    app = console()
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        text = screen_text(app)
        assert "delta[red]" in text  # markup shown as text, not applied
        assert "need water\\x1b[2J at the gym" in text  # the escape made visible


# ------------------------------------------------------------------ topology

def test_the_graph_draws_every_link_with_its_cost() -> None:
    m = filled_model()
    topo = m.effective_topology()
    assert topo is not None
    text = render_graph(topo, ME).plain
    lines = text.splitlines()
    names = [next(w for w in ln.split() if w.isalpha()) for ln in lines[::2]]
    assert names == ["alpha", "bravo", "charlie", "delta"]  # by hops from this node
    for cost in ("96", "256", "300"):
        assert cost in text
    assert text.count("96") == 2  # alpha-bravo and bravo-delta: both drawn
    # every link is a lane: 4 links, 3 lanes (alpha-bravo and charlie-delta share one)
    assert lines[0].startswith("     ╭───┬─── alpha")


def test_a_route_path_follows_next_hop_then_cheapest_links() -> None:
    m = filled_model()
    topo = m.effective_topology()
    assert topo is not None
    to_delta = next(r for r in m.routes if r.destination == DELTA)
    assert route_path(topo, ME, to_delta) == [ME, BRAVO, DELTA]
    hot = render_graph(topo, ME, [ME, BRAVO, DELTA])
    styled = {hot.plain[s.start:s.end] for s in hot.spans if s.style == "bold yellow"}
    assert {" alpha", " bravo", " delta"} <= styled and " charlie" not in styled


# ------------------------------------------------------------------ actions

@pytest.fixture
async def daemon() -> AsyncIterator[tuple[Path, list[tuple[str, dict[str, Any]]]]]:
    """A control server with the shapes of docs/cli.md recording what it was asked."""
    d = Path(tempfile.mkdtemp(prefix="cmtui", dir="/tmp"))
    asked: list[tuple[str, dict[str, Any]]] = []
    ringing = {"call_id": "3ba96b35bec92ed2d884a0498f4ad78e", "peer": DELTA,
               "peer_name": "delta", "role": "callee", "state": "ringing", "reason": None,
               "flow_id": 1, "duration_s": None, "setup_ms": None, "quality": None}

    def record(name: str, result: Any = None, error: ControlError | None = None) -> Any:
        async def handler(params: dict[str, Any]) -> Any:
            asked.append((name, params))
            if error is not None:
                raise error
            return result
        return handler

    handlers = {
        "status": record("status", {"node_id": ME, "name": "alpha", "role": "car",
                                    "ready": True}),
        "calls": record("calls", {"calls": [ringing]}),
        "call": record("call", error=ControlError("not_found", "no node matches 'zulu'")),
        "answer": record("answer", dict(ringing, state="active")),
        "decline": record("decline", dict(ringing, state="ended", reason="declined")),
        "send": record("send", {"node_id": CHARLIE, "message_id": "9c1d", "status": "queued",
                                "expires_ms": 1}),
        "situation.set": record("situation.set", {"kind": "shelter"}),
        "bulletin.list": record("bulletin.list", {"bulletins": [],
                                                  "trust": {"authority": False}}),
    }
    server = ControlServer(d / "c.sock", handlers)
    await server.start()
    yield d / "c.sock", asked
    await server.close()
    shutil.rmtree(d, ignore_errors=True)


async def test_actions_confirm_and_explain_errors_in_words(
        daemon: tuple[Path, list[tuple[str, dict[str, Any]]]]) -> None:
    sock, asked = daemon
    app = MeshConsole(sock, interval_s=30.0)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for_text(pilot, lambda t: "● connected" in t, 10, "connected")
        await pilot.press("c")
        await wait_for_text(pilot, lambda t: "ringing" in t, 5, "the ringing call")
        # a call to a node nobody knows: the error in words
        await pilot.press("p", *"zulu", "enter", "enter")
        await wait_for_text(pilot, lambda t: "✗ could not place the call: no node or call "
                            "matches 'zulu'" in t, 5, "the error in words")
        assert ("call", {"node": "zulu"}) in asked
        # declining asks first; n keeps the call
        await pilot.press("x")
        await wait_for_text(pilot, lambda t: "Decline the call from delta?" in t, 5, "question")
        await pilot.press("n")
        await pilot.pause()
        assert not any(m == "decline" for m, _ in asked)
        await pilot.press("a")
        await wait_for_text(pilot, lambda t: "✓ answered delta (call active)" in t, 5,
                            "the answer confirmed")
        assert ("answer", {"call": "3ba96b35bec92ed2d884a0498f4ad78e"}) in asked
        # a message to a node out of reach is queued as mail, and the console says so
        await pilot.press("m", "w", *"charlie", "enter", *"hello", "enter")
        await wait_for_text(pilot, lambda t: "charlie is out of reach: the message is queued "
                            "as mail" in t, 5, "queued as mail")
        assert ("send", {"node": "charlie", "text": "hello", "timeout": 10.0}) in asked
        # the situation record, typed as people write it
        await pilot.press("b", "u", *"shelter", "enter", *"capacity=40; needs=water,blankets",
                          "enter")
        await wait_for_text(pilot, lambda t: "✓ situation record shelter set" in t, 5,
                            "the record set")
        assert ("situation.set", {"kind": "shelter", "fields": {
            "capacity": 40, "needs": "water,blankets"}}) in asked
        # not an authority: publishing is refused with the reason, nothing sent
        await pilot.press("p")
        await wait_for_text(pilot, lambda t: "not an authority" in t, 5, "refused")
        assert not any(m == "bulletin.publish" for m, _ in asked)
