"""Benchmark of QUIC neighbour links, with baselines measured in the same run.

Usage: ``.venv/bin/python bench/links.py [--json] [--seconds S] [--uvloop]``

Rows (loopback only, each bounded in time and count):
- ``LinkManager (QUIC link)``: two meshd LinkManagers over one QUIC link on 127.0.0.1;
- ``asyncio UDP echo``: a plain asyncio datagram endpoint echo on 127.0.0.1 (the floor an
  adapter over UDP sockets can reach on this loop);
- ``aioquic in memory``: two aioquic QuicConnection objects passing datagrams in memory, no
  sockets, no event loop (aioquic's own packet/crypto cost).

Datagram columns: round-trip time of one 100-byte datagram echoed back (p50 / p95) on an idle link,
then datagrams/s one way (windowed: at most WINDOW in flight, so nothing is lost to queue
limits; "lost" counts what never arrived), then the round-trip time again right after that load.

A second table gives one-way stream throughput (64 KiB messages) over a LinkManager
stream, over aioquic's own asyncio stream API with no meshd code, and over asyncio TCP.
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
from meshd.core.identity import Announcement, Identity, NodeId, Role
from meshd.links.manager import MAX_DATAGRAM_FRAME_SIZE, LinkManager, Stream
from meshd.links.tlscert import make_certificate

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


async def _windowed(send: Callable[[], None], sink: _Sink,
                    seconds: float) -> tuple[float, int]:
    """Send in windows of WINDOW, waiting for each to arrive; returns (datagrams/s, lost)."""
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
            await asyncio.wait_for(sink.waiter, 0.25)
    elapsed = loop.time() - start
    sink.waiter = None
    return sink.count / elapsed, sent - sink.count


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
        rate, lost = await _windowed(ping, sb, seconds)
        sb.echo_to = b.send_datagram
        after = await _rtts(ping, sa, seconds / 2)
        return {"path": "LinkManager (QUIC link)", "datagrams_per_s": rate, "lost": lost,
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
        rate, lost = await _windowed(ping, server_sink, seconds)
        server.echo = True
        after = await _rtts(ping, client_sink, seconds / 2)
        return {"path": "asyncio UDP echo", "datagrams_per_s": rate, "lost": lost,
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
    received = sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds and received < MAX_COUNT:
        for _ in range(WINDOW):
            client.send_datagram_frame(payload)
        sent += WINDOW
        now[0] += 0.001
        pump(client, server, caddr)
        received += got(server)
        pump(server, client, saddr)
        got(client)
    rate = received / (time.perf_counter() - start)
    after = rtts()
    return {"path": "aioquic in memory (no sockets)", "datagrams_per_s": rate,
            "lost": sent - received,
            "rtt_p50_us": pct(rtt, 0.5), "rtt_p95_us": pct(rtt, 0.95), "rtt_n": len(rtt),
            "rtt_after_load_p50_us": pct(after, 0.5), "rtt_after_load_p95_us": pct(after, 0.95)}


STREAM_MSG = 64 * 1024
STREAM_MAX_BYTES = 512 * 1024 * 1024


async def bench_stream(seconds: float) -> dict[str, Any]:
    """One-way bytes/s of STREAM_MSG-byte messages over a LinkManager stream (acked at the end)."""
    ida, idb = Identity.generate(), Identity.generate()
    anna = ida.announce(1, time.time(), "bench-a", Role.CAR)
    annb = idb.announce(1, time.time(), "bench-b", Role.CAR)
    sa, sb = _Sink(), _Sink()
    a = LinkManager(ida, lambda: anna, sa)
    b = LinkManager(idb, lambda: annb, sb)
    received = 0

    async def sink(peer: NodeId, stream: Stream) -> None:
        nonlocal received
        while (msg := await stream.recv()) is not None:
            received += len(msg)
        await stream.send(b"done")

    b.register_stream_service("sink", sink)
    try:
        addr = await b.listen("127.0.0.1", 0)
        await a.connect(*addr, idb.node_id)
        stream = await a.open_stream(idb.node_id, "sink")
        msg = os.urandom(STREAM_MSG)
        loop = asyncio.get_running_loop()
        sent = 0
        start = loop.time()

        # meanwhile, voice-like datagrams (deadline 100 ms) ping-pong on the same link
        sb.echo_to = b.send_datagram
        ping = os.urandom(PAYLOAD)
        rtts: list[float] = []
        missed = 0

        async def pinger() -> None:
            nonlocal missed
            while loop.time() - start < seconds:
                sa.count, sa.target = 0, 1
                sa.waiter = loop.create_future()
                t0 = time.perf_counter()
                a.send_datagram(idb.node_id, ping, deadline=loop.time() + 0.1)
                try:
                    await asyncio.wait_for(sa.waiter, 0.25)
                    rtts.append((time.perf_counter() - t0) * 1e6)
                except TimeoutError:
                    missed += 1
                await asyncio.sleep(0.02)  # 50 packets/s, one voice flow

        ping_task = asyncio.ensure_future(pinger())
        while loop.time() - start < seconds and sent < STREAM_MAX_BYTES:
            await stream.send(msg)
            sent += len(msg)
        await stream.close()
        assert await asyncio.wait_for(stream.recv(), 30) == b"done"
        elapsed = loop.time() - start
        await ping_task
        return {"path": "LinkManager stream (QUIC)", "mib_per_s": received / elapsed / 2**20,
                "datagram_rtt_p50_us": pct(rtts, 0.5), "datagram_rtt_p95_us": pct(rtts, 0.95),
                "datagrams_missed": missed, "datagrams_sent": missed + len(rtts)}
    finally:
        await a.close()
        await b.close()


async def bench_raw_quic_stream(seconds: float) -> dict[str, Any]:
    """aioquic's own asyncio client/server, one stream, no meshd code (same bytes as above)."""
    from aioquic.asyncio import connect, serve
    from aioquic.asyncio.protocol import QuicConnectionProtocol

    received = 0
    finished = asyncio.Event()
    progress = asyncio.Event()

    class Sink(QuicConnectionProtocol):
        def quic_event_received(self, event: events.QuicEvent) -> None:
            nonlocal received
            if isinstance(event, events.StreamDataReceived):
                received += len(event.data)
                progress.set()
                if event.end_stream:
                    finished.set()

    cert, key = make_certificate(Identity.generate())
    scfg = QuicConfiguration(is_client=False, alpn_protocols=[ALPN], certificate=cert,
                             private_key=key)
    server = await serve("127.0.0.1", 0, configuration=scfg, create_protocol=Sink)
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    try:
        async with connect("127.0.0.1", port, configuration=ccfg) as client:
            _, writer = await client.create_stream()
            loop = asyncio.get_running_loop()
            msg = os.urandom(STREAM_MSG)
            start = loop.time()
            sent = 0
            # keep at most 256 KiB ahead of what the peer has received (like Stream.send)
            while loop.time() - start < seconds and sent < STREAM_MAX_BYTES:
                writer.write(msg)
                sent += len(msg)
                while sent - received > 256 * 1024:
                    progress.clear()
                    await progress.wait()
            writer.write_eof()
            await asyncio.wait_for(finished.wait(), 30)
            elapsed = loop.time() - start
        return {"path": "aioquic raw stream (no meshd)", "mib_per_s": received / elapsed / 2**20}
    finally:
        server.close()


