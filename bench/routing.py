"""Routing and forwarding benchmark, with baselines measured in the same run.

Usage: ``.venv/bin/python bench/routing.py [--json] [--quick] [--skip-netns] [--skip-sim]``

Rows:
- relay capacity: real meshd relay (pinned to CPU 0) forwarding bench packets of 160 bytes
  between a flood source and a sink (separate processes on CPU 1, loopback QUIC links), at
  increasing offered rates; capacity = highest delivered rate with < 1 % loss;
- aioquic in memory, relay-equivalent: the rate at which aioquic alone receives one
  datagram and sends one (two connection pairs in memory, one datagram per packet as the
  mesh sends them), single core;
- added latency per relay hop: median ping RTT over 3 hops vs 1 hop in a namespace line
  of four (root), one-way added per hop = (rtt3 - rtt1) / 4;
- reroute time: namespace diamond, ping every 50 ms, kill -9 the relay in use: the gap
  until replies resume through the other relay (root), several trials;
- simulator: convergence time and control bytes per link per second at 50, 200 and 1,000
  nodes (tests/sim harness, virtual time).

Everything is bounded in time and count and runs on loopback or in namespaces it makes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from carmesh.dev.devnet import DevNet, have_netns
from carmesh.dev.harness import MESHD, Cluster, free_udp_port, wait_until
from meshd import ALPN
from meshd.control.client import ControlClient
from meshd.core.errors import ControlError
from meshd.core.identity import Identity
from meshd.links.manager import MAX_DATAGRAM_FRAME_SIZE
from meshd.links.tlscert import make_certificate
from meshd.paths import default_socket_path
from tests.netns.procs import JsonLines

PAYLOAD = 200  # a 160-byte bench payload + 39-byte mesh header + channel byte


# ---------------------------------------------------------------- aioquic in memory

def _pair() -> tuple[QuicConnection, QuicConnection]:
    cert, key = make_certificate(Identity.generate())
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE))
    server = QuicConnection(
        configuration=QuicConfiguration(is_client=False, alpn_protocols=[ALPN], certificate=cert,
                                        private_key=key,
                                        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE),
        original_destination_connection_id=client.original_destination_connection_id)
    t = 1.0
    client.connect(("127.0.0.3", 2), now=t)
    for _ in range(10):
        t += 0.001
        for d, _ in client.datagrams_to_send(now=t):
            server.receive_datagram(d, ("127.0.0.2", 1), now=t)
        for d, _ in server.datagrams_to_send(now=t):
            client.receive_datagram(d, ("127.0.0.3", 2), now=t)
    while client.next_event() or server.next_event():
        pass
    return client, server


def bench_aioquic_relay(seconds: float) -> dict[str, Any]:
    """a → b → c in memory; a relay does b's receive + b's send: half the chain's cost."""
    a, b_in = _pair()
    b_out, c = _pair()
    payload = os.urandom(PAYLOAD)
    n = 0
    t = 10.0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and n < 2_000_000:
        t += 0.0001
        a.send_datagram_frame(payload)
        for d, _ in a.datagrams_to_send(now=t):
            b_in.receive_datagram(d, ("127.0.0.2", 1), now=t)
        while (ev := b_in.next_event()) is not None:
            if isinstance(ev, events.DatagramFrameReceived):
                b_out.send_datagram_frame(ev.data)
        for d, _ in b_out.datagrams_to_send(now=t):
            c.receive_datagram(d, ("127.0.0.2", 1), now=t)
        while c.next_event() is not None:
            pass
        if n % 16 == 0:  # acks flow back now and then, as on a real link
            for d, _ in b_in.datagrams_to_send(now=t):
                a.receive_datagram(d, ("127.0.0.3", 2), now=t)
            for d, _ in c.datagrams_to_send(now=t):
                b_out.receive_datagram(d, ("127.0.0.3", 2), now=t)
            while a.next_event() or b_out.next_event():
                pass
        n += 1
    per_packet = (time.perf_counter() - start) / n
    return {"chain_packets": n, "relay_rate_per_s": 2.0 / per_packet}


# ---------------------------------------------------------------- relay capacity

