"""Board: the situation files and the bulletins."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.model import MeshModel
from tui.screens.base import Cell, View, fill_table, matches

__all__ = ["BoardView", "describe_fields"]


def describe_fields(fields: Any) -> str:
    """``k=v`` pairs of a record's fields, sorted by key."""
    if not isinstance(fields, dict):
        return "" if fields is None else str(fields)
    return ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))


def _first(d: dict[str, Any], *keys: str) -> str:
    for k in keys:
        v = d.get(k)
        if isinstance(v, str | int | float) and not isinstance(v, bool):
            return str(v)
    return "-"


class BoardView(View):
    """Situation records (who is safe, what shelters need) above the bulletins."""

    KEY: ClassVar[str] = "b"
    TITLE: ClassVar[str] = "Board"
    SHORT: ClassVar[str] = "Board"
    METHODS: ClassVar[tuple[str, ...]] = ("situation.list", "bulletin.list")

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static("Situation", classes="heading")
        sit: DataTable[Cell] = DataTable(cursor_type="row", zebra_stripes=True, id="sit-table")
        sit.add_columns("OWNER", "KIND", "DETAILS")
        yield sit
        yield Static("Bulletins", classes="heading")
        bul: DataTable[Cell] = DataTable(cursor_type="row", zebra_stripes=True, id="bul-table")
        bul.add_columns("TITLE", "FROM", "BODY")
        yield bul

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        self.set_notice(model)
        rows = []
        for i, r in enumerate(model.situation):
            owner = _first(r, "owner_name", "name", "owner")
            if owner != "-" and len(owner) == 32 and "owner_name" not in r:
                owner = model.name_of(owner)
            details = describe_fields(r.get("fields", {k: v for k, v in r.items()
                                                      if k not in ("owner", "owner_name", "kind")}))
            cells = self.cells(owner, _first(r, "kind"), details)
            if matches(needle, *cells):
                rows.append((f"{_first(r, 'owner')}/{_first(r, 'kind')}/{i}", cells))
        fill_table(self.query_one("#sit-table", DataTable), rows)
        rows = []
        for i, b in enumerate(model.bulletins):
            body = " ".join(_first(b, "body").split())
            cells = self.cells(_first(b, "title"), _first(b, "author_name", "author", "from"), body)
            if matches(needle, *cells):
                rows.append((f"{_first(b, 'id', 'op_id')}/{i}", cells))
        fill_table(self.query_one("#bul-table", DataTable), rows)
