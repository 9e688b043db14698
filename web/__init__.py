"""The citizens' web app: pages every car serves to any phone browser (see ``web.app``).

``WebService`` plugs it into meshd through the composition root (``carmesh.app``);
meshd itself never imports this package.  Importing the package loads nothing heavy: its
names come from their modules on first use (``web.app`` pulls in aiohttp and Jinja2,
which a daemon loads only when the first browser connects; see ``web.service``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from web.app import WEB_METHODS, WebSettings, make_app
    from web.service import WebService

__all__ = ["WEB_METHODS", "WebService", "WebSettings", "make_app"]

_HOME = {"WEB_METHODS": "web.app", "WebSettings": "web.app", "make_app": "web.app",
         "WebService": "web.service"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
