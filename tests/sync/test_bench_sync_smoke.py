"""bench/sync.py keeps working (a tiny size; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_sync_runs_and_reports_json() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sync.py"), "--n", "2000", "--skip-visit", "--json"],
        capture_output=True, text=True, timeout=200, check=True, cwd=ROOT)
    data = json.loads(out.stdout)
    assert data["reconcile"], data
    assert data["visit"] is None
