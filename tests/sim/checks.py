"""Route checks over a simulated mesh: reachability, loop detection at every route change."""

from __future__ import annotations

from tests.sim.mesh import MeshNode
from tests.sim.network import LogEntry, Network, NodeId

__all__ = ["LoopWatch", "follow", "unreachable_pairs"]


def _rt(net: Network, nid: NodeId) -> MeshNode:
    node = net.nodes[nid]
    assert isinstance(node, MeshNode)
    return node


def follow(net: Network, src: NodeId, dst: NodeId, *,
           usable_only: bool = False) -> list[NodeId] | None:
    """The hop-by-hop path src -> dst, None if a hop has no route (or, with
    ``usable_only``, crosses a failed link); raises AssertionError on a loop."""
    path = [src]
    seen = {src}
    cur = src
    while cur != dst:
        nh = _rt(net, cur).rt.next_hop(dst)
        if nh is None:
            return None
        if usable_only and not net.link_is_up(cur, nh):
            return None
        if nh in seen:
            raise AssertionError(f"routing loop towards {dst.hex()[:8]}: "
                                 f"{[p.hex()[:8] for p in [*path, nh]]}")
        seen.add(nh)
        path.append(nh)
        cur = nh
    return path


def unreachable_pairs(net: Network, ids: list[NodeId], *, usable_only: bool = False,
                      sources: list[NodeId] | None = None) -> list[tuple[NodeId, NodeId]]:
    """(src, dst) pairs whose next-hop chain does not reach dst (loops raise)."""
    bad = []
    for a in sources or ids:
        for d in ids:
            if a != d and follow(net, a, d, usable_only=usable_only) is None:
                bad.append((a, d))
    return bad


class LoopWatch:
    """Checks, at every RouteChanged, that the changing node's chain to that destination is loop-free.

    A loop can only be closed by a next-hop change, and it must pass through
    the node that changed, so this checks every instant of the run.
    """

    def __init__(self, net: Network) -> None:
        self.net = net
        self.checks = 0
        self.loops: list[str] = []
        net.observe(self._on)

    def _on(self, entry: LogEntry) -> None:
        from meshd.routing.table import RouteChanged

        ev = entry.event
        if isinstance(ev, RouteChanged) and ev.next_hop is not None:
            self.checks += 1
            try:
                follow(self.net, entry.node, ev.destination)
            except AssertionError as exc:
                self.loops.append(f"t={entry.time:.3f} {exc}")
