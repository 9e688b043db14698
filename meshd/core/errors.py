"""Error hierarchy of meshd.

Two kinds of failure are kept apart (as h11 does): ``LocalProtocolError`` means
*we* misused an API (a bug or bad local input); ``RemoteProtocolError`` means a
peer sent something we refuse.  Remote errors are counted and dropped at the
adapter boundary, never raised into the event loop.
"""

from __future__ import annotations

import errno
from typing import Any, Final

__all__ = [
    "ERROR_CODES",
    "ControlError",
    "DecodeError",
    "DiskFull",
    "LocalProtocolError",
    "MeshError",
    "RemoteProtocolError",
    "VerificationError",
    "is_disk_full",
]


class MeshError(Exception):
    """Base of every error meshd raises on purpose."""


class LocalProtocolError(MeshError):
    """We tried to do something the protocol does not allow (our bug or bad local input)."""


class RemoteProtocolError(MeshError):
    """A peer sent something malformed, forged, stale or otherwise refused.

    ``reason`` is a short stable token used as the drop counter key.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class DiskFull(MeshError, OSError):
    """A write failed because the disk (or the quota, or SQLite's page limit) is full.

    An ``OSError`` with errno ENOSPC, so code that already treats I/O failures as such
    keeps doing so; the message says what was not written and that space must be freed.
    """

    def __init__(self, what: str) -> None:
        super().__init__(errno.ENOSPC, f"disk full: {what}; free some space on the disk")
        self.what = what

    def __str__(self) -> str:
        return str(self.strerror)


#: SQLite's primary result code for "database or disk is full"
_SQLITE_FULL: Final = 13


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC/EDQUOT and SQLite's "database or disk is full" (SQLITE_FULL)."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    # sqlite3.Error, read by duck type: this kernel module imports no SQLite
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
        return True
    return type(exc).__module__ == "sqlite3" and "database or disk is full" in str(exc)


class DecodeError(RemoteProtocolError):
    """Bytes that are not a well-formed message of the expected shape and size."""


class VerificationError(RemoteProtocolError):
    """A signature, key binding or freshness check failed."""


#: every error code a control response may carry (meshctl maps them to exit codes)
ERROR_CODES: Final = frozenset(
    {"unreachable", "timeout", "bad_request", "not_found", "ambiguous", "failed", "unknown_method"}
)


class ControlError(MeshError):
    """A control request failed; ``code`` is in ``ERROR_CODES``, ``data`` is JSON-able detail."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None) -> None:
        if code not in ERROR_CODES:
            raise LocalProtocolError(f"unknown control error code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if data is not None else {}

    def to_json(self) -> dict[str, Any]:
        """The ``error`` member of a response line."""
        return {"code": self.code, "message": self.message, "data": self.data}
