"""Error hierarchy of sync.

``SyncError`` is the base.  Refusals of a peer's op are ``RemoteProtocolError``
subclasses (from meshd) carrying a short ``reason`` token, so the receive path
counts them with a ``DropCounter`` and never raises them into the event loop.
"""

from __future__ import annotations

from meshd.core.errors import LocalProtocolError, MeshError, RemoteProtocolError

__all__ = [
    "ClockSkew",
    "ForkDetected",
    "OpRefused",
    "StoreCorrupt",
    "SyncError",
    "SyncLocalError",
    "Unauthorized",
]


class SyncError(Exception):
    """Base of every error sync raises on purpose."""


class SyncLocalError(SyncError, LocalProtocolError):
    """We misused the sync API (our bug or bad local input)."""


class StoreCorrupt(SyncError, MeshError):
    """The op store's database failed its integrity check at open (the message says how to
    recover: ``meshd --recover-store`` moves it aside and the node resyncs)."""


class OpRefused(SyncError, RemoteProtocolError):
    """An op from a peer was refused (malformed, forged, expired, over quota...)."""


class Unauthorized(OpRefused):
    """The application's authoriser for the op's namespace refused it."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("unauthorized", detail)


class ClockSkew(OpRefused):
    """A hybrid-logical-clock timestamp lies further in the future than the tolerated skew."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("future", detail)


class ForkDetected(OpRefused):
    """Two different ops hold one place in an author's chain: the author is quarantined."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("fork", detail)
