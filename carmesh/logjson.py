"""``meshd --log-format json``: one JSON object per log line, for log collectors.

Each line is a complete object with fixed keys ``ts`` (RFC 3339 UTC with
milliseconds), ``level``, ``logger``, ``msg`` (the formatted message), plus
``peer`` when the message starts with the usual ``[shortid]`` tag, and ``exc``
with the traceback when there is one.  Strings are JSON-escaped, so text a peer
chose (a display name) can neither break the line nor forge another record;
non-ASCII text is written as ``\\u`` escapes.
"""

from __future__ import annotations

import json
import logging
import re
import time

__all__ = ["JsonFormatter"]

_PEER = re.compile(r"^\[([0-9a-f]{4,32})\] ")


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        m = _PEER.match(msg)
        if m:
            obj["peer"] = m.group(1)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return json.dumps(obj, separators=(",", ":"))  # ASCII: no U+2028 line breaks
