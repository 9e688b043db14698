"""A one-node discovery probe run inside a namespace by the netns tests.

Usage: python -m tests.netns.discovery_probe --name a --iface to-b [--iface ...] --lifetime 30

Starts ``meshd.discovery.Discovery`` on the given interfaces and prints JSON lines
on stdout: ``{"event": "ready", "id": ...}``, ``{"event": "seen", ...PeerSeen}``,
``{"event": "gone", "id": ...}``, ``{"event": "closed"}`` (after goodbyes were
sent) and ``{"event": "error", "message": ...}``.  It exits after ``--lifetime``
seconds, or earlier on SIGTERM/SIGINT, always closing discovery (goodbyes) first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from meshd.core.identity import Identity, NodeId
from meshd.discovery import Discovery, PeerSeen


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _main(args: argparse.Namespace) -> int:
    node_id = bytes.fromhex(args.id) if args.id else Identity.generate().node_id
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_seen(peer: PeerSeen) -> None:
        _emit(event="seen", id=peer.node_id.hex(), name=peer.name, role=peer.role,
              host=peer.host, port=peer.port)

    def on_gone(gone: NodeId) -> None:
        _emit(event="gone", id=gone.hex())

    disc = Discovery(node_id=node_id, name=args.name, role=args.role, port=args.port,
                     interfaces=args.iface, on_seen=on_seen, on_gone=on_gone, ttl_s=args.ttl)
    try:
        await disc.start()
    except Exception as exc:
        _emit(event="error", message=f"{type(exc).__name__}: {exc}")
        return 1
    _emit(event="ready", id=node_id.hex(), name=args.name)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.lifetime)
    except TimeoutError:
        pass
    _emit(event="peers", peers=[p.node_id.hex() for p in disc.peers()])
    await disc.close()
    _emit(event="closed")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--role", default="car")
    parser.add_argument("--port", type=int, default=7420)
    parser.add_argument("--iface", action="append", default=[])
    parser.add_argument("--ttl", type=int, default=20)
    parser.add_argument("--lifetime", type=float, default=30.0)
    parser.add_argument("--id", default="", help="NodeId as 32 hex (default: a fresh one)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as meshd does")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"{args.name} %(name)s %(levelname)s %(message)s")
    if args.uvloop:
        import uvloop

        sys.exit(uvloop.run(_main(args)))
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
