"""Footprint of real meshd daemons: start-up, memory, idle cost, per-hop latency, reroute.

Usage: ``.venv/bin/python bench/footprint.py [--json] [--seconds S] [--settle S] [--loopback]
[--only per-hop] [--pings N]``

As root, daemons run in network namespaces (``carmesh.dev.devnet``: a line of four,
ann–bob–cy–dan, discovering each other with zeroconf on their interfaces; then a
diamond for the reroute) that are deleted on exit; otherwise (or with ``--loopback``)
on 127.0.0.1 with static peers, and the rows that need namespaces are skipped.
Every figure has a baseline measured in the same run:

- cold start to ready (``status`` answers ready) and to the first reply over 3 hops,
  beside the interpreter importing the same modules the daemon imports at start;
- idle RSS (and PSS), CPU per node and bytes per link over ``--seconds`` after
  ``--settle`` seconds of quiet (namespaces: interface byte counters, so zeroconf and
  QUIC overhead count too; loopback: link payload bytes), beside the bytes that hellos
  every 0.5 s would cost (hello and its ACK, both ways, on the wire);
- added one-way latency per relay hop, (RTT over 3 hops - RTT over 1 hop) / 4, beside
  the same figure for a bare uvloop UDP forwarder on the same namespaces;
- the silent-relay reroute: pings a -> d every 50 ms across the diamond while the relay
  is SIGKILLed; the outage is the time from the kill to the first ping sent after it
  that is answered (target 2 s; a neighbour is lost 2 s after its last hello).  The flow
  starts after ``--reroute-quiet`` seconds without traffic (default 3; with 45 the links
  have slowed to idle hellos and must go fast again when the flow starts).

Bytecode: the daemons and the import baseline run with compiled bytecode, as an installed
node has it (``pip install`` writes ``.pyc`` files): the bench compiles every module once
into a private cache (``PYTHONPYCACHEPREFIX`` in a temporary directory, removed on exit)
before anything is timed, because a development shell may set ``PYTHONDONTWRITEBYTECODE``
and then each start compiles the project's modules from source again (``--from-source``
measures that).

``--only per-hop`` starts the line, waits ``--settle`` seconds after the first 3-hop reply,
then measures only the per-hop row (``--pings`` pings to 1 and to 3 hops) and its forwarder
baseline, with two figures from the relay cy, which only the 3-hop pings cross: its CPU time
per 3-hop ping (two forwards and their ACKs; ``/proc/<pid>/schedstat``, less its idle rate
measured over the settle window) and the packets its interfaces carried per 3-hop ping.

Bounded: at most about ``settle + seconds + 60`` s per topology (plus ``--reroute-quiet``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carmesh.dev.devnet import DevNet, NetNode, have_netns
from carmesh.dev.harness import MESHD, free_udp_port
from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError
from meshd.paths import default_socket_path

NAMES = ["ann", "bob", "cy", "dan"]
PY = sys.executable
#: what the daemon imports before it is ready (carmesh.app's build_node and its services;
#: meshd.discovery, with zeroconf, as the nodes here name their interfaces)
IMPORTS = ("import uvloop, carmesh.cli, carmesh.app, sync.node_service, "
           "library_replica.node_service, voice.service, web.service, meshd.discovery")
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: on the wire, per hello: ~46 B payload + channel byte + QUIC short header, DATAGRAM frame and
#: AEAD tag (~30 B) + UDP/IPv4 (28 B); its ACK-only packet ~34 + 28 B
HELLO_WIRE_B = 46 + 1 + 30 + 28
ACK_WIRE_B = 34 + 28

FORWARDER = r"""
import asyncio, sys, uvloop
listen, out_local, nxt = sys.argv[1], sys.argv[2], (sys.argv[3], 9999)
class Side(asyncio.DatagramProtocol):
    def __init__(s, on): s.on = on
    def connection_made(s, t): s.t = t
    def datagram_received(s, data, addr): s.on(data, addr)
async def main():
    loop = asyncio.get_running_loop()
    back = [None]
    def up(data, addr):
        back[0] = addr
        right.sendto(data, nxt)
    def down(data, addr):
        if back[0] is not None:
            left.sendto(data, back[0])
    left, _ = await loop.create_datagram_endpoint(lambda: Side(up), local_addr=(listen, 9999))
    right, _ = await loop.create_datagram_endpoint(lambda: Side(down), local_addr=(out_local, 0))
    await asyncio.Event().wait()
