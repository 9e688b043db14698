"""``meshctl call|calls|decline`` as subprocesses against real control servers and real calls (private netns)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.voice.audio import dominant_hz, read_wav
from tests.voice.scenarios import run_isolated

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="needs root and unshare(1) for a private network namespace"),
]


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    res = run_isolated(tmp_path_factory.mktemp("voice-ctl"), ["meshctl"])["meshctl"]
    assert "error" not in res, res.get("traceback", res)
    return dict(res)


def test_call_blocks_until_duration_then_prints_summary(r: dict[str, Any]) -> None:
    code, out, _err = r["call"]
    assert code == 0
    doc = json.loads(out)
    assert doc["reason"] == "hung up" and doc["state"] == "ended"
    assert 3.9 <= doc["duration_s"] <= 6.0
    # RTT needs an RTCP sender report and the receiver report answering it (each 0.5-1.5 s apart)
    assert doc["quality"]["rtt_ms"] is not None and doc["quality"]["packets_received"] > 20
    samples, rate = read_wav(Path(r["rec_callee"]))
    assert abs(dominant_hz(samples, rate) - 440) < 5


def test_calls_lists_the_call_on_the_callee(r: dict[str, Any]) -> None:
    code, out, _err = r["calls_json"]
    assert code == 0
    (c,) = json.loads(out)["calls"]
    assert c["call_id"] == json.loads(r["call"][1])["call_id"]
    assert (c["role"], c["reason"]) == ("callee", "hung up by peer")
    code, text, _err = r["calls_text"]
    assert code == 0 and "hung up by peer" in text and c["call_id"][:12] in text


def test_decline_by_prefix_ends_the_blocked_caller(r: dict[str, Any]) -> None:
    assert r["decline"][0] == 0
    code, out, _err = r["declined_call"]
    assert code == 1
    assert "ringing" in out and "ended: declined" in out


def test_unknown_node_exits_4(r: dict[str, Any]) -> None:
    code, _out, err = r["unknown_node"]
    assert code == 4 and "not found" in err


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_isolated(tmp_path_factory.mktemp("voice-int"),
                        ["sigint_ringing", "sigterm_ringing", "sigterm_active"])


@pytest.mark.parametrize("name", ["sigint_ringing", "sigterm_ringing"])
def test_interrupt_while_ringing_is_cancelled_here_and_missed_there(
        interrupted: dict[str, Any], name: str) -> None:
    r = interrupted[name]
    assert "error" not in r, r.get("traceback", r)
    assert (r["caller"]["state"], r["caller"]["reason"]) == ("ended", "cancelled")
    assert (r["callee"]["state"], r["callee"]["reason"]) == ("ended", "missed")
    assert r["code"] == 1 and "ended: cancelled" in r["out"], r


def test_sigterm_in_a_call_hangs_up_at_both_ends(interrupted: dict[str, Any]) -> None:
    r = interrupted["sigterm_active"]
    assert "error" not in r, r.get("traceback", r)
    assert r["caller"]["reason"] == "hung up" and r["callee"]["reason"] == "hung up by peer"
    assert r["code"] == 0 and "ended: hung up" in r["out"], r
    # the human's answering time and the media setup are reported apart
    assert "answer " in r["out"] and "media setup " in r["out"]
    assert r["caller"]["answer_ms"] is not None and r["caller"]["setup_ms"] is not None


def test_call_whose_media_never_flows_fails_loudly_with_the_fix(tmp_path: Path) -> None:
    r = run_isolated(tmp_path, ["no_address"], second_loopback=False)["no_address"]
    assert "error" not in r, r.get("traceback", r)
    code, out, err = r["call"]
    doc = json.loads(out)
    assert code == 1, (out, err)
    assert (doc["state"], doc["reason"]) == ("ended", "failed")
    assert "127.0.0.2" in doc["detail"] and "127.0.0.2" in err
    assert r["callee"]["reason"] == "failed"
