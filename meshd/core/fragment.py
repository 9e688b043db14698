"""Fragmentation and reassembly of end-to-end messages larger than the mesh MTU.

An SDP offer (~1,250 bytes) does not fit one link datagram (DESIGN.md), so a
message for service S is cut into ``Service.FRAG`` packets whose payload is::

    | inner service u8 | message id u32 | index u8 | count u8 | chunk ... |

The reassembler (pure, time passed in) bounds everything a peer can make us
hold: fragments per message, bytes buffered per source and in total, and how
long a partial message waits.  A message completes only once every index has
arrived; duplicates are ignored; inconsistent counts drop the message.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import NodeId

__all__ = ["FRAG_HEADER_LEN", "MAX_FRAGMENTS", "Reassembler", "split"]

_HDR = struct.Struct("!BIBB")
FRAG_HEADER_LEN = _HDR.size  # 7
MAX_FRAGMENTS = 64


def split(service: int, message_id: int, data: bytes, max_payload: int) -> list[bytes]:
    """Cut ``data`` into FRAG payloads that each fit ``max_payload`` bytes."""
    chunk = max_payload - FRAG_HEADER_LEN
    if chunk <= 0:
        raise LocalProtocolError("payload room too small to fragment")
    count = max(1, -(-len(data) // chunk))
    if count > MAX_FRAGMENTS:
        raise LocalProtocolError(f"message of {len(data)} bytes needs {count} > {MAX_FRAGMENTS} fragments")
    return [_HDR.pack(service, message_id & 0xFFFFFFFF, i, count) + data[i * chunk:(i + 1) * chunk]
            for i in range(count)]


@dataclass(slots=True)
class _Partial:
    count: int
    first_seen: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Collects fragments per (source, message id); ``add`` returns (service, message) when whole."""

    def __init__(self, *, timeout: float = 10.0, max_bytes_per_source: int = 256 * 1024,
                 max_bytes_total: int = 4 * 1024 * 1024, max_partials: int = 1024) -> None:
        self._timeout = timeout
        self._per_source = max_bytes_per_source
        self._total_max = max_bytes_total
        self._max_partials = max_partials
        self._partials: OrderedDict[tuple[NodeId, int, int], _Partial] = OrderedDict()
        self._source_bytes: dict[NodeId, int] = {}
        self._total = 0
        #: recently completed messages, so a late duplicate fragment does not deliver twice
        self._done: OrderedDict[tuple[NodeId, int, int], float] = OrderedDict()
        self.dropped = 0

    def add(self, source: NodeId, payload: bytes, now: float) -> tuple[int, bytes] | None:
        """Feed one FRAG payload; raises ``DecodeError`` for a malformed one."""
        if len(payload) < FRAG_HEADER_LEN:
            raise DecodeError("short", "fragment header")
        service, mid, index, count = _HDR.unpack_from(payload)
        if not 0 < count <= MAX_FRAGMENTS or index >= count:
            raise DecodeError("fragment", f"index {index} of {count}")
        chunk = payload[FRAG_HEADER_LEN:]
        self.expire(now)
        key = (source, service, mid)
        if key in self._done:
            return None
        part = self._partials.get(key)
        if part is None:
            if len(self._partials) >= self._max_partials:
                self._discard(next(iter(self._partials)))
            part = self._partials[key] = _Partial(count, now)
        if part.count != count:
            self._discard(key)
            raise DecodeError("fragment", "inconsistent fragment count")
        if index in part.chunks:
            return None
        if (self._source_bytes.get(source, 0) + len(chunk) > self._per_source
                or self._total + len(chunk) > self._total_max):
            self._discard(key)
            raise DecodeError("fragment_quota", "reassembly buffer full")
        part.chunks[index] = chunk
        part.size += len(chunk)
        self._source_bytes[source] = self._source_bytes.get(source, 0) + len(chunk)
        self._total += len(chunk)
        if len(part.chunks) < count:
            return None
        data = b"".join(part.chunks[i] for i in range(count))
        self._discard(key, dropped=False)
        self._done[key] = now
        if len(self._done) > self._max_partials * 4:
            self._done.popitem(last=False)
        return service, data

    def expire(self, now: float) -> None:
        """Drop partial messages older than the timeout, and forget old completions."""
        while self._done and now - next(iter(self._done.values())) >= self._timeout:
            self._done.popitem(last=False)
        while self._partials:
            key, part = next(iter(self._partials.items()))
            if now - part.first_seen < self._timeout:
                break
            self._discard(key)

    def _discard(self, key: tuple[NodeId, int, int], dropped: bool = True) -> None:
        part = self._partials.pop(key)
        src = key[0]
        self._source_bytes[src] -= part.size
        if self._source_bytes[src] <= 0:
            del self._source_bytes[src]
        self._total -= part.size
        if dropped:
            self.dropped += 1

    @property
    def buffered_bytes(self) -> int:
        return self._total