uvloop.run(main())
"""
ECHO = r"""
import asyncio, sys, uvloop
class Echo(asyncio.DatagramProtocol):
    def connection_made(s, t): s.t = t
    def datagram_received(s, data, addr): s.t.sendto(data, addr)
async def main():
    await asyncio.get_running_loop().create_datagram_endpoint(
        Echo, local_addr=(sys.argv[1], int(sys.argv[2])))
    await asyncio.Event().wait()
uvloop.run(main())
"""
CLIENT = r"""
import socket, sys, time, statistics, json
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
rtts = []
for i in range(int(sys.argv[2])):
    t = time.perf_counter(); s.sendto(b"x" * 100, (sys.argv[1], int(sys.argv[3])))
    try:
        s.recvfrom(2048); rtts.append((time.perf_counter() - t) * 1000)
    except TimeoutError:
        pass
    time.sleep(0.01)
print(json.dumps(statistics.median(rtts) if rtts else None))
"""


def median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


async def call(state: Path, method: str, params: dict[str, Any] | None = None,
               timeout: float = 5.0) -> Any:
    async with await ControlClient.connect(default_socket_path(state), timeout=1.0) as c:
        return await c.call(method, params or {}, timeout=timeout)


class Node:
    def __init__(self, name: str, state: Path, proc: subprocess.Popen[bytes]) -> None:
        self.name, self.state, self.proc = name, state, proc

    async def ready_after(self, t0: float, limit: float = 30.0) -> float:
        while time.monotonic() - t0 < limit:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}")
            with contextlib.suppress(OSError, ControlError, NoDaemon, TimeoutError):
                if (await call(self.state, "status", timeout=1.0)).get("ready"):
                    return time.monotonic() - t0
            await asyncio.sleep(0.02)
        raise RuntimeError(f"{self.name} not ready after {limit} s")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def cpu_ns(self) -> int:
        """CPU time in nanoseconds (schedstat; cpu_s has clock-tick resolution)."""
        return int(Path(f"/proc/{self.proc.pid}/schedstat").read_text().split()[0])

    def memory_mb(self) -> tuple[float, float | None]:
        rss = next(int(line.split()[1]) for line in
                   Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        pss = None
        with contextlib.suppress(OSError, StopIteration):
            pss = next(int(line.split()[1]) for line in
                       Path(f"/proc/{self.proc.pid}/smaps_rollup").read_text().splitlines()
                       if line.startswith("Pss:")) / 1024
        return rss / 1024, pss


class Mesh:
    """Four daemons: in namespaces (``net``) or on loopback with static peers."""

    def __init__(self, net: DevNet | None, nodes: list[NetNode] | None) -> None:
        self.net, self.netnodes = net, nodes
        self.root = Path(tempfile.mkdtemp(prefix="cmfp", dir="/tmp"))
        self.nodes: list[Node] = []

    def start(self) -> float:
        ports = [free_udp_port() for _ in NAMES]
        t0 = time.monotonic()
        for i, name in enumerate(NAMES):
            state = self.root / name
            state.mkdir()
            args = [*MESHD, "--state-dir", str(state), "--name", name, "--log-level", "info"]
            log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed below
            if self.net is not None and self.netnodes is not None:
                nn = self.netnodes[i]
                args += [x for ifc in self.net.interfaces(nn) for x in ("--interface", ifc)]
                proc = self.net.popen(nn, args, stdout=log, stderr=subprocess.STDOUT)
            else:
                args += ["--listen", f"127.0.0.1:{ports[i]}", "--metrics", "off", "--no-web"]
                if i > 0:
                    args += ["--peer", f"127.0.0.1:{ports[i - 1]}"]
                proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            log.close()
            self.nodes.append(Node(name, state, proc))
        return t0

    def close(self) -> None:
        for n in self.nodes:
            if n.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if self.net is None:
                        os.killpg(n.proc.pid, signal.SIGKILL)
                    else:
                        n.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    n.proc.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)


async def ping(state: Path, target: str, timeout: float = 0.5) -> dict[str, Any] | None:
    try:
        r = await call(state, "ping", {"node": target, "timeout": timeout}, timeout=timeout + 2)
    except (ControlError, NoDaemon, OSError, TimeoutError):
        return None
    return r if isinstance(r, dict) else None


async def first_reply(mesh: Mesh, t0: float, limit: float = 40.0) -> float:
    a, d = mesh.nodes[0], mesh.nodes[-1]
    while time.monotonic() - t0 < limit:
        r = await ping(a.state, d.name, 0.3)
        if r is not None and r.get("hops") == 3:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise RuntimeError("no 3-hop reply")


def if_packets(net: DevNet, node: NetNode) -> int:
    """Packets sent and received on ``node``'s interfaces so far."""
    total = 0
    for ifc in net.interfaces(node):
        r = net.run(node, ["cat", f"/sys/class/net/{ifc}/statistics/tx_packets",
                           f"/sys/class/net/{ifc}/statistics/rx_packets"])
        total += sum(int(x) for x in r.stdout.split())
    return total


