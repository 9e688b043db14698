"""The ``ping`` service: echo with timestamps, and traceroute by hop-limited probes.

A request ``{"k": "req", "id", "hl"}`` carries the hop limit it was sent with;
the destination answers ``{"k": "rep", "id", "hops"}`` with the hops it took.
A relay where a probe's hop limit runs out answers ``{"k": "ttl", "id"}``
itself, so probes with limits 1, 2, 3 … reveal the path one hop at a time.
RTTs are measured on the sender's monotonic clock only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import ControlError
from meshd.core.identity import NodeId, short_id
from meshd.core.packet import DEFAULT_HOP_LIMIT, MeshPacket, Service
from meshd.services.api import ControlHandler

__all__ = ["MAX_PING_PAYLOAD", "PingNode", "Pinger"]

MAX_PING_PAYLOAD = 256


class PingNode(Protocol):
    """What the pinger needs from the node."""

    def send_packet(self, destination: NodeId, service: int, payload: bytes, *,
                    flow_id: int = 0, deadline: float | None = None,
                    hop_limit: int = DEFAULT_HOP_LIMIT) -> bool: ...

    def resolve(self, query: str) -> NodeId: ...

    def name_of(self, node_id: NodeId | None) -> str: ...


class Pinger:
    """Answers probes and runs ``ping``/``traceroute`` for the control API."""

    def __init__(self, node: PingNode, clock: Callable[[], float]) -> None:
        self._node = node
        self._clock = clock
        self._ids = itertools.count(1)
        self._waiters: dict[int, tuple[asyncio.Future[dict[str, Any]], float]] = {}

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"ping": self._h_ping, "traceroute": self._h_traceroute}

    def cancel_all(self) -> None:
        for fut, _ in self._waiters.values():
            fut.cancel()

    def time_exceeded(self, pkt: MeshPacket) -> None:
        """A probe's hop limit ran out here: tell its sender who we are (traceroute)."""
        f = Fields(unpack(pkt.payload, MAX_PING_PAYLOAD))
        if f.str("k", max_len=8) == "req":
            self._node.send_packet(pkt.source, Service.PING,
                                   pack({"k": "ttl", "id": f.int("id", 0, 2**32), "hops": 0}))

    def on_packet(self, pkt: MeshPacket, now: float) -> None:
        f = Fields(unpack(pkt.payload, MAX_PING_PAYLOAD))
        kind = f.str("k", max_len=8)
        ident = f.int("id", 0, 2**32)
        if kind == "req":
            hops = f.int("hl", 1, 255) - pkt.hop_limit + 1
            self._node.send_packet(pkt.source, Service.PING,
                                   pack({"k": "rep", "id": ident, "hops": hops}))
        elif kind in ("rep", "ttl"):
            waiter = self._waiters.pop(ident, None)
            if waiter is None:
                return
            fut, sent_at = waiter
            if not fut.done():
                fut.set_result({"rtt_ms": round((now - sent_at) * 1000, 3),
                                "hops": f.int("hops", 0, 255), "responder": pkt.source,
                                "reached": kind == "rep"})

    async def ping(self, destination: NodeId, timeout: float,
                   hop_limit: int = DEFAULT_HOP_LIMIT) -> dict[str, Any]:
        """One echo to ``destination``: ``{"rtt_ms", "hops", "responder", "reached"}``.

        With a small ``hop_limit`` the node where the limit runs out answers
        instead (``reached`` False).  Raises ``ControlError`` ("unreachable",
        "timeout") on failure.
        """
        ident = next(self._ids) & 0xFFFFFFFF
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[ident] = (fut, self._clock())
        try:
            if not self._node.send_packet(destination, Service.PING,
                                          pack({"k": "req", "id": ident, "hl": hop_limit}),
                                          hop_limit=hop_limit):
                raise ControlError("unreachable", f"no route to {short_id(destination)}",
                                   {"node_id": destination.hex()})
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise ControlError("timeout", f"no reply from {short_id(destination)} in {timeout} s",
                               {"node_id": destination.hex()}) from None
        finally:
            self._waiters.pop(ident, None)

    async def _h_ping(self, params: dict[str, Any]) -> dict[str, Any]:
        query = params.get("node")
        timeout = params.get("timeout", 2.0)
        if not isinstance(query, str) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ControlError("bad_request", "ping needs node (str) and 0 < timeout <= 60")
        target = self._node.resolve(query)
        try:
            result = await self.ping(target, float(timeout))
        except ControlError as exc:  # say who was not reached
            exc.data.update(name=self._node.name_of(target), short_id=short_id(target))
            raise
        return {"node_id": target.hex(), "name": self._node.name_of(target),
                "short_id": short_id(target), "rtt_ms": result["rtt_ms"], "hops": result["hops"]}

    async def _h_traceroute(self, params: dict[str, Any]) -> dict[str, Any]:
        query = params.get("node")
        timeout = params.get("timeout", 2.0)
        max_hops = params.get("max_hops", 16)
        if (not isinstance(query, str) or not isinstance(timeout, int | float)
                or not 0 < timeout <= 60 or not isinstance(max_hops, int) or not 0 < max_hops <= 64):
            raise ControlError("bad_request", "traceroute needs node, 0 < timeout <= 60, max_hops <= 64")
        target = self._node.resolve(query)
        hops: list[dict[str, Any]] = []
        for limit in range(1, max_hops + 1):
            try:
                r = await self.ping(target, float(timeout), hop_limit=limit)
            except ControlError as exc:
                if exc.code == "unreachable":
                    raise
                hops.append({"hop": limit, "node_id": None, "name": "", "rtt_ms": None})
                continue
            hops.append({"hop": limit, "node_id": r["responder"].hex(),
                         "name": self._node.name_of(r["responder"]), "rtt_ms": r["rtt_ms"]})
            if r["reached"]:
                return {"node_id": target.hex(), "name": self._node.name_of(target),
                        "short_id": short_id(target), "hops": hops}
        raise ControlError("timeout", f"{short_id(target)} not reached in {max_hops} hops",
                           {"node_id": target.hex(), "hops": hops})
