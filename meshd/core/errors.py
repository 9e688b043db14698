"""Error hierarchy of meshd.

Two kinds of failure are kept apart (as h11 does): ``LocalProtocolError`` means
*we* misused an API (a bug or bad local input); ``RemoteProtocolError`` means a
peer sent something we refuse.  Remote errors are counted and dropped at the
adapter boundary, never raised into the event loop.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = [
    "ERROR_CODES",
    "ControlError",
    "DecodeError",
    "LocalProtocolError",
    "MeshError",
    "RemoteProtocolError",
    "VerificationError",
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