def if_bytes(net: DevNet, node: NetNode) -> dict[str, int]:
    out = {}
    for ifc in net.interfaces(node):
        r = net.run(node, ["cat", f"/sys/class/net/{ifc}/statistics/tx_bytes",
                           f"/sys/class/net/{ifc}/statistics/rx_bytes"])
        tx, rx = (int(x) for x in r.stdout.split())
        out[ifc] = tx + rx
    return out


async def link_bytes(mesh: Mesh) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in mesh.nodes:
        res = await call(n.state, "neighbours")
        for nb in res["neighbours"]:
            out[f"{n.name}>{nb['name']}"] = int(nb["tx_bytes"])
    return out


async def idle(mesh: Mesh, seconds: float) -> dict[str, Any]:
    net, nns = mesh.net, mesh.netnodes
    cpu0 = [n.cpu_s() for n in mesh.nodes]
    if net is not None and nns is not None:
        b0 = [if_bytes(net, nn) for nn in nns]
    lb0 = await link_bytes(mesh)
    await asyncio.sleep(seconds)
    cpu = [(n.cpu_s() - c) / seconds * 100 for n, c in zip(mesh.nodes, cpu0, strict=True)]
    mem = [n.memory_mb() for n in mesh.nodes]
    if net is not None and nns is not None:
        b1 = [if_bytes(net, nn) for nn in nns]
        # each link's two ends count its bytes twice (tx of one end is rx of the other)
        per_link = [sum(b1[i][k] - b0[i][k] for i in range(4) for k in b1[i]) / 2 / 3 / seconds]
        how = "interface counters (wire bytes, both ways, incl. mDNS)"
    lb1 = await link_bytes(mesh)
    quic = sum(lb1[k] - lb0.get(k, 0) for k in lb1) / 3 / seconds
    if net is None or nns is None:
        per_link = [quic]
        how = "QUIC payload bytes, both ways"
    return {"cpu_pct": median(cpu), "cpu_pct_max": round(max(cpu), 3),
            "rss_mb": median([m[0] for m in mem]),
            "rss_mb_each": [round(m[0], 1) for m in mem],
            "pss_mb": median([m[1] for m in mem if m[1] is not None]),
            "bytes_per_link_s": round(per_link[0], 1), "bytes_how": how,
            "quic_payload_bytes_per_link_s": round(quic, 1),
            "fast_hello_bytes_per_link_s": 2 * 2 * (HELLO_WIRE_B + ACK_WIRE_B)}


async def per_hop(mesh: Mesh, pings: int = 30) -> dict[str, Any]:
    a = mesh.nodes[0]
    r1: list[float] = []
    r3: list[float] = []
    for _ in range(pings):
        for target, acc in ((mesh.nodes[1].name, r1), (mesh.nodes[3].name, r3)):
            r = await ping(a.state, target, 1.0)
            if r is not None:
                acc.append(float(r["rtt_ms"]))
        await asyncio.sleep(0.02)
    m1, m3 = median(r1), median(r3)
    hop = None if m1 is None or m3 is None else round((m3 - m1) / 4, 3)
    return {"rtt_1hop_ms": m1, "rtt_3hop_ms": m3, "per_relay_hop_ms": hop, "pings_3hop": len(r3)}


