"""A real node (library, bulletins, situation board) run in-process, and web apps over it."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from carmesh.app import build_node, web_seams
from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.config import Config
from meshd.core.identity import Identity
from meshd.node import Node
from web.app import Caller, Subscribe, WebSettings, make_app


@dataclass
class Running:
    node: Node
    call: Caller
    subscribe: Subscribe

    async def client(self, settings: WebSettings | None = None,
                     clock: Callable[[], float] | None = None) -> TestClient[Any, Any]:
        kw: dict[str, Any] = {} if clock is None else {"clock": clock}
        app: web.Application = make_app(self.call, self.subscribe, settings, **kw)
        c: TestClient[Any, Any] = TestClient(TestServer(app))
        await c.start_server()
        return c


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running() -> AsyncIterator[Running]:
    """One node whose key is the community's only authority (so it may publish bulletins)."""
    state = Path(tempfile.mkdtemp(prefix="cmw", dir="/tmp"))
    ident = Identity.load_or_create(state)
    root = Identity.generate()
    (state / "trust.toml").write_text(TrustConfig(root.ed25519_pub, 1, {
        ident.ed25519_pub: Authority(ident.ed25519_pub, AuthorityRole.CITY, "市役所")}).to_toml())
    node = await build_node(Config(state_dir=state, listen=("127.0.0.1:0",), no_web=True,
                                   name="car-<b>本町</b>"))
    stop = asyncio.Event()
    task = asyncio.create_task(node.run(stop))
    call, subscribe = web_seams(node)
    await call("bulletin.list", {})  # waits until the library has replayed
    try:
        yield Running(node, call, subscribe)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        shutil.rmtree(state, ignore_errors=True)
