"""Library: search the community library and read a document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Static

from tui.model import MeshModel
from tui.screens.base import Column, View, fill_table
from tui.text import clean

__all__ = ["LibraryView", "render_document"]


def render_document(doc: dict[str, Any]) -> Text:
    """Title, collection, tags and body of a ``library.show`` document."""
    t = Text()
    t.append(clean(str(doc.get("title", "(untitled)"))) + "\n", style="bold")
    meta = [f"{k}: {clean(doc[k])}" for k in ("collection", "lang", "language", "doc_id")
            if isinstance(doc.get(k), str)]
    tags = doc.get("tags")
    if isinstance(tags, list) and tags:
        meta.append("tags: " + clean(", ".join(map(str, tags))))
    if meta:
        t.append("  ".join(meta) + "\n", style="dim")
    t.append("\n" + clean(str(doc.get("body", "")), newlines=True))
    return t


class LibraryView(View):
    """A search box, ranked results with snippets, and the selected document."""

    KEY: ClassVar[str] = "l"
    TITLE: ClassVar[str] = "Library"
    SHORT: ClassVar[str] = "Lib"
    METHODS: ClassVar[tuple[str, ...]] = ("library.search", "library.show")

    DEFAULT_CSS = """
    LibraryView #lib-query { height: 3; }
    LibraryView #lib-results { height: 1fr; }
    LibraryView #lib-doc-box { height: 1fr; border-top: solid $primary; }
    """

    @dataclass
    class SearchSubmitted(Message):
        """The user asked to search the library for ``query``."""

        query: str

    @dataclass
    class DocumentChosen(Message):
        """The user chose the document ``doc_id`` to read."""

        doc_id: str

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search the library (press / or Enter to search)",
                    id="lib-query")
        yield Static(classes="notice")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="lib-results")
        with VerticalScroll(id="lib-doc-box"):
            yield Static("select a result and press Enter to read it", id="lib-doc")

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        extra = ""
        if model.library_query and not model.library_results:
            extra = f"no documents match {model.library_query!r}"
        self.set_notice(model, extra)
        rows = []
        for r in model.library_results:
            snippet = " ".join(str(r.get("snippet", "")).split())
            rows.append((str(r["doc_id"]), self.cells(str(r.get("title", "")),
                                                     str(r.get("collection", "")), snippet)))
        fill_table(self.query_one("#lib-results", DataTable),
                   [Column("TITLE", squeeze=True, min=10), Column("COLLECTION", squeeze=True),
                    Column("SNIPPET", squeeze=True, min=12)], rows)
        doc = self.query_one("#lib-doc", Static)
        if model.library_doc is not None:
            doc.update(render_document(model.library_doc))

    def focus_search(self) -> None:
        """Put the cursor in the search box."""
        self.query_one("#lib-query", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.post_message(self.SearchSubmitted(event.value.strip()))
            self.query_one("#lib-results", DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.DocumentChosen(event.row_key.value))
