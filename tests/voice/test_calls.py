"""Real aiortc calls over the in-process mesh (line A–B–C–D), in a throwaway network namespace.

Audio is verified by frequency analysis of what the far side recorded, never
by a state flag.  Needs root (``unshare --net``); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.voice.audio import dominant_hz, read_wav, tone_windows
from tests.voice.scenarios import run_isolated

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare(1) for a private network namespace"),
]

NAMES = ["line_a_to_d", "line_d_to_a", "loss5", "redundant"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_isolated(tmp_path_factory.mktemp("voice"), NAMES)


def _ok(results: dict[str, Any], name: str) -> dict[str, Any]:
    r = results[name]
    assert "error" not in r, r.get("traceback", r)
    return dict(r)


def _assert_tone(path: str, freq: float, min_fraction: float, min_s: float = 2.0) -> None:
    samples, rate = read_wav(Path(path))
    assert len(samples) / rate > min_s, f"recording shorter than {min_s} s"
    assert abs(dominant_hz(samples, rate) - freq) < 5
    windows = tone_windows(samples, rate, freq)
    assert sum(windows) / len(windows) >= min_fraction, windows


@pytest.mark.parametrize("name", ["line_a_to_d", "line_d_to_a"])
def test_tone_crosses_two_relays_both_ways(results: dict[str, Any], name: str) -> None:
    r = _ok(results, name)
    _assert_tone(r["rec_callee"], r["tone_caller"], 0.9)
    _assert_tone(r["rec_caller"], r["tone_callee"], 0.9)
    assert r["caller"]["reason"] == "hung up"
    assert r["callee"]["reason"] == "hung up by peer"
    assert r["callee"]["setup_ms"] is not None
    q = r["caller"]["quality"]
    assert q["rtt_ms"] is not None and q["packets_received"] > 50


@pytest.mark.parametrize("name", ["line_a_to_d", "line_d_to_a"])
def test_relays_forward_only_ciphertext(results: dict[str, Any], name: str) -> None:
    r = _ok(results, name)
    assert r["forwarded"]["B"] > 100 and r["forwarded"]["C"] > 100
    assert r["relay_saw_plaintext"] is False, r["plaintext_seen"]


def test_five_percent_loss_connects_and_tone_arrives(results: dict[str, Any]) -> None:
    r = _ok(results, "loss5")
    _assert_tone(r["rec_callee"], r["tone_caller"], 0.6, min_s=1.0)
    _assert_tone(r["rec_caller"], r["tone_callee"], 0.6, min_s=1.0)


def test_lossy_path_sends_srtp_twice_and_the_far_node_drops_the_repeats(
        results: dict[str, Any]) -> None:
    """5 % loss per hop over three hops: both ends see > 1 % loss and turn the second copy on;
    each far node drops repeats (some copies are lost, so fewer than were sent), and the tone
    arrives both ways."""
    r = _ok(results, "redundant")
    assert r["active"] == [True, True], r
    for sent, dropped in zip(r["copies_sent"], reversed(r["copies_dropped"]), strict=True):
        assert sent > 50 and 0 < dropped < sent, r
    _assert_tone(r["rec_callee"], r["tone_caller"], 0.6, min_s=1.0)
    _assert_tone(r["rec_caller"], r["tone_callee"], 0.6, min_s=1.0)


def test_on_uvloop_like_meshd(tmp_path: Path) -> None:
    """meshd runs on uvloop: the relay socket and aiortc must work there too."""
    r = run_isolated(tmp_path, ["line_a_to_d"], uvloop=True)["line_a_to_d"]
    assert "error" not in r, r.get("traceback", r)
    _assert_tone(r["rec_callee"], r["tone_caller"], 0.9)
    _assert_tone(r["rec_caller"], r["tone_callee"], 0.9)
