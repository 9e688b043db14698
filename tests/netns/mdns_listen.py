"""Counts the unsolicited mDNS announcements of one service heard on one interface.

Usage (inside a namespace): python -m tests.netns.mdns_listen --addr 10.77.0.2 --for 9

Joins 224.0.0.251 on the interface with address ``--addr``, listens on port 5353 for
``--for`` seconds (bounded) and prints one JSON line: ``{"announcements": {instance: [t,
...]}}``, the seconds (since start) at which a response carrying a ``_carmesh._udp``
pointer (not a goodbye) arrived.  Run it where nobody else asks for the service: then
every such response is an announcement (zeroconf does not answer its own questions).
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from zeroconf import DNSIncoming, DNSPointer  # type: ignore[attr-defined]

from meshd.discovery import SERVICE_TYPE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--for", dest="duration", type=float, required=True)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("", 5353))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton("224.0.0.251") + socket.inet_aton(args.addr))
    print(json.dumps({"event": "listening"}), flush=True)
    t0 = time.monotonic()
    seen: dict[str, list[float]] = {}
    while (left := args.duration - (time.monotonic() - t0)) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(9000)
        except TimeoutError:
            break
        now = time.monotonic() - t0
        msg = DNSIncoming(data)
        if not msg.valid:
            continue
        if msg.is_response():
            for rec in msg.answers():
                if isinstance(rec, DNSPointer) and rec.name == SERVICE_TYPE and rec.ttl > 0:
                    seen.setdefault(rec.alias, []).append(round(now, 2))
    print(json.dumps({"event": "done", "announcements": seen}), flush=True)


if __name__ == "__main__":
    main()