async def bench_tcp(seconds: float) -> dict[str, Any]:
    """The same over a plain asyncio TCP connection on loopback (length-prefixed)."""
    received = 0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while True:
            head = await reader.readexactly(4)
            n = int.from_bytes(head, "big")
            if n == 0:
                break
            received += len(await reader.readexactly(n))
        writer.write(b"k")
        await writer.drain()
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        msg = len(os.urandom(STREAM_MSG)).to_bytes(4, "big") + os.urandom(STREAM_MSG)
        loop = asyncio.get_running_loop()
        sent = 0
        start = loop.time()
        while loop.time() - start < seconds and sent < STREAM_MAX_BYTES:
            writer.write(msg)
            await writer.drain()
            sent += STREAM_MSG
        writer.write(bytes(4))
        await writer.drain()
        await asyncio.wait_for(reader.readexactly(1), 30)
        elapsed = loop.time() - start
        await asyncio.wait_for(done.wait(), 5)
        return {"path": "asyncio TCP (loopback)", "mib_per_s": received / elapsed / 2**20}
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def main_async(seconds: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [await bench_links(seconds), await bench_udp(seconds), bench_memory(seconds)]
    streams = [await bench_stream(seconds), await bench_raw_quic_stream(seconds),
               await bench_tcp(seconds)]
    return rows, streams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ap.add_argument("--seconds", type=float, default=2.0, help="duration of each throughput row")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = ap.parse_args()
    seconds = max(0.2, min(args.seconds, 10.0))
    if args.uvloop:
        import uvloop
        rows, streams = uvloop.run(main_async(seconds))
        loop_name = "uvloop"
    else:
        rows, streams = asyncio.run(main_async(seconds))
        loop_name = "asyncio"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}, "
               f"Python {platform.python_version()}")
    if args.json:
        print(json.dumps({"loop": loop_name, "machine": machine, "payload_bytes": PAYLOAD,
                          "window": WINDOW, "rows": rows, "stream_message_bytes": STREAM_MSG,
                          "streams": streams}, indent=2))
        return
    print(f"Links benchmark ({loop_name}; {machine}; {PAYLOAD}-byte datagrams, "
          f"window {WINDOW})\n")
    print("| path | datagrams/s | lost | RTT p50 (µs) | RTT p95 (µs) "
          "| after load: RTT p50 (µs) | after load: RTT p95 (µs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['datagrams_per_s']:,.0f} | {r['lost']} "
              f"| {r['rtt_p50_us']:,.0f} "
              f"| {r['rtt_p95_us']:,.0f} | {r['rtt_after_load_p50_us']:,.0f} "
              f"| {r['rtt_after_load_p95_us']:,.0f} |")
    print(f"\n| stream path ({STREAM_MSG // 1024} KiB messages, one way) | MiB/s |")
    print("|---|---:|")
    for r in streams:
        print(f"| {r['path']} | {r['mib_per_s']:,.1f} |")
    r = streams[0]
    print(f"\nDuring the LinkManager stream transfer, 50/s datagrams with a 100 ms deadline "
          f"on the same link: RTT p50 {r['datagram_rtt_p50_us']:,.0f} µs, "
          f"p95 {r['datagram_rtt_p95_us']:,.0f} µs, "
          f"{r['datagrams_missed']} of {r['datagrams_sent']} not answered within 250 ms.")


if __name__ == "__main__":
    main()
