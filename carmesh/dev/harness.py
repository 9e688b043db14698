"""Real ``meshd`` processes for tests, the demo and benchmarks, driven through real ``meshctl``.

``Cluster`` starts daemons (on loopback, or inside a network namespace via a
command prefix), waits until ``meshctl status`` answers, and kills every
process it started when the ``with`` block ends, also when a test fails.
State directories are short paths under /tmp (the control socket path must
stay under 100 bytes; pytest's ``tmp_path`` can be longer).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MESHCTL", "MESHD", "Cluster", "Daemon", "free_udp_port", "wait_until"]

BIN = Path(sys.executable).parent
MESHD = [str(BIN / "meshd")] if (BIN / "meshd").exists() else [sys.executable, "-m", "carmesh.cli"]
MESHCTL = ([str(BIN / "meshctl")] if (BIN / "meshctl").exists()
           else [sys.executable, "-m", "carmesh.meshctl"])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Daemon:
    """One meshd process and the meshctl calls that talk to it."""

    def __init__(self, name: str, state_dir: Path, args: Sequence[str],
                 prefix: Sequence[str] = (), log_dir: Path | None = None,
                 log_level: str = "debug", env: dict[str, str] | None = None) -> None:
        self.log_level = log_level
        self.env = dict(env or {})
        self.name = name
        self.state_dir = state_dir
        self.args = list(args)
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = (log_dir or state_dir) / f"{name}.log"
        self.node_id = ""

    def start(self) -> Daemon:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*self.prefix, *MESHD, "--state-dir", str(self.state_dir), "--name", self.name,
             "--log-level", self.log_level, *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.env})
        log.close()
        return self

    def meshctl(self, *args: str, timeout: float = 20.0) -> tuple[int, Any]:
        """Run ``meshctl --json ARGS``; returns (exit code, parsed JSON or stdout text)."""
        r = subprocess.run([*self.prefix, *MESHCTL, "--state-dir", str(self.state_dir), "--json",
                            *args], capture_output=True, timeout=timeout, check=False)
        out = r.stdout.decode()
        try:
            return r.returncode, json.loads(out) if out.strip() else None
        except json.JSONDecodeError:
            return r.returncode, out + r.stderr.decode()

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{self.log()}")
            rc, data = self.meshctl("status")
            return data if rc == 0 and isinstance(data, dict) and data.get("ready") else None

        status: dict[str, Any] = wait_until(ready, timeout, 0.2, f"{self.name} ready")
        self.node_id = status["node_id"]
        return status

    def neighbours(self) -> dict[str, dict[str, Any]]:
        """Usable neighbours by display name."""
        rc, data = self.meshctl("neighbours")
        if rc != 0 or not isinstance(data, dict):
            return {}
        return {n["name"]: n for n in data["neighbours"] if n.get("state") == "up"}

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


class Cluster:
    """Daemons started in a test; all of them are killed and their state removed on exit."""

    def __init__(self, *, log_level: str = "debug") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cmt", dir="/tmp"))
        self.log_level = log_level
        self.daemons: dict[str, Daemon] = {}

    def add(self, name: str, args: Sequence[str], prefix: Sequence[str] = (),
            env: dict[str, str] | None = None) -> Daemon:
        state = self.root / name
        state.mkdir(exist_ok=True)
        d = Daemon(name, state, args, prefix, log_dir=self.root, log_level=self.log_level,
                   env=env)
        self.daemons[name] = d
        return d.start()

    def __getitem__(self, name: str) -> Daemon:
        return self.daemons[name]

    def __iter__(self) -> Iterator[Daemon]:
        return iter(self.daemons.values())

    def __enter__(self) -> Cluster:
        return self

    def logs(self) -> str:
        return "\n".join(f"----- {d.name}\n{d.log()}" for d in self)

    def __exit__(self, *exc: object) -> None:
        for d in self:
            d.kill9()
        if exc[0] is not None:
            sys.stderr.write(self.logs())
        shutil.rmtree(self.root, ignore_errors=True)
