"""Stream framing on receive: whatever bytes a peer sends, recv yields whole messages or refuses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import RemoteProtocolError
from meshd.links.stream import LinkBrokenError, Stream


class _Conn:
    """The two calls Stream's receive path makes on its connection, recorded."""

    peer_id = b"\x01" * 16

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.aborted: list[int] = []

    def drop(self, reason: str, detail: str = "") -> None:
        self.dropped.append(reason)

    def abort_stream(self, stream_id: int) -> None:
        self.aborted.append(stream_id)


def frame(msg: bytes) -> bytes:
    return len(msg).to_bytes(4, "big") + msg


def make(max_message: int = 100, cap: int | None = None) -> tuple[Stream, _Conn]:
    conn = _Conn()
    c: Any = conn
    return Stream(c, 4, max_message, buffer_cap=cap), conn


async def read_all(stream: Stream) -> list[bytes]:
    out = []
    while (msg := await asyncio.wait_for(stream.recv(), 1)) is not None:
        out.append(msg)
    return out


async def test_messages_split_across_chunks() -> None:
    s, _ = make()
    data = frame(b"one") + frame(b"") + frame(b"x" * 100)
    for i in range(len(data)):
        s._feed(data[i:i + 1], end=False)
    s._feed(b"", end=True)
    assert await read_all(s) == [b"one", b"", b"x" * 100]


async def test_oversize_frame_refused_and_stream_aborted() -> None:
    s, conn = make(max_message=100)
    s._feed(frame(b"ok") + frame(b"y" * 101), end=True)
    assert await s.recv() == b"ok"
    with pytest.raises(RemoteProtocolError) as err:
        await s.recv()
    assert err.value.reason == "oversize"
    assert conn.aborted == [4]
    with pytest.raises(LinkBrokenError):
        await s.recv()


async def test_truncated_frame_at_end_refused() -> None:
    s, _ = make()
    s._feed(frame(b"abc")[:-1], end=True)
    with pytest.raises(RemoteProtocolError) as err:
        await s.recv()
    assert err.value.reason == "truncated"
    with pytest.raises(LinkBrokenError):
        await s.recv()


async def test_unread_buffer_is_capped() -> None:
    s, conn = make(max_message=100, cap=1000)
    for _ in range(20):
        s._feed(frame(b"z" * 100), end=False)
    assert conn.dropped == ["stream-overflow"] and conn.aborted == [4]
    # what arrived before the cap is still readable, then the stream is broken
    msgs = []
    with pytest.raises(LinkBrokenError):
        while True:
            msgs.append(await asyncio.wait_for(s.recv(), 1))
    assert 0 < len(msgs) <= 10 and all(m == b"z" * 100 for m in msgs)


async def test_recv_waits_for_data() -> None:
    s, _ = make()
    task = asyncio.ensure_future(s.recv())
    await asyncio.sleep(0.01)
    assert not task.done()
    s._feed(frame(b"late"), end=False)
    assert await asyncio.wait_for(task, 1) == b"late"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_random_chunks_only_remote_or_broken_errors(chunks: list[bytes], end: bool) -> None:
    async def run() -> None:
        s, _ = make(max_message=100, cap=2000)
        for chunk in chunks:
            s._feed(chunk, end=False)
        s._feed(b"", end=True)
        try:
            for m in await read_all(s):
                assert len(m) <= 100
        except (RemoteProtocolError, LinkBrokenError):
            pass

    asyncio.run(run())
