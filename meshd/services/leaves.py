"""Leaves: browsers attached to this node (the gateway), their sealed mail held and passed on.

Theory of operation
-------------------
A browser has its own Ed25519 and X25519 keys, so its NodeId is made the way every
node's is (``node_id_of``).  To attach, it asks for a fresh challenge
(``leaf.challenge``), then signs two things with its Ed25519 key: a node
announcement of its own (the very ``Announcement`` format, with ``gw`` = this
node's id, so only the browser can make one and it names the gateway it chose),
and a proof over (domain ‖ challenge ‖ gateway id ‖ its NodeId).  ``leaf.attach``
checks both, consumes the challenge, and has the node originate the leaf's route
(``Node.attach_leaf``: the routing core advertises it under the *leaf's* signed
seqno, ``RoutingTable.set_stub``).  So ``meshctl send <browser>`` anywhere routes to
this node.  A newer attachment through another gateway carries a higher seqno and
wins everywhere; the old gateway hears of it (``LeafMoved``) and passes the mail
it holds on towards the leaf.

Packets for a leaf arrive here whole (``leaf_sink``); their payload is a sealed
message (``meshd.core.seal``) the node cannot open.  It is held, ciphertext only,
until the browser fetches and releases it (``leaf.held``/``leaf.release``), and an
event (``leaf.message``) tells the web app to tell the browser.  Bounds: at most
``MAX_HELD`` messages and ``MAX_HELD_BYTES`` per leaf (the oldest go first) and
``MAX_HELD_LEAVES`` leaves; held mail is kept ``HELD_TTL_S`` at most, on disk in
``leaves.json`` (mode 0600), so a restart keeps it.  A leaf's attachment lapses
``ANNOUNCE_MAX_AGE_S`` after it was signed unless the browser re-attaches (the
page does every ``ANNOUNCE_REFRESH_S``).

A browser sends with ``leaf.send``: the sealed bytes (made and signed in the
browser for the destination's X25519 key), and an Ed25519 signature over
(domain ‖ leaf ‖ destination ‖ sealed) by the attached leaf's key; the node checks
that signature (a forged one is refused, naming the leaf) and sends the bytes with
the leaf as the packet source, as the node's own ``send`` would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from meshd.core.codec import pack
from meshd.core.errors import ControlError, LocalProtocolError, RemoteProtocolError
from meshd.core.identity import (
    ANNOUNCE_MAX_AGE_S,
    Announcement,
    Identity,
    NodeId,
    short_id,
    verify_ed25519,
    write_private,
)
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import MAX_SEALED
from meshd.services.api import ControlHandler, StreamHandler

__all__ = ["ATTACH_DOMAIN", "SEND_DOMAIN", "HeldStore", "LeafNode", "LeafService"]

logger = logging.getLogger(__name__)

ATTACH_DOMAIN = b"carmesh/leaf-attach/1\x00"
SEND_DOMAIN = b"carmesh/leaf-send/1\x00"
CHALLENGE_TTL_S = 120.0
MAX_CHALLENGES = 4096
MAX_HELD = 64
MAX_HELD_BYTES = 512 * 1024
MAX_HELD_LEAVES = 256
HELD_TTL_S = 7 * 24 * 3600.0
#: the attachment is re-checked this often (stale ones lapse)
SWEEP_S = 30.0
HELD_FILE = "leaves.json"
#: at most this many browsers in one ``leaf.directory`` answer (attached here first)
MAX_DIRECTORY = 1000


class LeafNode(Protocol):
    """What the leaf service needs of the node (``meshd.node.Node`` is one)."""

    identity: Identity
    state_dir: Any
    leaf_sink: Callable[[NodeId, MeshPacket], None] | None
    leaf_moved: Callable[[NodeId], None] | None

    def attach_leaf(self, ann: Announcement) -> bool: ...

    def detach_leaf(self, leaf: NodeId) -> None: ...

    def leaves(self) -> dict[NodeId, Announcement]: ...

    def send_message_from(self, source: NodeId, destination: NodeId, service: int,
                          data: bytes) -> bool: ...

    def announcement_of(self, node_id: NodeId) -> Announcement | None: ...

    def resolve(self, query: str) -> NodeId: ...

    def known_nodes(self) -> list[tuple[str, str]]: ...

    def name_of(self, node_id: NodeId | None) -> str: ...

    def next_hop(self, destination: NodeId) -> NodeId | None: ...

    def wall_ms(self) -> int: ...

    def publish(self, event: str, data: dict[str, Any]) -> None: ...


class HeldStore:
    """Sealed messages held per leaf (pure: times passed in; bounded as the module says)."""

    def __init__(self) -> None:
        self._by_leaf: OrderedDict[NodeId, OrderedDict[str, dict[str, Any]]] = OrderedDict()

    def add(self, leaf: NodeId, source: NodeId, data: bytes, now_ms: int) -> str | None:
        """Hold ``data``; its id, or None when it is held already (a sender's retry)."""
        mid = data[:32].hex()[:24]  # the ephemeral key: unique per sealed message
        box = self._by_leaf.get(leaf)
        if box is None:
            while len(self._by_leaf) >= MAX_HELD_LEAVES:
                self._by_leaf.popitem(last=False)
            box = self._by_leaf[leaf] = OrderedDict()
        self._by_leaf.move_to_end(leaf)
        if mid in box:
            return None
        box[mid] = {"id": mid, "from": source.hex(), "received_ms": now_ms, "data": data.hex()}
        while len(box) > MAX_HELD or sum(len(r["data"]) // 2 for r in box.values()) > \
                MAX_HELD_BYTES:
            box.popitem(last=False)
        return mid

    def held(self, leaf: NodeId) -> list[dict[str, Any]]:
        return list(self._by_leaf.get(leaf, {}).values())

    def release(self, leaf: NodeId, ids: list[str]) -> int:
        box = self._by_leaf.get(leaf)
        if box is None:
            return 0
        n = sum(1 for i in ids if box.pop(i, None) is not None)
        if not box:
            del self._by_leaf[leaf]
        return n

    def take(self, leaf: NodeId) -> list[dict[str, Any]]:
        return list(self._by_leaf.pop(leaf, {}).values())

    def expire(self, now_ms: int) -> bool:
        changed = False
        for leaf in list(self._by_leaf):
            box = self._by_leaf[leaf]
            for mid in [m for m, r in box.items() if r["received_ms"] < now_ms - HELD_TTL_S * 1000]:
                del box[mid]
                changed = True
            if not box:
                del self._by_leaf[leaf]
        return changed

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "held": {leaf.hex(): list(box.values())
                                 for leaf, box in self._by_leaf.items()}}

    @classmethod
    def from_json(cls, doc: Any) -> HeldStore:
        store = cls()
        if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("held"), dict):
            return store
        for leaf_hex, recs in list(doc["held"].items())[-MAX_HELD_LEAVES:]:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                leaf = bytes.fromhex(leaf_hex)
                for r in recs[-MAX_HELD:]:
                    store.add(leaf, bytes.fromhex(r["from"]), bytes.fromhex(r["data"]),
                              int(r["received_ms"]))
        return store