def forwarder_baseline(net: DevNet, nodes: list[NetNode]) -> dict[str, Any]:
    """The same formula for a bare uvloop UDP forwarder: b and c forward, d echoes; 1 hop: b."""
    a, b, c, d = nodes
    procs = [net.popen(d, [PY, "-c", ECHO, net.address(d, c), "9999"]),
             net.popen(c, [PY, "-c", FORWARDER, net.address(c, b), net.address(c, d),
                           net.address(d, c)]),
             net.popen(b, [PY, "-c", FORWARDER, net.address(b, a), net.address(b, c),
                           net.address(c, b)]),
             net.popen(b, [PY, "-c", ECHO, net.address(b, a), "9998"])]
    try:
        time.sleep(1.5)
        m3 = json.loads(net.run(a, [PY, "-c", CLIENT, net.address(b, a), "300", "9999"], timeout=90).stdout)
        m1 = json.loads(net.run(a, [PY, "-c", CLIENT, net.address(b, a), "300", "9998"], timeout=90).stdout)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(5)
    hop = None if m1 is None or m3 is None else round((m3 - m1) / 4, 3)
    return {"rtt_1hop_ms": None if m1 is None else round(m1, 3),
            "rtt_3hop_ms": None if m3 is None else round(m3, 3), "per_relay_hop_ms": hop}


async def call_memory(mesh: Mesh, idle_rss: list[float], limit: float = 60.0) -> dict[str, Any]:
    """RSS with one active call: ann calls dan (3 hops, a tone), dan answers; sampled once
    audio flows both ways, beside each node's idle RSS; the relay bob too."""
    a, relay, d = mesh.nodes[0], mesh.nodes[1], mesh.nodes[3]
    t0 = time.monotonic()
    placed = await call(a.state, "call", {"node": d.name, "play": "tone:440"}, timeout=20)
    call_id = placed["call_id"]
    answered = False
    while time.monotonic() - t0 < limit:
        if not answered:
            with contextlib.suppress(ControlError):
                for c in (await call(d.state, "calls"))["calls"]:
                    if c["call_id"] == call_id and c["state"] == "ringing":
                        await call(d.state, "answer", {"call": call_id, "play": "tone:660"},
                                   timeout=20)
                        answered = True
        mine = next(c for c in (await call(a.state, "calls"))["calls"] if c["call_id"] == call_id)
        q = mine.get("quality") or {}
        if mine["state"] == "active" and (q.get("packets_received") or 0) > 100:
            break
        if mine["state"] == "ended":
            raise RuntimeError(f"call ended: {mine.get('reason')} {mine.get('detail')}")
        await asyncio.sleep(0.2)
    else:
        raise RuntimeError("no call with audio flowing")
    samples: list[list[float]] = [[], [], []]
    for _ in range(5):
        for i, n in enumerate((a, relay, d)):
            samples[i].append(n.memory_mb()[0])
        await asyncio.sleep(0.5)
    with contextlib.suppress(ControlError):
        await call(a.state, "hangup", {"call": call_id})
    during = [statistics.median(s) for s in samples]
    base = [idle_rss[0], idle_rss[1], idle_rss[3]]
    return {"call_rss_mb": [round(x, 1) for x in during],
            "call_added_rss_mb": [round(x - b, 1) for x, b in zip(during, base, strict=True)],
            "call_nodes": [a.name, relay.name, d.name]}


