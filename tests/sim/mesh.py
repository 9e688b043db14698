"""A simulated mesh node: the neighbour core and the routing core glued the way the daemon does.

``MeshNode`` multiplexes the two pure cores on one link with the channel byte
(``meshd.core.channels.Channel``) and turns neighbour events into the routing
core's ``neighbour_up`` / ``neighbour_lost`` / ``cost_changed``, exactly the
wiring the daemon needs.  Announcements are either real (Ed25519,
``meshd.core.identity``) or cheap (``CheapSigner``: a keyed hash standing in for a
signature, so a thousand nodes run fast; a forger without the key still fails).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from dataclasses import dataclass
from typing import Any

from meshd.core.channels import Channel
from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import VerificationError
from meshd.core.identity import Announcement, Identity, Role
from meshd.routing.neighbours import LinkCostChanged, NeighbourLost, NeighbourTable, NeighbourUp
from meshd.routing.table import RouteChanged, RoutingTable, VerifiedAnnouncement, Verifier
from tests.sim.network import LinkParams, Network, NodeId, sim_id
from tests.sim.topology import Edges

__all__ = ["CheapAnnouncement", "CheapSigner", "MeshNode", "RealSigner", "build_mesh"]


@dataclass(frozen=True, slots=True)
class CheapAnnouncement:
    """Stand-in for a signed announcement: (node id, seqno) with a keyed MAC."""

    node_id: NodeId
    seqno: int
    raw: bytes


class CheapSigner:
    """Signs and verifies ``CheapAnnouncement`` with one simulation-wide key."""

    def __init__(self, key: bytes = b"sim-key") -> None:
        self._key = key

    def _mac(self, node_id: NodeId, seqno: int) -> bytes:
        return hmac.new(self._key, node_id + seqno.to_bytes(8, "big"), hashlib.sha256).digest()[:8]

    def sign(self, node_id: NodeId, seqno: int) -> CheapAnnouncement:
        return CheapAnnouncement(node_id, seqno, pack({"o": node_id, "s": seqno,
                                                       "m": self._mac(node_id, seqno)}))

    def verify(self, raw: bytes) -> VerifiedAnnouncement:
        f = Fields(unpack(raw, 128))
        node_id, seqno = f.bytes("o", size=16), f.int("s", 0, 2**63 - 1)
        if not hmac.compare_digest(f.bytes("m", size=8), self._mac(node_id, seqno)):
            raise VerificationError("signature", "cheap announcement")
        return CheapAnnouncement(node_id, seqno, raw)


class RealSigner:
    """Real Ed25519 announcements (``meshd.core.identity``) for a few nodes."""

    def __init__(self, wall_now: float = 1_700_000_000.0) -> None:
        self.identities: dict[NodeId, Identity] = {}
        self.wall_now = wall_now

    def new_id(self) -> NodeId:
        ident = Identity.generate()
        self.identities[ident.node_id] = ident
        return ident.node_id

    def sign(self, node_id: NodeId, seqno: int) -> Announcement:
        return self.identities[node_id].announce(seqno, self.wall_now, "sim", Role.CAR)

    def verify(self, raw: bytes) -> VerifiedAnnouncement:
        ann = Announcement.decode(raw)
        ann.check_fresh(self.wall_now)
        return ann


class MeshNode:
    """Neighbour core + routing core of one simulated node (a ``SimNode``)."""

    def __init__(self, node_id: NodeId, signer: CheapSigner | RealSigner, rng: random.Random,
                 *, verify: Verifier | None = None) -> None:
        self.node_id = node_id
        self.signer = signer
        self.bumps = 0
        self.nt = NeighbourTable(rng=random.Random(rng.random()))
        self.rt = RoutingTable(node_id=node_id, announcement=signer.sign(node_id, 1),
                               verify=verify or signer.verify, on_seqno_request=self._bump,
                               rng=random.Random(rng.random()))
        self._events: list[Any] = []

    def _bump(self, seqno: int) -> VerifiedAnnouncement:
        self.bumps += 1
        return self.signer.sign(self.node_id, max(seqno, self.rt.seqno + 1))

    def link_up(self, peer: NodeId, now: float) -> None:
        self.nt.link_up(peer, now)

    def link_down(self, peer: NodeId, now: float) -> None:
        self.nt.link_down(peer, now)
        self._pump(now)

    def receive(self, src: NodeId, data: bytes, now: float) -> None:
        if not data:
            return
        if data[0] == Channel.NEIGHBOUR:
            self.nt.receive(src, data[1:], now)
            self._pump(now)
        elif data[0] == Channel.ROUTING:
            self.rt.receive(src, data[1:], now)

    def _pump(self, now: float) -> None:
        while (ev := self.nt.next_event()) is not None:
            self._events.append(ev)
            if isinstance(ev, NeighbourUp):
                self.rt.neighbour_up(ev.peer, ev.cost, now)
            elif isinstance(ev, NeighbourLost):
                self.rt.neighbour_lost(ev.peer, now)
            elif isinstance(ev, LinkCostChanged):
                self.rt.cost_changed(ev.peer, ev.cost, now)

    def datagrams_to_send(self, now: float) -> list[tuple[NodeId, bytes]]:
        nb = bytes([Channel.NEIGHBOUR])
        rb = bytes([Channel.ROUTING])
        out = [(p, nb + d) for p, d in self.nt.datagrams_to_send(now)]
        out.extend((p, rb + d) for p, d in self.rt.datagrams_to_send(now))
        return out

    def get_timer(self) -> float | None:
        ts = [t for t in (self.nt.get_timer(), self.rt.get_timer()) if t is not None]
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> None:
        self.nt.handle_timer(now)
        self._pump(now)
        self.rt.handle_timer(now)

    def next_event(self) -> Any:
        while (ev := self.rt.next_event()) is not None:
            self._events.append(ev)
        return self._events.pop(0) if self._events else None


def build_mesh(n: int, edges: Edges, seed: int, *, params: LinkParams | None = None,
               signer: CheapSigner | RealSigner | None = None,
               log_routes: bool = True) -> tuple[Network, list[NodeId]]:
    """A network of ``n`` MeshNodes over ``edges`` (indices), datagrams capped at MESH_MTU."""
    sig = signer or CheapSigner()
    net = Network(seed, default=params or LinkParams(delay=0.005, jitter=0.002),
                  log_filter=(lambda e: isinstance(e, RouteChanged | NeighbourUp | NeighbourLost))
                  if log_routes else (lambda e: isinstance(e, NeighbourUp | NeighbourLost)))
    net.max_datagram_size = 1100
    rng = random.Random(seed)
    ids = [sig.new_id() if isinstance(sig, RealSigner) else sim_id(i) for i in range(n)]
    for nid in ids:
        net.add_node(nid, MeshNode(nid, sig, rng))
    for a, b in edges:
        net.connect(ids[a], ids[b])
    return net, ids
