"""Sources and feasibility (RFC 8966 §3.5.1, babeld's source.c): what keeps next hops loop-free.

The source table holds, per origin, the seqno and feasibility distance (the
smallest metric we advertised with that seqno).  A route is feasible if its
seqno is newer, or equal with a strictly smaller advertised metric.
"""

from __future__ import annotations

from meshd.routing.wire import INFINITY

__all__ = ["Source", "update_feasible"]


def update_feasible(source: tuple[int, int] | None, seqno: int, refmetric: int) -> bool:
    """RFC 8966 §3.5.1: is (seqno, advertised metric) feasible against source (seqno, fd)?"""
    if source is None or refmetric >= INFINITY:
        return True
    src_seqno, fd = source
    return seqno > src_seqno or (seqno == src_seqno and refmetric < fd)



class Source:
    __slots__ = ("metric", "seqno", "used")

    def __init__(self, seqno: int, metric: int, used: float) -> None:
        self.seqno = seqno
        self.metric = metric
        self.used = used