STORE = r"""
import asyncio, json, random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sync.envelope import NAMESPACE_PRIORITY, create_op
from sync.store import OpStore
WALL_S = 1_800_000_000.0
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
async def open_store(path):
    return await OpStore.open(path, wall_clock=lambda: WALL_S, verify_workers=0,
                              authorizers={ns: (lambda op, wall: None) for ns in NAMESPACE_PRIORITY})
async def main():
    path, n = Path(sys.argv[1]), int(sys.argv[2])
    if not path.exists():  # n signed ops of 50 authors, bodies of 60-400 bytes
        rng = random.Random(7)
        keys = [Ed25519PrivateKey.generate() for _ in range(50)]
        heads = {}
        hlc0 = int((WALL_S - 86400) * 1000) << 16
        store = await open_store(path)
        batch = []
        for i in range(n):
            a = rng.randrange(len(keys))
            seq, prev = heads.get(a, (0, None))
            op = create_op(keys[a], kind=f"{rng.choice(NAMESPACE_PRIORITY)}.edit",
                           doc_id=rng.randbytes(16), body=rng.randbytes(rng.randrange(60, 400)),
                           seq=seq + 1, prev=prev, hlc=hlc0 + (i << 8))
            heads[a] = (seq + 1, op.op_id)
            batch.append(op.raw)
            if len(batch) == 512 or i == n - 1:
                await store.apply_remote(batch)
                batch = []
        await store.close()
        return
    empty = await open_store(path.with_name("empty.db"))
    before = rss()
    store = await open_store(path)
    held = len(store)
    after = rss()
    await store.close()
    await empty.close()
    print(json.dumps({"ops": held, "rss_before_mb": round(before, 1),
                      "rss_after_mb": round(after, 1)}))
asyncio.run(main())
"""


def store_memory(n: int) -> dict[str, Any]:
    """What opening a store of ``n`` ops adds to a process's RSS (a fresh process that has
    opened an empty store first, so the code and SQLite are loaded on both sides)."""
    top = str(Path(__file__).resolve().parent.parent)
    with tempfile.TemporaryDirectory(prefix="cmfpstore") as tmp:
        path = Path(tmp) / "ops.db"
        subprocess.run([PY, "-c", STORE, str(path), str(n), top], check=True,
                       stdout=subprocess.DEVNULL, timeout=1800)
        r = subprocess.run([PY, "-c", STORE, str(path), str(n), top], check=True,
                           capture_output=True, text=True, timeout=600)
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    out["store_added_rss_mb"] = round(out["rss_after_mb"] - out["rss_before_mb"], 1)
    return out


async def reroute(mesh: Mesh, quiet_s: float = 3.0) -> dict[str, Any]:
    a = mesh.nodes[0]
    dan = mesh.nodes[3].name
    deadline = time.monotonic() + 40
    relay = None
    while time.monotonic() < deadline and relay is None:
        with contextlib.suppress(ControlError, NoDaemon, OSError):
            for r in (await call(a.state, "routes"))["routes"]:
                if r["name"] == dan and r["reachable"]:
                    relay = r["next_hop_name"]
        await asyncio.sleep(0.1)
    if relay is None:
        raise RuntimeError("no route ann -> dan on the diamond")
    await asyncio.sleep(quiet_s)  # traffic-free for a while (hellos slow down), then a flow
    results: list[tuple[float, bool]] = []

    async def one() -> None:
        sent = time.monotonic()
        results.append((sent, await ping(a.state, dan, 1.0) is not None))

    tasks = []
    kill_at = None
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now - start > 8.0:
            break
        if kill_at is None and now - start > 2.0:
            victim = next(n for n in mesh.nodes if n.name == relay)
            victim.proc.kill()
            kill_at = time.monotonic()
        tasks.append(asyncio.ensure_future(one()))
        await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    assert kill_at is not None
    after = sorted(t for t, ok in results if ok and t > kill_at)
    return {"relay": relay, "outage_s": round(after[0] - kill_at, 3) if after else None,
            "pings": len(results), "answered": sum(ok for _, ok in results)}


