"""An in-process mesh used ONLY as a transport for voice tests: nodes in a line, hop-by-hop delivery.

``FakeMesh`` joins ``MeshNode`` objects (each a real ``NodeApi``: a real
``Identity``, real signed announcements, real sealing by the service).  A packet
travels the path of nodes between source and destination; every hop adds
``hop_delay_s`` and drops it with probability ``loss`` (seeded).  A message
longer than one packet counts as its number of fragments for loss.  Relay nodes
see every payload that crosses them (``seen_by``), so tests can check what a
relay car could read.  ``cut(a, b)`` breaks the line between two nodes (no
route); ``alternate`` lists other paths to use when one is cut (a diamond).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshd.core.errors import ControlError
from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.core.packet import DEFAULT_HOP_LIMIT, MeshPacket

MAX_PAYLOAD = 1110


class Events:
    """A control sink that records what the service published."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()
        #: further sinks (a real ``ControlServer``) that see every event too
        self.also: list[Any] = []

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.items.append((event, data))
        self.changed.set()
        for sink in self.also:
            sink.publish(event, data)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [d for e, d in self.items if e == event]

    async def wait_for(self, pred: Callable[[str, dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for e, d in self.items:
                    if pred(e, d):
                        return d
                self.changed.clear()
                await self.changed.wait()


class MeshNode:
    """One node of the fake mesh; implements the voice service's ``NodeApi``."""

    def __init__(self, mesh: FakeMesh, name: str, state_dir: Path) -> None:
        self.mesh = mesh
        self.name = name
        self.state_dir = state_dir
        self.identity = Identity.load_or_create(state_dir)
        self.announcement: Announcement = Announcement.decode(
            self.identity.announce(1, mesh.wall(), name, Role.CAR).raw)
        self.control = Events()
        self.handlers: dict[int, Callable[[MeshPacket, float], None]] = {}

    @property
    def node_id(self) -> NodeId:
        return self.identity.node_id

    def register_service(self, service: int, handler: Callable[[MeshPacket, float], None]) -> None:
        self.handlers[service] = handler

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool:
        frags = max(1, -(-len(data) // MAX_PAYLOAD))
        return self.mesh.send(self, destination, service, data, 0, frags)

    def send_packet(self, destination: NodeId, service: int, payload: bytes, *, flow_id: int = 0,
                    deadline: float | None = None) -> bool:
        assert len(payload) <= MAX_PAYLOAD, len(payload)
        return self.mesh.send(self, destination, service, payload, flow_id, 1)

    def announcement_of(self, node_id: NodeId) -> Announcement | None:
        node = self.mesh.by_id.get(node_id)
        return node.announcement if node is not None else None

    def resolve(self, query: str) -> NodeId:
        for n in self.mesh.nodes:
            if n.name == query or n.node_id.hex().startswith(query):
                return n.node_id
        raise ControlError("not_found", query)

    def wall_ms(self) -> int:
        return int(self.mesh.wall() * 1000)

    def now(self) -> float:
        return time.monotonic()  # the node's clock, as in meshd.node.Node

    def next_hop(self, destination: NodeId) -> NodeId | None:
        dst = self.mesh.by_id.get(destination)
        route = self.mesh.path(self.name, dst.name) if dst is not None else None
        return self.mesh.by_name[route[1]].node_id if route and len(route) > 1 else None

    async def open_stream(self, peer: NodeId, service: str) -> Any:
        raise ControlError("failed", "the voice test mesh has no neighbour streams")

    max_payload = MAX_PAYLOAD

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.control.publish(event, data)


class FakeMesh:
    """Nodes in a line (``names`` order), or any graph with ``link``; shortest path routing."""

    def __init__(self, tmp: Path, names: list[str], *, hop_delay_s: float = 0.001, loss: float = 0.0,
                 seed: int = 1, line: bool = True) -> None:
        self.wall = time.time
        self.nodes = [MeshNode(self, n, tmp / n) for n in names]
        self.by_id = {n.node_id: n for n in self.nodes}
        self.by_name = {n.name: n for n in self.nodes}
        self.links: set[frozenset[str]] = set()
        if line:
            for a, b in itertools.pairwise(names):
                self.link(a, b)
        self.hop_delay_s = hop_delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.seen_by: dict[str, list[bytes]] = defaultdict(list)
        self.forwarded: Counter[str] = Counter()
        self.tamper: Callable[[MeshPacket], MeshPacket | None] | None = None

    def link(self, a: str, b: str) -> None:
        self.links.add(frozenset((a, b)))

    def cut(self, a: str, b: str) -> None:
        self.links.discard(frozenset((a, b)))

    def kill(self, name: str) -> None:
        """Remove every link of ``name`` (a relay that died)."""
        self.links = {lk for lk in self.links if name not in lk}

    def path(self, src: str, dst: str) -> list[str] | None:
        prev: dict[str, str | None] = {src: None}
        frontier = [src]
        while frontier:
            nxt: list[str] = []
            for u in frontier:
                for lk in self.links:
                    if u in lk:
                        (v,) = lk - {u}
                        if v not in prev:
                            prev[v] = u
                            nxt.append(v)
            frontier = nxt
        if dst not in prev:
            return None
        out: list[str] = [dst]
        while (p := prev[out[-1]]) is not None:
            out.append(p)
        return out[::-1]

    def send(self, src: MeshNode, dst_id: NodeId, service: int, payload: bytes, flow_id: int,
             frags: int) -> bool:
        dst = self.by_id.get(dst_id)
        if dst is None:
            return False
        route = self.path(src.name, dst.name)
        if route is None:
            return False
        pkt = MeshPacket(src.node_id, dst_id, DEFAULT_HOP_LIMIT, service, flow_id, payload)
        hops = len(route) - 1
        for relay in route[1:-1]:
            self.seen_by[relay].append(payload)
            self.forwarded[relay] += 1
        for _ in range(hops * frags):
            if self.loss and self.rng.random() < self.loss:
                return True  # sent, lost on the way
        if self.tamper is not None:
            tampered = self.tamper(pkt)
            if tampered is None:
                return True
            pkt = tampered
        loop = asyncio.get_running_loop()
        loop.call_later(self.hop_delay_s * hops, self._deliver, dst, pkt)
        return True

    def _deliver(self, dst: MeshNode, pkt: MeshPacket) -> None:
        handler = dst.handlers.get(pkt.service)
        if handler is not None:
            handler(pkt, dst.now())
