"""In-memory message-framed streams and a tiny network of SyncServices (no meshd.links.manager)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sync.service import Stream


@dataclass
class Wire:
    """Counts what crosses one direction of a stream pair."""

    frames: int = 0
    bytes: int = 0
    by_type: dict[int, int] = field(default_factory=dict)


class MemStream:
    """One end of an in-memory stream pair: bounded queues, ``None`` marks the far end's close."""

    def __init__(self, inbox: asyncio.Queue[bytes | None], outbox: asyncio.Queue[bytes | None],
                 wire: Wire) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self._wire = wire
        self._closed = False
        self.broken = False

    async def send(self, msg: bytes) -> None:
        if self._closed or self.broken:
            raise ConnectionError("stream closed")
        self._wire.frames += 1
        self._wire.bytes += len(msg)
        if msg:
            self._wire.by_type[msg[0]] = self._wire.by_type.get(msg[0], 0) + len(msg)
        await self._outbox.put(bytes(msg))

    async def recv(self) -> bytes | None:
        if self.broken:
            return None
        return await self._inbox.get()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._outbox.put_nowait(None) if not self._outbox.full() else None


def stream_pair(maxsize: int = 16) -> tuple[MemStream, MemStream, Wire, Wire]:
    """Two connected ends and the wire counters a->b and b->a."""
    ab: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
    ba: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize)
    w_ab, w_ba = Wire(), Wire()
    return MemStream(ba, ab, w_ab), MemStream(ab, ba, w_ba), w_ab, w_ba


Handler = Callable[[bytes, Stream], Awaitable[None]]


class MemNet:
    """Joins handlers by node id: ``opener(src)`` is a SyncService ``open_stream`` for ``src``."""

    def __init__(self) -> None:
        self.handlers: dict[bytes, Handler] = {}
        self.links: set[frozenset[bytes]] = set()
        self.wires: list[tuple[bytes, bytes, Wire, Wire]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def opener(self, src: bytes) -> Callable[[bytes, str], Awaitable[Stream]]:
        async def open_stream(peer: bytes, service: str) -> Stream:
            assert service == "sync"
            if frozenset((src, peer)) not in self.links or peer not in self.handlers:
                raise ConnectionError("no link")
            a, b, w_ab, w_ba = stream_pair()
            self.wires.append((src, peer, w_ab, w_ba))
            t = asyncio.ensure_future(self.handlers[peer](src, b))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)
            return a

        return open_stream

    def bytes_total(self) -> int:
        return sum(w1.bytes + w2.bytes for _, _, w1, w2 in self.wires)
