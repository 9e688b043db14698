"""Seqno requests (RFC 8966 §3.8, babeld's resend.c) and the per-neighbour output queue."""

from __future__ import annotations

from meshd.core.identity import NodeId

__all__ = ["OutQueue", "Starving"]


class Starving:
    __slots__ = ("next_send", "seqno", "tries")

    def __init__(self, seqno: int, next_send: float) -> None:
        self.seqno = seqno
        self.next_send = next_send
        self.tries = 0



class OutQueue:
    """What is queued for one neighbour until the next flush."""

    __slots__ = ("ann_requests", "force_ann", "give_ann", "news", "requests", "table_answer",
                 "updates", "wildcard", "wildcard_repeat")

    def __init__(self) -> None:
        self.wildcard = False  # ask the peer for its table (and repeat the question later)
        self.wildcard_repeat = False  # a repetition: sent, but not repeated again
        self.table_answer = False  # these updates answer the peer's wildcard request
        self.updates: dict[NodeId, bool] = {}  # origin -> resend on a lossy link, in order
        self.force_ann: set[NodeId] = set()  # attach these origins' announcements to updates
        self.give_ann: set[NodeId] = set()  # send these announcements (asked for)
        self.news: set[NodeId] = set()  # origins with a new seqno: their announcement goes along
        self.requests: dict[tuple[NodeId, int], int] = {}  # (origin, seqno) -> hop count
        self.ann_requests: dict[NodeId, None] = {}

    def __bool__(self) -> bool:
        return bool(self.updates or self.requests or self.ann_requests or self.wildcard
                    or self.wildcard_repeat or self.give_ann)

    def add(self, origin: NodeId, resend: bool = True) -> None:
        self.updates[origin] = resend or self.updates.get(origin, False)

    def merge(self, other: OutQueue) -> None:
        for origin, resend in other.updates.items():
            self.add(origin, resend)
        self.force_ann |= other.force_ann
        self.give_ann |= other.give_ann
        self.news |= other.news
        self.requests.update(other.requests)
        self.ann_requests.update(other.ann_requests)
        self.wildcard = self.wildcard or other.wildcard
        self.wildcard_repeat = self.wildcard_repeat or other.wildcard_repeat
        self.table_answer = self.table_answer or other.table_answer
