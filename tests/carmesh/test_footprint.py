"""Issue 18, memory and start-up: an idle daemon loads no call, web, CRDT or console code,
no zeroconf without a named interface, no worker-process machinery before a large batch
and no diff code before an edit.

Each case runs in a fresh interpreter (pytest itself has loaded everything), with a
real node built by the composition root on loopback: what it has imported once it is
ready, and that the lazily loaded parts still work when first used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

HEAVY = ["aiortc", "av", "numpy", "pycrdt", "textual", "aiohttp", "jinja2", "prometheus_client",
         "zeroconf", "ifaddr", "multiprocessing", "difflib"]

SCRIPT = textwrap.dedent("""
    import asyncio, json, socket, sys, tempfile, urllib.request
    from pathlib import Path

    import uvloop

    from carmesh.app import build_node
    from meshd.config import Config

    HEAVY = {heavy!r}

    def loaded():
        return sorted(m for m in HEAVY if m in sys.modules)

    def free(kind):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    async def main():
        state = Path(tempfile.mkdtemp(prefix="cmfp", dir="/tmp"))
        web, metrics = free(socket.SOCK_STREAM), free(socket.SOCK_STREAM)
        cfg = Config().merged({{"state_dir": state, "listen": [f"127.0.0.1:{{free(socket.SOCK_DGRAM)}}"],
                               "web_local": f"127.0.0.1:{{web}}",
                               "metrics": f"127.0.0.1:{{metrics}}"}})
        node = await build_node(cfg)
        stop = asyncio.Event()
        run = asyncio.create_task(node.run(stop))
        while not node.ready:
            await asyncio.sleep(0.02)
        out = {{"ready": loaded()}}
        status = await node.control.handlers["web.status"]({{}})
        out["web_urls"] = status["urls"]

        def get(url):
            with urllib.request.urlopen(url, timeout=30) as r:
                return r.status, dict(r.headers), r.read().decode()

        code, headers, body = await asyncio.to_thread(get, f"http://127.0.0.1:{{web}}/")
        out["web"] = [code, "Content-Security-Policy" in headers, loaded()]
        code, _, body = await asyncio.to_thread(get, f"http://127.0.0.1:{{metrics}}/metrics")
        out["metrics"] = [code, "carmesh_neighbours" in body or "carmesh_" in body, loaded()]
        from library_replica.text import diff_edits
        out["diff"] = [len(diff_edits("a mesh of cars", "a mesh of many cars")), loaded()]
        from voice.endpoint import load_media
        await load_media()
        out["call"] = loaded()
        stop.set()
        await run
        print(json.dumps(out))

    uvloop.run(main())
""")


def _run() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(heavy=HEAVY)], capture_output=True,
                       text=True, timeout=120, env=env, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def test_an_idle_node_loads_none_of_the_heavy_parts_and_each_loads_when_first_used() -> None:
    out = _run()
    assert out["ready"] == []  # nothing of calls, web, CRDT, console or metrics at start
    assert out["web_urls"] and str(out["web_urls"][0]).startswith("http://127.0.0.1:")
    code, csp, after_web = out["web"]
    assert code == 200 and csp  # the first browser is served the real app
    assert {"aiohttp", "jinja2"} <= set(after_web) and "aiortc" not in after_web
    code, has, after_scrape = out["metrics"]
    assert code == 200 and has and "prometheus_client" in after_scrape
    edits, after_diff = out["diff"]
    assert edits == 1 and "difflib" in after_diff  # the first diff loads it
    assert {"aiortc", "av", "numpy"} <= set(out["call"])
    assert "zeroconf" not in out["call"]  # loopback: never (aiortc's ICE brings ifaddr)
    assert "textual" not in out["call"] and "pycrdt" not in out["call"]
