"""The daemon's control API: newline-delimited JSON over a Unix socket.

Theory of operation
-------------------
``meshctl`` and the TUI are the only clients.  Each line a client sends is one
UTF-8 JSON object, a request::

    {"id": 1, "method": "status", "params": {...}}

and each request gets exactly one response line with the same ``id``::

    {"id": 1, "result": ...}
    {"id": 1, "error": {"code": "not_found", "message": "...", "data": {...}}}

Error codes are the stable tokens in ``ERROR_CODES``; scripts switch on them
(``meshctl`` maps them to exit codes).  Requests on one connection run
concurrently (a slow ``ping`` does not hold up ``status``), at most
``MAX_IN_FLIGHT`` at a time; beyond that the server simply stops reading from
that client.

The built-in method ``subscribe`` (params ``{"events": ["neighbour.*", ...]}``,
``fnmatch`` patterns) adds patterns to the connection's subscription; its
response comes first, then the server pushes event lines on the same
connection::

    {"event": "neighbour.up", "data": {...}, "ts": 1764185000.123}

``ts`` is wall-clock Unix time.  Every line a client is owed goes through one
queue per client drained by one writer task.  Events are bounded: a client
that stops reading lets its queue fill and is disconnected, so ``publish``
never waits and never raises into the daemon.  Responses are pushed back
instead: while the queue is full the server reads no further request from
that client, so a client that pipelines many requests is slowed, not dropped.

Client input is untrusted: a line over ``MAX_LINE`` bytes gets an error and
the connection is closed (the rest of the line cannot be resynchronised); bad
UTF-8, bad JSON, a non-object, a bad ``id`` or ``params`` get a ``bad_request``
response; an unknown method gets ``unknown_method``.  None of these reach a
handler or the event loop.

Connection slots (``max_clients``) are not held by clients that do nothing: a
connection with no subscription and no request running that sends no complete
line for ``idle_timeout_s`` is closed (a client that sent half a line and
stopped, or connected and said nothing), and when every slot is taken a new
client takes the slot of the longest-idle such connection instead of being
refused.  So 64 connections sending partial lines cannot lock meshctl out.
Subscribers (meshctl call, the console) and clients waiting for an answer are
never timed out.

The socket is created with mode 0600 (set on the socket before ``bind``, so it
never exists with a wider mode) and its path must stay under
``MAX_SOCKET_PATH`` bytes (``sun_path`` holds 108 on Linux, less elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final

from meshd.control.protocol import (
    MAX_LINE,
    MAX_TOKEN,
    ControlError,
    check_socket_path,
)
from meshd.control.protocol import dumps as _dumps
from meshd.control.protocol import loads as _loads
from meshd.control.protocol import valid_id as _valid_id
from meshd.core.errors import DiskFull, LocalProtocolError, is_disk_full
from meshd.core.tasks import cancel_and_wait

__all__ = ["ControlServer", "Handler"]

log = logging.getLogger(__name__)

#: requests one connection may have running at once
MAX_IN_FLIGHT: Final = 32
#: lines queued for one client before it counts as slow and is dropped
DEFAULT_QUEUE_SIZE: Final = 1024
#: concurrent client connections; later ones are closed at once
DEFAULT_MAX_CLIENTS: Final = 64
#: patterns one connection may subscribe to
_MAX_PATTERNS: Final = 64
#: seconds a connection with no subscription and no request running may go without a full line
DEFAULT_IDLE_TIMEOUT_S: Final = 10.0


class _Idle(Exception):
    """The client sent no complete line for the idle timeout while it had nothing to wait for."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
"""A control method: params in, a JSON-able result or raises ControlError."""


