"""The seam between the node and the application packages (voice, sync, library_replica).

The node (links, routing, forwarding) imports none of them.  Each registers as
a ``NodeService`` with the composition root (``carmesh.app``): it contributes
control methods, may run long-lived tasks in the node's task group, hears about
neighbours coming and going, and may serve stream services on links.  What a
service needs from the node is the ``NodeApi`` below (end-to-end packets and
messages, neighbour streams, keys of other nodes, events to the control API).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from meshd.core.identity import Announcement, Identity, NodeId
from meshd.core.packet import MeshPacket

__all__ = ["ControlHandler", "Metric", "MetricsSource", "NodeApi", "NodeService",
           "PacketHandler", "StreamHandler"]

ControlHandler = Callable[[dict[str, Any]], Awaitable[Any]]
PacketHandler = Callable[[MeshPacket, float], None]
StreamHandler = Callable[[NodeId, Any], Awaitable[None]]


class NodeApi(Protocol):
    """What a service may use of the node."""

    identity: Identity
    name: str
    state_dir: Any

    @property
    def max_payload(self) -> int:
        """Largest ``send_packet`` payload in bytes (the mesh MTU less the packet header)."""
        ...

    def register_service(self, service: int, handler: PacketHandler) -> None: ...

    def send_packet(self, destination: NodeId, service: int, payload: bytes, *,
                    flow_id: int = 0, deadline: float | None = None) -> bool: ...

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool: ...

    def next_hop(self, destination: NodeId) -> NodeId | None: ...

    def announcement_of(self, node_id: NodeId) -> Announcement | None: ...

    def resolve(self, query: str) -> NodeId: ...

    def wall_ms(self) -> int: ...

    def now(self) -> float:
        """The node's monotonic clock, seconds: the ``now`` packet handlers are given, and the one
        clock services time their own work by."""
        ...

    def publish(self, event: str, data: dict[str, Any]) -> None: ...

    async def open_stream(self, peer: NodeId, service: str) -> Any: ...


class NodeService(Protocol):
    """An application package plugged into the node by the composition root."""

    def handlers(self) -> Mapping[str, ControlHandler]:
        """Control methods this service serves (names like "library.search")."""
        ...

    def stream_services(self) -> Mapping[str, StreamHandler]:
        """Stream services on neighbour links, by name (e.g. "sync")."""
        ...

    def neighbour_up(self, peer: NodeId) -> None: ...

    def neighbour_lost(self, peer: NodeId) -> None: ...

    async def run(self) -> None:
        """Long-lived work; runs in the node's task group until cancelled at shutdown."""
        ...

    async def close(self) -> None:
        """Release resources (databases, sockets); called once at shutdown."""
        ...


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family a service reports when the node is scraped (``meshd.metrics``).

    ``name`` is the full OpenMetrics name (``carmesh_sync_ops``; a counter's ends in
    ``_total``); ``samples`` pair label values (in the order of ``labels``) with a value.
    Families of the same name from the node and several services are merged, samples
    with equal labels summed (every component adds its ``carmesh_drops_total{reason}``).
    """

    name: str
    kind: Literal["gauge", "counter"]
    help: str
    labels: tuple[str, ...] = ()
    samples: tuple[tuple[tuple[str, ...], float], ...] = ()


@runtime_checkable
class MetricsSource(Protocol):
    """Optional for a ``NodeService``: metrics read from its live state on every scrape.

    Called on the event loop; must be cheap and must not block (no I/O, no locks).
    """

    def metrics(self) -> Iterable[Metric]: ...
