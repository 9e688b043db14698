"""``meshd`` at start: unsafe state directories and bad arguments are one clear line, never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemons import MESHD, Daemon, free_udp_port

pytestmark = pytest.mark.slow


@pytest.fixture
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cms", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def meshd(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run meshd to completion (for starts that must fail)."""
    return subprocess.run([*MESHD, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_world_writable_state_dir_is_refused(root: Path) -> None:
    state = root / "shared"
    state.mkdir()
    os.chmod(state, 0o777)
    r = meshd("--state-dir", state, "--listen", f"127.0.0.1:{free_udp_port()}")
    assert r.returncode == 1
    line = one_line_error(r)
    assert f"unsafe state directory {state}" in line and f"chmod go-w {state}" in line
    assert list(state.iterdir()) == []  # no key, no socket written into it


def test_a_new_state_dir_and_everything_in_it_are_private(root: Path) -> None:
    d = Daemon("ann", root / "new" / "state", ["--listen", f"127.0.0.1:{free_udp_port()}"],
               log_dir=root)
    try:
        d.start()  # meshd creates the state directory
        d.wait_ready()
        assert stat.S_IMODE(os.stat(d.state_dir).st_mode) == 0o700
        files = list(d.state_dir.rglob("*"))
        assert {"ops.sqlite", "control.sock"} <= {p.name for p in files}, files
        for p in files:
            assert stat.S_IMODE(os.lstat(p).st_mode) & 0o077 == 0, (p, oct(os.lstat(p).st_mode))
    finally:
        d.kill9()


def test_a_port_in_use_is_one_line(root: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        r = meshd("--state-dir", root / "n", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in last, r.stderr
    assert "pick another --listen port" in last


def test_a_name_longer_than_peers_accept_is_refused(root: Path) -> None:
    r = meshd("--state-dir", root / "n", "--name", "n" * 65, "--listen",
              f"127.0.0.1:{free_udp_port()}")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "name must be 1 to 64 characters (other nodes see no more), not 65" in r.stderr
    assert not (root / "n").exists()  # refused before anything was created
    r = meshd("--state-dir", root / "n", "--name", "car\x1b[2J", "--listen",
              f"127.0.0.1:{free_udp_port()}")
    assert r.returncode == 2 and "control or invisible" in r.stderr, r.stderr
