"""What every view shares: the ``View`` base class, table refresh and formatting helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.markup import escape
from rich.text import Text
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from tui.model import MeshModel

__all__ = [
    "UNAVAILABLE",
    "View",
    "fill_table",
    "fmt_ago",
    "fmt_duration",
    "fmt_num",
    "fmt_pct",
    "matches",
]

#: what a view shows when the daemon does not serve its method
UNAVAILABLE = "not available on this daemon"

Cell = str | Text


def fmt_duration(seconds: float | None) -> str:
    """``95`` -> ``1m35s``; ``-`` for None or negative."""
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_ago(when: float | None, now: float) -> str:
    """How long ago wall time ``when`` was at ``now``."""
    return "-" if when is None else fmt_duration(now - when)


def fmt_num(v: float | int | None, digits: int = 1) -> str:
    """A number with ``digits`` decimals (ints as they are); ``-`` for None."""
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def fmt_pct(v: float | None) -> str:
    """A fraction as a percentage; ``-`` for None."""
    return "-" if v is None else f"{100 * v:.0f}%"


def matches(needle: str, *cells: object) -> bool:
    """True if ``needle`` (case-folded) occurs in any cell; an empty needle matches all."""
    if not needle:
        return True
    n = needle.casefold()
    return any(n in str(c).casefold() for c in cells)


def fill_table(table: DataTable[Cell], rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
    """Show ``rows`` (key, cells) in ``table``, updating in place and keeping the cursor's row."""
    keys = [k for k, _ in rows]
    current = [rk.value for rk in table.rows]
    if keys == current:
        columns = list(table.columns)
        for key, cells in rows:
            old = table.get_row(key)
            for col, (was, new) in enumerate(zip(old, cells, strict=False)):
                if str(was) != str(new) or type(was) is not type(new):
                    table.update_cell(key, columns[col], new, update_width=True)
        return
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = current[table.cursor_row]
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if selected in keys:
        table.move_cursor(row=keys.index(selected), animate=False)


class View(Vertical):
    """One screen of the console: shows ``MeshModel`` through ``show``.

    Subclasses set ``KEY`` (its binding), ``TITLE`` and ``SHORT`` (tab labels
    for wide and narrow terminals) and ``METHODS`` (the control methods it
    needs, for the "not available" notice), and implement ``show``.
    """

    KEY: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    SHORT: ClassVar[str] = ""
    METHODS: ClassVar[tuple[str, ...]] = ()

    DEFAULT_CSS = """
    View { height: 1fr; }
    View .notice { color: $warning; height: auto; padding: 0 1; }
    View .heading { text-style: bold; padding: 0 1; height: auto; }
    View DataTable { height: 1fr; }
    """

    def notice_text(self, model: MeshModel) -> str:
        """The view's notice: unavailable methods and errors."""
        lines = []
        for m in self.METHODS:
            if m in model.unavailable:
                lines.append(f"{m}: {UNAVAILABLE}")
            elif m in model.errors:
                lines.append(f"{m}: {model.errors[m]}")
        return "\n".join(lines)

    def set_notice(self, model: MeshModel, extra: str = "") -> None:
        """Fill the first ``.notice`` Static of the view (hidden when empty)."""
        text = "\n".join(t for t in (self.notice_text(model), extra) if t)
        for notice in self.query(".notice").results(Static):
            notice.update(Text(text))
            notice.display = bool(text)
            break

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        """Render ``model`` at wall time ``now``, keeping only rows matching ``needle``."""
        raise NotImplementedError

    def focus_main(self) -> None:
        """Focus the view's main widget (its table, if it has one)."""
        for table in self.query(DataTable).results(DataTable):
            table.focus()
            return

    @staticmethod
    def cells(*values: Any) -> list[Cell]:
        """Table cells from strings, rich ``Text`` and other values (strings are not markup)."""
        return [v if isinstance(v, Text) else escape(str(v)) for v in values]
