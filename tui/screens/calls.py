"""Calls: every call with its live quality, the keys that place, answer, decline and hang up
calls, and the calls this node relays for others (their media flows, packets and loss)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from tui.model import Call, MeshModel, sparkline
from tui.screens.base import (
    Column,
    View,
    fill_table,
    fmt_duration,
    fmt_num,
    fmt_pct,
    matches,
)

__all__ = ["CallsView"]

#: states in which a call can be answered or declined by this node
RINGING_IN: tuple[str, ...] = ("ringing",)


class CallsView(View):
    """Calls of this node above the calls it relays."""

    KEY: ClassVar[str] = "c"
    TITLE: ClassVar[str] = "Calls"
    SHORT: ClassVar[str] = "Calls"
    METHODS: ClassVar[tuple[str, ...]] = ("calls", "relay.flows")
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("p", "place a call"), ("a", "answer"), ("x", "decline"), ("h", "hang up"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "app.place_call", "call"),
        Binding("a", "app.answer_call", "answer"),
        Binding("x", "app.decline_call", "decline"),
        Binding("h", "app.hangup_call", "hang up"),
    ]

    DEFAULT_CSS = """
    CallsView #call-table { height: 1fr; }
    CallsView #relay-table { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="call-table")
        yield Static(classes="heading", id="relay-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="relay-table")

    def selected_call(self, model: MeshModel) -> Call | None:
        """The call under the cursor (None when there is none)."""
        table = self.query_one("#call-table", DataTable)
        if not table.row_count or not 0 <= table.cursor_row < table.row_count:
            return None
        key = list(table.rows)[table.cursor_row].value
        return next((c for c in model.calls if c.call_id == key), None)

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rows = []
        for c in model.calls:
            name = c.peer_name or (model.name_of(c.peer) if c.peer else "-")
            state = c.state or "-"
            if c.reason:
                state += f" ({c.reason})"
            hist = list(model.call_rtt.get(c.call_id, ()))
            cells = self.cells(name, c.peer[:8] or "-", state, c.direction or "-",
                               fmt_duration(c.duration_s), fmt_num(c.rtt_ms),
                               fmt_num(c.jitter_ms), fmt_pct(c.loss),
                               lambda w, h=hist: sparkline(h, w),
                               fmt_num(c.setup_ms, 0), c.call_id[:12])
            if matches(needle, name, c.peer, c.state, c.call_id):
                rows.append((c.call_id, cells))
        fill_table(self.query_one("#call-table", DataTable),
                   [Column("PEER", squeeze=True, min=6), Column("NODE", optional=True),
                    Column("STATE", squeeze=True, min=8), Column("ROLE"), Column("TIME"),
                    Column("RTT ms"), Column("JITTER"), Column("LOSS"),
                    Column("RTT hist", grow=True, optional=True, min=8, max=40),
                    Column("SETUP ms", optional=True), Column("CALL", optional=True)], rows)
        flows = []
        for f in model.relay_flows:
            src = f.source_name or model.name_of(f.source)
            dst = f.destination_name or model.name_of(f.destination)
            cells = self.cells(f"{src} → {dst}", f.service or "-", f"{f.flow_id:08x}",
                               fmt_num(f.packets), fmt_num(f.rate_pps), fmt_pct(f.loss),
                               fmt_num(f.dropped), _bytes(f.bytes), fmt_duration(f.age_s),
                               fmt_duration(f.idle_s))
            if matches(needle, src, dst, f.source, f.destination, f"{f.flow_id:08x}"):
                flows.append((f"{f.source}>{f.destination}/{f.service}/{f.flow_id}", cells))
        # a call's two directions are two flows
        calls_relayed = len({(min(f.source, f.destination), max(f.source, f.destination),
                              f.flow_id) for f in model.relay_flows if f.service == "media"})
        self.query_one("#relay-title", Static).update(
            f"Relayed for others: {calls_relayed} calls, {len(model.relay_flows)} flows "
            "(loss: what this node could not pass on)" if model.relay_flows
            else "Relayed for others: nothing now")
        fill_table(self.query_one("#relay-table", DataTable),
                   [Column("FLOW", squeeze=True, min=12), Column("SERVICE"), Column("FLOW ID"),
                    Column("PACKETS"), Column("PKT/S"), Column("LOSS"), Column("DROPPED"),
                    Column("BYTES"), Column("AGE", optional=True),
                    Column("IDLE", optional=True)], flows)
        empty = "" if model.calls or model.relay_flows or "calls" in model.unavailable \
            else "no calls (p places one)"
        self.set_notice(model, "\n".join(t for t in (
            empty, self.filter_note(needle, len(rows) + len(flows),
                                    len(model.calls) + len(model.relay_flows))) if t))


def _bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "kB", "MB"):
        if v < 1000:
            return f"{v:.0f} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return f"{v:.1f} GB"
