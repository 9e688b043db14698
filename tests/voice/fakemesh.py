"""The voice tests' mesh: ``NodeApi`` nodes on the simulator's network, driven in real time.

The network is ``tests.sim``'s (the one routing and sync simulate on): links
with per-direction seeded impairments, a packet forwarded hop by hop over the
shortest path of links that are up.  Voice needs real time (aiortc's ICE, DTLS
and RTP timers read the loop's clock), so it runs on ``tests.sim.realtime``'s
driver instead of the virtual heap.  This module adds only what is voice's:
``MeshNode`` (a real ``NodeApi``: a real ``Identity``, real signed
announcements, real sealing by the service) and names for nodes.

``FakeMesh(tmp, names)`` joins the nodes in a line (``line=False``: no links;
add them with ``link``).  Every hop adds ``hop_delay_s`` and loses a packet with
probability ``loss``; a message longer than one packet crosses each hop as its
fragments and is lost if any is.  Relays see every payload that reaches them
(``seen_by``, ``forwarded``), so tests can check what a relay car could read.
``cut(a, b)`` removes a link, ``kill(name)`` every link of a node (kill -9);
``tamper`` rewrites or (returning None) drops a packet as it is sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshd.core.errors import ControlError
from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.core.packet import DEFAULT_HOP_LIMIT, MeshPacket
from tests.sim.network import LinkParams
from tests.sim.realtime import RealtimeNetwork

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
    """Named ``MeshNode``s on a ``RealtimeNetwork``: in a line (``names`` order) or any graph."""

    def __init__(self, tmp: Path, names: list[str], *, hop_delay_s: float = 0.001, loss: float = 0.0,
                 seed: int = 1, line: bool = True) -> None:
        self.wall = time.time
        self.net = RealtimeNetwork(seed, default=LinkParams(loss=loss, delay=hop_delay_s))
        self.net.on_relay = self._relayed
        self.nodes = [MeshNode(self, n, tmp / n) for n in names]
        self.by_id = {n.node_id: n for n in self.nodes}
        self.by_name = {n.name: n for n in self.nodes}
        self.seen_by: dict[str, list[bytes]] = defaultdict(list)
        #: the packets behind ``seen_by`` (service and flow tell what a leak was)
        self.seen_packets: dict[str, list[MeshPacket]] = defaultdict(list)
        self.forwarded: Counter[str] = Counter()
        self.tamper: Callable[[MeshPacket], MeshPacket | None] | None = None
        if line:
            for a, b in itertools.pairwise(names):
                self.link(a, b)

    @property
    def hop_delay_s(self) -> float:
        return self.net.default.delay

    @hop_delay_s.setter
    def hop_delay_s(self, value: float) -> None:
        self.net.set_default(dataclasses.replace(self.net.default, delay=value))

    @property
    def loss(self) -> float:
        return self.net.default.loss

    @loss.setter
    def loss(self, value: float) -> None:
        self.net.set_default(dataclasses.replace(self.net.default, loss=value))

    def _id(self, name: str) -> NodeId:
        return self.by_name[name].node_id

    def link(self, a: str, b: str) -> None:
        if not self.net.has_link(self._id(a), self._id(b)):
            self.net.connect(self._id(a), self._id(b))

    def cut(self, a: str, b: str) -> None:
        self.net.disconnect(self._id(a), self._id(b))

    def kill(self, name: str) -> None:
        """Remove every link of ``name`` (a relay that died)."""
        self.net.isolate(self._id(name))

    def path(self, src: str, dst: str) -> list[str] | None:
        route = self.net.path(self._id(src), self._id(dst))
        return None if route is None else [self.by_id[n].name for n in route]

    def send(self, src: MeshNode, dst_id: NodeId, service: int, payload: bytes, flow_id: int,
             frags: int) -> bool:
        dst = self.by_id.get(dst_id)
        if dst is None:
            return False
        if self.net.path(src.node_id, dst_id) is None:
            return False
        pkt = MeshPacket(src.node_id, dst_id, DEFAULT_HOP_LIMIT, service, flow_id, payload)
        if self.tamper is not None:
            tampered = self.tamper(pkt)
            if tampered is None:
                return True  # sent, dropped on the way
            pkt = tampered
        return self.net.send(src.node_id, dst_id, pkt, lambda p: self._deliver(dst, p),
                             fragments=frags)

    def _relayed(self, relay: NodeId, pkt: MeshPacket) -> None:
        name = self.by_id[relay].name
        self.seen_by[name].append(pkt.payload)
        self.seen_packets[name].append(pkt)
        self.forwarded[name] += 1

    def _deliver(self, dst: MeshNode, pkt: MeshPacket) -> None:
        handler = dst.handlers.get(pkt.service)
        if handler is not None:
            handler(pkt, dst.now())
