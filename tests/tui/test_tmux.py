"""The real command in a real terminal: tmux runs ``meshctl tui`` against a three-node mesh."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from carmesh.dev.harness import MESHCTL, Cluster

TMUX = shutil.which("tmux")


def _tmux(sock: str, *args: str) -> str:
    r = subprocess.run([TMUX or "tmux", "-L", sock, *args], capture_output=True, text=True,
                       timeout=10, check=False)
    return r.stdout


def _wait_pane(sock: str, pred: Callable[[str], bool], timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = _tmux(sock, "capture-pane", "-p", "-t", "tui")
        if pred(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; pane:\n{text}")


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_meshctl_tui_in_tmux(star: Cluster) -> None:
    sock = f"cmtui{os.getpid()}"
    done = star.root / "tui.exit"
    cmd = " ".join(shlex.quote(a) for a in
                   [*MESHCTL, "--state-dir", str(star["alpha"].state_dir), "tui"])
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", TERM="xterm-256color")
    for var in ("COLUMNS", "LINES", "TMUX"):  # pytest-xdist sets 80x24: the pane's size must rule
        env.pop(var, None)
    try:
        subprocess.run([TMUX or "tmux", "-L", sock, "-f", "/dev/null", "new-session", "-d",
                        "-s", "tui", "-x", "120", "-y", "40",
                        f"{cmd}; echo $? > {shlex.quote(str(done))}; sleep 30"],
                       env=env, check=True, timeout=10)
        _wait_pane(sock, lambda t: "alpha" in t and "● connected" in t, 20,
                   "the console connected to alpha")
        _tmux(sock, "send-keys", "-t", "tui", "n")
        pane = _wait_pane(sock, lambda t: "bravo" in t and "charlie" in t, 20,
                          "bravo and charlie in the neighbours view")
        assert "2 Nbrs" in pane  # 11 views: short tab labels at 120 columns
        _tmux(sock, "send-keys", "-t", "tui", "t")
        pane = _wait_pane(sock, lambda t: "3 nodes, 2 links" in t and "─ bravo" in t
                          and "─ charlie" in t, 20, "both links in the topology view")
        corners = [ln for ln in pane.splitlines() if "╰" in ln or "╭" in ln]
        assert len(corners) == 3, pane  # alpha's row joins both lanes; one end each other
        _tmux(sock, "send-keys", "-t", "tui", "q")
        deadline = time.monotonic() + 10
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run([TMUX or "tmux", "-L", sock, "kill-server"], capture_output=True,
                       timeout=10, check=False)


def test_meshctl_tui_without_a_daemon_exits_3() -> None:
    short = Path(tempfile.mkdtemp(prefix="cmtui", dir="/tmp"))
    try:
        r = subprocess.run([*MESHCTL, "--state-dir", str(short), "tui"], capture_output=True,
                           text=True, timeout=30, check=False)
        assert r.returncode == 3, r.stderr
        assert "no daemon" in r.stderr
    finally:
        shutil.rmtree(short, ignore_errors=True)
