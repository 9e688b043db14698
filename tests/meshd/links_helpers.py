"""Shared helpers of the link tests: a recording listener and a node on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.links.manager import LinkManager


@dataclass
class Recorder:
    """A LinkListener that records every call and lets tests wait for one."""

    ups: list[tuple[NodeId, Announcement, tuple[str, int], bool]] = field(default_factory=list)
    downs: list[tuple[NodeId, str]] = field(default_factory=list)
    datagrams: list[tuple[NodeId, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None:
        self.ups.append((peer, announcement, remote, initiator))
        self.changed.set()

    def link_down(self, peer: NodeId, reason: str) -> None:
        self.downs.append((peer, reason))
        self.changed.set()

    def datagram_received(self, peer: NodeId, data: bytes) -> None:
        self.datagrams.append((peer, data))
        self.changed.set()

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(loop(), timeout)


class Node:
    """An identity, its announcement and a LinkManager with a Recorder."""

    def __init__(self, name: str, identity: Identity | None = None, seqno: int = 1,
                 **kwargs: Any) -> None:
        self.identity = identity or Identity.generate()
        self.ann = self.identity.announce(seqno, time.time(), name, Role.CAR)
        self.rec = Recorder()
        self.kwargs = kwargs
        self.mgr = LinkManager(self.identity, lambda: self.ann, self.rec, **kwargs)
        self.addr: tuple[str, int] | None = None

    @property
    def id(self) -> NodeId:
        return self.identity.node_id

    async def listen(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        self.addr = await self.mgr.listen(host, port)
        return self.addr

    def restart_manager(self) -> None:
        """A fresh LinkManager (same identity, fresh recorder), as after a daemon restart."""
        self.rec = Recorder()
        self.mgr = LinkManager(self.identity, lambda: self.ann, self.rec, **self.kwargs)


async def eventually(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0,
                     step: float = 0.02) -> None:
    """Poll ``cond`` until true (bounded by ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = cond()
        if isinstance(r, Awaitable):
            r = await r
        if r:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


def settled(*nodes: Node) -> bool:
    """True once every connection of these nodes carries a link and no static peer is dialling."""
    for node in nodes:
        active = {id(st.active) for st in node.mgr._peers.values()}
        if any(id(c) not in active for c in node.mgr._conns):
            return False
        if any(st.pending_down is not None for st in node.mgr._peers.values()):
            return False
        if any(sp.dialling for sp in node.mgr._static):
            return False
    return True


async def wait_settled(*nodes: Node, timeout: float = 10.0) -> None:
    """Wait until duplicate connections are resolved and closed on every node given."""
    await eventually(lambda: settled(*nodes), timeout=timeout)