def use_bytecode_cache(root: Path) -> None:
    """Let this process's children read and write bytecode in ``root`` (see the docstring),
    and fill it once: the project's packages compiled, the daemon's imports run."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root)
    top = Path(__file__).resolve().parent.parent
    packages = ["carmesh", "meshd", "sync", "library_replica", "voice", "web", "tui"]
    subprocess.run([PY, "-m", "compileall", "-q", *[str(top / p) for p in packages]],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PY, "-c", IMPORTS], check=True)


def import_baseline(runs: int = 3) -> float | None:
    ts = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run([PY, "-c", IMPORTS], check=True)
        ts.append(time.monotonic() - t)
    return median(ts)


async def run_line(net: DevNet | None, args: argparse.Namespace) -> dict[str, Any]:
    nodes = net.line(4, NAMES) if net is not None else None
    mesh = Mesh(net, nodes)
    try:
        t0 = mesh.start()
        ready = [await n.ready_after(t0) for n in mesh.nodes]
        reply = await first_reply(mesh, t0)
        if args.only == "per-hop":
            # the relay cy only forwards the 3-hop pings (and their ACKs): its CPU time per
            # ping, less what it spends idle in as long a time, is the cost of two forwards
            cy = mesh.nodes[2]

            def pkts() -> int:  # interface counters: namespaces only
                return if_packets(net, nodes[2]) if net is not None and nodes is not None else 0
            c0, p0, t0 = cy.cpu_ns(), pkts(), time.monotonic()
            await asyncio.sleep(args.settle)
            c1, p1, t1 = cy.cpu_ns(), pkts(), time.monotonic()
            hop = await per_hop(mesh, args.pings)
            c2, p2, t2 = cy.cpu_ns(), pkts(), time.monotonic()
            idle_ns_s, idle_p_s = (c1 - c0) / (t1 - t0), (p1 - p0) / (t1 - t0)
            n3 = max(1, hop["pings_3hop"])
            relay_us = ((c2 - c1) - idle_ns_s * (t2 - t1)) / n3 / 1000
            out = {"ready_s": median(ready), "first_3hop_reply_s": round(reply, 3), **hop,
                   "relay_cpu_us_per_3hop_ping": round(relay_us, 1),
                   "relay_idle_cpu_pct": round(idle_ns_s / 1e7, 3),
                   "relay_packets_per_3hop_ping": (
                       round(((p2 - p1) - idle_p_s * (t2 - t1)) / n3, 2) if net is not None
                       else None)}
            if net is not None and nodes is not None:
                out["forwarder"] = forwarder_baseline(net, nodes)
            return out
        hop = await per_hop(mesh, args.pings)
        await asyncio.sleep(args.settle)
        idle_res = await idle(mesh, args.seconds)
        call_res = (await call_memory(mesh, idle_res["rss_mb_each"])
                    if net is not None and args.call else {})
    finally:
        mesh.close()
    out = {"ready_s": median(ready), "first_3hop_reply_s": round(reply, 3), **hop, **idle_res,
           **call_res}
    if net is not None and nodes is not None:
        out["forwarder"] = forwarder_baseline(net, nodes)
    return out


async def run_diamond(net: DevNet, args: argparse.Namespace) -> dict[str, Any]:
    nodes = net.diamond(NAMES)
    mesh = Mesh(net, nodes)
    try:
        t0 = mesh.start()
        for n in mesh.nodes:
            await n.ready_after(t0)
        return await reroute(mesh, args.reroute_quiet)
    finally:
        mesh.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--seconds", type=float, default=60.0, help="idle window (default 60)")
    p.add_argument("--settle", type=float, default=25.0,
                   help="quiet seconds before the idle window (hellos slow down; default 25)")
    p.add_argument("--loopback", action="store_true", help="no namespaces even as root")
    p.add_argument("--no-call", dest="call", action="store_false",
                   help="skip the RSS of one active call (namespaces only)")
    p.add_argument("--store-ops", type=int, default=100_000,
                   help="ops in the store whose RSS is measured (0: skip; default 100000)")
    p.add_argument("--reroute-quiet", type=float, default=3.0, metavar="S",
                   help="quiet seconds on the diamond before the flow whose relay is killed "
                        "(default 3; 45: its links have slowed their hellos to the idle rate)")
    p.add_argument("--from-source", action="store_true",
                   help="no bytecode cache: compile from source at each start if the "
                        "environment says so (PYTHONDONTWRITEBYTECODE)")
    p.add_argument("--only", choices=["per-hop"],
                   help="per-hop: only the line's per-hop latency (after --settle s of quiet) "
                        "and its forwarder baseline")
    p.add_argument("--pings", type=int, default=30,
                   help="pings to 1 and to 3 hops for the per-hop row (default 30)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cmpyc") as pyc:
        if not args.from_source:
            use_bytecode_cache(Path(pyc))
        return run_all(args)


def run_per_hop(args: argparse.Namespace) -> int:
    why = "--loopback" if args.loopback else have_netns()
    res: dict[str, Any] = {"namespaces": why is None, "bytecode": not args.from_source}
    if why is None:
        with DevNet() as net:
            res["line"] = asyncio.run(run_line(net, args))
    else:
        res["skipped"] = f"namespaces: {why}"
        res["line"] = asyncio.run(run_line(None, args))
    line = res["line"]
    print(f"RTT 1 hop / 3 hops ({args.pings} pings each)  "
          f"{line['rtt_1hop_ms']} / {line['rtt_3hop_ms']} ms")
    print(f"added one-way latency per relay hop  {line['per_relay_hop_ms']} ms")
    print(f"relay CPU per 3-hop ping (two forwards, their ACKs; idle {line['relay_idle_cpu_pct']} % "
          f"taken out)  {line['relay_cpu_us_per_3hop_ping']} us")
    print(f"relay packets sent and received per 3-hop ping  "
          f"{line['relay_packets_per_3hop_ping']}")
    if "forwarder" in line:
        fw = line["forwarder"]
        print(f"bare uvloop UDP forwarder: RTT 1 / 3 hops, per relay hop (baseline)  "
              f"{fw['rtt_1hop_ms']} / {fw['rtt_3hop_ms']} ms, {fw['per_relay_hop_ms']} ms")
    if args.json:
        print(json.dumps(res))
    return 0


def run_all(args: argparse.Namespace) -> int:
    if args.only == "per-hop":
        return run_per_hop(args)
    why = "--loopback" if args.loopback else have_netns()
    res: dict[str, Any] = {"namespaces": why is None, "bytecode": not args.from_source,
                           "import_baseline_s": import_baseline()}
    if why is None:
        with DevNet() as net:
            res["line"] = asyncio.run(run_line(net, args))
        with DevNet() as net:
            res["diamond"] = asyncio.run(run_diamond(net, args))
    else:
        res["skipped"] = f"namespaces: {why}"
        res["line"] = asyncio.run(run_line(None, args))
    if args.store_ops:
        res["store"] = store_memory(args.store_ops)
    line = res["line"]
    rows = [
        ("interpreter importing the daemon's modules (baseline)", f"{res['import_baseline_s']} s"),
        ("cold start to ready (median node)", f"{line['ready_s']} s"),
        ("cold start to first reply over 3 hops", f"{line['first_3hop_reply_s']} s"),
        ("idle RSS / PSS per node (median)", f"{line['rss_mb']:.1f} / {line['pss_mb']} MB"),
        ("idle CPU per node (median / max)", f"{line['cpu_pct']} / {line['cpu_pct_max']} %"),
        ("idle bytes per link", f"{line['bytes_per_link_s']} B/s ({line['bytes_how']})"),
        ("  of which QUIC link payload (hellos, routing)",
         f"{line['quic_payload_bytes_per_link_s']} B/s"),
        ("hellos every 0.5 s, theoretical (baseline)",
         f"{line['fast_hello_bytes_per_link_s']} B/s"),
        ("RTT 1 hop / 3 hops", f"{line['rtt_1hop_ms']} / {line['rtt_3hop_ms']} ms"),
        ("added one-way latency per relay hop", f"{line['per_relay_hop_ms']} ms"),
    ]
    if "forwarder" in line:
        fw = line["forwarder"]
        rows.append(("bare uvloop UDP forwarder: RTT 1 / 3 hops, per relay hop (baseline)",
                     f"{fw['rtt_1hop_ms']} / {fw['rtt_3hop_ms']} ms, {fw['per_relay_hop_ms']} ms"))
    if "call_added_rss_mb" in line:
        rows.append(("RSS with one active call: caller / relay / callee (added to idle)",
                     " / ".join(f"{x} ({y:+})" for x, y in zip(line["call_rss_mb"],
                                                             line["call_added_rss_mb"],
                                                             strict=True)) + " MB"))
    if "store" in res:
        st = res["store"]
        rows.append((f"RSS added by opening a store of {st['ops']:,} ops",
                     f"{st['store_added_rss_mb']} MB ({st['rss_before_mb']} -> "
                     f"{st['rss_after_mb']} MB)"))
    if "diamond" in res:
        d = res["diamond"]
        rows.append((f"silent-relay reroute (diamond, ping every 50 ms, after "
                     f"{args.reroute_quiet:g} s quiet)",
                     f"{d['outage_s']} s ({d['answered']}/{d['pings']} answered)"))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
