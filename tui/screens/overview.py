"""Overview: identity, role, uptime, counts and alerts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from tui.model import Alert, MeshModel
from tui.screens.base import Column, View, fill_table, fmt_duration
from tui.text import plain

__all__ = ["OverviewView"]


def _join(v: object) -> str:
    """A list from the daemon as ``a, b``; anything else as its text."""
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


class OverviewView(View):
    """This node at a glance, with what needs attention; each alert leads to its details."""

    KEY: ClassVar[str] = "o"
    TITLE: ClassVar[str] = "Overview"
    SHORT: ClassVar[str] = "Over"
    METHODS: ClassVar[tuple[str, ...]] = ("status",)

    DEFAULT_CSS = """
    OverviewView #identity { height: auto; }
    OverviewView #alerts { height: auto; max-height: 8; }
    OverviewView #alert-detail { height: auto; padding: 0 1; color: $text-muted; }
    """

    @dataclass
    class AlertChosen(Message):
        """Enter on an alert: show ``view`` with the row ``select`` (or filtered by it)."""

        view: str
        select: str

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._alerts: list[Alert] = []

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="identity")
            yield Static(classes="heading", id="alerts-title")
            yield DataTable(cursor_type="row", show_header=False, id="alerts")
            yield Static(id="alert-detail")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        st = model.status or {}
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column()
        node_id = str(st.get("node_id", "-"))
        calls_active = sum(1 for c in model.calls if c.live)
        routes = (sum(1 for r in model.routes if r.reachable) if "routes" not in model.unavailable
                  else st.get("routes", "-"))
        topo = model.effective_topology()
        relayed = len(model.relay_flows)
        rows = [
            ("daemon", "connected" if model.connected else "not connected"),
            ("node", node_id),
            ("name", str(st.get("name", "-"))),
            ("role", str(st.get("role", "-"))),
            ("version", str(st.get("version", "-"))),
            ("ready", "yes" if st.get("ready") is True else "no" if st.get("ready") is False
             else "-"),
            ("uptime", fmt_duration(model.uptime_s(now))),
            ("listen", _join(st.get("listen")) or "-"),
            ("interfaces", _join(st.get("interfaces")) or "loopback only"),
            ("neighbours", str(len(model.neighbours))),
            ("routes", str(routes)),
            ("mesh nodes", str(len(topo.nodes)) if topo and topo.complete else "-"),
            ("calls", str(calls_active) + (f" (relaying {relayed} flows)" if relayed else "")),
            ("sync peers", str(len(model.sync_peers))),
        ]
        for k, v in rows:
            grid.add_row(k, plain(v))
        self.query_one("#identity", Static).update(grid)
        self._alerts = model.alerts(now)
        self.query_one("#alerts-title", Static).update(
            f"Alerts ({len(self._alerts)})" + ("  ↑↓ select, Enter shows where"
                                              if self._alerts else ""))
        table = self.query_one("#alerts", DataTable)
        rows_ = [(f"{i}:{a.text}", self.cells(Text("• ", style="bold red") + plain(a.text)))
                 for i, a in enumerate(self._alerts)]
        if not self._alerts:
            rows_ = [("quiet", [Text("all quiet", style="green")])]
        fill_table(table, [Column("ALERT", squeeze=True)], rows_)
        self._show_detail()

    def _chosen(self) -> Alert | None:
        table = self.query_one("#alerts", DataTable)
        i = table.cursor_row
        return self._alerts[i] if self._alerts and 0 <= i < len(self._alerts) else None

    def _show_detail(self) -> None:
        a = self._chosen()
        text = Text()
        if a is not None and a.detail:
            text.append_text(plain(a.detail, newlines=True))
            if a.view:
                text.append(f"\nEnter: show it in {a.view.capitalize()}", style="italic")
        self.query_one("#alert-detail", Static).update(text)

    def focus_main(self) -> None:
        self.query_one("#alerts", DataTable).focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        a = self._chosen()
        if a is not None and a.view:
            self.post_message(self.AlertChosen(a.view, a.select))
