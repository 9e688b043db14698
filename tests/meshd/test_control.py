"""ControlServer / ControlClient over a real Unix socket in a short temp dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.control.client import ControlClient
from meshd.control.protocol import MAX_LINE, NoDaemon, check_socket_path
from meshd.control.server import ControlServer
from meshd.core.errors import ControlError, LocalProtocolError


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 100-byte socket path limit
    d = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Handlers:
    """Test handlers that do real work on their params."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls: list[str] = []

    async def echo(self, params: dict[str, Any]) -> Any:
        self.calls.append("echo")
        return {"params": params}

    async def add(self, params: dict[str, Any]) -> Any:
        a, b = params.get("a"), params.get("b")
        if type(a) is not int or type(b) is not int:
            raise ControlError("bad_request", "a and b must be integers", {"got": [a, b]})
        return a + b

    async def wait_gate(self, params: dict[str, Any]) -> Any:
        await self.gate.wait()
        return "opened"

    async def open_gate(self, params: dict[str, Any]) -> Any:
        self.gate.set()
        return "ok"

    async def boom(self, params: dict[str, Any]) -> Any:
        raise RuntimeError("handler bug")

    async def not_json(self, params: dict[str, Any]) -> Any:
        return {"x": object()}

    async def huge(self, params: dict[str, Any]) -> Any:
        return "h" * (MAX_LINE + 1)

    async def forever(self, params: dict[str, Any]) -> Any:
        await asyncio.sleep(3600)

    def table(self) -> dict[str, Any]:
        return {"echo": self.echo, "add": self.add, "wait_gate": self.wait_gate,
                "open_gate": self.open_gate, "boom": self.boom, "not_json": self.not_json, "huge": self.huge,
                "forever": self.forever}


@pytest.fixture
async def served(sock_dir: Path) -> AsyncIterator[tuple[ControlServer, Path, Handlers]]:
    h = Handlers()
    path = sock_dir / "control.sock"
    server = ControlServer(path, h.table(), queue_size=8, wall_clock=lambda: 1700000000.5)
    await server.start()
    try:
        yield server, path, h
    finally:
        await server.close()


async def eventually(pred: Callable[[], bool]) -> None:
    """Poll ``pred`` for up to about 5 s."""
    for _ in range(5000):
        if pred():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def raw_connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(os.fspath(path), limit=4 * MAX_LINE)


async def raw_exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       data: bytes) -> dict[str, Any]:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(5):
        line = await reader.readline()
    msg = json.loads(line)
    assert isinstance(msg, dict)
    return msg


