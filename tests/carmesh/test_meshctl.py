"""meshctl against a real ControlServer whose handlers behave like a small daemon."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh import meshctl
from carmesh.meshctl import ExitCode, main
from meshd.control.server import ControlServer
from meshd.core.errors import ControlError
from meshd.names import resolve_node
from meshd.paths import default_socket_path, default_state_dir

ME = "aa" * 16
CAR1 = "0123abcd" + "0" * 24
CAR2 = "0123abef" + "1" * 24
FAR = "9999ffff" + "2" * 24
GONE = "dead0000" + "3" * 24
FLAKY = "f1a50000" + "4" * 24
BROKEN = "b0b00000" + "5" * 24
KNOWN = [(CAR1, "car-1"), (CAR2, "car-2"), (FAR, "far"), (GONE, "gone"), (FLAKY, "flaky"),
         (BROKEN, "broken")]
MESHCTL = Path(sys.executable).parent / "meshctl"


class FakeDaemon:
    """Handlers with the daemon's result shapes, resolving NODE with the real resolve_node."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.ready = True
        self.pings: list[dict[str, Any]] = []
        self.flaky_n = 0
        self.sent: list[tuple[str, str, Any]] = []

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": ME, "short_id": ME[:8], "name": "my-car", "role": "car",
                "version": "0.1.0", "ready": self.ready, "uptime_s": 3725.5,
                "state_dir": str(self.state_dir), "listen": ["127.0.0.1:7420"],
                "interfaces": [], "neighbours": 2, "routes": 3}

    async def neighbours(self, params: dict[str, Any]) -> dict[str, Any]:
        base = {"role": "car", "state": "up", "loss": 0.25, "tx_packets": 10, "rx_packets": 9,
                "tx_bytes": 1000, "rx_bytes": 900, "up_since": time.time() - 90}
        return {"neighbours": [
            {**base, "node_id": CAR1, "short_id": CAR1[:8], "name": "car-1",
             "address": "127.0.0.1:7421", "rtt_ms": 1.5, "initiator": True},
            {**base, "node_id": CAR2, "short_id": CAR2[:8], "name": "car-2",
             "address": "127.0.0.1:7422", "rtt_ms": None, "initiator": False},
        ]}

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        self.pings.append(params)
        node, timeout = params.get("node"), params.get("timeout")
        if type(node) is not str or not isinstance(timeout, int | float):
            raise ControlError("bad_request", "ping needs node and timeout")
        target = resolve_node(node, KNOWN)
        name = dict(KNOWN).get(target, "")
        if target == GONE:
            raise ControlError("unreachable", "no route to dead0000",
                               {"node_id": target, "name": name})
        if target == BROKEN:
            raise ControlError("failed", "ping service crashed")
        if target == FLAKY:
            self.flaky_n += 1
            if self.flaky_n % 2 == 0:
                raise ControlError("timeout", f"no reply in {timeout} s")
        return {"node_id": target, "name": name, "short_id": target[:8],
                "rtt_ms": 2.0 + len(self.pings),
                "hops": 1 if target in (CAR1, CAR2) else 3}

    async def send(self, params: dict[str, Any]) -> dict[str, Any]:
        node, text = params.get("node"), params.get("text")
        if type(node) is not str or type(text) is not str:
            raise ControlError("bad_request", "send needs node and text")
        target = resolve_node(node, KNOWN)
        if target == GONE:
            raise ControlError("unreachable", "no route to dead0000")
        self.sent.append((target, text, params.get("timeout")))
        return {"node_id": target, "name": dict(KNOWN)[target], "short_id": target[:8],
                "message_id": "ab" * 12, "status": "delivered",
                "attempts": 1, "rtt_ms": 12.5}

    async def messages(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [
            {"message_id": "cd" * 12, "from": CAR1, "from_name": "car-1",
             "sent_ms": 1764180000000, "received_ms": 1764180000100, "text": "避難所は\n開いています"},
            {"message_id": "ef" * 12, "from": FAR, "from_name": "",
             "sent_ms": 1764180001000, "received_ms": 1764180001100, "text": "ok"},
        ]}

    def handlers(self) -> dict[str, Any]:
        return {"status": self.status, "neighbours": self.neighbours, "ping": self.ping,
                "send": self.send, "messages": self.messages}


