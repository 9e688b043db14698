"""bench/library.py keeps working (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_and_reports_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "library.py"), "--sizes", "600", "--rounds", "1",
         "--materialise-docs", "10", "--json"],
        capture_output=True, text=True, timeout=100, check=True, cwd=ROOT)
    data = json.loads(out.stdout)
    [size] = data["sizes"]
    assert size["documents"] == 600
    for label in ("2-char", "4-char"):
        assert size[label]["hits"] > 0
        assert size[label]["matches_of_first_word"] > 0
    assert data["materialise"]["ops"] == 30