async def test_request_response(served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    async with await ControlClient.connect(path) as c:
        assert await c.call("add", {"a": 2, "b": 40}) == 42
        assert await c.call("echo", {"日本": ["語", 1.5, None]}) == {"params": {"日本": ["語", 1.5, None]}}
        assert await c.call("echo") == {"params": {}}


async def test_requests_on_one_connection_run_concurrently(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    async with await ControlClient.connect(path) as c:
        # wait_gate only returns once open_gate ran: sequential handling would deadlock
        async with asyncio.timeout(10):
            slow = asyncio.create_task(c.call("wait_gate"))
            await asyncio.sleep(0.01)
            assert not slow.done()
            assert await c.call("open_gate") == "ok"
            assert await slow == "opened"


async def test_handler_errors_become_error_responses(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    async with await ControlClient.connect(path) as c:
        with pytest.raises(ControlError) as ei:
            await c.call("add", {"a": "x", "b": 1})
        assert ei.value.code == "bad_request"
        assert ei.value.data == {"got": ["x", 1]}
        with pytest.raises(ControlError) as ei:
            await c.call("boom")
        assert ei.value.code == "failed"
        assert "handler bug" in ei.value.message
        with pytest.raises(ControlError) as ei:
            await c.call("not_json")
        assert ei.value.code == "failed"
        with pytest.raises(ControlError) as ei:
            await c.call("huge")
        assert ei.value.code == "failed" and "over" in ei.value.message
        with pytest.raises(ControlError) as ei:
            await c.call("no_such_method")
        assert ei.value.code == "unknown_method"
        assert "add" in ei.value.data["methods"] and "subscribe" in ei.value.data["methods"]
        # the server is still fine, on the same connection
        assert await c.call("add", {"a": 1, "b": 1}) == 2


@pytest.mark.parametrize("line", [
    b"this is not json\n",
    b"[1, 2, 3]\n",
    b'"just a string"\n',
    b'{"id": true, "method": "echo"}\n',
    b'{"id": [1], "method": "echo"}\n',
    b'{"method": "echo"}\n',
    b'{"id": 5, "method": 7}\n',
    b'{"id": 5, "method": ""}\n',
    b'{"id": 5, "method": "echo", "params": [1]}\n',
    b'{"id": 5, "method": "echo", "params": {"x": NaN}}\n',
    b'{"id": 5, "method": "echo", "params": {"x": "\xff\xfe"}}\n',
    b"[" * 100_000 + b"]" * 100_000 + b"\n",
    b'{"id": 5, "method": "subscribe", "params": {"events": []}}\n',
    b'{"id": 5, "method": "subscribe", "params": {"events": [3]}}\n',
])
async def test_malformed_requests_get_bad_request(
        served: tuple[ControlServer, Path, Handlers], line: bytes) -> None:
    server, path, h = served
    reader, writer = await raw_connect(path)
    try:
        before = server.bad_requests
        msg = await raw_exchange(reader, writer, line)
        assert msg["error"]["code"] == "bad_request"
        assert msg["id"] in (None, 5)
        assert server.bad_requests == before + 1
        assert h.calls == []
        # the connection still works afterwards
        ok = await raw_exchange(reader, writer, b'{"id": 9, "method": "echo"}\n')
        assert ok == {"id": 9, "result": {"params": {}}}
    finally:
        writer.close()


async def test_string_ids_are_echoed(served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    reader, writer = await raw_connect(path)
    try:
        msg = await raw_exchange(reader, writer,
                                 b'{"id": "req-1", "method": "add", "params": {"a": 1, "b": 2}}\n')
        assert msg == {"id": "req-1", "result": 3}
    finally:
        writer.close()


async def test_oversized_line_is_refused_and_connection_closed(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, h = served
    reader, writer = await raw_connect(path)
    big = b'{"id": 1, "method": "echo", "params": {"x": "' + b"a" * (MAX_LINE + 10) + b'"}}\n'
    writer.write(big)
    with contextlib.suppress(ConnectionError):
        await writer.drain()  # the server may close before reading it all
    async with asyncio.timeout(5):
        line = await reader.readline()
        msg = json.loads(line)
        assert msg["error"]["code"] == "bad_request"
        assert msg["id"] is None
        # then EOF: the server closed the connection
        while line:
            line = await reader.readline()
    writer.close()
    assert h.calls == []
    # and serves the next client
    async with await ControlClient.connect(path) as c:
        assert await c.call("echo") == {"params": {}}


async def test_line_just_under_the_limit_is_accepted(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    reader, writer = await raw_connect(path)
    try:
        head, tail = b'{"id": 1, "method": "echo", "params": {"x": "', b'"}}'
        pad = MAX_LINE - len(head) - len(tail)
        msg = await raw_exchange(reader, writer, head + b"a" * pad + tail + b"\n")
        assert msg["result"]["params"]["x"] == "a" * pad
    finally:
        writer.close()


async def test_event_subscription_with_patterns(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    server, path, _ = served
    async with (await ControlClient.connect(path) as a, await ControlClient.connect(path) as b,
                await ControlClient.connect(path) as quiet):
        sub_a = await a.subscribe(["neighbour.*"])
        sub_b = await b.subscribe(["route.changed", "call.*"])
        assert sub_a.patterns == ["neighbour.*"]
        server.publish("neighbour.up", {"node_id": "ab" * 16})
        server.publish("route.changed", {"n": 1})
        server.publish("sync.lag", {"n": 2})
        server.publish("neighbour.down", {"node_id": "ab" * 16})
        server.publish("call.ringing", {"call": "x"})
        async with asyncio.timeout(5):
            assert await anext(sub_a) == ("neighbour.up", {"node_id": "ab" * 16})
            assert sub_a.last_ts == 1700000000.5
            assert await anext(sub_a) == ("neighbour.down", {"node_id": "ab" * 16})
            assert await anext(sub_b) == ("route.changed", {"n": 1})
            assert await anext(sub_b) == ("call.ringing", {"call": "x"})
            # a subscriber can still call, and sees nothing it did not ask for
            assert await a.call("add", {"a": 1, "b": 2}) == 3
        assert a._events.empty() and b._events.empty() and quiet._events.empty()
        # too many patterns are refused as a whole
        with pytest.raises(ControlError) as ei:
            await a.subscribe([f"p{i}" for i in range(64)])
        assert ei.value.code == "bad_request"
        # adding a pattern widens the subscription
        more = await a.subscribe(["sync.*"])
        assert more.patterns == ["neighbour.*", "sync.*"]
        server.publish("sync.lag", {"n": 3})
        async with asyncio.timeout(5):
            assert await anext(sub_a) == ("sync.lag", {"n": 3})


async def test_subscribe_ack_comes_before_events(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    server, path, _ = served
    reader, writer = await raw_connect(path)
    try:
        writer.write(b'{"id": 1, "method": "subscribe", "params": {"events": ["*"]}}\n')
        await writer.drain()
        await eventually(lambda: any(c.patterns for c in server._conns.values()))
        server.publish("x.y", {"k": "v"})
        async with asyncio.timeout(5):
            first = json.loads(await reader.readline())
            second = json.loads(await reader.readline())
        assert first == {"id": 1, "result": {"subscribed": ["*"]}}
        assert second == {"event": "x.y", "data": {"k": "v"}, "ts": 1700000000.5}
    finally:
        writer.close()


async def test_publish_with_non_json_data_does_not_raise(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    server, path, _ = served
    async with await ControlClient.connect(path) as c:
        sub = await c.subscribe(["*"])
        server.publish("bad", {"x": object()})
        server.publish("too.big", {"x": "b" * MAX_LINE})
        server.publish("good", {"x": 1})
        async with asyncio.timeout(5):
            assert await anext(sub) == ("good", {"x": 1})


async def test_slow_subscriber_is_dropped_without_blocking(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    server, path, _ = served
    # a raw client that subscribes and then never reads
    reader, writer = await raw_connect(path)
    writer.write(b'{"id": 1, "method": "subscribe", "params": {"events": ["big.*"]}}\n')
    await writer.drain()
    async with await ControlClient.connect(path) as good:
        sub = await good.subscribe(["big.*"])
        await eventually(lambda: sum(1 for c in server._conns.values() if c.patterns) == 2)
        payload = {"blob": "z" * 65536}
        received = 0
        published = 0
        # bounded: the slow client is dropped long before 1000 events of 64 KiB
        for _ in range(1000):
            server.publish("big.event", payload)  # returns at once, never awaits
            published += 1
            async with asyncio.timeout(5):
                assert await anext(sub) == ("big.event", payload)
            received += 1
            if server.dropped_slow:
                break
        assert server.dropped_slow == 1
        assert received == published
        assert server.clients == 1
        # the good client still works and still gets events
        assert await good.call("add", {"a": 5, "b": 6}) == 11
        server.publish("big.last", {"n": 1})
        async with asyncio.timeout(5):
            assert await anext(sub) == ("big.last", {"n": 1})
    # the slow client finds its connection closed once it reads what was buffered
    async with asyncio.timeout(10):
        try:
            while await reader.read(1 << 20):
                pass
        except ConnectionError:
            pass
    writer.close()


async def test_socket_mode_is_0600_and_removed_on_close(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    old = os.umask(0)  # even with a permissive umask
    try:
        server = ControlServer(path, {})
        await server.start()
    finally:
        os.umask(old)
    try:
        st = path.lstat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        await server.close()
    assert not path.exists()


async def test_too_long_path_is_refused(sock_dir: Path) -> None:
    long_path = sock_dir / ("x" * (100 - len(os.fsencode(sock_dir))))
    assert len(os.fsencode(long_path)) >= 100
    with pytest.raises(LocalProtocolError, match="under 100"):
        ControlServer(long_path, {})
    with pytest.raises(LocalProtocolError, match="under 100"):
        await ControlClient.connect(long_path)
    ok = sock_dir / ("y" * (99 - len(os.fsencode(sock_dir)) - 1))
    assert len(os.fsencode(ok)) == 99
    check_socket_path(ok)
    server = ControlServer(ok, {})
    await server.start()
    await server.close()


async def test_connect_to_nothing_raises_no_daemon(sock_dir: Path) -> None:
    with pytest.raises(NoDaemon, match="does not exist"):
        await ControlClient.connect(sock_dir / "absent.sock")
    # a stale socket file: bound, then its owner went away
    stale = sock_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fspath(stale))
    s.close()
    with pytest.raises(NoDaemon, match="refused"):
        await ControlClient.connect(stale)


async def test_stale_socket_replaced_live_one_refused(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fspath(path))
    s.close()
    first = ControlServer(path, {"echo": Handlers().echo})
    await first.start()  # removes the stale file
    try:
        second = ControlServer(path, {})
        with pytest.raises(LocalProtocolError, match="another daemon"):
            await second.start()
        async with await ControlClient.connect(path) as c:
            assert await c.call("echo") == {"params": {}}
    finally:
        await first.close()
    plain = sock_dir / "plain"
    plain.write_text("keep me")
    with pytest.raises(LocalProtocolError, match="not a socket"):
        await ControlServer(plain, {}).start()
    assert plain.read_text() == "keep me"


async def test_server_close_ends_calls_and_subscriptions(sock_dir: Path) -> None:
    h = Handlers()
    path = sock_dir / "control.sock"
    server = ControlServer(path, h.table())
    await server.start()
    c = await ControlClient.connect(path)
    try:
        sub = await c.subscribe(["*"])
        pending = asyncio.create_task(c.call("forever"))
        await asyncio.sleep(0.01)
        await server.close()
        async with asyncio.timeout(5):
            with pytest.raises(NoDaemon):
                await pending
            with pytest.raises(NoDaemon):
                await anext(sub)
            with pytest.raises(NoDaemon):
                await c.call("echo")
    finally:
        await c.close()


async def test_call_timeout_raises_no_daemon(served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    async with await ControlClient.connect(path) as c:
        with pytest.raises(NoDaemon, match="did not answer forever"):
            await c.call("forever", timeout=0.05)
        assert await c.call("add", {"a": 1, "b": 1}) == 2


async def test_client_refuses_local_misuse(served: tuple[ControlServer, Path, Handlers]) -> None:
    _, path, _ = served
    async with await ControlClient.connect(path) as c:
        with pytest.raises(LocalProtocolError):
            await c.call("echo", {"x": object()})
        with pytest.raises(LocalProtocolError):
            await c.call("echo", {"x": "a" * (MAX_LINE + 1)})
        assert await c.call("echo") == {"params": {}}


async def test_many_clients_and_the_client_limit(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    server = ControlServer(path, {"echo": Handlers().echo}, max_clients=5)
    await server.start()
    clients = [await ControlClient.connect(path) for _ in range(5)]
    try:
        results = await asyncio.gather(*(c.call("echo", {"i": i}) for i, c in enumerate(clients)))
        assert results == [{"params": {"i": i}} for i in range(5)]
        for c in clients:  # subscribers keep their slots (idle ones would be given up)
            await c.subscribe(["x.*"])
        extra = await ControlClient.connect(path)
        with pytest.raises(NoDaemon):
            await extra.call("echo", timeout=5)
        await extra.close()
    finally:
        for c in clients:
            await c.close()
        await server.close()


async def test_partial_lines_cannot_lock_clients_out(sock_dir: Path) -> None:
    """64 connections that send half a request and stop (issue 11, item 12)."""
    path = sock_dir / "control.sock"
    handlers = Handlers()
    server = ControlServer(path, {"echo": handlers.echo, "wait": handlers.wait_gate},
                           idle_timeout_s=0.5)
    await server.start()
    subscriber = await ControlClient.connect(path)
    waiting = await ControlClient.connect(path)
    hogs: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        events = await subscriber.subscribe(["x.*"])
        pending = asyncio.create_task(waiting.call("wait", timeout=60))
        await asyncio.sleep(0)
        for _ in range(64):
            r, w = await asyncio.open_unix_connection(os.fspath(path))
            w.write(b'{"id": 1, "method": "ec')
            await w.drain()
            hogs.append((r, w))
        # every slot is taken, yet a new client gets one at once (an idle hog makes room)
        async with await ControlClient.connect(path) as c:
            assert await c.call("echo", {"n": 1}, timeout=5) == {"params": {"n": 1}}
        # and the hogs that are left are closed after the idle timeout: their reads end
        for r, _w in hogs:
            assert await asyncio.wait_for(r.read(), 30) == b""
        assert server.idle_closed >= 64
        # a subscriber and a client waiting for its answer were never idle
        server.publish("x.y", {"still": "here"})
        assert await asyncio.wait_for(anext(events), 5) == ("x.y", {"still": "here"})
        handlers.gate.set()
        assert await pending == "opened"
    finally:
        for _r, w in hogs:
            w.close()
        await subscriber.close()
        await waiting.close()
        await server.close()


def test_control_error_codes_are_checked() -> None:
    with pytest.raises(LocalProtocolError):
        ControlError("nonsense", "x")
    e = ControlError("not_found", "no such node", {"query": "q"})
    assert e.to_json() == {"code": "not_found", "message": "no such node", "data": {"query": "q"}}


def test_subscribe_is_reserved(sock_dir: Path) -> None:
    with pytest.raises(LocalProtocolError):
        ControlServer(sock_dir / "s", {"subscribe": Handlers().echo})


async def test_random_garbage_gets_one_answer_per_line(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    """Seeded fuzz: random bytes and mutated requests never crash or desynchronise the server."""
    import random

    server, path, _ = served
    rng = random.Random(20261126)
    valid = b'{"id": 1, "method": "add", "params": {"a": 2, "b": 3}}'
    lines: list[bytes] = []
    for _ in range(400):
        kind = rng.randrange(3)
        if kind == 0:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        elif kind == 1:  # flip some bytes of a valid request
            b = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            line = bytes(b)
        else:  # truncate a valid request
            line = valid[: rng.randrange(len(valid))]
        lines.append(line.replace(b"\n", b" "))
    reader, writer = await raw_connect(path)
    try:
        writer.write(b"".join(line + b"\n" for line in lines) + valid.replace(b"1", b"77", 1) + b"\n")
        await writer.drain()
        answers = []
        async with asyncio.timeout(20):
            while True:
                msg = json.loads(await reader.readline())
                answers.append(msg)
                if msg.get("id") == 77:
                    break
        assert len(answers) == len(lines) + 1
        for msg in answers:
            assert set(msg) in ({"id", "result"}, {"id", "error"})
        assert answers[-1] == {"id": 77, "result": 5}
        assert server.bad_requests > 0
    finally:
        writer.close()


async def test_pipelining_client_is_pushed_back_not_dropped(
        served: tuple[ControlServer, Path, Handlers]) -> None:
    server, path, _ = served  # queue_size=8
    reader, writer = await raw_connect(path)
    n = 2000
    try:
        async def write_all() -> None:
            for i in range(n):
                writer.write(b'{"id": %d, "method": "add", "params": {"a": %d, "b": 1}}\n' % (i, i))
            await writer.drain()

        sender = asyncio.create_task(write_all())
        await asyncio.sleep(0.2)  # let the server fill this client's queue while it reads nothing
        got: dict[int, Any] = {}
        async with asyncio.timeout(30):
            while len(got) < n:
                msg = json.loads(await reader.readline())
                got[msg["id"]] = msg["result"]
            await sender
        assert got == {i: i + 1 for i in range(n)}
        assert server.dropped_slow == 0
    finally:
        writer.close()


def test_works_on_uvloop(sock_dir: Path) -> None:
    """meshd runs on uvloop: the socket mode trick, requests and events hold there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        path = sock_dir / "control.sock"
        server = ControlServer(path, Handlers().table())
        await server.start()
        try:
            assert stat.S_IMODE(path.lstat().st_mode) == 0o600
            async with await ControlClient.connect(path) as c:
                assert await c.call("add", {"a": 20, "b": 22}) == 42
                sub = await c.subscribe(["a.*"])
                server.publish("b.x", {})
                server.publish("a.x", {"v": 1})
                async with asyncio.timeout(5):
                    assert await anext(sub) == ("a.x", {"v": 1})
                with pytest.raises(ControlError):
                    await c.call("boom")
        finally:
            await server.close()
        assert not path.exists()

    uvloop.run(scenario())
