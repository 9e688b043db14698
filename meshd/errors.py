"""Error hierarchy of meshd.

Two kinds of failure are kept apart (as h11 does): ``LocalProtocolError`` means
*we* misused an API (a bug or bad local input); ``RemoteProtocolError`` means a
peer sent something we refuse.  Remote errors are counted and dropped at the
adapter boundary, never raised into the event loop.
"""

from __future__ import annotations

__all__ = [
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
