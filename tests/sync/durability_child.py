"""Child process for the kill -9 test: a real OpStore + SyncService serving one session on stdio.

Run as ``python -m tests.sync.durability_child DB``; frames on stdin/stdout are
prefixed by a 4-byte big-endian length.  Prints nothing else on stdout.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from sync.envelope import NAMESPACE_PRIORITY, Op
from sync.service import SyncService
from sync.store import OpStore, default_verify_workers


def _allow(op: Op, wall_ms: int) -> None:
    return None


class PipeStream:
    """The sync Stream protocol over the process's stdin and stdout."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer

    async def send(self, msg: bytes) -> None:
        self._w.write(len(msg).to_bytes(4, "big") + msg)
        await self._w.drain()

    async def recv(self) -> bytes | None:
        try:
            head = await self._r.readexactly(4)
            return await self._r.readexactly(int.from_bytes(head, "big"))
        except asyncio.IncompleteReadError:
            return None

    async def close(self) -> None:
        self._w.close()


async def main(db: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**22)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                        sys.stdout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    # verification as the daemon does it: worker processes for large batches (2+ CPUs)
    store = await OpStore.open(db, wall_clock=time.time,
                               authorizers={ns: _allow for ns in NAMESPACE_PRIORITY},
                               verify_workers=default_verify_workers())
    svc = SyncService(store, open_stream=_no_open, wall_clock=time.time, rng=random.Random(1))
    await svc.handle_stream(b"P" * 16, PipeStream(reader, writer))
    await store.close()


async def _no_open(peer: bytes, service: str) -> PipeStream:
    raise ConnectionError("the child only serves")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