@pytest.fixture
def state_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cm", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
async def daemon(state_dir: Path) -> AsyncIterator[FakeDaemon]:
    fake = FakeDaemon(state_dir)
    server = ControlServer(state_dir / "control.sock", fake.handlers())
    await server.start()
    try:
        yield fake
    finally:
        await server.close()


async def run(*argv: str | Path) -> int:
    """meshctl's real main(), in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, [str(a) for a in argv])


def sock(fake: FakeDaemon) -> str:
    return str(fake.state_dir / "control.sock")


@pytest.mark.parametrize("where", ["before", "after", "mixed"])
async def test_global_flags_before_or_after_the_command(
        daemon: FakeDaemon, capsys: pytest.CaptureFixture[str], where: str) -> None:
    s = sock(daemon)
    argv = {"before": ["--socket", s, "--json", "status"],
            "after": ["status", "--socket", s, "--json"],
            "mixed": ["--json", "status", "--socket", s]}[where]
    assert await run(*argv) == 0
    assert json.loads(capsys.readouterr().out)["node_id"] == ME


async def test_value_after_the_command_wins(
        daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--socket", "/tmp/cm-no-such.sock", "status", "--socket", sock(daemon)) == 0
    assert "my-car" in capsys.readouterr().out


async def test_state_dir_flag_and_env(daemon: FakeDaemon, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--state-dir", daemon.state_dir, "status") == 0
    assert await run("status", "--state-dir", daemon.state_dir) == 0
    monkeypatch.setenv("CARMESH_STATE_DIR", str(daemon.state_dir))
    assert await run("status") == 0
    monkeypatch.setenv("CARMESH_STATE_DIR", "/tmp/cm-nowhere")
    assert await run("status") == ExitCode.NO_DAEMON
    assert "/tmp/cm-nowhere/control.sock" in capsys.readouterr().err


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARMESH_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", "/var/xdg")
    assert default_state_dir() == Path("/var/xdg/carmesh")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    assert default_state_dir() == Path.home() / ".local/state/carmesh"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local/state/carmesh"
    monkeypatch.setenv("CARMESH_STATE_DIR", "/srv/cm")
    assert default_state_dir() == Path("/srv/cm")
    assert default_socket_path() == Path("/srv/cm/control.sock")
    assert default_socket_path(Path("/x")) == Path("/x/control.sock")


async def test_status_human_and_json(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("status", "--socket", sock(daemon)) == 0
    out = capsys.readouterr().out
    assert "my-car" in out and ME in out and "1h02m" in out and "127.0.0.1:7420" in out
    assert await run("status", "--socket", sock(daemon), "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == await daemon.status({})


async def test_status_not_ready_exits_1(daemon: FakeDaemon,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    daemon.ready = False
    assert await run("status", "--socket", sock(daemon), "--json") == ExitCode.FAILED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ready"] is False
    assert "not ready" in captured.err
    # --wait gives up after S seconds and still says it is not ready
    assert await run("status", "--socket", sock(daemon), "--wait", "0.3") == ExitCode.FAILED


async def test_status_wait_until_ready(daemon: FakeDaemon) -> None:
    daemon.ready = False
    asyncio.get_running_loop().call_later(0.3, lambda: setattr(daemon, "ready", True))
    assert await run("status", "--socket", sock(daemon), "--wait", "20") == 0


async def test_status_wait_for_a_daemon_that_starts_later(state_dir: Path) -> None:
    fake = FakeDaemon(state_dir)
    server = ControlServer(state_dir / "control.sock", fake.handlers())
    waiting = asyncio.create_task(run("status", "--state-dir", state_dir, "--wait", "20"))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await server.start()
    try:
        assert await waiting == 0
    finally:
        await server.close()


async def test_no_daemon_exits_3(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("status", "--state-dir", state_dir) == ExitCode.NO_DAEMON
    assert await run("neighbours", "--state-dir", state_dir) == ExitCode.NO_DAEMON
    assert await run("ping", "car-1", "--state-dir", state_dir) == ExitCode.NO_DAEMON
    assert await run("status", "--state-dir", state_dir, "--wait", "0.3") == ExitCode.NO_DAEMON
    assert "no daemon" in capsys.readouterr().err


async def test_silent_daemon_exits_3(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def hang(params: dict[str, Any]) -> Any:
        await asyncio.sleep(3600)

    server = ControlServer(state_dir / "control.sock", {"status": hang})
    await server.start()
    monkeypatch.setattr(meshctl.node, "CALL_TIMEOUT_S", 0.2)  # status lives in the node group
    try:
        assert await run("status", "--state-dir", state_dir) == ExitCode.NO_DAEMON
    finally:
        await server.close()


async def test_too_long_socket_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("status", "--socket", "/tmp/" + "x" * 120) == ExitCode.USAGE
    assert "under 100" in capsys.readouterr().err


async def test_neighbours_human_and_json(daemon: FakeDaemon,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("neighbours", "--socket", sock(daemon)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["NODE", "NAME", "ROLE", "ADDRESS", "STATE"]
    assert lines[1].split()[:7] == ["0123abcd", "car-1", "car", "127.0.0.1:7421", "up", "1.5",
                                    "25%"]
    assert lines[1].split()[-2:] == ["1m30s", "out"]
    assert lines[2].split()[5] == "-"  # no RTT yet
    assert await run("neighbours", "--json", "--socket", sock(daemon)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["node_id"] for n in doc["neighbours"]] == [CAR1, CAR2]
    assert set(doc["neighbours"][0]) == {
        "node_id", "short_id", "name", "role", "address", "state", "rtt_ms", "loss",
        "tx_packets", "rx_packets", "tx_bytes", "rx_bytes", "up_since", "initiator"}


async def test_ping_human(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "far", "--count", "3", "--interval", "0", "--timeout", "1.5",
                     "--socket", sock(daemon)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "reply from far (9999ffff): seq=1 hops=3 time=3.00 ms"
    assert out[2] == "reply from far (9999ffff): seq=3 hops=3 time=5.00 ms"
    assert out[3] == "--- far (9999ffff) ping statistics ---"
    assert out[4] == "3 sent, 3 received, 0% loss"
    assert out[5] == "rtt min/avg/max = 3.00/4.00/5.00 ms"
    assert daemon.pings == [{"node": "far", "timeout": 1.5}] * 3


async def test_ping_json_shape(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--json", "ping", "0123abc", "-c", "2", "-i", "0",
                     "--socket", sock(daemon)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "node": "0123abc", "node_id": CAR1, "name": "car-1", "short_id": "0123abcd",
        "sent": 2, "received": 2,
        "loss": 0.0, "rtt_ms": {"min": 3.0, "avg": 3.5, "max": 4.0},
        "replies": [{"seq": 1, "rtt_ms": 3.0, "hops": 1}, {"seq": 2, "rtt_ms": 4.0, "hops": 1}],
        "errors": []}


async def test_ping_partial_loss_is_success(daemon: FakeDaemon,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "flaky", "-c", "4", "-i", "0", "--json",
                     "--socket", sock(daemon)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["sent"], doc["received"], doc["loss"]) == (4, 2, 0.5)
    assert [e["seq"] for e in doc["errors"]] == [2, 4]
    assert {e["code"] for e in doc["errors"]} == {"timeout"}


async def test_ping_unreachable_exits_4(daemon: FakeDaemon,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "gone", "-c", "2", "-i", "0", "--json",
                     "--socket", sock(daemon)) == ExitCode.UNREACHABLE
    doc = json.loads(capsys.readouterr().out)
    assert doc["received"] == 0 and doc["sent"] == 2 and doc["loss"] == 1.0
    assert doc["node_id"] == GONE and doc["name"] == "gone"
    assert doc["rtt_ms"] == {"min": None, "avg": None, "max": None}
    assert await run("ping", "gone", "-c", "1", "--socket", sock(daemon)) == 4
    out = capsys.readouterr().out
    assert "unreachable: no route to dead0000" in out and "1 sent, 0 received, 100% loss" in out


async def test_ping_unknown_node_exits_4(daemon: FakeDaemon,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "nobody", "-c", "3", "--json",
                     "--socket", sock(daemon)) == ExitCode.UNREACHABLE
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "not_found"
    assert "nobody" in captured.err
    assert len(daemon.pings) == 1  # no point asking again


async def test_ping_ambiguous_node_exits_2_and_lists_candidates(
        daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "0123", "--socket", sock(daemon)) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"{CAR1}  car-1" in err and f"{CAR2}  car-2" in err
    assert await run("ping", "0123", "--json", "--socket", sock(daemon)) == ExitCode.USAGE
    doc = json.loads(capsys.readouterr().out)
    assert doc["error"]["code"] == "ambiguous"
    assert doc["error"]["data"]["candidates"] == [{"node_id": CAR1, "name": "car-1"},
                                                  {"node_id": CAR2, "name": "car-2"}]


async def test_ping_failure_exits_1(daemon: FakeDaemon,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("ping", "broken", "--socket", sock(daemon)) == ExitCode.FAILED
    assert "ping service crashed" in capsys.readouterr().err


async def test_unknown_method_exits_1(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeDaemon(state_dir)
    server = ControlServer(state_dir / "control.sock", {"status": fake.status})
    await server.start()
    try:
        assert await run("neighbours", "--state-dir", state_dir) == ExitCode.FAILED
        assert "neighbours" in capsys.readouterr().err
    finally:
        await server.close()


async def test_send(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("send", "car-2", "給水は 3 時から", "--socket", sock(daemon)) == 0
    assert capsys.readouterr().out.strip() == (
        f"delivered to car-2 (0123abef): message {'ab' * 12}, 1 attempt(s), 12.5 ms")
    assert daemon.sent == [(CAR2, "給水は 3 時から", 10.0)]
    assert await run("--json", "send", "far", "hi", "--timeout", "3",
                     "--socket", sock(daemon)) == 0
    assert json.loads(capsys.readouterr().out) == {
        "node_id": FAR, "name": "far", "short_id": "9999ffff",
        "message_id": "ab" * 12, "status": "delivered", "attempts": 1,
        "rtt_ms": 12.5}
    assert daemon.sent[-1] == (FAR, "hi", 3.0)
    assert await run("send", "gone", "hi", "--socket", sock(daemon)) == ExitCode.UNREACHABLE
    assert await run("send", "0123", "hi", "--socket", sock(daemon)) == ExitCode.USAGE
    assert await run("send", "car-1", "--socket", sock(daemon)) == ExitCode.USAGE
    assert len(daemon.sent) == 2


async def test_messages(daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("messages", "--socket", sock(daemon)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RECEIVED", "FROM", "NAME", "TEXT"]
    assert lines[1].split()[2:] == ["0123abcd", "car-1", "避難所は", "開いています"]
    assert lines[2].split()[2:] == ["9999ffff", "-", "ok"]
    assert await run("messages", "--json", "--socket", sock(daemon)) == 0
    assert json.loads(capsys.readouterr().out) == await daemon.messages({})


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["ping"],
    ["ping", "car-1", "--count", "0"],
    ["ping", "car-1", "--timeout", "0"],
    ["ping", "car-1", "--timeout", "61"],
    ["ping", "car-1", "--interval", "-1"],
    ["ping", "car-1", "--count", "two"],
    ["status", "--wait", "nan"],
    ["status", "--bogus"],
])
async def test_usage_errors_exit_2(daemon: FakeDaemon, argv: list[str],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(*argv, "--socket", sock(daemon)) == ExitCode.USAGE
    assert capsys.readouterr().err
    assert daemon.pings == []


async def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run("--help") == 0
    out = capsys.readouterr().out
    assert "status" in out and "neighbours" in out and "ping" in out
    assert await run("ping", "--help") == 0
    assert "--count" in capsys.readouterr().out


async def test_console_script(daemon: FakeDaemon) -> None:
    assert MESHCTL.exists()
    env = {**os.environ, "CARMESH_STATE_DIR": str(daemon.state_dir)}
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, "status", "--json", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert json.loads(out)["name"] == "my-car"
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, "--json", "ping", "gone", "-c", "1", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 4, err
    assert json.loads(out)["received"] == 0
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, "status", "--state-dir", "/tmp/cm-nowhere",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 3
    assert b"no daemon" in err


async def test_ping_interrupted_prints_summary(daemon: FakeDaemon) -> None:
    env = {**os.environ, "CARMESH_STATE_DIR": str(daemon.state_dir)}
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, "ping", "far", "-c", "10000", "-i", "0.05", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            for _ in range(2):
                assert (await proc.stdout.readline()).startswith(b"reply from far")
        proc.send_signal(signal.SIGINT)
        out, _err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert b"--- far (9999ffff) ping statistics ---" in out
    assert len(daemon.pings) < 10000


async def test_a_closed_pipe_ends_meshctl_quietly(daemon: FakeDaemon) -> None:
    """``meshctl ping ... | head -1``: no BrokenPipeError traceback (issue 11, item 13)."""
    env = {**os.environ, "CARMESH_STATE_DIR": str(daemon.state_dir)}
    proc = await asyncio.create_subprocess_exec(
        MESHCTL, "ping", "far", "-c", "100000", "-i", "0", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(60):
            assert (await proc.stdout.readline()).startswith(b"reply from far")
        proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]  # head exits
        err = await asyncio.wait_for(proc.stderr.read(), 60)
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert err == b""
    assert proc.returncode == 0
    assert len(daemon.pings) < 100000


async def test_json_failures_still_print_one_error_document(
        daemon: FakeDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """Under --json stdout is always one JSON document: usage, no daemon, daemon errors alike."""
    cases: list[tuple[list[str | Path], ExitCode, str]] = [
        (["--json", "status", "--socket", "/tmp/cm-none/control.sock"], ExitCode.NO_DAEMON,
         "no_daemon"),
        (["ping", "car-1", "--count", "two", "--json"], ExitCode.USAGE, "usage"),
        (["--json", "no-such-command"], ExitCode.USAGE, "usage"),
        (["situation", "set", "person", "--field", "oops", "--json", "--socket", sock(daemon)],
         ExitCode.USAGE, "usage"),
        (["ping", "0123", "--json", "--socket", sock(daemon)], ExitCode.USAGE, "ambiguous"),
    ]
    for argv, code, name in cases:
        assert await run(*argv) == code, argv
        captured = capsys.readouterr()
        doc = json.loads(captured.out)
        assert doc["error"]["code"] == name, (argv, doc)
        assert doc["error"]["message"] and captured.err
    # without --json nothing but human text: stdout stays empty on a failure
    assert await run("ping", "car-1", "--count", "two") == ExitCode.USAGE
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------- hostile remote text

ESC = "\x1b[2J\x1b[H\x1b[1;31mSYSTEM: evacuate north\x1b[0m"
RLO = "\u202eefac"  # reads as "cafe" on a terminal that honours the override
HOSTILE = "0bad0000" + "6" * 24
_RAW = ("\x1b", "\x9b", "\x07", "\u202e", "\u2066", "\u2069")


class HostileDaemon:
    """Every remote-supplied string in every shape meshctl prints carries escapes or overrides."""

    async def messages(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"messages": [{"from": HOSTILE, "from_name": RLO, "received_ms": 1764180000100,
                              "text": ESC + "\nsecond line\u2066"}]}

    async def neighbours(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"neighbours": [{"node_id": HOSTILE, "short_id": HOSTILE[:8], "name": ESC,
                                "role": "car\x07", "state": "up"}]}

    async def send(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": HOSTILE, "name": RLO + "\nSYSTEM: ok", "short_id": HOSTILE[:8],
                "message_id": "ab" * 12, "status": "delivered", "attempts": 1, "rtt_ms": 1.0}

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": HOSTILE, "name": ESC, "short_id": HOSTILE[:8], "rtt_ms": 1.0,
                "hops": 1}

    async def situation_show(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": HOSTILE, "name": RLO, "short_id": HOSTILE[:8], "records": [
            {"kind": "person", "name": ESC, "owner": HOSTILE, "updated_ms": 1764180000100,
             "fields": {"note\x1b[8m": "\x9b2J\u2066safe\u2069", "status": ESC}}]}

    async def bulletin_list(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"bulletins": [{"title": "\x1b]0;owned\x07" + RLO, "body": ESC,
                               "authority": {"name": RLO, "role": "city"},
                               "issued_ms": 1764180000100, "expires_ms": 1764190000100}]}

    async def library_show(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"doc_id": "cd" * 16, "title": ESC, "collection": RLO, "tags": [ESC],
                "body": "line 1\n" + ESC, "changes": 1}

    async def calls(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"calls": [{"call_id": "ef" * 10, "peer": HOSTILE, "peer_name": ESC,
                           "role": "caller", "state": "ringing"}]}

    async def fail(self, params: dict[str, Any]) -> dict[str, Any]:
        raise ControlError("ambiguous", f"{RLO!s} matches 2 nodes", {"candidates": [
            {"node_id": HOSTILE, "name": ESC}, {"node_id": CAR1, "name": RLO}]})

    def handlers(self) -> dict[str, Any]:
        return {"messages": self.messages, "neighbours": self.neighbours, "send": self.send,
                "ping": self.ping, "situation.show": self.situation_show,
                "bulletin.list": self.bulletin_list, "library.show": self.library_show,
                "calls": self.calls, "traceroute": self.fail}


async def test_hostile_remote_text_is_escaped_in_every_human_output(
        state_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = ControlServer(state_dir / "control.sock", HostileDaemon().handlers())
    await server.start()
    s = str(state_dir / "control.sock")
    try:
        outputs = {}
        for argv in (["messages"], ["neighbours"], ["send", "x", "hi"], ["ping", "x", "-c", "1"],
                     ["situation", "show", "x"], ["bulletin", "list"],
                     ["library", "show", "cdcd"], ["calls"], ["traceroute", "x"]):
            await run(*argv, "--socket", s)
            captured = capsys.readouterr()
            outputs[argv[0]] = captured.out + captured.err
        for cmd, text in outputs.items():
            for raw in _RAW:
                assert raw not in text, (cmd, raw, text)
        assert "\\x1b[2J\\x1b[H\\x1b[1;31mSYSTEM: evacuate north\\x1b[0m" in outputs["neighbours"]
        assert "\\u202eefac" in outputs["messages"]
        # a newline inside a name cannot start a line of its own
        assert outputs["send"].splitlines()[0].startswith(
            "delivered to \\u202eefac\\x0aSYSTEM: ok (0bad0000)")
        assert "\\x9b2J\\u2066safe\\u2069" in outputs["situation"]
        assert outputs["situation"].startswith("situation of \\u202eefac (0bad0000)")
        assert "\\x1b]0;owned\\x07\\u202eefac" in outputs["bulletin"]
        assert "line 1\n\\x1b[2J" in outputs["library"]  # a body keeps its lines
        assert "\\u202eefac matches 2 nodes" in outputs["traceroute"]
    finally:
        await server.close()


def test_each_command_group_is_known_and_a_node_command_loads_no_other_group(
        tmp_path: Path) -> None:
    meshctl._load_groups()
    assert {name: cmd.run.__module__.rsplit(".", 1)[1]
            for name, cmd in meshctl.COMMANDS.items()} == meshctl._COMMAND_GROUP
    assert meshctl._command_in(["--state-dir", "status", "--json", "routes", "x"]) == "routes"
    assert meshctl._command_in(["--state-dir=/s", "--json"]) is None
    # a fresh interpreter: `meshctl status` (no daemon: exit 3) imports no other group
    code = ("import sys\nfrom carmesh.meshctl import main\n"
            f"rc = main(['--state-dir', {str(tmp_path)!r}, '--json', 'status'])\n"
            "print(rc, sorted(m for m in sys.modules if m.startswith('carmesh.meshctl.')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (
        f"{int(ExitCode.NO_DAEMON)} ['carmesh.meshctl.common', 'carmesh.meshctl.node']")
