"""Overview: identity, role, uptime, counts and alerts."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.model import MeshModel
from tui.screens.base import View, fmt_duration

__all__ = ["OverviewView"]


def _join(v: object) -> str:
    """A list from the daemon as ``a, b``; anything else as its text."""
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "" if v is None else str(v)


class OverviewView(View):
    """This node at a glance, with what needs attention."""

    KEY: ClassVar[str] = "o"
    TITLE: ClassVar[str] = "Overview"
    SHORT: ClassVar[str] = "Overview"
    METHODS: ClassVar[tuple[str, ...]] = ("status",)

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(id="identity")
            yield Static(classes="heading", id="alerts-title")
            yield Static(id="alerts")

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
            ("calls", str(calls_active)),
            ("sync peers", str(len(model.sync_peers))),
        ]
        for k, v in rows:
            grid.add_row(k, Text(v))  # Text: a name is not markup
        self.query_one("#identity", Static).update(grid)
        alerts = model.alerts(now)
        self.query_one("#alerts-title", Static).update(f"Alerts ({len(alerts)})")
        text = Text()
        for a in alerts:
            text.append("• ", style="bold red")
            text.append(a + "\n")
        if not alerts:
            text.append("all quiet", style="green")
        self.query_one("#alerts", Static).update(text)
