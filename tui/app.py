"""The carmesh admin console: a Textual app over the daemon's control API.

One ``MeshModel`` is fed by a ``Poller`` (polls plus the event stream, with
reconnects); the app renders the visible view from it a few times a second
when it changed, and once a second anyway so that ages and uptime move.  Every
view has a letter key (and the first ten a digit key); ``/`` filters the current
view (each view keeps its own filter, named in the status line and the view; in
the library it searches), ``?`` shows the keys, ``q`` quits.

Actions (call, answer, decline, hang up, write a message, set the situation,
publish a bulletin) are keys of their views: the app asks for what it needs in
a form (or a yes/no question for what cannot be undone), sends one control
request on the poller's connection and says what happened in words, as a
notification and a line in the Log (``tui.actions``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import ContentSwitcher, DataTable, Input, Static

from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError
from tui.actions import ActionError, call_done, describe_error, parse_fields, send_done
from tui.model import MeshModel, Poller
from tui.screens import (
    BoardView,
    CallsView,
    ConfirmScreen,
    Field,
    FormScreen,
    HelpScreen,
    LibraryView,
    LogView,
    MailView,
    MessagesView,
    NeighboursView,
    OverviewView,
    RoutesView,
    SyncView,
    TopologyView,
    View,
)
from tui.screens.calls import RINGING_IN
from tui.text import clean

__all__ = ["VIEWS", "MeshConsole", "run_console"]

#: the views in tab order (digit keys 1-9 and 0 follow it)
VIEWS: tuple[type[View], ...] = (OverviewView, NeighboursView, RoutesView, TopologyView,
                                 CallsView, MessagesView, MailView, SyncView, LibraryView,
                                 BoardView, LogView)
#: how long a call may take to start on the daemon (endpoint, gathering, offer), seconds
CALL_START_TIMEOUT_S = 15.0
#: how long ``send`` waits for the far end's acknowledgement, seconds
SEND_TIMEOUT_S = 10.0


def _view_id(cls: type[View]) -> str:
    return cls.TITLE.lower()


def _bindings() -> list[BindingType]:
    out: list[BindingType] = []
    for i, cls in enumerate(VIEWS, start=1):
        out.append(Binding(cls.KEY, f"show('{_view_id(cls)}')", cls.TITLE, show=False))
        if i <= 10:
            out.append(Binding(str(i % 10), f"show('{_view_id(cls)}')", cls.TITLE, show=False))
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
        long = sum(len(c.TITLE) + 4 for c in VIEWS) + len(VIEWS) - 1 <= width
        t = Text(no_wrap=True, overflow="crop")
        for i, cls in enumerate(VIEWS, start=1):
            key = str(i % 10) if i <= 10 else cls.KEY
            label = f" {key} {cls.TITLE} " if long else f"{key} {cls.SHORT}"
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
    #bottom { dock: bottom; height: auto; }
    #filter { height: 3; display: none; }
    #filter.visible { display: block; }
    #keys { height: 1; background: $panel; color: $text-muted; }
    #said { height: auto; padding: 0 1; display: none; }
    #said.on { display: block; }
    #said.error { color: $error; }
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
        #: each view's filter, by view id (a filter belongs to the view it was typed in)
        self.needles: dict[str, str] = {}
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
                view.utc = self.utc
                yield view
        with Vertical(id="bottom"):
            yield Input(placeholder="filter this view (Enter keeps it, Escape clears it)",
                        id="filter", disabled=True)
            yield Static(id="said")
            yield Static(id="keys")

    def on_mount(self) -> None:
        if self.poller is not None:
            self.run_worker(self.poller.run(), name="poller", exit_on_error=False)
        self.set_interval(0.25, self._tick)
        self.refresh_view()
        # the view on screen when the layout is done (a key may have switched it already)
        self.call_after_refresh(self._focus_current)

    def _focus_current(self) -> None:
        self.current_view.focus_main()

    def on_resize(self, event: events.Resize) -> None:
        # the views size their columns to the space they get: render again once the
        # new layout is in place (every view re-renders when it is next shown)
        self._dirty = True
        self.call_after_refresh(self.refresh_view)

    # -- rendering ------------------------------------------------------------------------

    def _changed(self) -> None:
        self._dirty = True

    def _tick(self) -> None:
        now = time.monotonic()
        if self._dirty or self.model.version != self._rendered_version or (
                now - self._rendered_at >= 1.0):
            self._rendered_at = now
            try:
                self.refresh_view()
            except NoMatches:  # the widgets are gone: the app is closing (a tick raced it)
                return

    @property
    def needle(self) -> str:
        """The filter of the view on screen ("" for none)."""
        return self.needles.get(self.query_one(ContentSwitcher).current or "", "")

    @needle.setter
    def needle(self, value: str) -> None:
        cur = self.query_one(ContentSwitcher).current or ""
        if value:
            self.needles[cur] = value
        else:
            self.needles.pop(cur, None)

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
            line.append("  filter: ", style="yellow")
            line.append(clean(self.needle), style="bold yellow")
            line.append(" (Esc clears)", style="yellow")
        self.query_one(StatusLine).update(line)
        view = self.current_view
        keys = Text(" ? help  / filter  ")
        for key, what in view.ACTIONS:
            keys.append(key, style="bold")
            keys.append(f" {what}  ")
        keys.append("tab views  q quit", style="")
        self.query_one("#keys", Static).update(keys)
        bar = self.query_one(TabBar)
        bar.current = self.query_one(ContentSwitcher).current or bar.current
        bar.update(bar.render_bar(self.size.width))
        self.current_view.show(m, now, self.needle)

    # -- actions --------------------------------------------------------------------------

    def action_show(self, view_id: str) -> None:
        """Switch to the view ``view_id`` (with its own filter; an open filter box closes)."""
        box = self.query_one("#filter", Input)
        if box.has_class("visible"):
            box.remove_class("visible")
            box.disabled = True
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
        keys = [(f"{cls.KEY} / {i % 10}" if i <= 10 else cls.KEY, f"{cls.TITLE} view")
                for i, cls in enumerate(VIEWS, 1)]
        for cls in VIEWS:
            keys += [(f"{k} in {cls.TITLE}", what) for k, what in cls.ACTIONS]
        keys += [("tab / shift+tab", "next / previous view"),
                 ("/", "filter the view, each view its own (in Library: search)"),
                 ("escape", "clear the view's filter; leave the search box"),
                 ("↑ ↓ pgup pgdn", "move in a table"),
                 ("enter", "open the selected library document; go to an alert's details"),
                 ("?", "this help"), ("q", "quit")]
        self.push_screen(HelpScreen(keys))

    # -- acting on the mesh ---------------------------------------------------------------

    def _say(self, text: str, error: bool = False) -> None:
        """Tell the admin what an action did: a notification and a line in the Log."""
        self.model.note(("failed: " if error else "") + text, self.clock())
        said = self.query_one("#said", Static)
        said.update(Text(("✗ " if error else "✓ ") + clean(text)))
        said.set_class(error, "error")
        said.add_class("on")
        self.notify(clean(text), severity="error" if error else "information",
                    timeout=8 if error else 4, markup=False)
        self._dirty = True

    async def _send(self, method: str, params: dict[str, Any], *, timeout: float,
                    target: str, done: Callable[[Any], str], poke: tuple[str, ...]) -> None:
        """Send one action request; confirm or explain the failure in words."""
        if self.poller is None:
            self._say(describe_error(method, NoDaemon("the console runs without a daemon")),
                      error=True)
            return
        try:
            res = await self.poller.request(method, params, timeout=timeout)
        except (ControlError, NoDaemon) as exc:
            self._say(describe_error(method, exc, target), error=True)
            return
        self._say(done(res))
        self.poller.poke(*poke)

    def _act(self, method: str, params: dict[str, Any], *, timeout: float, target: str,
             done: Callable[[Any], str], poke: tuple[str, ...]) -> None:
        self.run_worker(self._send(method, params, timeout=timeout, target=target, done=done,
                                   poke=poke), group="actions")

    def _calls_view(self) -> CallsView:
        return self.query_one(CallsView)

    def _call_for(self, want_ringing: bool) -> Any:
        """The selected call, else (to answer or decline) the first incoming ringing one."""
        call = self._calls_view().selected_call(self.model)
        ringing = [c for c in self.model.calls
                   if c.state in RINGING_IN and c.direction in ("callee", "in")]
        if want_ringing and (call is None or call not in ringing) and ringing:
            return ringing[0]
        return call

    def action_place_call(self) -> None:
        """p in Calls: ask whom to call, then call."""
        def go(values: dict[str, str] | None) -> None:
            if not values:
                return
            node = values["node"]
            params: dict[str, Any] = {"node": node}
            if values.get("play"):
                params["play"] = values["play"]
            self._say(f"calling {node}…")
            self._act("call", params, timeout=CALL_START_TIMEOUT_S, target=node,
                      done=lambda r: call_done("calling", r, node), poke=("calls",))
        self.push_screen(FormScreen("Place a call", [
            Field("node", "Node (name, NodeId or id prefix)", "e.g. bravo"),
            Field("play", "What to send (optional: tone:440, mic, a file path; "
                          "default silence)", required=False)]), go)

    def action_answer_call(self) -> None:
        """a in Calls: answer the selected (or the first ringing incoming) call."""
        call = self._call_for(want_ringing=True)
        if call is None or call.state not in RINGING_IN or call.direction not in ("callee",
                                                                                   "in"):
            self._say("could not answer: no incoming call is ringing", error=True)
            return
        who = call.peer_name or self.model.name_of(call.peer)
        self._act("answer", {"call": call.call_id}, timeout=CALL_START_TIMEOUT_S, target=who,
                  done=lambda r: call_done("answered", r, who), poke=("calls",))

    def action_decline_call(self) -> None:
        """x in Calls: decline the selected (or the first ringing incoming) call, after asking."""
        call = self._call_for(want_ringing=True)
        if call is None or call.state not in RINGING_IN or call.direction not in ("callee",
                                                                                   "in"):
            self._say("could not decline: no incoming call is ringing", error=True)
            return
        who = call.peer_name or self.model.name_of(call.peer)

        def go(yes: bool | None) -> None:
            if yes:
                self._act("decline", {"call": call.call_id}, timeout=10.0, target=who,
                          done=lambda r: call_done("declined the call from", r, who),
                          poke=("calls",))
        self.push_screen(ConfirmScreen(f"Decline the call from {who}?"), go)

    def action_hangup_call(self) -> None:
        """h in Calls: hang up the selected live call, after asking."""
        call = self._call_for(want_ringing=False)
        if call is None or not call.live:
            live = [c for c in self.model.calls if c.live]
            call = live[0] if len(live) == 1 else None
        if call is None:
            self._say("could not hang up: select a live call first", error=True)
            return
        who = call.peer_name or self.model.name_of(call.peer)

        def go(yes: bool | None) -> None:
            if yes:
                self._act("hangup", {"call": call.call_id}, timeout=10.0, target=who,
                          done=lambda r: call_done("hung up on", r, who), poke=("calls",))
        self.push_screen(ConfirmScreen(f"Hang up the call with {who}?"), go)

    def _write(self, to: str = "") -> None:
        def go(values: dict[str, str] | None) -> None:
            if not values:
                return
            node, text = values["node"], values["text"]
            self._act("send", {"node": node, "text": text, "timeout": SEND_TIMEOUT_S},
                      timeout=SEND_TIMEOUT_S + 5, target=node,
                      done=lambda r: send_done(r, node), poke=("mail.list", "messages"))
        self.push_screen(FormScreen("Write a message (sealed end to end)", [
            Field("node", "To (name, NodeId or id prefix)", "e.g. bravo", value=to),
            Field("text", "Message", "what to say")],
            hint="Enter: next field / send   Escape: cancel   (out of reach: queued as mail)"),
            go)

    def action_write_message(self) -> None:
        """w in Messages or Mail: write a message to a node."""
        self._write()

    def action_reply_message(self) -> None:
        """Enter in Messages: write to the sender of the selected message."""
        m = self.query_one(MessagesView).selected(self.model)
        self._write(m.sender if m is not None else "")

    def action_set_situation(self) -> None:
        """u in Board: set fields of this node's situation record of a kind."""
        def go(values: dict[str, str] | None) -> None:
            if not values:
                return
            try:
                fields = parse_fields(values["fields"])
            except ActionError as exc:
                self._say(f"could not set the situation record: {exc}", error=True)
                return
            kind = values["kind"]
            self._act("situation.set", {"kind": kind, "fields": fields}, timeout=10.0,
                      target=kind, done=lambda r: f"situation record {kind} set: "
                      + ", ".join(f"{k}={v}" for k, v in fields.items()),
                      poke=("situation.list",))
        self.push_screen(FormScreen("Set this node's situation record", [
            Field("kind", "Kind (person, household, shelter, shop, dealer, vehicle)", "shelter"),
            Field("fields", "Fields: NAME=VALUE; NAME=VALUE (null clears one)",
                  "capacity=40; open=true; needs=water,blankets")]), go)

    def action_publish_bulletin(self) -> None:
        """p in Board: publish a bulletin, if this node is an authority."""
        if self.model.authority is False:
            self._say("could not publish the bulletin: this node's key is not an authority in "
                      "the trust configuration (only authorities publish)", error=True)
            return

        def go(values: dict[str, str] | None) -> None:
            if not values:
                return
            try:
                hours = float(values.get("hours") or "24")
                if not 0 < hours <= 720:
                    raise ValueError
            except ValueError:
                self._say("could not publish the bulletin: expiry must be 0 to 720 hours",
                          error=True)
                return
            title = values["title"]
            self._act("bulletin.publish", {"title": title, "body": values["body"],
                                           "expires_s": hours * 3600},
                      timeout=10.0, target=title,
                      done=lambda r: f"bulletin “{title}” published", poke=("bulletin.list",))
        self.push_screen(FormScreen("Publish a bulletin (signed with this node's key)", [
            Field("title", "Title", "Water point open"),
            Field("body", "Text", "Water at the school gym from 10:00."),
            Field("hours", "Expires after hours (default 24)", "24", required=False)]), go)

    def on_overview_view_alert_chosen(self, event: OverviewView.AlertChosen) -> None:
        """Enter on an alert: its view, with its row selected (or the view filtered by it)."""
        self.action_show(event.view)
        if not event.select:
            return
        view = self.current_view
        for table in view.query(DataTable).results(DataTable):
            keys = [rk.value for rk in table.rows]
            if event.select in keys:
                table.move_cursor(row=keys.index(event.select), animate=False)
                return
        self.needle = event.select
        self.refresh_view()

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
