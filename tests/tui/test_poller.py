"""The poller against a real control server in process: polls, events, unknown methods, reconnects."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.control.server import ControlServer
from meshd.core.errors import ControlError
from tests.tui.fixtures import BRAVO, ME, NOW
from tui.model import MeshModel, Poller


@pytest.fixture
async def sock_dir() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cmtui", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class FakeNode:
    """The daemon's handlers for status and neighbours, over data the test changes."""

    def __init__(self) -> None:
        self.nbs: list[dict[str, Any]] = [{"node_id": BRAVO, "name": "bravo",
                                                  "rtt_ms": 2.0, "loss": 0.0}]
        self.calls = 0

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {"node_id": ME, "name": "alpha", "role": "car", "ready": True, "uptime_s": 1.0}

    async def neighbours(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"neighbours": list(self.nbs)}

    async def sync_status(self, params: dict[str, Any]) -> dict[str, Any]:
        raise ControlError("failed", "store is closed")

    def server(self, path: Path) -> ControlServer:
        return ControlServer(path, {"status": self.status, "neighbours": self.neighbours,
                                    "sync.status": self.sync_status})


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_poll_events_unknown_methods_and_reconnect(sock_dir: Path) -> None:
    path = sock_dir / "c.sock"
    node = FakeNode()
    model = MeshModel()
    changes: list[int] = []
    poller = Poller(path, model, lambda: changes.append(model.version), interval_s=0.05,
                    clock=lambda: NOW)
    task = asyncio.create_task(poller.run())
    try:
        # no daemon yet: the poller keeps trying and says why
        await until(lambda: "does not exist" in model.connection_note, 5, "no-daemon note")
        assert not model.connected
        server = node.server(path)
        await server.start()
        await until(lambda: BRAVO in model.neighbours and "routes" in model.unavailable, 5,
                    "first poll")
        assert model.connected and model.status is not None and model.status["name"] == "alpha"
        assert {"routes", "calls", "topology"} <= model.unavailable
        assert model.errors["sync.status"] == "store is closed"
        assert changes  # the view was told
        # an unavailable method is not asked again on this connection
        before = node.calls
        await until(lambda: node.calls >= before + 3, 5, "more polls")
        # events arrive between polls and are applied
        node.nbs = []
        server.publish("neighbour.lost", {"node_id": BRAVO, "reason": "test"})
        await until(lambda: BRAVO not in model.neighbours, 5, "neighbour.lost applied")
        assert any(ln.kind == "neighbour.lost" for ln in model.log)
        # the daemon goes away: disconnected, then it comes back: reconnected and re-read
        await server.close()
        await until(lambda: not model.connected, 5, "disconnect noticed")
        node.nbs = [{"node_id": BRAVO, "name": "bravo", "rtt_ms": 3.0, "loss": 0.0}]
        server = node.server(path)
        await server.start()
        await until(lambda: model.connected and BRAVO in model.neighbours, 10, "reconnect")
        assert poller.connections == 2
        result = await poller.request("status")
        assert result["node_id"] == ME
        with pytest.raises(ControlError) as err:
            await poller.request("library.search", {"query": "x"})
        assert err.value.code == "unknown_method"
        await server.close()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
