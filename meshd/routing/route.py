"""Route entries (babeld's route.c): what a neighbour advertised for an origin, and what we selected."""

from __future__ import annotations

from meshd.core.identity import NodeId

__all__ = ["Route", "Selected"]


class Route:
    __slots__ = ("expires", "refmetric", "seqno", "updated")

    def __init__(self, seqno: int, refmetric: int, expires: float, updated: float) -> None:
        self.seqno = seqno
        self.refmetric = refmetric
        self.expires = expires
        self.updated = updated



class Selected:
    __slots__ = ("metric", "next_hop", "seqno")

    def __init__(self, next_hop: NodeId, seqno: int, metric: int) -> None:
        self.next_hop = next_hop
        self.seqno = seqno
        self.metric = metric
