"""Neighbours: every link with its quality now and over time (RTT and loss sparklines)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Sparkline, Static

from tui.model import MeshModel, sparkline
from tui.screens.base import (
    Column,
    View,
    fill_table,
    fmt_ago,
    fmt_num,
    fmt_pct,
    matches,
)

__all__ = ["NeighboursView"]


class NeighboursView(View):
    """A table of neighbours; the selected one's RTT and loss history drawn below."""

    KEY: ClassVar[str] = "n"
    TITLE: ClassVar[str] = "Neighbours"
    SHORT: ClassVar[str] = "Nbrs"
    METHODS: ClassVar[tuple[str, ...]] = ("neighbours",)

    DEFAULT_CSS = """
    NeighboursView #nb-detail { height: 5; }
    NeighboursView #nb-detail Vertical { width: 1fr; padding: 0 1; }
    NeighboursView Sparkline { height: 3; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="nb-table")
        with Horizontal(id="nb-detail"):
            with Vertical():
                yield Static(id="nb-rtt-label")
                yield Sparkline([], id="nb-rtt")
            with Vertical():
                yield Static(id="nb-loss-label")
                yield Sparkline([], id="nb-loss")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rows = []
        for n in sorted(model.neighbours.values(), key=lambda n: (n.name, n.node_id)):
            rtt_h = list(model.rtt_history.get(n.node_id, ()))
            loss_h = list(model.loss_history.get(n.node_id, ()))
            cells = self.cells(n.name or "-", n.node_id[:8], n.state or "-", fmt_num(n.rtt_ms),
                               lambda w, h=rtt_h: sparkline(h, w), fmt_pct(n.loss),
                               lambda w, h=loss_h: sparkline(h, w, top=1.0), fmt_num(n.cost, 0),
                               fmt_ago(n.up_since, now), n.address or "-")
            if matches(needle, n.name, n.node_id, n.address, n.state, n.role):
                rows.append((n.node_id, cells))
        self.set_notice(model, "\n".join(t for t in (
            "" if model.neighbours or not model.connected else "no neighbours",
            self.filter_note(needle, len(rows), len(model.neighbours))) if t))
        table = self.query_one("#nb-table", DataTable)
        spark = min(model.history, 60)
        fill_table(table, [Column("NAME", squeeze=True, min=6), Column("NODE"), Column("STATE"),
                           Column("RTT ms"), Column("RTT hist", grow=True, optional=True,
                                                             min=8, max=spark),
                           Column("LOSS"), Column("LOSS hist", grow=True, optional=True,
                                                            min=9, max=spark),
                           Column("COST"), Column("UP"), Column("ADDRESS", min=9)], rows)
        sel = rows[table.cursor_row][0] if rows and 0 <= table.cursor_row < len(rows) else None
        chosen = model.neighbours.get(sel) if sel else None
        rtt = [v for v in model.rtt_history.get(sel, ()) if v is not None] if sel else []
        loss = [v for v in model.loss_history.get(sel, ()) if v is not None] if sel else []
        who = (chosen.name or chosen.node_id[:8]) if chosen else "-"
        self.query_one("#nb-rtt-label", Static).update(Text(  # Text: a name is not markup
            f"RTT to {who}: {fmt_num(chosen.rtt_ms) if chosen else '-'} ms"
            + (f" (max {max(rtt):.1f})" if rtt else "")))
        self.query_one("#nb-loss-label", Static).update(Text(
            f"loss to {who}: {fmt_pct(chosen.loss) if chosen else '-'}"))
        self.query_one("#nb-rtt", Sparkline).data = rtt or [0.0]
        self.query_one("#nb-loss", Sparkline).data = loss or [0.0]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        app = self.app
        refresh = getattr(app, "refresh_view", None)
        if callable(refresh):
            refresh()
