"""The ``info`` service: read-only node facts for the admin view, answered over the mesh.

Any node can ask any other for its name, role and neighbour links with their
costs; the admin console draws the topology from the answers.  Answers are
rate-limited per asker and in total (token buckets, time passed in), because
anyone can ask.  Requests and answers are small MessagePack maps; an answer
for a node with many neighbours is fragmented by the node like any message.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import DecodeError
from meshd.core.identity import Identity, NodeId, short_id
from meshd.core.packet import MeshPacket, Service
from meshd.services.api import ControlHandler

__all__ = ["InfoAnswer", "InfoNode", "InfoService", "RateLimiter", "decode", "encode_answer",
           "encode_request"]

TOPOLOGY_CACHE_S = 2.0
QUERY_TIMEOUT_S = 2.0

MAX_INFO = 16 * 1024
MAX_NEIGHBOURS = 256


@dataclass(frozen=True, slots=True)
class InfoAnswer:
    request_id: int
    name: str
    role: str
    neighbours: list[tuple[NodeId, int]]  # (neighbour, link cost)


def encode_request(request_id: int) -> bytes:
    return pack({"k": "req", "id": request_id})


def encode_answer(request_id: int, name: str, role: str,
                  neighbours: list[tuple[NodeId, int]]) -> bytes:
    return pack({"k": "rep", "id": request_id, "name": name, "role": role,
                 "nb": [[n, c] for n, c in neighbours[:MAX_NEIGHBOURS]]})


def decode(data: bytes) -> int | InfoAnswer:
    """A request id (for a request) or an ``InfoAnswer``; raises ``DecodeError``."""
    f = Fields(unpack(data, MAX_INFO))
    kind, rid = f.str("k", max_len=4), f.int("id", 0, 2**32)
    if kind == "req":
        return rid
    if kind != "rep":
        raise DecodeError("kind", kind)
    nbs: list[tuple[NodeId, int]] = []
    for item in f.list("nb", max_len=MAX_NEIGHBOURS):
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not bytes
                or len(item[0]) != 16 or type(item[1]) is not int or not 0 <= item[1] <= 0xFFFF):
            raise DecodeError("field", "nb: [node id, cost]")
        nbs.append((item[0], item[1]))
    return InfoAnswer(rid, f.str("name", max_len=64), f.str("role", max_len=16), nbs)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class RateLimiter:
    """Token buckets: ``per_source`` answers/s to one asker (burst 2×), ``total`` answers/s overall."""

    per_source: float = 2.0
    total: float = 20.0
    _buckets: dict[bytes, _Bucket] = field(default_factory=dict)

    def allow(self, source: bytes, now: float) -> bool:
        return self._take(b"", self.total, now) and self._take(source, self.per_source, now)

    def _take(self, key: bytes, rate: float, now: float) -> bool:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 4096:  # forget idle askers
                self._buckets = {k: v for k, v in self._buckets.items() if now - v.updated < 10}
            b = self._buckets[key] = _Bucket(2 * rate, now)
        b.tokens = min(2 * rate, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True


class InfoNode(Protocol):
    """What the info service needs from the node."""

    identity: Identity
    name: str
    drops: DropCounter

    @property
    def role(self) -> str: ...

    def my_links(self) -> list[tuple[NodeId, int]]: ...

    def destinations(self) -> list[NodeId]: ...

    def name_of(self, node_id: NodeId | None) -> str: ...

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool: ...


class InfoService:
    """Answers ``info`` requests (rate-limited) and builds the ``topology`` view."""

    def __init__(self, node: InfoNode, clock: Callable[[], float]) -> None:
        self._node = node
        self._clock = clock
        self._limiter = RateLimiter()
        self._ids = itertools.count(1)
        self._waiters: dict[tuple[NodeId, int], asyncio.Future[InfoAnswer]] = {}
        self._cache: tuple[float, dict[str, Any]] | None = None

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"topology": self._h_topology}

    def on_packet(self, pkt: MeshPacket, now: float) -> None:
        msg = decode(pkt.payload)
        if isinstance(msg, int):
            if not self._limiter.allow(pkt.source, now):
                self._node.drops.drop("info_rate", short_id(pkt.source))
                return
            self._node.send_message(pkt.source, Service.INFO, encode_answer(
                msg, self._node.name, self._node.role, self._node.my_links()))
            return
        fut = self._waiters.pop((pkt.source, msg.request_id), None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def query(self, node_id: NodeId, timeout: float) -> InfoAnswer | None:
        """Ask ``node_id`` for its facts over the mesh; None if it did not answer in time."""
        rid = next(self._ids) & 0xFFFFFFFF
        fut: asyncio.Future[InfoAnswer] = asyncio.get_running_loop().create_future()
        self._waiters[(node_id, rid)] = fut
        try:
            if not self._node.send_message(node_id, Service.INFO, encode_request(rid)):
                return None
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        finally:
            self._waiters.pop((node_id, rid), None)

    async def _h_topology(self, params: dict[str, Any]) -> dict[str, Any]:
        """The mesh as this node knows it: every reachable node's own view of its links."""
        now = self._clock()
        if self._cache is not None and now - self._cache[0] < TOPOLOGY_CACHE_S:
            return self._cache[1]
        node = self._node
        me = node.identity.node_id
        others = node.destinations()
        answers = await asyncio.gather(*(self.query(d, QUERY_TIMEOUT_S) for d in others))
        nodes = {me: (node.name, node.role, True)}
        views: dict[NodeId, list[tuple[NodeId, int]]] = {me: node.my_links()}
        for d, ans in zip(others, answers, strict=True):
            if ans is None:
                nodes[d] = (node.name_of(d), "", False)
            else:
                nodes[d] = (ans.name, ans.role, True)
                views[d] = ans.neighbours
        links: dict[tuple[NodeId, NodeId], int] = {}
        for a, nbs in views.items():
            for b, cost in nbs:
                key = (min(a, b), max(a, b))
                links[key] = min(cost, links.get(key, cost))
                nodes.setdefault(b, (node.name_of(b), "", False))
        result = {
            "nodes": [{"node_id": n.hex(), "name": name, "role": role, "answered": ok}
                      for n, (name, role, ok) in sorted(nodes.items())],
            "links": [{"a": a.hex(), "b": b.hex(), "cost": c} for (a, b), c in sorted(links.items())],
        }
        self._cache = (now, result)
        return result
