"""The web app as a node service: its listeners' lifetime inside meshd.

Listeners: plain HTTP on ``local`` (loopback only, default 127.0.0.1:7480: the
node's own user, and loopback is a secure context for the browser), and HTTPS
on each ``https`` address with the node's P-256 web certificate (``web.cert``).
A listener that cannot bind is logged and left out, the node keeps running: a
car must go on relaying the mesh although a web port is taken.  ``web.status``
says what is being served.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from meshd.config import parse_hostport
from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, StreamHandler
from web.app import Caller, Subscribe, WebSettings, make_app
from web.cert import ensure_certificate, server_context

__all__ = ["WebService"]

log = logging.getLogger(__name__)


class WebService:
    """``NodeService`` serving the web app (see the module docstring)."""

    def __init__(self, *, call: Caller, subscribe: Subscribe, state_dir: Path, name: str,
                 local: str | None, https: Sequence[str] = (),
                 settings: WebSettings | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._call = call
        self._subscribe = subscribe
        self._state_dir = Path(state_dir)
        self._name = name
        self._local = local
        self._https = list(https)
        self._settings = settings
        self._wall_clock = wall_clock
        self._runner: web.AppRunner | None = None
        #: URLs being served, e.g. "http://127.0.0.1:7480"
        self.urls: list[str] = []
        #: listeners that could not start, with why
        self.failed: list[dict[str, str]] = []
        self.started = asyncio.Event()

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"web.status": self._h_status}

    def stream_services(self) -> Mapping[str, StreamHandler]:
        return {}

    def neighbour_up(self, peer: NodeId) -> None:
        pass

    def neighbour_lost(self, peer: NodeId) -> None:
        pass

    async def _h_status(self, params: dict[str, Any]) -> dict[str, Any]:
        await self.started.wait()
        return {"urls": list(self.urls), "failed": list(self.failed)}

    async def _site(self, runner: web.AppRunner, spec: str,
                    ssl_ctx: ssl.SSLContext | None) -> None:
        tls = ssl_ctx is not None
        host, port = parse_hostport(spec)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=512)
        try:
            await site.start()
        except OSError as exc:
            self.failed.append({"address": spec, "error": exc.strerror or str(exc)})
            log.warning("web: cannot listen on %s (%s); not serving there", spec,
                        exc.strerror or exc)
            return
        server = site._server  # the bound port, also when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        self.urls.append(url)
        log.info("web: serving %s", url)

    async def run(self) -> None:
        app = make_app(self._call, self._subscribe, self._settings, wall_clock=self._wall_clock)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            if self._local is not None:
                await self._site(runner, self._local, None)
            if self._https:
                # one certificate naming every HTTPS address
                cert, key = await asyncio.to_thread(
                    ensure_certificate, self._state_dir,
                    [parse_hostport(s)[0] for s in self._https], self._name)
                ctx = server_context(cert, key)
                for spec in self._https:
                    await self._site(runner, spec, ctx)
        finally:
            self.started.set()
        await asyncio.Event().wait()  # serve until the node cancels us

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
