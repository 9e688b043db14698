"""Log: every event from the daemon and the console's own notes, newest last."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import RichLog, Static

from tui.model import LogLine, MeshModel
from tui.screens.base import View, matches
from tui.text import clean

__all__ = ["LogView", "format_line"]


def format_line(line: LogLine, utc: bool = False) -> Text:
    """``HH:MM:SS kind text`` (local time unless ``utc``)."""
    stamp = time.strftime("%H:%M:%S", time.gmtime(line.ts) if utc else time.localtime(line.ts))
    style = ("red" if line.kind.endswith((".lost", ".failed", ".ended")) or
             line.text.startswith("disconnected") else
             "green" if line.kind.endswith(".up") or line.text.startswith("connected") else "")
    t = Text(stamp + " ", style="dim")
    t.append(f"{line.kind:<18} ", style=style or "cyan")
    if line.count > 1:
        t.append(f"×{line.count} in {line.span_s:.0f} s ", style="bold yellow")
    t.append(clean(line.text))
    return t


class LogView(View):
    """A scrolling log; the filter keeps matching lines only."""

    KEY: ClassVar[str] = "g"
    TITLE: ClassVar[str] = "Log"
    SHORT: ClassVar[str] = "Log"
    def compose(self) -> ComposeResult:
        yield Static(classes="notice", id="log-notice")
        yield RichLog(id="log", wrap=False, max_lines=2000, auto_scroll=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown = 0  # model.log_total when we last wrote
        self._edits = 0  # model.log_edits when we last wrote
        self._needle = ""

    def show(self, model: MeshModel, now: float, needle: str) -> None:
        rlog = self.query_one("#log", RichLog)
        lines = list(model.log)
        fresh = model.log_total - self._shown
        if (needle != self._needle or fresh > len(lines) or fresh < 0
                or model.log_edits != self._edits):
            # a repeated event joined a line already written: rewrite (at most a few times a
            # second, when the console renders)
            rlog.clear()
            self._needle = needle
            self._edits = model.log_edits
            new = lines
        else:
            new = lines[len(lines) - fresh:] if fresh else []
        for ln in new:
            if matches(needle, ln.kind, ln.text):
                rlog.write(format_line(ln, self.utc))
        self._shown = model.log_total
        if needle:
            shown = sum(1 for ln in lines if matches(needle, ln.kind, ln.text))
            self.set_notice(model, self.filter_note(needle, shown, len(lines)))
        else:
            self.set_notice(model)

    def focus_main(self) -> None:
        self.query_one("#log", RichLog).focus()
