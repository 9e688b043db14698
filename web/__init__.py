"""The citizens' web app: pages every car serves to any phone browser (see ``web.app``).

``WebService`` plugs it into meshd through the composition root (``carmesh.app``);
meshd itself never imports this package.
"""

from web.app import WEB_METHODS, WebSettings, make_app
from web.service import WebService

__all__ = ["WEB_METHODS", "WebService", "WebSettings", "make_app"]
