"""Benchmark of QUIC neighbour links, with baselines measured in the same run.

Usage: ``.venv/bin/python bench/links.py [--json] [--seconds S] [--uvloop]``

Rows (loopback only, each bounded in time and count):
- ``LinkManager (QUIC link)``: two meshd LinkManagers over one QUIC link on 127.0.0.1;
- ``asyncio UDP echo``: a plain asyncio datagram endpoint echo on 127.0.0.1 (the floor an
  adapter over UDP sockets can reach on this loop);
- ``aioquic in memory``: two aioquic QuicConnection objects passing datagrams in memory, no
  sockets, no event loop (aioquic's own packet/crypto cost).

Columns: round-trip time of one 100-byte datagram echoed back (p50 / p95) on an idle link,
then datagrams/s one way (windowed: at most WINDOW in flight, so nothing is lost to queue
limits), then the round-trip time again right after that load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from meshd import ALPN
from meshd.identity import Announcement, Identity, NodeId, Role
from meshd.links import MAX_DATAGRAM_FRAME_SIZE, LinkManager
from meshd.tlscert import make_certificate

PAYLOAD = 100
WINDOW = 64
MAX_COUNT = 200_000
RTT_MAX_COUNT = 5_000


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class _Sink:
    """LinkListener that counts datagrams and can echo or resolve a waiter."""

    def __init__(self) -> None:
        self.count = 0
        self.echo_to: Callable[[NodeId, bytes], Any] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.target = 0
        self.up = asyncio.Event()

    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None:
        self.up.set()

    def link_down(self, peer: NodeId, reason: str) -> None:
        pass

    def datagram_received(self, peer: NodeId, data: bytes) -> None:
        self.count += 1
        if self.echo_to is not None:
            self.echo_to(peer, data)
        if self.waiter is not None and not self.waiter.done() and self.count >= self.target:
            self.waiter.set_result(None)


async def _windowed(send: Callable[[], None], sink: _Sink, seconds: float) -> float:
    """Send in windows of WINDOW, waiting for each window to arrive; returns datagrams/s."""
    loop = asyncio.get_running_loop()
    sent = 0
    sink.count = 0
    start = loop.time()
    while loop.time() - start < seconds and sent < MAX_COUNT:
        sink.target = sent + WINDOW
        sink.waiter = loop.create_future()
        for _ in range(WINDOW):
            send()
        sent += WINDOW
        # a lost datagram only ends the window early: the count is what arrived
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.waiter, 2.0)
    elapsed = loop.time() - start
    sink.waiter = None
    return sink.count / elapsed


async def _rtts(send: Callable[[], None], sink: _Sink, seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    out: list[float] = []
    start = loop.time()
    while loop.time() - start < seconds and len(out) < RTT_MAX_COUNT:
        sink.count = 0
        sink.target = 1
        sink.waiter = loop.create_future()
        t0 = time.perf_counter()
        send()
        try:
            await asyncio.wait_for(sink.waiter, 1.0)
        except TimeoutError:
            continue
        out.append((time.perf_counter() - t0) * 1e6)
    sink.waiter = None
    return out


async def bench_links(seconds: float) -> dict[str, Any]:
    ida, idb = Identity.generate(), Identity.generate()
    anna = ida.announce(1, time.time(), "bench-a", Role.CAR)
    annb = idb.announce(1, time.time(), "bench-b", Role.CAR)
    sa, sb = _Sink(), _Sink()
    a = LinkManager(ida, lambda: anna, sa, datagram_queue_max=4 * WINDOW)
    b = LinkManager(idb, lambda: annb, sb, datagram_queue_max=4 * WINDOW)
    try:
        addr = await b.listen("127.0.0.1", 0)
        await a.connect(*addr, idb.node_id)
        await asyncio.wait_for(sb.up.wait(), 5)
        payload = os.urandom(PAYLOAD)

        def ping() -> None:
            a.send_datagram(idb.node_id, payload)

        sb.echo_to = b.send_datagram
        rtt = await _rtts(ping, sa, seconds / 2)
        sb.echo_to = None
        rate = await _windowed(ping, sb, seconds)
        sb.echo_to = b.send_datagram
        after = await _rtts(ping, sa, seconds / 2)
        return {"path": "LinkManager (QUIC link)", "datagrams_per_s": rate,
                "rtt_p50_us": pct(rtt, 0.5), "rtt_p95_us": pct(rtt, 0.95), "rtt_n": len(rtt),
                "rtt_after_load_p50_us": pct(after, 0.5),
                "rtt_after_load_p95_us": pct(after, 0.95)}
    finally:
        await a.close()
        await b.close()


class _UdpEnd(asyncio.DatagramProtocol):
    def __init__(self, sink: _Sink, echo: bool) -> None:
        self.sink = sink
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)
        self.sink.datagram_received(b"", data)


async def bench_udp(seconds: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    server_sink, client_sink = _Sink(), _Sink()
    server = _UdpEnd(server_sink, echo=False)
    st, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    addr = st.get_extra_info("sockname")
    ct, _ = await loop.create_datagram_endpoint(lambda: _UdpEnd(client_sink, False),
                                                     remote_addr=addr)
    try:
        payload = os.urandom(PAYLOAD)

        def ping() -> None:
            ct.sendto(payload)

        server.echo = True
        rtt = await _rtts(ping, client_sink, seconds / 2)
        server.echo = False
        rate = await _windowed(ping, server_sink, seconds)
        server.echo = True
        after = await _rtts(ping, client_sink, seconds / 2)
        return {"path": "asyncio UDP echo", "datagrams_per_s": rate,
                "rtt_p50_us": pct(rtt, 0.5), "rtt_p95_us": pct(rtt, 0.95), "rtt_n": len(rtt),
                "rtt_after_load_p50_us": pct(after, 0.5),
                "rtt_after_load_p95_us": pct(after, 0.95)}
    finally:
        ct.close()
        st.close()


def bench_memory(seconds: float) -> dict[str, Any]:
    cert, key = make_certificate(Identity.generate())
    client = QuicConnection(configuration=QuicConfiguration(
        is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE))
    server = QuicConnection(
        configuration=QuicConfiguration(is_client=False, alpn_protocols=[ALPN],
                                        certificate=cert, private_key=key,
                                        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE),
        original_destination_connection_id=client.original_destination_connection_id)
    now = [1.0]
    caddr, saddr = ("127.0.0.2", 1), ("127.0.0.3", 2)

    def pump(src: QuicConnection, dst: QuicConnection, addr: tuple[str, int]) -> None:
        for data, _ in src.datagrams_to_send(now=now[0]):
            dst.receive_datagram(data, addr, now=now[0])

    def got(conn: QuicConnection) -> int:
        n = 0
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, events.DatagramFrameReceived):
                n += 1
        return n

    client.connect(saddr, now=now[0])
    for _ in range(10):
        now[0] += 0.001
        pump(client, server, caddr)
        pump(server, client, saddr)
    got(client), got(server)
    payload = os.urandom(PAYLOAD)

    def rtts() -> list[float]:
        out: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 2 and len(out) < RTT_MAX_COUNT:
            t0 = time.perf_counter()
            now[0] += 0.001
            client.send_datagram_frame(payload)
            pump(client, server, caddr)
            got(server)
            server.send_datagram_frame(payload)
            pump(server, client, saddr)
            got(client)
            out.append((time.perf_counter() - t0) * 1e6)
        return out

    # "RTT": one datagram there and one back, in memory (CPU cost only)
    rtt = rtts()
    # throughput: windows of WINDOW datagrams, acks flowing back
    received = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and received < MAX_COUNT:
        for _ in range(WINDOW):
            client.send_datagram_frame(payload)
        now[0] += 0.001
        pump(client, server, caddr)
        received += got(server)
        pump(server, client, saddr)
        got(client)
    rate = received / (time.perf_counter() - start)
    after = rtts()
    return {"path": "aioquic in memory (no sockets)", "datagrams_per_s": rate,
            "rtt_p50_us": pct(rtt, 0.5), "rtt_p95_us": pct(rtt, 0.95), "rtt_n": len(rtt),
            "rtt_after_load_p50_us": pct(after, 0.5), "rtt_after_load_p95_us": pct(after, 0.95)}


async def main_async(seconds: float) -> list[dict[str, Any]]:
    rows = [await bench_links(seconds), await bench_udp(seconds), bench_memory(seconds)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput row")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = ap.parse_args()
    seconds = max(0.2, min(args.seconds, 10.0))
    if args.uvloop:
        import uvloop
        rows = uvloop.run(main_async(seconds))
        loop_name = "uvloop"
    else:
        rows = asyncio.run(main_async(seconds))
        loop_name = "asyncio"
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"loop": loop_name, "machine": machine, "payload_bytes": PAYLOAD,
                          "window": WINDOW, "rows": rows}, indent=2))
        return
    print(f"Links benchmark ({loop_name}; {machine}; {PAYLOAD}-byte datagrams, "
          f"window {WINDOW})\n")
    print("| path | datagrams/s | RTT p50 (µs) | RTT p95 (µs) "
          "| after load: RTT p50 (µs) | after load: RTT p95 (µs) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['datagrams_per_s']:,.0f} | {r['rtt_p50_us']:,.0f} "
              f"| {r['rtt_p95_us']:,.0f} | {r['rtt_after_load_p50_us']:,.0f} "
              f"| {r['rtt_after_load_p95_us']:,.0f} |")


if __name__ == "__main__":
    main()
