"""Measure a QUIC Initial flood against one listener (issue 11, item 4); loopback only.

A listener process (``--serve``: a LinkManager that echoes datagrams and prints its RSS)
is flooded by ``carmesh.dev.initial_flood`` while this process keeps an existing link
pinging it and, once the flood is on, dials it as a new neighbour.  Prints the genuine
link time, ping RTTs and losses before/during the flood, and the listener's RSS.

    python bench/initial_flood.py [--rate 3000] [--seconds 15] [--valid] [--sources N]

``--server-tree DIR`` runs the listener from another source tree (before/after figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshd.core.identity import NodeId
from tests.meshd.links_helpers import Node


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def serve(lifetime: float) -> None:
    b = Node("bravo")
    addr = await b.listen()

    def echo(peer: NodeId, data: bytes) -> None:
        b.mgr.send_datagram(peer, data)

    b.rec.datagram_received = echo  # type: ignore[method-assign]
    print(json.dumps({"addr": list(addr), "id": b.id.hex()}), flush=True)
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        print(json.dumps({"rss_mb": round(rss_mb(), 1), "cpu_s": round(time.process_time(), 3),
                          "counts": dict(getattr(b.mgr, "handshake_counts", {})),
                          "busy": b.mgr.drops.counts.get("refused-busy", 0)}), flush=True)
        await asyncio.sleep(1.0)
    await b.mgr.close()


def p95(values: list[float]) -> float:
    return round(sorted(values)[min(len(values) - 1, int(len(values) * 0.95))], 2)


async def measure(args: argparse.Namespace) -> None:
    env = dict(os.environ)
    # the listener may run from another tree (before/after); this script serves it either way
    srv_env = dict(env, PYTHONPATH=args.server_tree) if args.server_tree else env
    srv = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", "--lifetime", str(args.seconds + 25),
        "--tree", args.server_tree or "", stdout=asyncio.subprocess.PIPE, env=srv_env)
    assert srv.stdout is not None
    hello = json.loads(await srv.stdout.readline())
    host, port = hello["addr"]
    bid = bytes.fromhex(hello["id"])
    rss: list[float] = []
    last: dict[str, object] = {}

    async def read_srv() -> None:
        assert srv.stdout is not None
        while line := await srv.stdout.readline():
            rec = json.loads(line)
            rss.append(rec["rss_mb"])
            last.update(rec)

    reader = asyncio.create_task(read_srv())
    a = Node("alpha")
    assert await a.mgr.connect(host, port, bid) == bid
    loop = asyncio.get_running_loop()

    async def ping_for(seconds: float) -> tuple[list[float], int]:
        rtts, lost, i = [], 0, 0
        end = loop.time() + seconds
        while loop.time() < end:
            msg = b"\x02p%d" % i
            t0 = loop.time()
            a.mgr.send_datagram(bid, msg)
            try:
                await a.rec.wait_for(lambda m=msg: (bid, m) in a.rec.datagrams, timeout=1.0)  # type: ignore[misc]
                rtts.append((loop.time() - t0) * 1000)
            except TimeoutError:
                lost += 1
            i += 1
            await asyncio.sleep(0.05)
        return rtts, lost

    base, base_lost = await ping_for(3)
    rss_before = rss[-1] if rss else 0.0
    cpu_before = float(last.get("cpu_s", 0.0))  # type: ignore[arg-type]
    flood_t0 = loop.time()
    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "carmesh.dev.initial_flood", f"{host}:{port}", "--rate",
        str(args.rate), "--count", str(int(args.rate * args.seconds)), "--seconds",
        str(args.seconds), "--sources", str(args.sources), *(["--valid"] if args.valid else []),
        stdout=asyncio.subprocess.PIPE, env=env)
    await asyncio.sleep(2.0)
    c = Node("charlie")
    t0 = loop.time()
    pinging = asyncio.create_task(ping_for(args.seconds - 3))
    try:
        await asyncio.wait_for(c.mgr.connect(host, port, bid), args.seconds - 2)
        link = f"{(loop.time() - t0) * 1000:.0f} ms"
    except Exception as exc:  # the old tree refuses it (busy) or times out
        link = f"failed ({type(exc).__name__}: {exc})"
    during, lost = await pinging
    out, _ = await flood.communicate()
    cpu_flood = float(last.get("cpu_s", 0.0)) - cpu_before  # type: ignore[arg-type]
    flood_s = loop.time() - flood_t0
    await asyncio.sleep(3)
    print(json.dumps({
        "flood": json.loads(out) if out else None, "valid": args.valid, "sources": args.sources,
        "genuine_link": link,
        "rtt_ms_before": {"median": round(statistics.median(base), 2), "p95": p95(base),
                          "max": round(max(base), 2),
                          "lost": base_lost, "n": len(base) + base_lost},
        "rtt_ms_during": {"median": round(statistics.median(during), 2) if during else None,
                          "p95": p95(during) if during else None,
                          "max": round(max(during), 2) if during else None,
                          "lost": lost, "n": len(during) + lost},
        "rss_mb": {"before": rss_before, "peak": max(rss), "after": rss[-1]},
        # the listener's CPU while flooded (its 1 s reports, so within about a second)
        "listener_cpu_share_during_flood": round(cpu_flood / flood_s, 3),
        "listener": {k: v for k, v in last.items() if k not in ("rss_mb", "cpu_s")},
    }, indent=1))
    await a.mgr.close()
    await c.mgr.close()
    srv.terminate()
    await srv.wait()
    reader.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--serve", action="store_true")
    p.add_argument("--lifetime", type=float, default=60)
    p.add_argument("--rate", type=float, default=3000)
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--valid", action="store_true")
    p.add_argument("--sources", type=int, default=1, help="flood from this many source ports")
    p.add_argument("--server-tree", help="run the flooded listener from this source tree "
                                         "(e.g. the main branch, for a before/after figure)")
    p.add_argument("--tree", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.tree:
        sys.path.insert(0, a.tree)
        for mod in [m for m in sys.modules if m.startswith(("meshd", "tests"))]:
            del sys.modules[mod]
        from tests.meshd.links_helpers import Node
    asyncio.run(serve(a.lifetime) if a.serve else measure(a))
