"""The control API's client side: ``meshctl``, the console and tests talk to the daemon with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from meshd.control.protocol import (
    CLIENT_EVENT_QUEUE,
    ERROR_CODES,
    MAX_LINE,
    ControlError,
    NoDaemon,
    check_socket_path,
)
from meshd.control.protocol import (
    dumps as _dumps,
)
from meshd.control.protocol import (
    loads as _loads,
)
from meshd.core.errors import LocalProtocolError
from meshd.core.tasks import cancel_and_wait
from meshd.paths import check_socket_owner

__all__ = ["ControlClient", "Subscription"]

log = logging.getLogger(__name__)


class Subscription(AsyncIterator[tuple[str, dict[str, Any]]]):
    """Async iterator of ``(event, data)`` pushed by the daemon; ``last_ts``: the last ``ts``."""

    def __init__(self, client: ControlClient, patterns: list[str]) -> None:
        self._client = client
        self.patterns = patterns
        self.last_ts: float | None = None

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        item = await self._client._events.get()
        if item is None:
            self._client._events.put_nowait(None)  # keep the end visible to other readers
            raise NoDaemon(self._client._closed_reason)
        name, data, ts = item
        self.last_ts = ts
        return name, data


class ControlClient:
    """A connection to the daemon's control socket: concurrent calls plus the event stream."""

    def __init__(self, path: Path, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        # one spare slot so the end-of-stream marker always fits
        self._events: asyncio.Queue[tuple[str, dict[str, Any], float | None] | None] = (
            asyncio.Queue(CLIENT_EVENT_QUEUE + 1))
        self._closed_reason = ""
        self._read_task = asyncio.create_task(self._read_loop(), name="control-client-reader")

    @classmethod
    async def connect(cls, path: Path, timeout: float = 2.0) -> ControlClient:
        """Connect to ``path``; raise ``NoDaemon`` if nothing answers within ``timeout`` s."""
        check_socket_path(path)
        check_socket_owner(path)
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(
                    os.fspath(path), limit=MAX_LINE + 1)
        except TimeoutError:
            raise NoDaemon(f"no daemon answered on {path} within {timeout:g} s") from None
        except FileNotFoundError:
            raise NoDaemon(f"no daemon: {path} does not exist") from None
        except ConnectionRefusedError:
            raise NoDaemon(f"no daemon: connection to {path} refused (stale socket?)") from None
        except OSError as exc:
            raise NoDaemon(f"no daemon on {path}: {exc.strerror or exc}") from None
        return cls(Path(path), reader, writer)

    async def _read_loop(self) -> None:
        reason = "connection closed by the daemon"
        try:
            while True:
                try:
                    line = await self._reader.readuntil(b"\n")
                except asyncio.IncompleteReadError:
                    break
                except asyncio.LimitOverrunError:
                    reason = "daemon sent an oversized line"
                    break
                try:
                    msg = _loads(line)
                except ValueError:
                    log.warning("control client: daemon sent a line that is not JSON")
                    continue
                if not isinstance(msg, dict):
                    continue
                if "event" in msg:
                    name, data, ts = msg.get("event"), msg.get("data"), msg.get("ts")
                    if type(name) is str and isinstance(data, dict):
                        if self._events.qsize() >= CLIENT_EVENT_QUEUE:
                            reason = "events arrived faster than they were read; disconnected"
                            break
                        self._events.put_nowait(
                            (name, data, float(ts) if isinstance(ts, int | float) else None))
                    continue
                msg_id = msg.get("id")
                fut = self._pending.pop(msg_id, None) if type(msg_id) is int else None
                if fut is None or fut.done():
                    continue
                err = msg.get("error")
                if isinstance(err, dict):
                    code = err.get("code")
                    data = err.get("data")
                    fut.set_exception(ControlError(
                        code if code in ERROR_CODES else "failed",
                        str(err.get("message", "")),
                        data if isinstance(data, dict) else {}))
                else:
                    fut.set_result(msg.get("result"))
        except (ConnectionError, OSError) as exc:
            reason = f"connection to the daemon lost: {exc}"
        finally:
            self._writer.transport.abort()
            self._closed_reason = self._closed_reason or reason
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(NoDaemon(self._closed_reason))
            self._pending.clear()
            self._events.put_nowait(None)

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """Return the result; raise ``ControlError``, or ``NoDaemon`` if unanswered in time."""
        if self._read_task.done():
            raise NoDaemon(self._closed_reason or "connection closed")
        self._next_id += 1
        req_id = self._next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            line = _dumps({"id": req_id, "method": method, "params": params or {}})
        except (TypeError, ValueError) as exc:
            self._pending.pop(req_id, None)
            raise LocalProtocolError(f"params are not JSON: {exc}") from None
        if len(line) > MAX_LINE:
            self._pending.pop(req_id, None)
            raise LocalProtocolError(f"request over {MAX_LINE} bytes")
        try:
            self._writer.write(line)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._pending.pop(req_id, None)
            raise NoDaemon(f"connection to the daemon lost: {exc}") from None
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise NoDaemon(f"daemon did not answer {method} within {timeout:g} s") from None
        finally:
            self._pending.pop(req_id, None)

    async def subscribe(self, patterns: list[str]) -> Subscription:
        """Subscribe to event ``patterns`` (fnmatch); once acknowledged, iterate ``(event, data)``.

        Events published after this returns are delivered; the iterator raises
        ``NoDaemon`` when the connection ends (the daemon stopped, or dropped us
        for reading too slowly).
        """
        result = await self.call("subscribe", {"events": list(patterns)})
        subscribed = result.get("subscribed", patterns) if isinstance(result, dict) else patterns
        return Subscription(self, list(subscribed))

    async def close(self) -> None:
        """Close the connection; pending calls raise ``NoDaemon``."""
        self._closed_reason = self._closed_reason or "client closed"
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        await cancel_and_wait(self._read_task)

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
