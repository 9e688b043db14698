"""``meshctl watch``: events as lines (escaped) or JSON lines; exit 0 on a signal, 3 without daemon.

The command runs as a real subprocess against a real ``ControlServer`` (events published
by the test) and against real daemons on loopback (a message sent by a neighbour, a
bulletin published by an authority).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh.meshctl.watch import _shown, describe
from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.control.server import ControlServer
from meshd.core.identity import Identity
from tests.daemons import MESHCTL, Cluster, free_udp_port, wait_until

ME = "aa" * 16
PEER = "0123abcd" + "0" * 24


def test_shown_escapes_controls_and_bidi_on_one_line() -> None:
    assert _shown("\x1b[2J\x1b[31mSYSTEM: evacuate north") == (
        "\\x1b[2J\\x1b[31mSYSTEM: evacuate north")
    assert _shown("cafe\u202eefac") == "cafe\\u202eefac"
    assert _shown("line1\nline2\r\x07\x7f\x85") == "line1\\x0aline2\\x0d\\x07\\x7f\\x85"
    assert _shown("避難所は体育館です") == "避難所は体育館です"
    assert _shown("x" * 500, limit=5) == "xxxxx…"


def test_describe_lines() -> None:
    assert describe("call.incoming", {"call_id": "c0ffee" * 6, "peer": PEER,
                                      "peer_name": "car\x1b[2J", "auto_answer": False}) == (
        "call      incoming from car\\x1b[2J (0123abcd); answer: meshctl answer c0ffeec0ffee"
        "  decline: meshctl decline c0ffeec0ffee")
    assert describe("call.ended", {"call_id": "c0ffee" * 6, "peer": PEER, "peer_name": "",
                                   "reason": "missed"}) == (
        "call      c0ffeec0ffee with 0123abcd ended: missed")
    assert describe("message.received", {"from": PEER, "from_name": "bob",
                                         "text": "meet at\nthe shelter"}) == (
        "message   from bob (0123abcd): meet at\\x0athe shelter")
    assert describe("bulletin.published", {"bulletin": {
        "title": "Water", "body": "at the park", "authority": {"name": "City"}}}) == (
        "bulletin  [City] Water: at the park")
    assert describe("neighbour.up", {}) is None


# -- against a control server the test publishes on --------------------------------------------


@pytest.fixture
def state_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cmw", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[ControlServer]:
    async def status(params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": ME, "name": "my-car", "ready": True}

    srv = ControlServer(state_dir / "control.sock", {"status": status})
    await srv.start()
    try:
        yield srv
    finally:
        await srv.close()


async def _start_watch(state_dir: Path, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *MESHCTL, "--state-dir", str(state_dir), "watch", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    banner = await asyncio.wait_for(proc.stderr.readline(), 60)  # printed once subscribed
    assert b"watching my-car (aaaaaaaa)" in banner, banner
    return proc


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_watch_prints_escaped_lines_and_exits_0_on_a_signal(
        server: ControlServer, state_dir: Path, sig: signal.Signals) -> None:
    proc = await _start_watch(state_dir)
    server.publish("neighbour.up", {"node_id": PEER})  # not followed
    server.publish("message.received", {"from": PEER, "from_name": "evil\u202e",
                                        "text": "\x1b[2JSYSTEM: evacuate north"})
    line = await _line(proc)
    assert line.endswith("  message   from evil\\u202e (0123abcd): \\x1b[2JSYSTEM: evacuate"
                         " north\n"), line
    assert "\x1b" not in line
    proc.send_signal(sig)
    assert await asyncio.wait_for(proc.wait(), 30) == 0


async def test_watch_json_lines_and_exit_3_when_the_daemon_goes_away(
        server: ControlServer, state_dir: Path) -> None:
    proc = await _start_watch(state_dir, "--json")
    data = {"call_id": "ab" * 16, "peer": PEER, "peer_name": "bob", "auto_answer": False}
    server.publish("call.incoming", data)
    server.publish("bulletin.published", {"bulletin": {"title": "T\n", "body": "B"}})
    first, second = json.loads(await _line(proc)), json.loads(await _line(proc))
    assert (first["event"], first["data"]) == ("call.incoming", data)
    assert isinstance(first["ts"], float)
    assert (second["event"], second["data"]["bulletin"]["title"]) == ("bulletin.published", "T\n")
    await server.close()
    assert await asyncio.wait_for(proc.wait(), 30) == 3
    assert proc.stderr is not None
    assert b"the daemon went away" in await proc.stderr.read()


async def test_watch_without_a_daemon_exits_3(state_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *MESHCTL, "--state-dir", str(state_dir), "watch",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3 and b"no daemon" in err


# -- real daemons ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_watch_follows_real_messages_and_bulletins() -> None:
    import subprocess

    with Cluster(log_level="info") as cl:
        (cl.root / "bob").mkdir()
        bob_id = Identity.load_or_create(cl.root / "bob")
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(Identity.generate().ed25519_pub, 1, {
            bob_id.ed25519_pub: Authority(bob_id.ed25519_pub, AuthorityRole.CITY,
                                          "City of Test")}).to_toml())
        pa, pb = free_udp_port(), free_udp_port()
        flags = ["--no-web", "--metrics", "off", "--trust", str(trust)]
        bob = cl.add("bob", ["--listen", f"127.0.0.1:{pb}", *flags])
        ann = cl.add("ann", ["--listen", f"127.0.0.1:{pa}", "--peer", f"127.0.0.1:{pb}", *flags])
        bob.wait_ready()
        ann.wait_ready()
        wait_until(lambda: "bob" in ann.neighbours(), 20, what="ann links to bob")
        proc = subprocess.Popen([*MESHCTL, "--state-dir", str(bob.state_dir), "watch"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None and proc.stdout is not None
            assert "watching bob" in proc.stderr.readline()
            rc, res = ann.meshctl("send", "bob", "水は\x1b[31m体育館")
            assert rc == 0, res
            line = proc.stdout.readline()
            assert f"message   from ann ({ann.node_id[:8]}): 水は\\x1b[31m体育館" in line, line
            rc, res = bob.meshctl("bulletin", "publish", "--title", "給水", "--body",
                                  "公園で10時から")
            assert rc == 0, res
            line = proc.stdout.readline()
            assert "bulletin  [City of Test] 給水: 公園で10時から" in line, line
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
