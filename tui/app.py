"""The carmesh admin console: a Textual app over the daemon's control API.

One ``MeshModel`` is fed by a ``Poller`` (polls plus the event stream, with
reconnects); the app renders the visible view from it a few times a second
when it changed, and once a second anyway so that ages and uptime move.  Every
view has a letter key and a digit key; ``/`` filters the current view (in the
library it searches), ``?`` shows the keys, ``q`` quits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import ContentSwitcher, Input, Static

from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError
from tui.model import MeshModel, Poller
from tui.screens import (
    BoardView,
    CallsView,
    HelpScreen,
    LibraryView,
    LogView,
    NeighboursView,
    OverviewView,
    RoutesView,
    SyncView,
    TopologyView,
    View,
)

__all__ = ["VIEWS", "MeshConsole", "run_console"]

#: the views in tab order (digit keys 1-9 follow it)
VIEWS: tuple[type[View], ...] = (OverviewView, NeighboursView, RoutesView, TopologyView,
                                 CallsView, SyncView, LibraryView, BoardView, LogView)


def _view_id(cls: type[View]) -> str:
    return cls.TITLE.lower()


def _bindings() -> list[BindingType]:
    out: list[BindingType] = []
    for i, cls in enumerate(VIEWS, start=1):
        out.append(Binding(cls.KEY, f"show('{_view_id(cls)}')", cls.TITLE, show=False))
        out.append(Binding(str(i), f"show('{_view_id(cls)}')", cls.TITLE, show=False))
    out += [
        Binding("tab", "next_view", "next view", show=False, priority=False),
        Binding("shift+tab", "prev_view", "previous view", show=False),
        Binding("slash", "search", "search"),
        Binding("escape", "clear_filter", "clear filter", show=False),
        Binding("question_mark", "help", "help"),
        Binding("q", "quit", "quit"),
    ]
    return out


class TabBar(Static):
    """The views with their keys; the current one highlighted; short labels when narrow."""

    DEFAULT_CSS = "TabBar { height: 1; background: $panel; }"

    def __init__(self) -> None:
        super().__init__(id="tabs")
        self.current = _view_id(VIEWS[0])

    def render_bar(self, width: int) -> Text:
        long = sum(len(c.TITLE) + 4 for c in VIEWS) <= width
        t = Text(no_wrap=True, overflow="crop")
        for i, cls in enumerate(VIEWS, start=1):
            label = f" {i} {cls.TITLE} " if long else f"{i} {cls.SHORT}"
            on = _view_id(cls) == self.current
            t.append(label, style="bold reverse" if on else "")
            if i < len(VIEWS):
                t.append("│" if long else " ", style="dim")
        return t


class StatusLine(Static):
    """Which node we are looking at, whether the daemon answers, and the active filter."""

    DEFAULT_CSS = "StatusLine { height: 1; padding: 0 1; }"


class MeshConsole(App[None]):
    """The console; ``socket_path`` None runs it on ``model`` alone (tests, snapshots)."""

    TITLE = "carmesh"
    #: focus is placed by the views (the hidden filter box must never take it)
    AUTO_FOCUS = None
    BINDINGS: ClassVar[list[BindingType]] = _bindings()
    CSS = """
    #filter { dock: bottom; height: 3; display: none; }
    #filter.visible { display: block; }
    #keys { dock: bottom; height: 1; background: $panel; color: $text-muted; }
    ContentSwitcher { height: 1fr; }
    """

    def __init__(self, socket_path: Path | None = None, *, model: MeshModel | None = None,
                 clock: Callable[[], float] = time.time, interval_s: float = 1.0,
                 utc: bool = False) -> None:
        super().__init__()
        self.model = model if model is not None else MeshModel()
        self.clock = clock
        self.socket_path = socket_path
        self.utc = utc
        self.needle = ""
        self.poller: Poller | None = None
        if socket_path is not None:
            self.poller = Poller(socket_path, self.model, self._changed, interval_s=interval_s,
                                 clock=clock)
        self._rendered_version = -1
        self._rendered_at = 0.0
        self._dirty = True

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield TabBar()
        yield StatusLine(id="status")
        with ContentSwitcher(initial=_view_id(VIEWS[0])):
            for cls in VIEWS:
                view = cls(id=_view_id(cls))
                if isinstance(view, LogView):
                    view.utc = self.utc
                yield view
        yield Input(placeholder="filter this view (Enter keeps it, Escape clears it)",
                    id="filter", disabled=True)
        yield Static(" ? help  / search  1-9 or o n r t c s l b g: views  q quit", id="keys")

    def on_mount(self) -> None:
        if self.poller is not None:
            self.run_worker(self.poller.run(), name="poller", exit_on_error=False)
        self.set_interval(0.25, self._tick)
        self.refresh_view()

    def on_resize(self, event: events.Resize) -> None:
        self._dirty = True

    # -- rendering ------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True

    def _tick(self) -> None:
        now = time.monotonic()
        if self._dirty or self.model.version != self._rendered_version or (
                now - self._rendered_at >= 1.0):
            self._rendered_at = now
            self.refresh_view()

    @property
    def current_view(self) -> View:
        """The view on screen."""
        switcher = self.query_one(ContentSwitcher)
        return self.query_one(f"#{switcher.current}", View)

    def refresh_view(self) -> None:
        """Render the status line, the tab bar and the visible view from the model now."""
        self._dirty = False
        self._rendered_version = self.model.version
        now = self.clock()
        m = self.model
        st = m.status or {}
        line = Text()
        if st:
            line.append(str(st.get("name", "?")), style="bold")
            line.append(f" {str(st.get('node_id', ''))[:8]} {st.get('role', '')}", style="dim")
            line.append("  ")
        if m.connected:
            line.append("● connected", style="green")
        else:
            line.append("● " + m.connection_note, style="bold red")
        if self.needle:
            line.append(f"  filter: {self.needle}", style="yellow")
        self.query_one(StatusLine).update(line)
        bar = self.query_one(TabBar)
        bar.current = self.query_one(ContentSwitcher).current or bar.current
        bar.update(bar.render_bar(self.size.width))
        self.current_view.show(m, now, self.needle)

    # -- actions --------------------------------------------------------------------------

    def action_show(self, view_id: str) -> None:
        """Switch to the view ``view_id``."""
        self.query_one(ContentSwitcher).current = view_id
        self.refresh_view()
        # once more after layout: views size some columns to the space they get
        self.call_after_refresh(self.refresh_view)
        self.current_view.focus_main()

    def _step(self, delta: int) -> None:
        ids = [_view_id(c) for c in VIEWS]
        cur = self.query_one(ContentSwitcher).current or ids[0]
        self.action_show(ids[(ids.index(cur) + delta) % len(ids)])

    def action_next_view(self) -> None:
        """Show the next view."""
        self._step(1)

    def action_prev_view(self) -> None:
        """Show the previous view."""
        self._step(-1)

    def action_search(self) -> None:
        """``/``: search the library, or filter the current view's rows."""
        view = self.current_view
        if isinstance(view, LibraryView):
            view.focus_search()
            return
        box = self.query_one("#filter", Input)
        box.value = self.needle
        box.disabled = False
        box.add_class("visible")
        box.focus()

    def action_clear_filter(self) -> None:
        """Escape: close the filter box and clear the filter."""
        box = self.query_one("#filter", Input)
        box.remove_class("visible")
        box.disabled = True
        self.needle = ""
        self.refresh_view()
        self.current_view.focus_main()

    def action_help(self) -> None:
        """Show every key binding."""
        keys = [(f"{cls.KEY} / {i}", f"{cls.TITLE} view") for i, cls in enumerate(VIEWS, 1)]
        keys += [("tab / shift+tab", "next / previous view"),
                 ("/", "filter the view (in Library: search)"),
                 ("escape", "clear the filter; leave the search box"),
                 ("↑ ↓ pgup pgdn", "move in a table"),
                 ("enter", "open the selected library document"),
                 ("?", "this help"), ("q", "quit")]
        self.push_screen(HelpScreen(keys))

    # -- messages -------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.needle = event.value
            self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "filter":
            self.needle = event.value
            event.input.remove_class("visible")
            event.input.disabled = True
            self.refresh_view()
            self.current_view.focus_main()

    def on_key(self, event: events.Key) -> None:
        # Escape in the library's search box leaves it (the app binding clears the filter)
        if event.key == "escape" and isinstance(self.focused, Input) and (
                self.focused.id == "lib-query"):
            self.current_view.focus_main()
            event.stop()

    async def on_library_view_search_submitted(self, event: LibraryView.SearchSubmitted) -> None:
        self.run_worker(self._library("library.search", {"query": event.query}, event.query),
                        group="library", exclusive=True)

    async def on_library_view_document_chosen(self, event: LibraryView.DocumentChosen) -> None:
        self.run_worker(self._library("library.show", {"doc_id": event.doc_id}, None),
                        group="library", exclusive=True)

    async def _library(self, method: str, params: dict[str, object], query: str | None) -> None:
        if self.poller is None:
            return
        try:
            result = await self.poller.request(method, dict(params))
        except ControlError as exc:
            if exc.code == "unknown_method":
                self.model.set_unavailable(method)
            else:
                self.model.set_error(method, exc.message)
        except NoDaemon as exc:
            self.model.set_error(method, str(exc))
        else:
            if query is not None:
                self.model.apply_search(query, result)
            else:
                self.model.apply_document(result)
        self._dirty = True


async def run_console(socket_path: Path) -> None:
    """Run the console against the daemon on ``socket_path`` until the user quits."""
    app = MeshConsole(socket_path)
    await app.run_async()
