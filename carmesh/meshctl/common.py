"""What every meshctl command shares: exit codes, output (text or one JSON document), the command registry, formatting and argument helpers."""

from __future__ import annotations

import argparse
import enum
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from meshd.control.client import ControlClient
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.core.text import human_duration, terminal_safe
from meshd.paths import STATE_DIR_ENV

CONNECT_TIMEOUT_S = 2.0
#: how long a plain request may take before the daemon counts as not answering, seconds
CALL_TIMEOUT_S = 10.0
#: extra time the daemon gets beyond a ping's own timeout, seconds
PING_GRACE_S = 5.0


class ExitCode(enum.IntEnum):
    OK = 0  #: success
    FAILED = 1  #: the operation failed
    USAGE = 2  #: bad command line, ambiguous NODE, request refused as malformed
    NO_DAEMON = 3  #: nothing answering on the control socket
    UNREACHABLE = 4  #: the target is unreachable, unknown, or timed out


#: the ``error.code`` of a --json error document for a failure found by meshctl itself
_EXIT_NAME = {ExitCode.FAILED: "failed", ExitCode.USAGE: "usage", ExitCode.NO_DAEMON: "no_daemon",
              ExitCode.UNREACHABLE: "unreachable", ExitCode.OK: "ok"}

_CODE_EXIT = {
    "unreachable": ExitCode.UNREACHABLE,
    "timeout": ExitCode.UNREACHABLE,
    "not_found": ExitCode.UNREACHABLE,
    "ambiguous": ExitCode.USAGE,
    "bad_request": ExitCode.USAGE,
    "failed": ExitCode.FAILED,
    "unknown_method": ExitCode.FAILED,
}


def exit_code_for(err: ControlError) -> ExitCode:
    """The meshctl exit code for a control error code."""
    return _CODE_EXIT.get(err.code, ExitCode.FAILED)


class Output:
    """Where a command writes: human text or one JSON document on stdout, messages on stderr."""

    def __init__(self, as_json: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json = as_json
        self._out = stdout
        self._err = stderr

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    def line(self, text: str = "") -> None:
        """A line of human output (suppressed under --json), control and bidi characters escaped.

        Single-line fields (names, titles) are escaped once more by ``_str``/``_table``/``who``
        so that a newline inside one cannot start a line of its own.
        """
        if not self.json:
            print(terminal_safe(text, multiline=True), file=self.out, flush=True)

    def document(self, obj: Any) -> None:
        """The one JSON document of a --json run."""
        print(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False), file=self.out,
              flush=True)

    def error(self, text: str) -> None:
        """A diagnostic on stderr, prefixed with the program name."""
        print(f"meshctl: {terminal_safe(text, multiline=True)}", file=self.err, flush=True)

    def fail(self, code: ExitCode, text: str) -> ExitCode:
        """Report a local failure: stderr, plus an ``{"error": ...}`` document under --json."""
        self.error(text)
        if self.json:
            self.document({"error": {"code": _EXIT_NAME[code], "message": text, "data": {}}})
        return code

    def control_error(self, err: ControlError) -> ExitCode:
        """Report a control error (stderr; plus an ``{"error": ...}`` document under --json)."""
        self.error(err.message if err.code not in ("not_found", "unreachable", "timeout")
                   else f"{err.code.replace('_', ' ')}: {err.message}")
        if err.code == "ambiguous":
            for c in err.data.get("candidates", []):
                if isinstance(c, dict):
                    print(f"  {_str(c.get('node_id'))}  {_str(c.get('name'))}", file=self.err)
        if self.json:
            self.document({"error": err.to_json()})
        return exit_code_for(err)


Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[ControlClient, argparse.Namespace, Output], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Command:
    """One meshctl subcommand: ``setup`` adds its arguments, ``run`` returns its exit code."""

    name: str
    help: str
    setup: Setup
    run: Run


#: every subcommand, by name, in registration order
COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, setup: Setup | None = None) -> Callable[[Run], Run]:
    """Decorator: add ``run`` to ``COMMANDS`` as subcommand ``name``, arguments from ``setup``."""
    def deco(run: Run) -> Run:
        if name in COMMANDS:
            raise LocalProtocolError(f"meshctl command {name!r} registered twice")
        COMMANDS[name] = Command(name, help, setup or (lambda _p: None), run)
        return run
    return deco


async def _fetch_list(client: ControlClient, out: Output, method: str, key: str,
                      params: dict[str, Any] | None, *, timeout: float, what: str,
                      empty: str, header: Callable[[Any], None] | None = None) -> list[Any] | int:
    """Call ``method`` and return its ``key`` list for a table, or the exit code when done.

    Done means: the daemon's answer was malformed (exit 1), ``--json`` printed it whole
    (exit 0), or the list was empty and ``empty`` was printed (exit 0).
    """
    res = await client.call(method, params, timeout=timeout)
    items = res.get(key) if isinstance(res, dict) else None
    if not isinstance(items, list):
        return out.fail(ExitCode.FAILED, f"daemon sent a malformed {what}")
    if out.json:
        out.document(res)
        return ExitCode.OK
    if header is not None:
        header(res)
    if not items:
        out.line(empty)
        return ExitCode.OK
    return items


# ---------------------------------------------------------------------------- formatting

def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    rows = [[terminal_safe(c) for c in row] for row in rows]
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in rows]


def _num(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    return f"{100 * v:.0f}%"


_duration = human_duration  # the console shows durations the same way


def _str(v: Any) -> str:
    """A value as one line of text: ``-`` for None, lists comma-separated, escapes shown."""
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(terminal_safe(str(x)) for x in v) or "-"
    return terminal_safe(str(v))


def who(name: Any, node_id: Any, fallback: str = "?") -> str:
    """Who a command reached: ``name (short id)``, or the short id alone, escaped."""
    short = node_id[:8] if isinstance(node_id, str) and node_id else None
    label = terminal_safe(name) if isinstance(name, str) and name else None
    if label and short:
        return f"{label} ({short})"
    return short or label or terminal_safe(fallback)


# ---------------------------------------------------------------------------- status


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _float_in(text: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise argparse.ArgumentTypeError(
            f"must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
    return v


def _ping_timeout(text: str) -> float:
    return _float_in(text, 0.0, 60.0, True)


def _nonneg_float(text: str) -> float:
    return _float_in(text, 0.0, 86400.0, False)



def _clock(ms: Any) -> str:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))



def _ago(ts: Any) -> str:
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts <= 0:
        return "never"
    return _duration(time.time() - ts) + " ago"



def _positive_float(text: str) -> float:
    return _float_in(text, 0.0, 30 * 24 * 3600.0, True)


def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help=f"node state directory (default ${STATE_DIR_ENV}, else "
                        "$XDG_STATE_HOME/carmesh, else ~/.local/state/carmesh)",
                   **({"default": None} | d))
    p.add_argument("--socket", type=Path, metavar="PATH",
                   help="control socket (default <state-dir>/control.sock)",
                   **({"default": None} | d))
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout",
                   **({"default": False} | d))
