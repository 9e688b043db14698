"""What every view shares: the ``View`` base class, table refresh and formatting helpers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from meshd.core.text import human_duration
from tui.model import MeshModel
from tui.text import plain, truncate

__all__ = [
    "CELL_PAD",
    "UNAVAILABLE",
    "Column",
    "Lazy",
    "View",
    "fill_table",
    "fit_widths",
    "fmt_ago",
    "fmt_clock",
    "fmt_duration",
    "fmt_num",
    "fmt_pct",
    "matches",
]

#: what a view shows when the daemon does not serve its method
UNAVAILABLE = "not available on this daemon"

Cell = str | Text
#: a cell drawn at its column's width (sparklines, bars)
Lazy = Callable[[int], Cell]


fmt_duration = human_duration  # meshctl shows durations the same way


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


def fmt_clock(wall_ms: int | None, utc: bool = False) -> str:
    """Unix milliseconds as ``HH:MM:SS`` (local time unless ``utc``); ``-`` for None."""
    if wall_ms is None:
        return "-"
    t = wall_ms / 1000
    return time.strftime("%H:%M:%S", time.gmtime(t) if utc else time.localtime(t))


def fmt_pct(v: float | None) -> str:
    """A fraction as a percentage; ``-`` for None."""
    return "-" if v is None else f"{100 * v:.0f}%"


def matches(needle: str, *cells: object) -> bool:
    """True if ``needle`` (case-folded) occurs in any cell; an empty needle matches all."""
    if not needle:
        return True
    n = needle.casefold()
    return any(n in str(c).casefold() for c in cells)


#: cells of padding DataTable puts around every column (``cell_padding`` 1 each side)
CELL_PAD = 2
#: cells kept free at the right of a table for its vertical scrollbar
SCROLLBAR = 2


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: ``squeeze`` columns (names, free text) give way first when the terminal
    is narrow; ``grow`` columns (sparklines) take the room left over, between ``min`` and ``max``.
    ``min`` 0 means the label's width; an ``optional`` column is left out (width 0) before
    any text is cut when the terminal is too narrow for everything."""

    label: str
    squeeze: bool = False
    grow: bool = False
    optional: bool = False
    min: int = 0
    max: int = 10_000


def _cell_len(c: Cell | Lazy) -> int:
    if callable(c):
        return 0
    return c.cell_len if isinstance(c, Text) else Text(c).cell_len


def _draw(c: Cell | Lazy, width: int) -> Text:
    return truncate(c(width) if callable(c) else c, width)


