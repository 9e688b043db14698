"""bench/safety.py keeps working (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_safety_bench_runs_and_reports_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "safety.py"), "--people", "800",
         "--library-docs", "300", "--rounds", "1", "--json"],
        capture_output=True, text=True, timeout=100, check=True, cwd=ROOT)
    data = json.loads(out.stdout)
    s = data["safety"]
    assert s["people"] == 800 and s["kana_insensitive"] is True
    assert all(q["hits"] > 0 for q in s["queries"].values()), s["queries"]
    assert set(data["library"]) == {"documents", "2-char", "4-char"}
