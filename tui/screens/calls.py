"""Calls: every call with its live quality (RTT, jitter, loss) and an RTT sparkline."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.model import MeshModel, sparkline
from tui.screens.base import Cell, View, fill_table, fmt_duration, fmt_num, fmt_pct, matches

__all__ = ["CallsView"]


class CallsView(View):
    """Calls through this node."""

    KEY: ClassVar[str] = "c"
    TITLE: ClassVar[str] = "Calls"
    SHORT: ClassVar[str] = "Calls"
    METHODS: ClassVar[tuple[str, ...]] = ("calls",)

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        table: DataTable[Cell] = DataTable(cursor_type="row", zebra_stripes=True, id="call-table")
        table.add_columns("PEER", "NODE", "STATE", "ROLE", "TIME", "RTT ms", "JITTER", "LOSS",
                          "RTT hist", "SETUP ms", "CALL")
        yield table

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        self.set_notice(model, "" if model.calls or "calls" in model.unavailable
                        else "no calls")
        width = max(8, min(model.history, self.size.width - 90))
        rows = []
        for c in model.calls:
            name = c.peer_name or (model.name_of(c.peer) if c.peer else "-")
            state = c.state or "-"
            if c.reason:
                state += f" ({c.reason})"
            cells = self.cells(name, c.peer[:8] or "-", state, c.direction or "-",
                               fmt_duration(c.duration_s), fmt_num(c.rtt_ms),
                               fmt_num(c.jitter_ms), fmt_pct(c.loss),
                               sparkline(list(model.call_rtt.get(c.call_id, ())), width),
                               fmt_num(c.setup_ms, 0), c.call_id[:12])
            if matches(needle, name, c.peer, c.state, c.call_id):
                rows.append((c.call_id, cells))
        fill_table(self.query_one("#call-table", DataTable), rows)
