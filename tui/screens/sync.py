"""Sync: per peer, traffic each way and catch-up progress."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.model import MeshModel
from tui.screens.base import Column, View, fill_table, fmt_ago, fmt_num, matches

__all__ = ["SyncView", "progress_bar"]


def progress_bar(fraction: float | None, width: int = 10) -> str:
    """``[#####     ] 50%``-style bar; ``idle`` when nothing is in flight."""
    if fraction is None:
        return "idle"
    f = min(max(fraction, 0.0), 1.0)
    full = int(f * width + 0.5)
    return "█" * full + "░" * (width - full) + f" {100 * f:.0f}%"


class SyncView(View):
    """Replication with each neighbour."""

    KEY: ClassVar[str] = "s"
    TITLE: ClassVar[str] = "Sync"
    SHORT: ClassVar[str] = "Sync"
    METHODS: ClassVar[tuple[str, ...]] = ("sync.status",)

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static(classes="heading", id="sync-totals")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="sync-table")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        t = model.sync_totals
        parts = [f"{k} {t[k]}" for k in ("ops", "pending") if isinstance(t.get(k), int)]
        q = t.get("quarantined")
        if isinstance(q, list) and q:
            parts.append(f"quarantined {len(q)}")
        self.query_one("#sync-totals", Static).update("store: " + ", ".join(parts)
                                                      if parts else "")
        rows = []
        for p in sorted(model.sync_peers, key=lambda p: (p.name or model.name_of(p.node_id))):
            name = p.name or model.name_of(p.node_id)
            bar = progress_bar(p.progress)
            if p.expected:
                bar += f" of {p.expected}"
            cells = self.cells(name, p.node_id[:8], {True: "up", False: "down"}.get(
                p.up, "-") if p.up is not None else "-", bar,
                f"{fmt_num(p.ops_in)}/{fmt_num(p.ops_out)}",
                f"{fmt_num(p.bytes_in)}/{fmt_num(p.bytes_out)}",
                fmt_ago(p.last_sync, now), fmt_num(p.failures))
            if matches(needle, name, p.node_id):
                rows.append((p.node_id, cells))
        self.set_notice(model, self.filter_note(needle, len(rows), len(model.sync_peers)))
        fill_table(self.query_one("#sync-table", DataTable),
                   [Column("PEER", squeeze=True, min=6), Column("NODE"), Column("LINK"),
                    Column("CATCH-UP", squeeze=True, min=8), Column("OPS IN/OUT"),
                    Column("BYTES IN/OUT"), Column("LAST SYNC"), Column("FAIL")], rows)
