"""Board: the situation files and the bulletins."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.model import MeshModel
from tui.screens.base import Cell, View, fill_table, matches

__all__ = ["BoardView", "bulletin_from", "describe_fields", "describe_value"]


def describe_value(v: Any) -> str:
    """A field value as a person would write it: ``water, food`` not ``['water', 'food']``,
    ``yes``/``no`` not ``True``/``False``, ``-`` for nothing."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | tuple):
        return ", ".join(describe_value(x) for x in v) or "-"
    if isinstance(v, dict):
        return "(" + describe_fields(v) + ")"
    return " ".join(str(v).split())


def describe_fields(fields: Any) -> str:
    """``key: value`` pairs of a record's fields, sorted by key, separated by `` · ``."""
    if not isinstance(fields, dict):
        return "" if fields is None else describe_value(fields)
    return " · ".join(f"{k}: {describe_value(v)}" for k, v in sorted(fields.items()))


def bulletin_from(b: dict[str, Any], model: MeshModel) -> str:
    """Who published a bulletin: the authority's name from the trust configuration (and its
    role), else a name the daemon gave, else the node name or short key — never 64 hex."""
    auth = b.get("authority")
    if isinstance(auth, dict) and isinstance(auth.get("name"), str) and auth["name"]:
        role = auth.get("role")
        return f"{auth['name']} ({role})" if isinstance(role, str) and role else auth["name"]
    name = _first(b, "author_name", "from")
    if name != "-":
        return name
    author = _first(b, "author")
    if author == "-":
        return author
    known = model.name_of(author) if len(author) == 32 else ""
    return known if known and known != author else author[:8] + "…"


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
            cells = self.cells(_first(b, "title"), bulletin_from(b, model), body)
            if matches(needle, *cells):
                rows.append((f"{_first(b, 'id', 'op_id')}/{i}", cells))
        fill_table(self.query_one("#bul-table", DataTable), rows)
