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
import importlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd.config import parse_hostport
from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, StreamHandler
from web.cert import SIGNED_CERT_NAME, ca_certificate, ensure_certificate, server_context

if TYPE_CHECKING:
    from aiohttp import web

    from web.app import Caller, Subscribe, WebSettings

__all__ = ["WebService"]

log = logging.getLogger(__name__)

#: pending connections per listener (as aiohttp's TCPSite was given)
BACKLOG = 512


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening TCP sockets for ``host:port`` (every address it resolves to), not yet served."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


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
        self._community_cert = False
        #: bound sockets not yet handed to aiohttp, with their TLS context (None: plain HTTP)
        self._listeners: list[tuple[socket.socket, ssl.SSLContext | None]] = []
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

    async def _listen(self, spec: str, ssl_ctx: ssl.SSLContext | None) -> None:
        tls = ssl_ctx is not None
        host, port = parse_hostport(spec)
        try:
            socks = await _bind(host, port)
        except OSError as exc:
            self.failed.append({"address": spec, "error": exc.strerror or str(exc)})
            log.warning("web: cannot listen on %s (%s); not serving there", spec,
                        exc.strerror or exc)
            return
        self._listeners.extend((sock, ssl_ctx) for sock in socks)
        bound = socks[0].getsockname()[1]  # the bound port, also when 0 was asked for
        shown = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls else 'http'}://{shown}:{bound}"
        self.urls.append(url)
        log.info("web: serving %s", url)

    async def run(self) -> None:
        try:
            if self._local is not None:
                await self._listen(self._local, None)
            if self._https:
                # one certificate naming every HTTPS address
                cert, key = await asyncio.to_thread(
                    ensure_certificate, self._state_dir,
                    [parse_hostport(s)[0] for s in self._https], self._name)
                ctx = server_context(cert, key)
                self._community_cert = cert.name == SIGNED_CERT_NAME
                for spec in self._https:
                    await self._listen(spec, ctx)
        finally:
            self.started.set()
        if self._listeners:
            await self._first_connection()
            await self._serve()
        await asyncio.Event().wait()  # serve until the node cancels us

    async def _first_connection(self) -> None:
        """Wait until a connection is pending on any listener (it stays in the backlog)."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not pending.done():
                pending.set_result(None)

        fds = [sock.fileno() for sock, _ in self._listeners]
        for fd in fds:
            loop.add_reader(fd, wake)
        try:
            await pending
        finally:
            for fd in fds:
                loop.remove_reader(fd)

    async def _serve(self) -> None:
        """Import the app (in a thread: the loop keeps relaying) and serve every listener."""
        app_mod = await asyncio.to_thread(importlib.import_module, "web.app")
        from aiohttp import web

        # the CA is offered (and the service worker tried over HTTPS) where the car serves
        # the certificate it signed; a car serving loopback HTTP only offers it too
        ca_pem = (await asyncio.to_thread(ca_certificate, self._state_dir)
                  if self._community_cert or not self._https else None)
        app = app_mod.make_app(self._call, self._subscribe, self._settings,
                              wall_clock=self._wall_clock, ca_pem=ca_pem)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        listeners, self._listeners = self._listeners, []
        for sock, ctx in listeners:
            await web.SockSite(runner, sock, ssl_context=ctx, backlog=BACKLOG).start()
        log.info("web: app loaded on the first connection")

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        listeners, self._listeners = self._listeners, []
        for sock, _ in listeners:  # never served: nobody connected
            sock.close()
        if runner is not None:
            await runner.cleanup()