class _Conn:
    """One client connection on the server side: its queue, writer task and subscriptions."""

    def __init__(self, server: ControlServer, num: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, queue_size: int) -> None:
        self.server = server
        self.num = num
        self.reader = reader
        self.writer = writer
        # Unbounded as a container; the bound is applied by kind: events beyond
        # ``queue_size`` drop the client (slow reader), responses make the reader
        # wait (a client pipelining requests is pushed back, not dropped).
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.queue_size = queue_size
        self.room = asyncio.Event()
        self.patterns: list[str] = []
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        #: monotonic time of the connection or of its last complete line
        self.last_line = time.monotonic()

    @property
    def idle(self) -> bool:
        """Nothing to keep the connection for: no subscription, no request running."""
        return not self.patterns and not self.tasks

    def send(self, line: bytes) -> None:
        """Queue a response: always accepted (the reader waits for room before the next request)."""
        if not self.closed:
            self.queue.put_nowait(line)

    def send_event(self, line: bytes) -> None:
        """Queue an event without waiting; a full queue means a slow client, which is dropped."""
        if self.closed:
            return
        if self.queue.qsize() >= self.queue_size:
            self.server.dropped_slow += 1
            log.warning("[control #%d] client too slow (%d lines queued): disconnecting",
                        self.num, self.queue.qsize())
            self.abort()
            return
        self.queue.put_nowait(line)

    async def wait_for_room(self) -> None:
        """Backpressure for requests: wait until the client has read most of what it is owed."""
        while not self.closed and self.queue.qsize() >= self.queue_size:
            self.room.clear()
            await self.room.wait()

    def abort(self) -> None:
        """Drop the connection now, discarding whatever is still queued."""
        if self.closed:
            return
        self.closed = True
        self.writer.transport.abort()
        # wake the writer task so it exits
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                self.queue.get_nowait()
        self.queue.put_nowait(None)
        self.room.set()

    def finish(self) -> None:
        """Close gracefully once everything queued so far is written."""
        if not self.closed:
            self.queue.put_nowait(None)

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, p) for p in self.patterns)

    async def write_loop(self) -> None:
        while True:
            line = await self.queue.get()
            if self.queue.qsize() < self.queue_size:
                self.room.set()
            if self.closed:
                return
            try:
                if line is None:
                    # graceful: close() flushes the transport's buffer first
                    self.closed = True
                    self.writer.close()
                    await self.writer.wait_closed()
                    return
                self.writer.write(line)
                await self.writer.drain()
            except (ConnectionError, OSError):
                self.closed = True
                self.writer.transport.abort()
                return

    async def _read_line(self) -> bytes:
        """The next request line; raises ``_Idle`` when the client idles past the timeout."""
        read = asyncio.ensure_future(self.reader.readuntil(b"\n"))
        try:
            while True:
                done, _ = await asyncio.wait({read}, timeout=self.server.idle_timeout_s)
                if done:
                    self.last_line = time.monotonic()
                    return read.result()
                if self.idle:
                    raise _Idle
        finally:
            if not read.done():
                await cancel_and_wait(read, ConnectionError, OSError)

    async def read_loop(self) -> None:
        while not self.closed:
            try:
                line = await self._read_line()
            except _Idle:
                self.server.idle_closed += 1
                log.debug("[control #%d] no complete line in %g s: closing", self.num,
                          self.server.idle_timeout_s)
                return
            except asyncio.IncompleteReadError:
                return  # EOF (a partial last line is ignored)
            except asyncio.LimitOverrunError:
                self.server.bad_requests += 1
                self.send(_dumps({"id": None, "error": ControlError(
                    "bad_request", f"request line over {MAX_LINE} bytes; closing").to_json()}))
                return
            except (ConnectionError, OSError):
                return
            await self.wait_for_room()
            await self.slots.acquire()
            if self.closed:
                return
            self.dispatch(line)

    def dispatch(self, line: bytes) -> None:
        """Validate a request line; answer errors and ``subscribe`` now, run a handler as a task."""
        req_id: Any = None
        try:
            req = _loads(line)
            if not isinstance(req, dict):
                raise ControlError("bad_request", "a request must be a JSON object")
            req_id = req.get("id")
            if not _valid_id(req_id):
                req_id = None
                raise ControlError("bad_request", "id must be an integer or a short string")
            method = req.get("method")
            if type(method) is not str or not 0 < len(method) <= MAX_TOKEN:
                raise ControlError("bad_request", "method must be a non-empty short string")
            params = req.get("params")
            if params is None:
                params = {}
            if not isinstance(params, dict):
                raise ControlError("bad_request", "params must be a JSON object")
            if method == "subscribe":
                self.respond(req_id, self.subscribe(params))
                return
            handler = self.server.handlers.get(method)
            if handler is None:
                raise ControlError("unknown_method", f"no method {method!r}",
                                   {"methods": self.server.methods()})
        except ValueError as exc:
            self.fail(req_id, ControlError("bad_request", f"not a JSON line ({exc})"))
            return
        except ControlError as exc:
            self.fail(req_id, exc)
            return
        task = asyncio.create_task(self.run_handler(req_id, method, handler, params),
                                   name=f"control-{self.num}-{method}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def fail(self, req_id: Any, exc: ControlError) -> None:
        if exc.code == "bad_request":
            self.server.bad_requests += 1
            if not self.server.logged_bad:
                self.server.logged_bad = True
                log.warning("[control #%d] bad request: %s [further bad requests are counted]",
                            self.num, exc.message)
        self.slots.release()
        self.send(_dumps({"id": req_id, "error": exc.to_json()}))

    def respond(self, req_id: Any, result: Any) -> None:
        self.slots.release()
        try:
            line = _dumps({"id": req_id, "result": result})
        except (TypeError, ValueError) as exc:
            log.error("[control #%d] result is not JSON: %s", self.num, exc)
            line = _dumps({"id": req_id, "error": ControlError(
                "failed", "internal error: result is not JSON").to_json()})
        if len(line) > MAX_LINE + 1:
            log.error("[control #%d] result of %d bytes is over the line limit", self.num,
                      len(line))
            line = _dumps({"id": req_id, "error": ControlError(
                "failed", f"result over {MAX_LINE} bytes").to_json()})
        self.send(line)

    def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        events = params.get("events")
        if (not isinstance(events, list) or not events
                or not all(type(p) is str and 0 < len(p) <= 128 for p in events)):
            raise ControlError("bad_request", "params.events must be a non-empty list of patterns")
        patterns = list(self.patterns)
        for p in events:
            if p not in patterns:
                patterns.append(p)
        if len(patterns) > _MAX_PATTERNS:
            raise ControlError("bad_request", f"at most {_MAX_PATTERNS} patterns per connection")
        self.patterns = patterns
        return {"subscribed": list(self.patterns)}

    async def run_handler(self, req_id: Any, method: str, handler: Handler,
                          params: dict[str, Any]) -> None:
        try:
            result = await handler(params)
        except ControlError as exc:
            self.fail(req_id, exc)
        except asyncio.CancelledError:
            self.slots.release()
            raise
        except Exception as exc:  # the adapter's outer boundary: a handler bug must not kill us
            if is_disk_full(exc):  # no bug: say so plainly (exit 1 in meshctl)
                text = str(exc) if isinstance(exc, DiskFull) else \
                    f"disk full: {method} could not write; free some space on the disk"
                log.error("[control #%d] %s: %s", self.num, method, text)
                self.fail(req_id, ControlError("failed", text, {"disk_full": True}))
                return
            log.exception("[control #%d] method %s failed", self.num, method)
            self.fail(req_id, ControlError("failed", f"{type(exc).__name__}: {exc}"))
        else:
            self.respond(req_id, result)


class ControlServer:
    """Serves ``handlers`` (method name -> Handler) and the event stream on a Unix socket."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], *,
                 queue_size: int = DEFAULT_QUEUE_SIZE, max_clients: int = DEFAULT_MAX_CLIENTS,
                 idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                 wall_clock: Callable[[], float] = time.time) -> None:
        check_socket_path(path)
        if "subscribe" in handlers:
            raise LocalProtocolError("'subscribe' is built into the control server")
        self.path = Path(path)
        self.handlers = dict(handlers)
        self._queue_size = queue_size
        self._max_clients = max_clients
        self.idle_timeout_s = idle_timeout_s
        self._wall_clock = wall_clock
        self._server: asyncio.Server | None = None
        self._conns: dict[int, _Conn] = {}
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._next = 0
        self._bad_events: set[str] = set()
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        #: clients disconnected for not reading
        self.dropped_slow = 0
        #: malformed requests answered with bad_request
        self.bad_requests = 0
        #: connections closed (timed out or evicted) for idling without a full line
        self.idle_closed = 0
        self.logged_bad = False

    def methods(self) -> list[str]:
        """Every method name served, built-ins included, sorted."""
        return sorted([*self.handlers, "subscribe"])

    @property
    def clients(self) -> int:
        """Number of connected clients."""
        return len(self._conns)

    async def start(self) -> None:
        """Bind the socket (mode 0600) and accept clients; refuse if another daemon answers."""
        if self._server is not None:
            raise LocalProtocolError("control server already started")
        self._clear_stale()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux applies the socket inode's mode at bind: the file is never wider than 0600.
            os.fchmod(sock.fileno(), 0o600)
            sock.bind(os.fspath(self.path))
            os.chmod(self.path, 0o600)  # belt and braces for systems that ignore fchmod
            self._server = await asyncio.start_unix_server(
                self._accept, sock=sock, limit=MAX_LINE + 1)
        except BaseException:
            sock.close()
            raise
        log.info("control API listening on %s", self.path)

    def _clear_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise LocalProtocolError(f"{self.path} exists and is not a socket; not removing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(os.fspath(self.path))
        except OSError:
            log.info("removing stale control socket %s", self.path)
            self.path.unlink(missing_ok=True)
        else:
            raise LocalProtocolError(f"another daemon is answering on {self.path}")
        finally:
            probe.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self._max_clients:
            idle = [c for c in self._conns.values() if c.idle and not c.closed]
            if not idle:
                log.warning("control: %d clients already connected; refusing one",
                            len(self._conns))
                writer.transport.abort()
                return
            oldest = min(idle, key=lambda c: c.last_line)
            self.idle_closed += 1
            log.debug("[control #%d] all %d slots taken: closing this idle client",
                      oldest.num, self._max_clients)
            self._conns.pop(oldest.num, None)
            oldest.abort()
        self._next += 1
        conn = _Conn(self, self._next, reader, writer, self._queue_size)
        self._conns[conn.num] = conn
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        log.debug("[control #%d] client connected", conn.num)
        wtask = asyncio.create_task(conn.write_loop(), name=f"control-{conn.num}-writer")
        try:
            await conn.read_loop()
            # EOF from the client: let running requests finish, then flush and close.
            if conn.tasks:
                await asyncio.wait(set(conn.tasks))
            conn.finish()
            await wtask
        finally:
            self._conns.pop(conn.num, None)
            for t in list(conn.tasks):
                t.cancel()
            conn.abort()
            await cancel_and_wait(wtask)
            if task is not None:
                self._conn_tasks.discard(task)
            log.debug("[control #%d] client gone", conn.num)

    def add_listener(self, fn: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Also hand every published event to ``fn`` in-process (the web app); returns a remover.

        ``fn`` must not block; an exception from it is logged, never raised into ``publish``.
        """
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Queue ``event`` for each subscriber whose pattern matches; never blocks or raises."""
        for fn in list(self._listeners):
            try:
                fn(event, data)
            except Exception:  # a listener's bug must not reach the service that published
                log.exception("control: in-process listener failed on %s", event)
        line: bytes | None = None
        for conn in list(self._conns.values()):
            if conn.closed or not conn.wants(event):
                continue
            if line is None:
                try:
                    line = _dumps({"event": event, "data": data, "ts": self._wall_clock()})
                except (TypeError, ValueError) as exc:
                    self._refuse_event(event, f"data is not JSON ({exc})")
                    return
                if len(line) > MAX_LINE + 1:
                    self._refuse_event(event, f"{len(line)} bytes, over the line limit")
                    return
            conn.send_event(line)

    def _refuse_event(self, event: str, why: str) -> None:
        # our own bug, not a peer's: log it once per event name, never raise into the caller
        if event not in self._bad_events and len(self._bad_events) < 1024:
            self._bad_events.add(event)
            log.error("control: event %s not published: %s", event, why)

    async def close(self) -> None:
        """Stop accepting, disconnect every client, cancel running requests, remove the socket."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Abort rather than cancel the per-connection tasks: asyncio's stream
        # callback logs a cancelled client_connected_cb task as an error.
        for conn in list(self._conns.values()):
            for t in list(conn.tasks):
                t.cancel()
            conn.abort()
        tasks = list(self._conn_tasks)
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=5.0)
            for t in stuck:
                t.cancel()
        await server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        log.info("control API closed")
