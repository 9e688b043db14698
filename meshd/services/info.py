"""The ``info`` service: read-only node facts for the admin view, answered over the mesh.

Any node can ask any other for its name, role and neighbour links with their
costs; the admin console draws the topology from the answers.  Answers are
rate-limited per asker and in total (token buckets, time passed in), because
anyone can ask.  Requests and answers are small MessagePack maps; an answer
for a node with many neighbours is fragmented by the node like any message.

Remote status (``meshctl status|neighbours|routes NODE``, like ``rnstatus -R``)
travels on the same service but authenticated: the payload is ``0xC1`` (a byte
MessagePack never uses, so it cannot be mistaken for a plain info map)
followed by a sealed message (``meshd.core.seal``, context ``b"info"``) — the
asker's keys hash to the packet source, the body is signed and encrypted, and a
replayed request is refused.  The far node answers with its *own* control
answer for ``status``, ``neighbours`` or ``routes``, sealed back to the asker;
what it discloses depends on who asks (``disclose``): any authenticated node
gets the public facts (name, role, version, uptime, counts, neighbours with
link quality, routes); nodes listed as ``admin`` in its configuration get the
whole local answer (addresses, state directory, pid, traffic counters).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import ControlError, DecodeError, RemoteProtocolError
from meshd.core.identity import Announcement, Identity, NodeId, short_id
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import MAX_SEALED, ReplayCache, open_sealed, seal
from meshd.services.api import ControlHandler

__all__ = ["InfoAnswer", "InfoNode", "InfoService", "RateLimiter", "decode", "encode_answer",
           "encode_request"]

TOPOLOGY_CACHE_S = 2.0
QUERY_TIMEOUT_S = 2.0

MAX_INFO = 16 * 1024
MAX_NEIGHBOURS = 256

#: first byte of a sealed (remote status) info payload; MessagePack never uses it
SEALED_MARK = 0xC1
_CONTEXT = b"info"
#: what a remote query may ask for (the local control method of the same name answers)
REMOTE_KINDS = ("status", "neighbours", "routes")
#: largest packed answer body; longer lists are cut and marked ``truncated``
MAX_REMOTE_ANSWER = 48 * 1024
#: a remote query is re-sent (freshly sealed) after these delays, seconds
REMOTE_RETRY_S = (0.0, 0.7, 2.0)
REMOTE_TIMEOUT_S = 5.0
_MAX_DEPTH = 6

#: fields only admin keys (and the local socket) see; everyone else gets null
PRIVATE_FIELDS: dict[str, frozenset[str]] = {
    "status": frozenset({"state_dir", "listen", "interfaces", "pid", "metrics",
                        "drop_sources"}),
    "neighbours": frozenset({"address", "tx_packets", "rx_packets", "tx_bytes", "rx_bytes"}),
    "routes": frozenset(),
}


def disclose(kind: str, answer: dict[str, Any], *, admin: bool) -> dict[str, Any]:
    """What ``answer`` (a local control answer) shows a remote asker: private fields nulled."""
    if admin:
        return answer
    private = PRIVATE_FIELDS[kind]
    if kind == "status":
        return {k: (None if k in private else v) for k, v in answer.items()}
    key = "neighbours" if kind == "neighbours" else "routes"
    items = [{k: (None if k in private else v) for k, v in item.items()}
             for item in answer.get(key, []) if isinstance(item, dict)]
    return {**answer, key: items}


def _clean(obj: Any, depth: int = 0) -> Any:
    """A remote answer as plain JSON values, control characters removed from strings."""
    if depth > _MAX_DEPTH:
        raise DecodeError("field", "answer nested too deep")
    if obj is None or isinstance(obj, bool | int | float):
        return obj
    if isinstance(obj, str):
        return "".join(ch for ch in obj if ch.isprintable() or ch == " ")
    if isinstance(obj, list):
        return [_clean(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return {_clean(k, depth + 1): _clean(v, depth + 1) for k, v in obj.items()}
    raise DecodeError("field", f"answer holds a {type(obj).__name__}")


def _pack_answer(rid: int, kind: str, answer: dict[str, Any]) -> bytes:
    body = pack({"k": "ans", "id": rid, "r": answer})
    key = "neighbours" if kind == "neighbours" else "routes" if kind == "routes" else None
    while len(body) > MAX_REMOTE_ANSWER and key is not None and answer.get(key):
        items = answer[key]
        answer = {**answer, key: items[: len(items) // 2], "truncated": True}
        body = pack({"k": "ans", "id": rid, "r": answer})
    return body


@dataclass(frozen=True, slots=True)
class InfoAnswer:
    request_id: int
    name: str
    role: str
    neighbours: list[tuple[NodeId, int]]  # (neighbour, link cost)
    #: short facts services publish (``InfoService.add_fact``), e.g. the library version
    facts: dict[str, str] = field(default_factory=dict)


#: facts per answer, and the length of a fact's name and value
MAX_FACTS = 8
MAX_FACT = 64


def encode_request(request_id: int) -> bytes:
    return pack({"k": "req", "id": request_id})


def encode_answer(request_id: int, name: str, role: str,
                  neighbours: list[tuple[NodeId, int]],
                  facts: Mapping[str, str] | None = None) -> bytes:
    msg: dict[str, Any] = {"k": "rep", "id": request_id, "name": name, "role": role,
                           "nb": [[n, c] for n, c in neighbours[:MAX_NEIGHBOURS]]}
    if facts:
        msg["x"] = {k[:MAX_FACT]: v[:MAX_FACT] for k, v in list(facts.items())[:MAX_FACTS]}
    return pack(msg)


def _has(f: Fields, key: str) -> bool:
    try:
        return f.raw(key) is not None
    except DecodeError:
        return False


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
    facts: dict[str, str] = {}
    raw = f.raw("x") if _has(f, "x") else None
    if raw is not None:
        if not isinstance(raw, dict) or len(raw) > MAX_FACTS or not all(
                type(k) is str and type(v) is str and len(k) <= MAX_FACT and len(v) <= MAX_FACT
                for k, v in raw.items()):
            raise DecodeError("field", "x: facts")
        facts = dict(raw)
    return InfoAnswer(rid, f.str("name", max_len=64), f.str("role", max_len=16), nbs, facts)


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

    def announcement_of(self, node_id: NodeId) -> Announcement | None: ...

    def resolve(self, query: str) -> NodeId: ...

    def wall_ms(self) -> int: ...


class InfoService:
    """Answers ``info`` requests (rate-limited) and builds the ``topology`` view."""

    def __init__(self, node: InfoNode, clock: Callable[[], float]) -> None:
        self._node = node
        self._clock = clock
        self._limiter = RateLimiter()
        self._ids = itertools.count(1)
        self._waiters: dict[tuple[NodeId, int], asyncio.Future[InfoAnswer]] = {}
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._answers: Mapping[str, ControlHandler] = {}
        self._admins: frozenset[NodeId] = frozenset()
        self._replay = ReplayCache()
        self._remote_waiters: dict[tuple[NodeId, int], asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._facts: dict[str, Callable[[], str]] = {}

    def add_fact(self, name: str, fn: Callable[[], str]) -> None:
        """Publish a short fact in every info answer (a service's version, say; cheap to call)."""
        if len(self._facts) >= MAX_FACTS and name not in self._facts:
            raise ValueError(f"at most {MAX_FACTS} info facts")
        self._facts[name] = fn

    def serve_remote(self, answers: Mapping[str, ControlHandler],
                     admins: frozenset[NodeId] = frozenset()) -> None:
        """Answer authenticated remote queries with these local handlers (by ``REMOTE_KINDS``);
        ``admins`` see whole answers, everyone else what ``disclose`` leaves."""
        self._answers = {k: answers[k] for k in REMOTE_KINDS}
        self._admins = admins

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"topology": self._h_topology, "remote": self._h_remote}

    def on_packet(self, pkt: MeshPacket, now: float) -> None:
        if pkt.payload[:1] == bytes([SEALED_MARK]):
            try:  # also reached from reassembled fragments, outside the node's guard
                self._on_sealed(pkt, now)
            except RemoteProtocolError as exc:
                self._node.drops.drop(exc.reason, short_id(pkt.source), str(exc))
            return
        msg = decode(pkt.payload)
        if isinstance(msg, int):
            if not self._limiter.allow(pkt.source, now):
                self._node.drops.drop("info_rate", short_id(pkt.source))
                return
            self._node.send_message(pkt.source, Service.INFO, encode_answer(
                msg, self._node.name, self._node.role, self._node.my_links(),
                {k: fn() for k, fn in self._facts.items()}))
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
            "self": me.hex(),
            "nodes": [{"node_id": n.hex(), "name": name, "role": role, "answered": ok}
                      for n, (name, role, ok) in sorted(nodes.items())],
            "links": [{"a": a.hex(), "b": b.hex(), "cost": c} for (a, b), c in sorted(links.items())],
        }
        self._cache = (now, result)
        return result

    # ------------------------------------------------------------ remote status

    def _on_sealed(self, pkt: MeshPacket, now: float) -> None:
        node = self._node
        opened = open_sealed(node.identity, pkt.payload[1:MAX_SEALED + 1], source=pkt.source,
                             context=_CONTEXT)
        obj = unpack(opened.body, MAX_REMOTE_ANSWER + 1024, max_items=65536)
        f = Fields(obj)
        kind = f.str("k", max_len=12)
        rid = f.int("id", 0, 2**32)
        if kind == "ans":
            fut = self._remote_waiters.get((pkt.source, rid))
            if fut is None or fut.done():
                return  # a late or duplicate answer (a retry's): harmless
            answer = _clean(obj.get("r"))
            if not isinstance(answer, dict):
                raise DecodeError("field", "answer is not a map")
            fut.set_result(answer)
            return
        if kind not in REMOTE_KINDS or not self._answers:
            raise DecodeError("kind", kind)
        show_all = obj.get("all") is True
        self._replay.check(opened, node.wall_ms())
        if not self._limiter.allow(pkt.source, now):
            node.drops.drop("info_rate", short_id(pkt.source))
            return
        task = asyncio.get_running_loop().create_task(
            self._answer(pkt.source, opened.sender_x25519, kind, rid, show_all))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, asker: NodeId, asker_x25519: bytes, kind: str, rid: int,
                      show_all: bool) -> None:
        node = self._node
        local = await self._answers[kind]({"all": show_all} if kind == "routes" else {})
        admin = asker in self._admins
        answer = {**disclose(kind, local, admin=admin), "disclosure": "full" if admin else "public"}
        body = _pack_answer(rid, kind, answer)
        sealed = seal(node.identity, asker_x25519, asker, body, context=_CONTEXT,
                      timestamp_ms=node.wall_ms())
        node.send_message(asker, Service.INFO, bytes([SEALED_MARK]) + sealed)

    async def query_remote(self, node_id: NodeId, kind: str, *, show_all: bool = False,
                           timeout: float = REMOTE_TIMEOUT_S) -> dict[str, Any]:
        """Ask ``node_id`` for its own ``kind`` answer; raises ``ControlError``
        (``not_found``: no keys known, ``unreachable``: no route, ``timeout``)."""
        node = self._node
        ann = node.announcement_of(node_id)
        if ann is None:
            raise ControlError("not_found", f"no announcement (keys) known for "
                               f"{short_id(node_id)}", {"node_id": node_id.hex()})
        rid = next(self._ids) & 0xFFFFFFFF
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._remote_waiters[(node_id, rid)] = fut
        start = loop.time()
        sent = 0
        try:
            for delay in REMOTE_RETRY_S:
                wait = min(delay, max(0.0, start + timeout - loop.time()))
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), wait)
                if fut.done() or loop.time() - start >= timeout:
                    break
                body = pack({"k": kind, "id": rid, "all": show_all})
                sealed = seal(node.identity, ann.x25519_pub, node_id, body, context=_CONTEXT,
                              timestamp_ms=node.wall_ms())
                if node.send_message(node_id, Service.INFO, bytes([SEALED_MARK]) + sealed):
                    sent += 1
            if not fut.done():
                remaining = start + timeout - loop.time()
                if remaining > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(fut), remaining)
            if not fut.done():
                data = {"node_id": node_id.hex(), "name": ann.name}
                if sent == 0:
                    raise ControlError("unreachable", f"no route to {ann.name} "
                                       f"({short_id(node_id)})", data)
                raise ControlError("timeout", f"no answer from {ann.name} ({short_id(node_id)}) "
                                   f"in {timeout:g} s", data)
            return fut.result()
        finally:
            self._remote_waiters.pop((node_id, rid), None)
            if not fut.done():
                fut.cancel()

    async def _h_remote(self, params: dict[str, Any]) -> dict[str, Any]:
        """Control method ``remote`` {node, kind, all?, timeout?}: the far node's own answer."""
        query, kind = params.get("node"), params.get("kind")
        timeout = params.get("timeout", REMOTE_TIMEOUT_S)
        if (not isinstance(query, str) or kind not in REMOTE_KINDS
                or isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not 0 < timeout <= 60):
            raise ControlError("bad_request", "remote needs node (str), kind (status, "
                               "neighbours or routes) and a timeout in (0, 60] s")
        target = self._node.resolve(query)
        if target == self._node.identity.node_id:
            local = await self._answers[kind]({"all": params.get("all") is True})
            return {**local, "disclosure": "full"}
        answer = await self.query_remote(target, str(kind), show_all=params.get("all") is True,
                                         timeout=float(timeout))
        # who answered: the seal proved the sender is ``target``
        answer.setdefault("node_id", target.hex())
        answer.setdefault("name", self._node.name_of(target))
        return answer