def bench_relay(rates: list[int], seconds: float) -> dict[str, Any]:
    ports = {k: free_udp_port() for k in ("src", "relay", "sink")}
    flood = [sys.executable, str(ROOT / "bench" / "flood_node.py")]
    with Cluster(log_level="warning") as cl:
        relay = cl.add("relay", ["--listen", f"127.0.0.1:{ports['relay']}"],
                       prefix=["taskset", "-c", "0"])
        relay.wait_ready()
        procs = []
        try:
            sink = subprocess.Popen(
                [*flood, "--state-dir", str(cl.root / "sink"), "--name", "sink", "--listen",
                 f"127.0.0.1:{ports['sink']}", "--peer", f"127.0.0.1:{ports['relay']}",
                 "--sink", "--cpu", "1", "--lifetime", str(20 + len(rates) * (seconds + 1.5))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(sink)
            src = subprocess.Popen(
                [*flood, "--state-dir", str(cl.root / "src"), "--name", "src", "--listen",
                 f"127.0.0.1:{ports['src']}", "--peer", f"127.0.0.1:{ports['relay']}",
                 "--flood", "sink", "--rates", ",".join(map(str, rates)), "--seconds",
                 str(seconds), "--cpu", "1", "--lifetime", str(20 + len(rates) * (seconds + 1.5))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(src)
            sink_out = JsonLines(sink, "sink")
            sent: dict[int, dict[str, Any]] = {}
            assert src.stdout is not None
            for line in src.stdout:
                ev = json.loads(line)
                if ev["event"] == "sent":
                    sent[ev["index"]] = ev
                if ev["event"] in ("flood_done", "error"):
                    break
            time.sleep(1.0)
            counts: dict[str, int] = next(
                (e["counts"] for e in reversed(sink_out.events) if e.get("event") == "counts"), {})
        finally:
            for p in procs:
                p.kill()
                p.wait(5)
    rows = []
    for idx, ev in sorted(sent.items()):
        got = counts.get(str(idx), 0)
        rows.append({"offered_per_s": ev["rate"], "sent": ev["sent"], "delivered": got,
                     "delivered_per_s": got / ev["seconds"],
                     "loss": 1 - got / ev["sent"] if ev["sent"] else 1.0})
    ok = [r["delivered_per_s"] for r in rows if r["loss"] < 0.01]
    return {"rows": rows, "capacity_per_s": max(ok) if ok else 0.0,
            "max_delivered_per_s": max((r["delivered_per_s"] for r in rows), default=0.0)}


# ---------------------------------------------------------------- namespaces

NAMES = ["ann", "bob", "cy", "dan"]


def _ns(node: Any) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def _start(cl: Cluster, net: DevNet, nodes: list[Any]) -> None:
    for node in nodes:
        ifaces = [x for i in net.interfaces(node) for x in ("--interface", i)]
        cl.add(node.name, ifaces, prefix=_ns(node))
    for d in cl:
        d.wait_ready()


def _route(cl: Cluster, src: str, dst: str) -> dict[str, Any] | None:
    rc, res = cl[src].meshctl("routes")
    if rc == 0:
        for r in res["routes"]:
            if r["name"] == dst and r["reachable"]:
                return dict(r)
    return None


def _ping_rtts(cl: Cluster, src: str, dst: str, count: int) -> list[float]:
    _rc, res = cl[src].meshctl("ping", dst, "--count", str(count), "--interval", "0.02",
                              timeout=count * 0.1 + 30)
    return [r["rtt_ms"] for r in res.get("replies", [])] if isinstance(res, dict) else []


def bench_hop_latency(count: int) -> dict[str, Any]:
    with DevNet() as net, Cluster(log_level="warning") as cl:
        nodes = net.line(4, NAMES)
        _start(cl, net, nodes)
        wait_until(lambda: _route(cl, "ann", "dan"), 30, what="route")
        _ping_rtts(cl, "ann", "dan", 10)  # warm up
        one = _ping_rtts(cl, "ann", "bob", count)
        three = _ping_rtts(cl, "ann", "dan", count)
    m1, m3 = statistics.median(one), statistics.median(three)
    return {"rtt1_ms": m1, "rtt3_ms": m3, "added_one_way_per_hop_ms": (m3 - m1) / 4,
            "n": min(len(one), len(three))}


async def _ping_loop(sock: Path, stop_at: float, interval: float) -> list[tuple[float, bool]]:
    """Ping "dan" through the control API every ``interval`` s; (time, answered) per probe."""
    out: list[tuple[float, bool]] = []
    async with await ControlClient.connect(sock) as client:
        while (t := time.monotonic()) < stop_at:
            try:
                await client.call("ping", {"node": "dan", "timeout": 0.2}, timeout=2.0)
                out.append((t, True))
            except ControlError:
                out.append((t, False))
            await asyncio.sleep(max(0.0, t + interval - time.monotonic()))
    return out


def _fail(net: DevNet, cl: Cluster, nodes: list[Any], relay: str, silent: bool) -> float:
    """Make ``relay`` fail; returns the monotonic time it failed."""
    if silent:
        relay_node = next(n for n in nodes if n.name == relay)
        for other in net.neighbours(relay_node):
            net.set_loss(relay_node, other, 100)
    else:
        cl[relay].kill9()
    return time.monotonic()


def bench_reroute(trials: int, silent: bool) -> dict[str, Any]:
    """Gap in replies when the relay in use dies: ``silent`` drops all its traffic (a car
    driving away: only the 2 s hello timeout notices), else ``kill -9`` (the kernel then
    answers with ICMP port unreachable and QUIC gives up at once)."""
    gaps = []
    for _ in range(trials):
        with DevNet() as net, Cluster(log_level="warning") as cl:
            nodes = net.diamond(NAMES)
            _start(cl, net, nodes)
            first = wait_until(lambda: _route(cl, "ann", "dan"), 30, what="route")
            relay = str(first["next_hop_name"])
            sock = default_socket_path(cl["ann"].state_dir)
            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                probes = pool.submit(asyncio.run, _ping_loop(sock, start + 10.0, 0.02))
                time.sleep(2.0)
                t_fail = _fail(net, cl, nodes, relay, silent)
                results = probes.result(timeout=60)
            ok_before = [t for t, ok in results if ok and t < t_fail]
            ok_after = [t for t, ok in results if ok and t >= t_fail]
            if not ok_before or not ok_after:
                raise RuntimeError(f"no replies before or after the failure: {results[:5]}...")
            gaps.append(round(ok_after[0] - t_fail, 3))
    return {"gaps_s": gaps, "median_s": statistics.median(gaps), "max_s": max(gaps)}


# ---------------------------------------------------------------- simulator

def bench_sim(sizes: list[int]) -> list[dict[str, Any]]:
    try:
        from tests.sim.routing_bench import measure  # provided with the simulator harness
    except ImportError as exc:
        return [{"error": f"simulator benchmark not available: {exc}"}]
    return [measure(n) for n in sizes]


# ---------------------------------------------------------------- main

def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="shorter windows and fewer trials")
    p.add_argument("--skip-netns", action="store_true")
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--only-reroute", action="store_true", help="just the namespace reroute rows")
    args = p.parse_args()
    secs = 1.5 if args.quick else 3.0
    result: dict[str, Any] = {"machine": machine(), "meshd": MESHD}
    if args.only_reroute:
        r = bench_reroute(3, silent=True)
        print(json.dumps({"reroute_silent": r, "reroute_kill9": bench_reroute(2, silent=False)}))
        return
    result["aioquic_memory"] = bench_aioquic_relay(secs)
    result["relay"] = bench_relay([2000, 4000, 6000, 8000, 10000, 14000, 18000, 22000], secs)
    netns = not args.skip_netns and os.geteuid() == 0 and have_netns() is None
    if netns:
        result["hop_latency"] = bench_hop_latency(50 if args.quick else 200)
        result["reroute_kill9"] = bench_reroute(2 if args.quick else 5, silent=False)
        result["reroute_silent"] = bench_reroute(2 if args.quick else 5, silent=True)
    if not args.skip_sim:
        result["sim"] = bench_sim([50, 200, 1000])
    if args.json:
        print(json.dumps(result, indent=2))
        return
    mem = result["aioquic_memory"]["relay_rate_per_s"]
    relay = result["relay"]
    print(f"machine: {result['machine']}\n")
    print("| relay (one meshd on one core) | packets/s |")
    print("|---|---|")
    for r in relay["rows"]:
        print(f"| offered {r['offered_per_s']:.0f}/s | delivered {r['delivered_per_s']:.0f}/s, "
              f"loss {r['loss']:.2%} |")
    print(f"| **capacity (< 1 % loss)** | **{relay['capacity_per_s']:.0f}/s** |")
    print(f"| aioquic in memory, receive+send (relay-equivalent) | {mem:.0f}/s |")
    print(f"| ratio capacity / aioquic | {relay['capacity_per_s'] / mem:.2f} |")
    if "hop_latency" in result:
        h = result["hop_latency"]
        print(f"\nping rtt median: 1 hop {h['rtt1_ms']:.3f} ms, 3 hops {h['rtt3_ms']:.3f} ms "
              f"→ added one-way per relay hop {h['added_one_way_per_hop_ms']:.3f} ms (n={h['n']})")
    for key, what in (("reroute_kill9", "kill -9 of the relay"),
                      ("reroute_silent", "the relay going silent (100 % loss)")):
        if key in result:
            r = result[key]
            print(f"reroute after {what}: median {r['median_s']:.2f} s, "
                  f"max {r['max_s']:.2f} s over {len(r['gaps_s'])} trials {r['gaps_s']}")
    for row in result.get("sim", []):
        print(f"sim: {row}")


if __name__ == "__main__":
    main()
