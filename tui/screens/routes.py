"""Routes: destination, next hop, metric, seqno and age."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.model import MeshModel
from tui.screens.base import Column, View, fill_table, fmt_duration, fmt_num, matches

__all__ = ["RoutesView"]


class RoutesView(View):
    """The routing table as the daemon selected it."""

    KEY: ClassVar[str] = "r"
    TITLE: ClassVar[str] = "Routes"
    SHORT: ClassVar[str] = "Routes"
    METHODS: ClassVar[tuple[str, ...]] = ("routes",)

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="rt-table")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rows = []
        for r in model.routes:
            hop_name = r.next_hop_name or (model.name_of(r.next_hop) if r.next_hop else "-")
            cells = self.cells(r.name or model.name_of(r.destination), r.destination[:8],
                               hop_name, r.next_hop[:8] or "-",
                               fmt_num(r.metric, 0) if r.reachable else "∞ (retracted)",
                               fmt_num(r.seqno), fmt_duration(r.age_s))
            if matches(needle, r.name, r.destination, hop_name, r.next_hop):
                rows.append((r.destination, cells))
        self.set_notice(model, self.filter_note(needle, len(rows), len(model.routes)))
        fill_table(self.query_one("#rt-table", DataTable),
                   [Column("DESTINATION", squeeze=True, min=8), Column("NODE"),
                    Column("NEXT HOP", squeeze=True, min=8), Column("VIA"), Column("METRIC"),
                    Column("SEQNO"), Column("AGE")], rows)
