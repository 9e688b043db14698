"""The control API's wire format, shared by the server (in the node) and its clients.

One JSON document per line, UTF-8, at most ``MAX_LINE`` bytes; the socket path
must stay under ``MAX_SOCKET_PATH`` bytes (``sun_path``).  See
``meshd.control.server`` for the request/response and event protocol.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final

from meshd.core.errors import ERROR_CODES, ControlError, LocalProtocolError, MeshError

__all__ = [
    "CLIENT_EVENT_QUEUE",
    "ERROR_CODES",
    "MAX_LINE",
    "MAX_SOCKET_PATH",
    "MAX_TOKEN",
    "ControlError",
    "NoDaemon",
    "check_socket_path",
    "dumps",
    "loads",
    "valid_id",
]

#: longest request or response line in bytes, newline excluded
MAX_LINE: Final = 1 << 20
#: a socket path must be shorter than this many bytes
MAX_SOCKET_PATH: Final = 100
#: events a client holds unread before it gives up the connection
CLIENT_EVENT_QUEUE: Final = 65536
#: longest method name and string id accepted
MAX_TOKEN: Final = 64




class NoDaemon(MeshError):
    """Nothing answers on the control socket (absent, refused, closed, or silent too long)."""


def check_socket_path(path: Path) -> None:
    """Raise ``LocalProtocolError`` unless ``path`` is under ``MAX_SOCKET_PATH`` bytes."""
    n = len(os.fsencode(path))
    if n >= MAX_SOCKET_PATH:
        raise LocalProtocolError(
            f"control socket path is {n} bytes, must be under {MAX_SOCKET_PATH}: {path} "
            "(choose a shorter --state-dir or --socket)"
        )


def dumps(obj: Any) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (text + "\n").encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(line: bytes) -> Any:
    """Parse one line; raise ValueError for anything that is not strict UTF-8 JSON."""
    try:
        text = line.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(type(exc).__name__) from None


def valid_id(v: Any) -> bool:
    return (type(v) is int and -(2**53) <= v <= 2**53) or (type(v) is str and len(v) <= MAX_TOKEN)


