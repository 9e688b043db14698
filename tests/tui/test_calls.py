"""Pilot drives the calls view over a real control socket whose ``calls`` method and
``call.*`` events follow the shapes in docs/cli.md (meshd does not serve calls until the
voice service is wired into the daemon; the live tests cover that case)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshd.control.server import ControlServer
from tests.tui.fixtures import DELTA, ME
from tests.tui.helpers import wait_for_text
from tui.app import MeshConsole


@pytest.fixture
async def sock_dir() -> AsyncIterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cmtui", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _call(state: str, rtt_ms: float | None, reason: str | None = None) -> dict[str, Any]:
    return {"call_id": "3ba96b35bec92ed2d884a0498f4ad78e", "peer": DELTA, "peer_name": "delta",
            "role": "caller", "state": state, "reason": reason, "flow_id": 688698988,
            "duration_s": 2.0, "setup_ms": 160.9,
            "quality": None if rtt_ms is None else {"rtt_ms": rtt_ms, "jitter_ms": 3.1,
                                                    "loss": 0.02}}


async def test_a_call_appears_with_its_quality_and_ends(sock_dir: Path) -> None:
    calls: list[dict[str, Any]] = []

    async def status(params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": ME, "name": "alpha", "role": "car", "ready": True, "uptime_s": 5.0}

    async def list_calls(params: dict[str, Any]) -> dict[str, Any]:
        return {"calls": list(calls)}

    server = ControlServer(sock_dir / "c.sock", {"status": status, "calls": list_calls})
    await server.start()
    try:
        # a long poll interval: what changes quickly on screen was pushed by an event
        app = MeshConsole(sock_dir / "c.sock", interval_s=30.0)
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("c")
            await wait_for_text(pilot, lambda t: "no calls" in t, 10, "an empty call list")
            calls.append(_call("ringing", None))
            server.publish("call.state", calls[-1])
            await wait_for_text(pilot, lambda t: "delta" in t and "ringing" in t, 5,
                                "the ringing call")
            calls[-1] = _call("active", 12.5)
            server.publish("call.state", calls[-1])
            text = await wait_for_text(pilot, lambda t: "active" in t and "12.5" in t, 5,
                                       "the active call with its RTT")
            row = next(ln for ln in text.splitlines() if "delta" in ln)
            assert "3.1" in row and "2%" in row and "caller" in row
            calls[-1] = _call("active", 30.0)
            server.publish("call.media", {"call_id": calls[-1]["call_id"], "state": "connected"})
            await wait_for_text(pilot, lambda t: "30.0" in t, 5, "the RTT moving")
            calls[-1] = _call("ended", 30.0, "hung up by peer")
            server.publish("call.ended", calls[-1])
            await wait_for_text(pilot, lambda t: "ended (hung up by peer)" in t, 5,
                                "the ended call")
            assert [c.state for c in app.model.calls] == ["ended"]
    finally:
        await server.close()
