"""`meshd --log-format json`: one JSON object per line, whatever the message holds."""

from __future__ import annotations

import io
import json
import logging
import sys

from carmesh.cli import _setup_logging, build_parser
from carmesh.logjson import JsonFormatter


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("meshd.node", logging.WARNING, "x.py", 1, msg, args, exc_info)


def test_one_object_per_line_with_peer_and_traceback() -> None:
    fmt = JsonFormatter()
    line = fmt.format(_record("[%s] link up with %s", "3f9a0c1b", "evil\nname\u2028 \"x\" 避難所"))
    assert "\n" not in line and "\u2028" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["logger"] == "meshd.node"
    assert obj["peer"] == "3f9a0c1b"
    assert obj["msg"] == "[3f9a0c1b] link up with evil\nname\u2028 \"x\" 避難所"
    assert obj["ts"].endswith("Z") and "T" in obj["ts"]
    line = fmt.format(_record("failed", exc=True))
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


def test_meshd_flag_selects_the_formatter() -> None:
    assert build_parser().parse_args(["--log-format", "json"]).log_format == "json"
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        root.handlers.clear()
        _setup_logging("info", "json")
        handler = root.handlers[-1]
        assert isinstance(handler.formatter, JsonFormatter)
        buf = io.StringIO()
        handler.setStream(buf)  # type: ignore[attr-defined]
        # straight to the handler: other tests in this worker may have set logger levels
        handler.handle(logging.LogRecord("meshd.test", logging.INFO, __file__, 1, "hello %d",
                                         (7,), None))
        assert json.loads(buf.getvalue().strip())["msg"] == "hello 7"
    finally:
        root.handlers[:] = saved
