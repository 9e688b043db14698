"""The ``info`` service: read-only node facts for the admin view, answered over the mesh.

Any node can ask any other for its name, role and neighbour links with their
costs; the admin console draws the topology from the answers.  Answers are
rate-limited per asker and in total (token buckets, time passed in), because
anyone can ask.  Requests and answers are small MessagePack maps; an answer
for a node with many neighbours is fragmented by the node like any message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.codec import Fields, pack, unpack
from meshd.errors import DecodeError
from meshd.identity import NodeId

__all__ = ["InfoAnswer", "RateLimiter", "decode", "encode_answer", "encode_request"]

MAX_INFO = 16 * 1024
MAX_NEIGHBOURS = 256


@dataclass(frozen=True, slots=True)
class InfoAnswer:
    request_id: int
    name: str
    role: str
    neighbours: list[tuple[NodeId, int]]  # (neighbour, link cost)


def encode_request(request_id: int) -> bytes:
    return pack({"k": "req", "id": request_id})


def encode_answer(request_id: int, name: str, role: str,
                  neighbours: list[tuple[NodeId, int]]) -> bytes:
    return pack({"k": "rep", "id": request_id, "name": name, "role": role,
                 "nb": [[n, c] for n, c in neighbours[:MAX_NEIGHBOURS]]})


def decode(data: bytes) -> int | InfoAnswer:
    """A request id (for a request) or an ``InfoAnswer``; raises ``DecodeError``."""
    f = Fields(unpack(data, MAX_INFO))
    kind, rid = f.str("k", max_len=4), f.int("id", 0, 2**32)
    if kind == "req":
        return rid
    if kind != "rep":
        raise DecodeError("kind", kind)
    nbs: list[tuple[NodeId, int]] = []
    for item in f.list("nb", max_len=MAX_NEIGHBOURS):
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not bytes
                or len(item[0]) != 16 or type(item[1]) is not int or not 0 <= item[1] <= 0xFFFF):
            raise DecodeError("field", "nb: [node id, cost]")
        nbs.append((item[0], item[1]))
    return InfoAnswer(rid, f.str("name", max_len=64), f.str("role", max_len=16), nbs)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class RateLimiter:
    """Token buckets: ``per_source`` answers/s to one asker (burst 2×), ``total`` answers/s overall."""

    per_source: float = 2.0
    total: float = 20.0
    _buckets: dict[bytes, _Bucket] = field(default_factory=dict)

    def allow(self, source: bytes, now: float) -> bool:
        return self._take(b"", self.total, now) and self._take(source, self.per_source, now)

    def _take(self, key: bytes, rate: float, now: float) -> bool:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 4096:  # forget idle askers
                self._buckets = {k: v for k, v in self._buckets.items() if now - v.updated < 10}
            b = self._buckets[key] = _Bucket(2 * rate, now)
        b.tokens = min(2 * rate, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens < 1:
            return False
        b.tokens -= 1
        return True
