"""A real meshd ``Node`` with a benchmark sink service and a packet flood driver.

Run by ``bench/routing.py`` as a separate process (one per node, optionally pinned to
a CPU).  Roles:

- ``--sink``: counts packets of the bench service that reach it and prints the count
  every 0.25 s as a JSON line;
- ``--flood NAME``: once a route to the node named NAME exists, sends bench packets of
  ``--size`` bytes to it at ``--rate`` packets/s for ``--seconds`` s (bounded), then
  prints how many it sent;
- neither: a plain node (the relay under test runs the real ``meshd`` instead).

Lines on stdout are JSON objects; the process ends by itself after ``--lifetime`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshd.config import Config
from meshd.core.identity import NodeId
from meshd.core.packet import MeshPacket
from meshd.node import Node

BENCH_SERVICE = 250


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


async def flood(node: Node, target_name: str, rates: list[float], seconds: float,
                size: int) -> None:
    target: NodeId | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for ann in node.book:
            if ann.name == target_name and node.next_hop(ann.node_id) is not None:
                target = ann.node_id
        if target is not None:
            break
        await asyncio.sleep(0.1)
    if target is None:
        emit(event="error", error=f"no route to {target_name}")
        return
    payload = b"\x00" * size
    for idx, rate in enumerate(rates):
        sent = 0
        start = time.monotonic()
        end = start + seconds
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate) - sent
            for _ in range(max(0, due)):
                if not node.send_packet(target, BENCH_SERVICE, payload, flow_id=(idx << 24) | sent):
                    break
                sent += 1
            await asyncio.sleep(0.002)
        emit(event="sent", index=idx, rate=rate, sent=sent, seconds=time.monotonic() - start)
        await asyncio.sleep(1.0)  # let the relay drain before the next rate
    emit(event="flood_done")


async def main(args: argparse.Namespace) -> None:
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    cfg = Config(state_dir=Path(args.state_dir), name=args.name, listen=tuple(args.listen),
                 peer=tuple(args.peer or ()), interface=tuple(args.interface or ()))
    node = Node(cfg)
    counts: dict[int, int] = {}

    def sink(pkt: MeshPacket, now: float) -> None:
        idx = pkt.flow_id >> 24
        counts[idx] = counts.get(idx, 0) + 1

    node.register_service(BENCH_SERVICE, sink)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(args.lifetime, stop.set)
    runner = asyncio.create_task(node.run(stop))
    while not node.ready:
        await asyncio.sleep(0.05)
    emit(event="ready", node_id=node.identity.node_id.hex())
    if args.flood:
        await flood(node, args.flood, [float(r) for r in args.rates.split(",")], args.seconds,
                    args.size)
    if args.sink:
        while not stop.is_set():
            emit(event="counts", counts={str(k): v for k, v in counts.items()})
            await asyncio.sleep(0.25)
    await runner


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--listen", action="append", default=[])
    p.add_argument("--peer", action="append")
    p.add_argument("--interface", action="append")
    p.add_argument("--sink", action="store_true")
    p.add_argument("--flood")
    p.add_argument("--rates", default="1000", help="comma-separated packets/s, one window each")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--cpu", type=int)
    p.add_argument("--lifetime", type=float, default=30.0)
    a = p.parse_args()
    try:
        import uvloop

        uvloop.run(main(a))
    except ImportError:
        asyncio.run(main(a))
