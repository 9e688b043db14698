"""How calls end, on both sides, with real endpoints over the in-process mesh (private netns).

Busy, declined, unreachable, hang-up by either side; a signalling message
altered in transit is refused; a relay dying mid-call only pauses the audio.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.voice.audio import longest_gap_s, read_wav, tone_windows
from tests.voice.scenarios import OUTAGE_S, TONE_A, TONE_D, run_isolated
from voice.service import MEDIA_STALL_S

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare(1) for a private network namespace"),
]


@pytest.fixture(scope="module")
def endings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_isolated(tmp_path_factory.mktemp("voice-end"),
                        ["busy", "declined", "hangup_caller", "hangup_callee", "answer_errors"])


@pytest.fixture(scope="module")
def lost(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Calls that end after the signalling retries run out (about 8-10 s each)."""
    return run_isolated(tmp_path_factory.mktemp("voice-lost"), ["unreachable", "tampered"])


@pytest.fixture(scope="module")
def diamond(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result: dict[str, Any] = run_isolated(tmp_path_factory.mktemp("voice-diamond"), ["diamond"])
    return dict(result["diamond"])


def _both(r: dict[str, Any], caller: str, callee: str | None) -> None:
    assert "error" not in r, r.get("traceback", r)
    assert r["caller"]["state"] == "ended"
    assert r["caller"]["reason"] == caller
    if callee is not None:
        assert r["callee"]["state"] == "ended"
        assert r["callee"]["reason"] == callee


@pytest.mark.parametrize(("name", "caller", "callee"), [
    ("busy", "busy", "busy"),
    ("declined", "declined", "declined"),
    ("hangup_caller", "hung up", "hung up by peer"),
    ("hangup_callee", "hung up by peer", "hung up"),
])
def test_call_ends_on_both_sides_with_the_reason(endings: dict[str, Any], name: str, caller: str,
                                                 callee: str) -> None:
    _both(endings[name], caller, callee)


def test_busy_leaves_the_first_call_up(endings: dict[str, Any]) -> None:
    assert endings["busy"]["first_call_state"] == "active"


def test_unreachable_callee(lost: dict[str, Any]) -> None:
    r = lost["unreachable"]
    _both(r, "unreachable", None)
    assert "callee" not in r  # the callee never heard of it


def test_altered_offer_is_refused(lost: dict[str, Any]) -> None:
    r = lost["tampered"]
    _both(r, "unreachable", None)
    assert r["altered"] >= 2  # the first offer and its retransmissions
    assert r["callee_drops"].get("decrypt") == r["altered"]
    assert r["callee_incoming"] == 0


def test_relay_killed_mid_call_audio_resumes(diamond: dict[str, Any]) -> None:
    """Both directions come back within a second of the mesh's path coming back, measured in
    each recording's own timeline (the lost stretch is silence there, placed by RTP
    timestamp): the longest stretch without the far end's tone."""
    r = diamond
    assert "error" not in r, r.get("traceback", r)
    assert r["state_after"] == "active"
    assert r["generation"] == r["generation_caller"] == 0, \
        "the call was re-offered: the relay change should not need it"
    assert r["forwarded"][r["other"]] > 50, "the call did not move to the other relay"
    for rec, far_hz in (("rec_callee", TONE_A), ("rec_caller", TONE_D)):
        samples, rate = read_wav(Path(r[rec]))
        gap = longest_gap_s(samples, rate, far_hz)
        # one hole, the rest of the audio whole (the sinks' wall-clock pauses also count a
        # loaded machine's stalls, after which the buffered audio plays on: not a loss)
        windows = tone_windows(samples, rate, far_hz)
        missing = windows[windows.index(True):].count(False) * 0.1
        assert missing - gap <= 0.5, (rec, missing, gap)
        print(f"\n{rec}: outage {r['outage_s']:.2f} s, longest stretch without {far_hz:g} Hz "
              f"{gap:.1f} s; sink gaps {r['gaps'] if rec == 'rec_callee' else r['gaps_caller']}")
        assert OUTAGE_S * 0.5 <= gap <= r["outage_s"] + 1.0, (rec, gap, r["outage_s"], r["gaps"])
        tail = tone_windows(samples[-2 * rate:], rate, far_hz)
        assert sum(tail) / len(tail) >= 0.9, (rec, tail)


@pytest.fixture(scope="module")
def reoffer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result: dict[str, Any] = run_isolated(tmp_path_factory.mktemp("voice-reoffer"), ["reoffer"])
    return dict(result["reoffer"])


def test_call_whose_media_died_is_reoffered_once_a_route_is_back(reoffer: dict[str, Any]) -> None:
    r = reoffer
    assert "error" not in r, r.get("traceback", r)
    # the watchdog (no audio for MEDIA_STALL_S) noticed, long before aiortc's 30 s consent check;
    # it counts from the last frame decoded, a little before the cut (the jitter buffer)
    assert MEDIA_STALL_S - 1.0 <= r["failed_after_s"] <= MEDIA_STALL_S + 5
    assert r["generation_caller"] == r["generation_callee"] == 1
    assert r["state_caller"] == r["state_callee"] == "active"
    assert r["resumed_after_s"] is not None and r["resumed_after_s"] < 5
    # one recording: the audio before the cut, silence while no endpoint heard anything, then
    # the re-offered call's audio appended: as long as the call's audio lasted (first frame of
    # the first endpoint to the last of the second), nothing dropped
    samples, rate = read_wav(Path(r["rec_callee"]))
    assert r["heard_span_s"] is not None
    assert abs(len(samples) / rate - r["heard_span_s"]) <= 0.5, (len(samples) / rate, r)
    windows = tone_windows(samples, rate, TONE_A)
    # the stretch nobody heard (at least the watchdog's wait) is there, as silence
    silent_s = (len(windows) - sum(windows)) * 0.1
    assert silent_s >= r["failed_after_s"] - 1.0, (silent_s, r)
    assert windows[:5] == [True] * 5 and windows[-5:] == [True] * 5  # the tone either side


def test_answer_refuses_a_missing_file_then_a_second_answer(endings: dict[str, Any]) -> None:
    r = endings["answer_errors"]
    assert "error" not in r, r.get("traceback", r)
    assert r["missing_file"] == "bad_request" and r["state_after_missing"] == "ringing"
    assert r["double"] == ["failed", "ok"]
    assert r["state_caller"] == "active"
