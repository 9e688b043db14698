"""Messages and Mail: what this node received, what it queued for nodes out of reach, and
the key that writes a message (sent at once when there is a route, else carried as mail)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Static

from tui.model import Mail, MeshModel, Message
from tui.screens.base import Column, View, fill_table, fmt_clock, matches
from tui.text import plain

__all__ = ["MailView", "MessagesView"]


class MessagesView(View):
    """Received text messages, newest first; the selected one in full below."""

    KEY: ClassVar[str] = "m"
    TITLE: ClassVar[str] = "Messages"
    SHORT: ClassVar[str] = "Msgs"
    METHODS: ClassVar[tuple[str, ...]] = ("messages",)
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = (("w", "write"), ("enter", "reply"))
    BINDINGS: ClassVar[list[BindingType]] = [Binding("w", "app.write_message", "write")]

    DEFAULT_CSS = """
    MessagesView #msg-table { height: 1fr; }
    MessagesView #msg-box { height: auto; max-height: 8; border-top: solid $primary; }
    """

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="msg-table")
        with VerticalScroll(id="msg-box"):
            yield Static(id="msg-full")

    def selected(self, model: MeshModel) -> Message | None:
        """The message under the cursor."""
        table = self.query_one("#msg-table", DataTable)
        if not table.row_count or not 0 <= table.cursor_row < table.row_count:
            return None
        key = list(table.rows)[table.cursor_row].value
        return next((m for m in model.messages if m.message_id == key), None)

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rows = []
        for m in model.messages:
            name = m.sender_name or model.name_of(m.sender)
            cells = self.cells(fmt_clock(m.received_ms, self.utc), name, m.sender[:8],
                               m.via or "direct", " ".join(m.text.split()))
            if matches(needle, name, m.sender, m.text):
                rows.append((m.message_id, cells))
        self.set_notice(model, "\n".join(t for t in (
            "" if model.messages or "messages" in model.unavailable
            else "no messages (w writes one)",
            self.filter_note(needle, len(rows), len(model.messages))) if t))
        fill_table(self.query_one("#msg-table", DataTable),
                   [Column("RECEIVED"), Column("FROM", squeeze=True, min=6), Column("NODE"),
                    Column("VIA", optional=True), Column("TEXT", squeeze=True, min=16)], rows)
        self._show_full(model)

    def _show_full(self, model: MeshModel) -> None:
        m = self.selected(model)
        text = Text()
        if m is not None:
            text.append(plain(m.sender_name or m.sender[:8], "bold"))
            text.append(f" {m.sender[:8]}, {fmt_clock(m.received_ms, self.utc)}"
                        + (" (carried as mail)" if m.via == "mail" else "") + "\n", style="dim")
            text.append_text(plain(m.text, newlines=True))
        self.query_one("#msg-full", Static).update(text)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        model = getattr(self.app, "model", None)
        if isinstance(model, MeshModel):
            self._show_full(model)

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.app.run_action("reply_message")


class MailView(View):
    """Messages queued for nodes out of reach, carried car to car, and their delivery."""

    KEY: ClassVar[str] = "e"
    TITLE: ClassVar[str] = "Mail"
    SHORT: ClassVar[str] = "Mail"
    METHODS: ClassVar[tuple[str, ...]] = ("mail.list",)
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = (("w", "write"),)
    BINDINGS: ClassVar[list[BindingType]] = [Binding("w", "app.write_message", "write")]

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static(classes="heading", id="mail-carried")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="mail-table")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rows = []
        for m in model.outbox:
            name = m.to_name or model.name_of(m.to)
            cells = self.cells(name, m.to[:8], _status(m), fmt_clock(m.queued_ms, self.utc),
                               fmt_clock(m.delivered_ms, self.utc), m.message_id[:12])
            if matches(needle, name, m.to, m.status, m.message_id):
                rows.append((m.message_id, cells))
        self.query_one("#mail-carried", Static).update(
            "carrying " + ("-" if model.mail_carried is None else str(model.mail_carried))
            + " message(s) for other nodes")
        self.set_notice(model, "\n".join(t for t in (
            "" if model.outbox or "mail.list" in model.unavailable
            else "no queued mail (a message to a node out of reach is queued here)",
            self.filter_note(needle, len(rows), len(model.outbox))) if t))
        fill_table(self.query_one("#mail-table", DataTable),
                   [Column("TO", squeeze=True, min=6), Column("NODE"), Column("STATUS"),
                    Column("QUEUED"), Column("DELIVERED"), Column("MESSAGE", optional=True)],
                   rows)


def _status(m: Mail) -> Text:
    return Text(m.status or "-", style="green" if m.status == "delivered" else "yellow")
