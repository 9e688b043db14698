"""bench/trust.py keeps working (a small network; no wall-clock timing is asserted)."""

from __future__ import annotations

import json

import pytest

from bench.trust import KINDS, main, run, summarize


def test_trust_ops_reach_every_node_and_the_late_car() -> None:
    r = run(2026, 12, 40, 60.0)
    for kind in KINDS:
        assert r[kind]["reached"] == 11  # every node but the late car
        assert r[kind]["all_s"] is not None and r[kind]["late_car_s"] is not None
    s = summarize([r])
    for kind in ("trust.update", "revocation"):
        assert s[kind]["compared"] == 2
        # published together with the bulletin, ranked before it: never later (virtual time)
        assert s[kind]["no_later_than_bulletin"] == 2
    assert r["late_car_ops"] >= 40


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "8", "--seeds", "1", "--backlog", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["nodes"] == 8 and len(doc["runs"]) == 1
    assert set(doc["summary"]) == set(KINDS)
