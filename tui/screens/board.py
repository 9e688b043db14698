"""Board: the situation files and the bulletins."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Static

from tui.model import MeshModel
from tui.screens.base import Column, View, fill_table, matches

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
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("u", "update this node's situation record"), ("p", "publish a bulletin (authorities)"))
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("u", "app.set_situation", "situation"),
        Binding("p", "app.publish_bulletin", "bulletin"),
    ]

    def compose(self) -> ComposeResult:
        yield Static(classes="notice")
        yield Static("Situation", classes="heading")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="sit-table")
        yield Static("Bulletins", classes="heading", id="bul-title")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="bul-table")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
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
        fill_table(self.query_one("#sit-table", DataTable),
                   [Column("OWNER", squeeze=True, min=8), Column("KIND"),
                    Column("DETAILS", squeeze=True, min=12)], rows)
        shown = len(rows)
        rows = []
        for i, b in enumerate(model.bulletins):
            body = " ".join(_first(b, "body").split())
            cells = self.cells(_first(b, "title"), bulletin_from(b, model), body)
            if matches(needle, *cells):
                rows.append((f"{_first(b, 'id', 'op_id')}/{i}", cells))
        fill_table(self.query_one("#bul-table", DataTable),
                   [Column("TITLE", squeeze=True, min=10), Column("FROM", squeeze=True, min=8),
                    Column("BODY", squeeze=True, min=12)], rows)
        self.query_one("#bul-title", Static).update(
            "Bulletins" + (" — this node is an authority: p publishes" if model.authority
                           else ""))
        self.set_notice(model, self.filter_note(needle, shown + len(rows),
                                                len(model.situation) + len(model.bulletins)))