def _hex(params: dict[str, Any], key: str, *, size: int | None = None,
         max_len: int = MAX_SEALED) -> bytes:
    v = params.get(key)
    if not isinstance(v, str) or len(v) > 2 * max_len:
        raise ControlError("bad_request", f"{key}: hex string")
    try:
        b = bytes.fromhex(v)
    except ValueError:
        raise ControlError("bad_request", f"{key}: hex string") from None
    if size is not None and len(b) != size:
        raise ControlError("bad_request", f"{key}: {size} bytes")
    return b


class LeafService:
    """``NodeService`` hosting leaves (see the module docstring)."""

    def __init__(self, node: LeafNode, *, clock: Callable[[], float]) -> None:
        self._node = node
        self._clock = clock
        self._path = Path(node.state_dir) / HELD_FILE
        self._challenges: OrderedDict[bytes, float] = OrderedDict()
        self.store = self._load()
        self._dirty = asyncio.Event()
        node.leaf_sink = self._on_leaf_packet
        node.leaf_moved = self._on_leaf_moved

    def _load(self) -> HeldStore:
        try:
            return HeldStore.from_json(json.loads(self._path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return HeldStore()
        except (OSError, ValueError) as exc:
            logger.warning("%s unreadable (%s): starting with no held mail", self._path, exc)
            return HeldStore()

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"leaf.challenge": self._h_challenge, "leaf.attach": self._h_attach,
                "leaf.held": self._h_held, "leaf.release": self._h_release,
                "leaf.send": self._h_send, "leaf.key": self._h_key, "leaf.list": self._h_list,
                "leaf.directory": self._h_directory}

    def stream_services(self) -> Mapping[str, StreamHandler]:
        return {}

    def neighbour_up(self, peer: NodeId) -> None:
        pass

    def neighbour_lost(self, peer: NodeId) -> None:
        pass

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), SWEEP_S)
            self._sweep()
            if self._dirty.is_set():
                self._dirty.clear()
                data = json.dumps(self.store.to_json()).encode()
                try:
                    await asyncio.to_thread(write_private, self._path, data)
                except OSError as exc:
                    logger.error("cannot save held leaf mail to %s: %s", self._path, exc)

    async def close(self) -> None:
        if self._dirty.is_set():
            with contextlib.suppress(OSError):
                write_private(self._path, json.dumps(self.store.to_json()).encode())

    def _sweep(self) -> None:
        wall_s = self._node.wall_ms() / 1000
        for leaf, ann in self._node.leaves().items():
            if ann.timestamp < wall_s - ANNOUNCE_MAX_AGE_S:
                logger.info("[%s] leaf attachment lapsed", short_id(leaf))
                self._node.detach_leaf(leaf)
        if self.store.expire(self._node.wall_ms()):
            self._dirty.set()

    # ------------------------------------------------------------------ packets

    def _on_leaf_packet(self, leaf: NodeId, pkt: MeshPacket) -> None:
        if len(pkt.payload) > MAX_SEALED or len(pkt.payload) < 48:
            return
        mid = self.store.add(leaf, pkt.source, bytes(pkt.payload), self._node.wall_ms())
        if mid is None:
            return  # a retry of what is held
        self._dirty.set()
        ann = self._node.announcement_of(pkt.source)
        self._node.publish("leaf.message", {"leaf": leaf.hex(), "id": mid,
                                            "from": pkt.source.hex(),
                                            "from_name": ann.name if ann else ""})

    def _on_leaf_moved(self, leaf: NodeId) -> None:
        """The leaf attached elsewhere: pass what we hold on towards it (its new gateway)."""
        held = self.store.take(leaf)
        if held:
            self._dirty.set()
        for r in held:
            self._node.send_message_from(bytes.fromhex(r["from"]), leaf, Service.MSG,
                                         bytes.fromhex(r["data"]))
        if held:
            logger.info("[%s] leaf moved: %d held message(s) passed on", short_id(leaf),
                        len(held))

    # ------------------------------------------------------------------ control

    def _attached(self, params: dict[str, Any]) -> tuple[NodeId, Announcement]:
        leaf = _hex(params, "leaf", size=16)
        ann = self._node.leaves().get(leaf)
        if ann is None:
            raise ControlError("not_found", f"leaf {short_id(leaf)} is not attached here")
        return leaf, ann

    async def _h_challenge(self, params: dict[str, Any]) -> dict[str, Any]:
        now = self._clock()
        while self._challenges and (len(self._challenges) >= MAX_CHALLENGES or
                                    next(iter(self._challenges.values())) < now):
            self._challenges.popitem(last=False)
        c = os.urandom(16)
        self._challenges[c] = now + CHALLENGE_TTL_S
        return {"challenge": c.hex(), "gateway": self._node.identity.node_id.hex(),
                "now_ms": self._node.wall_ms()}

    async def _h_attach(self, params: dict[str, Any]) -> dict[str, Any]:
        body = _hex(params, "announcement", max_len=512)
        sig, proof = _hex(params, "signature", size=64), _hex(params, "proof", size=64)
        challenge = _hex(params, "challenge", size=16)
        expires = self._challenges.pop(challenge, None)
        if expires is None or expires < self._clock():
            raise ControlError("bad_request", "unknown or expired challenge: ask for a new one")
        try:
            ann = Announcement.decode(pack({"b": body, "s": sig}))
        except RemoteProtocolError as exc:
            raise ControlError("bad_request", f"attachment refused: {exc}") from None
        me = self._node.identity.node_id
        if not verify_ed25519(ann.ed25519_pub, proof, ATTACH_DOMAIN + challenge + me + ann.node_id):
            raise ControlError("bad_request", f"attachment refused: the proof of "
                               f"{short_id(ann.node_id)}'s key does not verify")
        try:
            attached = self._node.attach_leaf(ann)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            raise ControlError("bad_request", f"attachment refused: {exc}") from None
        if not attached:
            raise ControlError("bad_request", "a newer attachment of this browser is known: "
                               "sign a new one")
        logger.info("[%s] leaf %r attached (seqno %d)", short_id(ann.node_id), ann.name,
                    ann.seqno)
        return {"leaf": ann.node_id.hex(), "name": ann.name, "seqno": ann.seqno,
                "gateway": me.hex(), "held": len(self.store.held(ann.node_id))}

    async def _h_held(self, params: dict[str, Any]) -> dict[str, Any]:
        leaf = _hex(params, "leaf", size=16)
        out = []
        for r in self.store.held(leaf):
            ann = self._node.announcement_of(bytes.fromhex(r["from"]))
            out.append({**r, "from_name": ann.name if ann else ""})
        return {"messages": out}

    async def _h_release(self, params: dict[str, Any]) -> dict[str, Any]:
        leaf = _hex(params, "leaf", size=16)
        ids = params.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_HELD or \
                not all(isinstance(i, str) and len(i) <= 64 for i in ids):
            raise ControlError("bad_request", "ids: a list of held message ids")
        n = self.store.release(leaf, ids)
        if n:
            self._dirty.set()
        return {"released": n}

    async def _h_send(self, params: dict[str, Any]) -> dict[str, Any]:
        leaf, ann = self._attached(params)
        dest = _hex(params, "destination", size=16)
        sealed = _hex(params, "sealed")
        sig = _hex(params, "signature", size=64)
        if len(sealed) < 48:
            raise ControlError("bad_request", "sealed: too short to be a sealed message")
        if not verify_ed25519(ann.ed25519_pub, sig, SEND_DOMAIN + leaf + dest + sealed):
            raise ControlError("bad_request", f"refused: the signature of leaf {short_id(leaf)}"
                               " does not verify (forged, or made with another key)")
        if dest == leaf:
            raise ControlError("bad_request", "a leaf does not send to itself")
        sent = self._node.send_message_from(leaf, dest, Service.MSG, sealed)
        return {"destination": dest.hex(), "status": "sent" if sent else "unreachable"}

    async def _h_key(self, params: dict[str, Any]) -> dict[str, Any]:
        query = params.get("node")
        if not isinstance(query, str) or not query or len(query) > 64:
            raise ControlError("bad_request", "node: a name or id")
        target = self._node.resolve(query)
        ann = self._node.announcement_of(target)
        if ann is None:
            raise ControlError("not_found", f"no keys known for {short_id(target)}")
        return {"node_id": target.hex(), "name": ann.name, "role": ann.role.value,
                "ed25519": ann.ed25519_pub.hex(), "x25519": ann.x25519_pub.hex(),
                "leaf": ann.gateway is not None,
                "reachable": self._node.next_hop(target) is not None
                or target == self._node.identity.node_id or target in self._node.leaves()}

    async def _h_directory(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every reachable browser (a leaf attached here or routed to another car): only
        its id, name, Ed25519 key and the car it is attached to, for the web's /people."""
        here = self._node.identity.node_id
        local = self._node.leaves()
        out: list[dict[str, str]] = []
        for node in dict.fromkeys([*local, *(bytes.fromhex(h) for h, _ in
                                             self._node.known_nodes())]):
            if len(out) >= MAX_DIRECTORY:
                break
            node_hex = node.hex()
            ann = local.get(node) or self._node.announcement_of(node)
            if ann is None or ann.gateway is None:
                continue
            if node not in local and (ann.gateway == here or self._node.next_hop(node) is None):
                continue  # detached from here, or out of reach
            out.append({"node_id": node_hex, "name": ann.name, "key": ann.ed25519_pub.hex(),
                        "car": ann.gateway.hex(), "car_name": self._node.name_of(ann.gateway)})
        return {"browsers": sorted(out, key=lambda b: (b["name"], b["node_id"]))}

    async def _h_list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"leaves": [{"leaf": leaf.hex(), "name": ann.name, "seqno": ann.seqno,
                            "attached_ms": round(ann.timestamp * 1000),
                            "held": len(self.store.held(leaf))}
                           for leaf, ann in sorted(self._node.leaves().items())]}