def fit_widths(columns: Sequence[Column], rows: Sequence[Sequence[Cell | Lazy]],
               width: int) -> list[int]:
    """Column widths (content cells, padding excluded) that fit ``width`` terminal cells.

    Every column gets its content's width when that fits.  When it does not,
    ``optional`` columns are left out first (width 0; the last first), then
    ``squeeze`` columns shrink (widest first, down to their minimum), then the
    others; ``grow`` columns get what is left.  Pure: tests call it with literal
    widths.
    """
    n = len(columns)
    mins = [c.min or len(c.label) for c in columns]
    nat = []
    for i, c in enumerate(columns):
        if c.grow:
            nat.append(mins[i])
        else:
            content = max((_cell_len(r[i]) for r in rows if i < len(r)), default=0)
            nat.append(min(c.max, max(len(c.label), content)))
    widths = list(nat)
    dropped: set[int] = set()

    def room() -> int:
        return width - CELL_PAD * (n - len(dropped))

    for step, group in enumerate(([i for i, c in enumerate(columns) if c.optional],
                                  [i for i, c in enumerate(columns) if c.squeeze],
                                  list(range(n)))):
        if step == 0:
            for i in reversed(group):
                if sum(widths) <= room():
                    break
                widths[i] = 0
                dropped.add(i)
            continue
        while sum(widths) > room():
            can = [i for i in group if widths[i] > mins[i] and i not in dropped]
            if not can:
                break
            i = max(can, key=lambda j: (widths[j] - mins[j], -j))
            widths[i] -= 1
    spare = room() - sum(widths)
    growers = [i for i, c in enumerate(columns) if c.grow and i not in dropped]
    while spare > 0 and growers:
        share = max(1, spare // len(growers))
        for i in list(growers):
            add = min(share, columns[i].max - widths[i], spare)
            widths[i] += add
            spare -= add
            if widths[i] >= columns[i].max:
                growers.remove(i)
            if spare <= 0:
                break
    return widths


def fill_table(table: DataTable[Cell], columns: Sequence[Column],
               rows: Sequence[tuple[str, Sequence[Cell | Lazy]]], width: int | None = None
               ) -> None:
    """Show ``rows`` (key, cells) in ``table`` under ``columns`` sized to ``width`` cells.

    ``width`` defaults to the table's own width less room for a scrollbar;
    column widths follow it on every call (a resize re-lays the table out), cells
    wider than their column end in ``…``.  Updates in place when the keys and
    widths are unchanged and keeps the cursor's row.
    """
    if width is None:
        width = (table.size.width or table.app.size.width) - SCROLLBAR
    widths = fit_widths(columns, [cells for _, cells in rows], width)
    fitted = [(k, [_draw(c, w) for c, w, col in zip(cells, widths, columns, strict=False)
                   if w or not col.optional]) for k, cells in rows]
    keys = [k for k, _ in fitted]
    current = [rk.value for rk in table.rows]
    have = [(str(c.label), c.width) for c in table.columns.values()]
    want = [(c.label, w) for c, w in zip(columns, widths, strict=True) if w or not c.optional]
    if have == want and keys == current:
        cols = list(table.columns)
        for key, cells in fitted:
            old = table.get_row(key)
            for col, (was, new) in enumerate(zip(old, cells, strict=False)):
                if str(was) != str(new) or (isinstance(was, Text) and was.style != new.style):
                    table.update_cell(key, cols[col], new)
        return
    selected: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        selected = current[table.cursor_row]
    if have != want:
        table.clear(columns=True)
        for label, w in want:
            table.add_column(label, width=w)
    else:
        table.clear()
    for key, cells in fitted:
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
    #: what the view's own keys do, for the key line and help: ((key, what), ...)
    ACTIONS: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: wall times in UTC (tests set this for deterministic snapshots)
    utc: bool = False
    #: the width the view last asked to be rendered at (``on_resize``)
    _fitted_width: int | None = None

    DEFAULT_CSS = """
    View { height: 1fr; }
    View .notice { color: $warning; height: auto; padding: 0 1; }
    View .heading { text-style: bold; padding: 0 1; height: auto; }
    View DataTable { height: 1fr; }
    """

    def on_resize(self, event: events.Resize) -> None:
        # columns follow the width the view gets, and the layout settles that after the
        # app's own Resize (which renders once already): render again when the shown
        # view's own width changes, or a table keeps the columns of the old width
        if self.display and event.size.width != self._fitted_width:
            self._fitted_width = event.size.width
            refresh = getattr(self.app, "refresh_view", None)
            if callable(refresh):
                self.app.call_after_refresh(refresh)

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

    @staticmethod
    def filter_note(needle: str, shown: int, total: int) -> str:
        """What the view's filter is doing, for its notice ("" when there is none)."""
        if not needle:
            return ""
        return (f"filter “{needle}”: {shown} of {total} rows shown "
                "(/ changes it, Escape clears it)")

    def focus_main(self) -> None:
        """Focus the view's main widget (its table, if it has one)."""
        for table in self.query(DataTable).results(DataTable):
            table.focus()
            return

    @staticmethod
    def cells(*values: Any) -> list[Cell | Lazy]:
        """Table cells from strings, rich ``Text``, ``Lazy`` drawers and other values, escaped
        for the terminal (a ``str`` is never read as markup)."""
        return [v if isinstance(v, Text) or callable(v) else plain(v) for v in values]
