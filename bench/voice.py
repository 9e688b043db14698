"""Benchmark of calls over the mesh, with a plain asyncio UDP relay as the per-hop baseline.

Usage: ``.venv/bin/python bench/voice.py [--json] [--runs N] [--quick] [--quality-only] [--gap-only]
[--asyncio] [--redundancy auto|on|off] [--copy-delay-ms MS]`` (needs root: it re-runs itself under ``unshare --net`` with 127.0.0.2 on a private
loopback, so aiortc and every socket stay inside a throwaway network namespace).

Topology: the two call endpoints are in-process ``meshd.node.Node`` objects with a
``VoiceService`` (real QUIC links, real routing); the relay cars in between are real ``meshd``
processes on 127.0.0.1 with static peers (``tests.voice.realmesh``).  The endpoints run on uvloop
when it is installed, as meshd does (``--asyncio``: the stock loop).

Rows, each bounded in count and time:
- setup: dial to the first decoded audio frame at the callee (auto-answer, Opus tone), direct and
  over 1 and 3 relays; median and max of N calls;
- one-way latency of a 172-byte packet (an Opus RTP packet's size with SRTP) over 0, 1 and 3 relays
  (median, 50 packets/s); the added latency per relay hop, next to the same figure for a plain
  asyncio UDP forwarder process (the baseline);
- audio gap, both ways, when the relay carrying a call (three relays in parallel between A and
  D) is killed with SIGKILL, each direction's relay once (``--gap-only``: only this row, N
  calls); in each recording's own timeline, beside the sinks' pauses and the reroute time;
- concurrent calls through one relay: N synthetic calls (50 packets/s each way, 172 bytes, the
  media path's own packet size and rate) between the two endpoints through one meshd relay, for
  5 s per step, until loss exceeds 1 %; with the relay's CPU use and the time it waited for a CPU
  (from /proc), its CPU per forwarded packet, and where lost packets died (on the way into the
  relay, in the relay's link queues, on the way out; kernel UDP receive-buffer drops);
- the baseline for the relay's forwarding cost, in the same run: aioquic alone receiving one
  datagram and sending one in memory (``bench/routing.py``'s relay-equivalent chain).  Calls per
  relay core = the most calls carried at < 1 % loss / the relay's CPU (cores) at that step;
- call quality: PESQ (ITU-T P.862.2 wideband, 16 kHz, the ``pesq`` package) of an espeak-ng
  speech sample played by the caller and recorded by the auto-answering callee, over 0, 1 and 3
  relays at 0, 5 and 10 % loss on every link (nftables ``numgen random`` drops on the input
  hook for each node's mesh port: every hop, each direction), beside the same sample over a
  direct aiortc call with no mesh and no loss (the codec's own ceiling); the recording is
  time-aligned to the reference by cross-correlation before scoring;
- mouth-to-ear delay over 3 relays: 1 kHz pulses from the caller, the time each pulse's first
  frame left the source to the time the callee's decoder gave out the frame where it is heard
  (both endpoints in this process: one clock).  ``--quality-only`` runs only these two rows.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import itertools
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.routing import bench_aioquic_relay
from carmesh.dev.harness import free_udp_port
from meshd.core.packet import MeshPacket
from tests.voice.audio import longest_gap_s, read_wav
from tests.voice.realmesh import Endpoint, Mesh, real_mesh, wait_route
from tests.voice.scenarios import TONE_A, TONE_D, diamond_kill

SPEECH = ("The quick brown fox jumps over the lazy dog. A car on the corner carries your call "
          "to the next street, and the next car carries it on. Please call me back at nine.")
LOSS_TABLE = "carmesh_bench_loss"
PULSE_HZ = 1000.0

NS_ENV = "CARMESH_VOICE_BENCH_NS"
BENCH_SERVICE = 200  #: a service code no node uses: delivered to our handler, forwarded by relays
PACKET = 172
RATE = 50  #: packets per second per direction of one call (20 ms Opus frames)
CLK = os.sysconf("SC_CLK_TCK")


def _relay_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def _run_delay(pid: int) -> float:
    """Seconds ``pid``'s main thread has spent runnable but waiting for a CPU (0 if unknown)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _udp_rcvbuf_errors() -> int:
    """UDP datagrams the kernel dropped for a full receive buffer, in this network namespace."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")]
    return int(dict(zip(rows[0][1:], rows[1][1:], strict=True)).get("RcvbufErrors", 0))


def _chain(n_relays: int) -> list[tuple[str, str]]:
    names = ["A", *[f"R{i}" for i in range(1, n_relays + 1)], "D"]
    return list(itertools.pairwise(names))


async def _first_frame(d: Endpoint, cid: bytes, timeout: float = 15.0) -> float | None:
    for _ in range(int(timeout / 0.01)):
        c = d.voice._calls.get(cid)
        if c is not None and c.endpoint is not None and c.endpoint.sink.first_frame_at is not None:
            return c.endpoint.sink.first_frame_at
        await asyncio.sleep(0.01)
    return None


async def _end(a: Endpoint, d: Endpoint, cid: bytes) -> None:
    a.voice.hangup(cid)
    for _ in range(200):
        if d.voice.info(cid).state == "ended" and a.voice.info(cid).state == "ended":
            return
        await asyncio.sleep(0.05)


async def bench_setup(n_relays: int, runs: int) -> dict[str, Any]:
    setups: list[float] = []
    async with real_mesh(_chain(n_relays), {"A": {}, "D": {"auto_answer": True}}) as mesh:
        a, d = mesh.endpoints["A"], mesh.endpoints["D"]
        await wait_route(a, d)
        for _ in range(runs):
            t0 = time.monotonic()  # the sinks' clock: the node's
            info = await a.voice.dial(d.node_id, play="tone:440", record=None)
            cid = bytes.fromhex(info.call_id)
            first = await _first_frame(d, cid)
            if first is not None:
                setups.append((first - t0) * 1000)
            await _end(a, d, cid)
            await asyncio.sleep(0.3)
    return {"relays": n_relays, "calls": runs, "ok": len(setups),
            "setup_ms_median": statistics.median(setups) if setups else None,
            "setup_ms_max": max(setups) if setups else None}


async def _latency(mesh: Mesh, count: int) -> list[float]:
    a, d = mesh.endpoints["A"], mesh.endpoints["D"]
    await wait_route(a, d)
    loop = asyncio.get_running_loop()
    got: list[float] = []

    # stamps from time.monotonic(): uvloop's loop.time() ticks in whole milliseconds
    def on_packet(pkt: MeshPacket, now: float) -> None:
        (sent,) = struct.unpack_from("!d", pkt.payload)
        got.append((time.monotonic() - sent) * 1000)

    d.node.register_service(BENCH_SERVICE, on_packet)
    for _ in range(count):
        payload = struct.pack("!d", time.monotonic()).ljust(PACKET, b"\0")
        a.node.send_packet(d.node_id, BENCH_SERVICE, payload, deadline=loop.time() + 0.5)
        await asyncio.sleep(1 / RATE)
    await asyncio.sleep(0.5)
    return got


async def bench_latency(n_relays: int, count: int) -> dict[str, Any]:
    async with real_mesh(_chain(n_relays), {"A": {}, "D": {}}) as mesh:
        got = await _latency(mesh, count)
    return {"relays": n_relays, "sent": count, "received": len(got),
            "one_way_ms_median": statistics.median(got) if got else None}


_UDP_RELAY = """
import asyncio, sys
class P(asyncio.DatagramProtocol):
    def connection_made(self, t): self.t = t
    def datagram_received(self, data, addr): self.t.sendto(data, ("127.0.0.1", int(sys.argv[2])))
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", int(sys.argv[1])))
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def bench_udp_baseline(count: int) -> dict[str, Any]:
    """One-way latency direct vs through one plain asyncio UDP forwarder process."""
    loop = asyncio.get_running_loop()
    got: list[float] = []

    class Rx(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            (sent,) = struct.unpack_from("!d", data)
            got.append((time.monotonic() - sent) * 1000)

    rx, _ = await loop.create_datagram_endpoint(Rx, local_addr=("127.0.0.1", 0))
    rx_port = rx.get_extra_info("sockname")[1]
    relay_port = free_udp_port()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _UDP_RELAY, str(relay_port),
                                                str(rx_port))
    tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                local_addr=("127.0.0.1", 0))
    out: dict[str, Any] = {}
    try:
        await asyncio.sleep(1.0)
        for label, port in (("direct", rx_port), ("via", relay_port)):
            got.clear()
            for _ in range(count):
                tx.sendto(struct.pack("!d", time.monotonic()).ljust(PACKET, b"\0"),
                          ("127.0.0.1", port))
                await asyncio.sleep(1 / RATE)
            await asyncio.sleep(0.3)
            out[label] = statistics.median(got) if got else None
    finally:
        proc.kill()
        await proc.wait()
        tx.close()
        rx.close()
    return {"udp_direct_ms": out["direct"], "udp_via_relay_ms": out["via"],
            "added_per_hop_ms": (out["via"] - out["direct"]) if out["via"] and out["direct"] else None}


async def bench_gap(runs: int) -> dict[str, Any]:
    """Relay kills mid-call (``tests.voice.scenarios.diamond_kill``: three relays in parallel,
    each direction's relay killed once), both directions: the longest stretch without the far
    end's tone in each recording (its own timeline: lost audio is written as silence), the
    sinks' longest pause (node clock), and when the routes moved after each kill."""
    gaps: dict[str, list[float]] = {"a_to_d": [], "d_to_a": []}
    sinks: dict[str, list[float]] = {"a_to_d": [], "d_to_a": []}
    moved: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="cmg", dir="/tmp") as tmp:
            r = await diamond_kill(Path(tmp))
            for key, side, rec, hz in (("a_to_d", "at_d", "rec_d", TONE_A),
                                       ("d_to_a", "at_a", "rec_a", TONE_D)):
                if r["cut"][key]:
                    samples, rate = read_wav(Path(r[rec]))
                    gaps[key].append(longest_gap_s(samples, rate, hz))
                    sinks[key].append(max((g for _at, g in r[side]["gaps"]), default=0.0))
            moved += [v for k in r["kills"] for v in k["route_moved_s"].values() if v is not None]

    def stats(xs: list[float]) -> dict[str, Any]:
        return {"n": len(xs), "median": statistics.median(xs) if xs else None,
                "max": max(xs) if xs else None}

    return {"kills": runs, "recording_gap_s": {k: stats(v) for k, v in gaps.items()},
            "sink_gap_s": {k: stats(v) for k, v in sinks.items()},
            "route_moved_s": stats(moved)}


def _relay_links(daemon: Any) -> dict[str, tuple[int, int]]:
    """(tx, rx) datagrams of the relay's link to each endpoint, by name (meshctl neighbours)."""
    rc, data = daemon.meshctl("neighbours")
    if rc != 0 or not isinstance(data, dict):
        return {}
    return {n["name"]: (n["tx_packets"], n["rx_packets"]) for n in data["neighbours"]}


async def _concurrent_step(mesh: Mesh, calls: int, seconds: float,
                           received: dict[str, int]) -> dict[str, Any]:
    a, d = mesh.endpoints["A"], mesh.endpoints["D"]
    loop = asyncio.get_running_loop()
    received["A"] = received["D"] = 0
    relay = next(iter(mesh.relays.values()))
    relay_pid = relay.proc.pid  # type: ignore[union-attr]
    relay0 = await loop.run_in_executor(None, _relay_links, relay)
    links0 = {side: _link_counts(ep) for side, ep in (("A", a), ("D", d))}
    rcvbuf0 = _udp_rcvbuf_errors()
    cpu0, wait0, t0 = _relay_cpu(relay_pid), _run_delay(relay_pid), time.monotonic()
    me0 = sum(os.times()[:2])
    sent = 0
    # calls are independent: spread their packets evenly over each 20 ms frame, 1 ms slots
    slots = int(seconds * 1000)
    per_ms = calls * RATE / 1000
    due = 0.0
    payload = bytes(PACKET)
    flow = 0
    for i in range(slots):
        due += per_ms
        deadline = loop.time() + 0.5
        while due >= 1.0:
            due -= 1.0
            flow = flow % calls + 1
            a.node.send_packet(d.node_id, BENCH_SERVICE, payload, flow_id=flow, deadline=deadline)
            d.node.send_packet(a.node_id, BENCH_SERVICE, payload, flow_id=flow, deadline=deadline)
            sent += 2
        delay = t0 + (i + 1) / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif i % 20 == 0:
            await asyncio.sleep(0)
    sending = time.monotonic() - t0
    await asyncio.sleep(0.5)
    elapsed = time.monotonic() - t0
    cpu = (_relay_cpu(relay_pid) - cpu0) / elapsed
    waited = (_run_delay(relay_pid) - wait0) / elapsed
    me = (sum(os.times()[:2]) - me0) / elapsed
    rcvbuf = _udp_rcvbuf_errors() - rcvbuf0
    relay1 = await loop.run_in_executor(None, _relay_links, relay)
    got = received["A"] + received["D"]
    links = {side: {k: v - links0[side][k] for k, v in _link_counts(ep).items()}
             for side, ep in (("A", a), ("D", d))}
    rl = {n: (relay1[n][0] - relay0[n][0], relay1[n][1] - relay0[n][1])
          for n in ("A", "D") if n in relay0 and n in relay1}
    where: dict[str, int] | None = None
    if len(rl) == 2:
        la, ld = links["A"], links["D"]
        # (tx, rx) of the relay's link to A and to D; hellos and routing updates ride
        # the same links, so a few packets either way are noise
        where = {"into_relay": (la["tx"] - rl["A"][1]) + (ld["tx"] - rl["D"][1]),
                 "in_relay": (rl["A"][1] - rl["D"][0]) + (rl["D"][1] - rl["A"][0]),
                 "out_of_relay": (rl["D"][0] - ld["rx"]) + (rl["A"][0] - la["rx"])}
    forwarded = sum(tx for tx, _ in rl.values())
    return {"calls": calls, "sent": sent, "received": got, "loss": 1 - got / sent if sent else None,
            "relay_cpu": cpu, "relay_waited": waited, "endpoints_cpu": me,
            "relay_forwarded": forwarded,
            "relay_us_per_packet": cpu * elapsed / forwarded * 1e6 if forwarded else None,
            "achieved_rate": sent / sending / calls / 2,
            "udp_rcvbuf_errors": rcvbuf, "where_lost": where,
            "endpoint_drops": {k: v for k, v in a.node.drop_counts().items() if v},
            "links": links}


def _link_counts(ep: Endpoint) -> dict[str, int]:
    """Datagram counters summed over the endpoint's links (where a loss happened)."""
    out = {"tx": 0, "rx": 0, "stale": 0, "queue_full": 0}
    for st in ep.node.links.links().values():
        out["tx"] += st.tx_datagrams
        out["rx"] += st.rx_datagrams
        out["stale"] += st.dropped_stale
        out["queue_full"] += st.dropped_queue_full
    return out


async def bench_concurrent(steps: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    received = {"A": 0, "D": 0}

    def counter(side: str) -> Any:
        def on_packet(pkt: MeshPacket, now: float) -> None:
            received[side] += 1
        return on_packet

    async with real_mesh(_chain(1), {"A": {}, "D": {}}) as mesh:
        for side in ("A", "D"):
            mesh.endpoints[side].node.register_service(BENCH_SERVICE, counter(side))
        await wait_route(mesh.endpoints["A"], mesh.endpoints["D"])
        for n in steps:
            row = await _concurrent_step(mesh, n, seconds, received)
            rows.append(row)
            if row["loss"] is not None and row["loss"] > 0.01:
                break
            await asyncio.sleep(1.0)
    return rows


def calls_per_core(rows: list[dict[str, Any]], aioquic_rate: float | None) -> dict[str, Any]:
    """The most calls carried at < 1 % loss over the relay's CPU then, beside aioquic alone."""
    clean = [r for r in rows if r["loss"] is not None and r["loss"] < 0.01]
    best = max(clean, key=lambda r: r["calls"]) if clean else None
    out: dict[str, Any] = {"calls": None, "relay_cpu": None, "calls_per_core": None,
                           "relay_us_per_packet": None, "aioquic_rate_per_s": aioquic_rate,
                           "aioquic_us_per_packet": 1e6 / aioquic_rate if aioquic_rate else None,
                           # a call is RATE packets/s each way through the relay
                           "aioquic_calls_per_core": aioquic_rate / (2 * RATE) if aioquic_rate
                           else None,
                           "stopped_by_loss": bool(rows) and rows[-1]["loss"] is not None
                           and rows[-1]["loss"] > 0.01}
    if best is not None and best["relay_cpu"] > 0:
        out.update(calls=best["calls"], relay_cpu=best["relay_cpu"],
                   calls_per_core=best["calls"] / best["relay_cpu"],
                   relay_us_per_packet=best["relay_us_per_packet"])
    return out


def make_speech(workdir: Path) -> tuple[Path, Path]:
    """The espeak-ng sample: (48 kHz mono WAV the caller plays, 16 kHz mono reference for PESQ).

    One second of silence either side: the first frames of a call may be spent starting up."""
    raw, play, ref = workdir / "speech-raw.wav", workdir / "speech48.wav", workdir / "speech16.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), SPEECH], check=True,
                   capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "48000", "-c", "1", "-b", "16", str(play),
                    "pad", "1", "1"], check=True, capture_output=True)
    subprocess.run(["sox", str(play), "-r", "16000", str(ref)], check=True, capture_output=True)
    return play, ref


def _read16(path: Path, workdir: Path) -> Any:
    """A WAV file as 16 kHz mono float samples (sox resamples)."""
    import numpy as np

    out = workdir / "tmp16.raw"
    subprocess.run(["sox", str(path), "-r", "16000", "-c", "1", "-b", "16", "-e", "signed",
                    "-t", "raw", str(out)], check=True, capture_output=True)
    return np.frombuffer(out.read_bytes(), dtype="<i2").astype(np.float64) / 32768.0


def align(ref: Any, deg: Any) -> tuple[Any, int]:
    """``deg`` cut to ``ref``'s length at the lag of the cross-correlation's peak; the lag in
    samples (negative when the recording lacks the reference's beginning)."""
    import numpy as np

    padded = np.concatenate([np.zeros(len(ref)), deg])
    n = 1 << int(np.ceil(np.log2(len(ref) + len(padded))))
    xc = np.fft.irfft(np.fft.rfft(padded, n) * np.conj(np.fft.rfft(ref, n)), n)
    at = int(np.argmax(xc[:len(padded)]))
    out = np.zeros(len(ref))
    seg = padded[at:at + len(ref)]
    out[:len(seg)] = seg
    return out, at - len(ref)


def score(ref_path: Path, rec_path: Path, workdir: Path) -> dict[str, Any]:
    """PESQ wideband of a recording against the reference, after alignment."""
    from pesq import pesq

    ref = _read16(ref_path, workdir)
    if not rec_path.is_file() or rec_path.stat().st_size <= 44:
        return {"pesq": None, "recorded_s": 0.0}
    deg = _read16(rec_path, workdir)
    aligned, lag = align(ref, deg)
    try:
        mos = float(pesq(16000, ref, aligned, "wb"))
    except Exception as exc:  # the pesq package raises its own errors for silent input
        return {"pesq": None, "recorded_s": len(deg) / 16000, "error": str(exc)}
    return {"pesq": round(mos, 3), "recorded_s": round(len(deg) / 16000, 2),
            "lag_ms": round(lag / 16, 1)}


def _nft(script: str) -> None:
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)


def set_loss(ports: list[int], percent: float) -> None:
    """Drop ``percent`` % of UDP datagrams arriving at each of ``ports`` (nftables, this namespace)."""
    subprocess.run(["nft", "delete", "table", "inet", LOSS_TABLE], capture_output=True, check=False)
    if percent <= 0:
        return
    ps = ", ".join(str(p) for p in ports)
    _nft(f"table inet {LOSS_TABLE} {{\n chain input {{\n  type filter hook input priority 0;\n"
         f"  udp dport {{ {ps} }} numgen random mod 1000 < {int(percent * 10)} drop\n }}\n}}\n")


async def _mesh_call(a: Endpoint, d: Endpoint, play: str, seconds: float) -> dict[str, Any]:
    """A dials D playing ``play``; hang up after ``seconds`` of media; D's call summary."""
    info = await a.voice.dial(d.node_id, play=play, record=None)
    cid = bytes.fromhex(info.call_id)
    first = await _first_frame(d, cid)
    await asyncio.sleep(seconds)
    c = d.voice._calls.get(cid)
    q = await c.endpoint.quality() if c is not None and c.endpoint is not None else None
    ca = a.voice._calls.get(cid)
    copies = {"copies_sent": ca.copies_sent if ca is not None else None,
              "copies_dropped": c.copies_dropped if c is not None else None,
              "media_packets": ca.relay.packets_in if ca is not None and ca.relay else None}
    await _end(a, d, cid)
    await asyncio.sleep(0.5)
    return {"connected": first is not None, "loss_seen": q.loss if q else None, **copies}


def _wav_seconds(path: Path) -> float:
    return max(0, path.stat().st_size - 44) / 2 / 48000 if path.is_file() else 0.0


async def bench_quality(workdir: Path, relays: list[int], losses: list[float]) -> dict[str, Any]:
    """PESQ over the mesh at each relay count and loss, and over a direct aiortc call."""
    play, ref = make_speech(workdir)
    length = _wav_seconds(play)
    rows: list[dict[str, Any]] = []
    direct = await _direct_call(play, workdir / "direct.wav", length)
    import voice.service as vs

    out: dict[str, Any] = {"sample_s": round(length, 2), "direct": {**direct,
                           **score(ref, workdir / "direct.wav", workdir)}, "rows": rows,
                           "redundancy": vs.MEDIA_REDUNDANCY,
                           "copy_delay_ms": vs.MEDIA_COPY_DELAY_S * 1000}
    for n in relays:
        rec = workdir / f"rec-{n}.wav"
        async with real_mesh(_chain(n), {"A": {}, "D": {"auto_answer": True,
                                                         "answer_record": str(rec)}}) as mesh:
            a, d = mesh.endpoints["A"], mesh.endpoints["D"]
            await wait_route(a, d)
            for loss in losses:
                set_loss(list(mesh.ports.values()), loss)
                try:
                    call = await _mesh_call(a, d, str(play), length + 1.5)
                finally:
                    set_loss([], 0)
                keep = workdir / f"rec-{n}-{loss:g}.wav"
                if rec.is_file():
                    rec.replace(keep)
                rows.append({"relays": n, "loss_percent": loss, **call,
                             **score(ref, keep, workdir)})
                await wait_route(a, d)
    return out


async def _direct_call(play: Path, rec: Path, seconds: float) -> dict[str, Any]:
    """The same sample over two aiortc endpoints joined directly (host candidates, no mesh)."""
    from voice.endpoint import Endpoint as RtcEndpoint

    caller = RtcEndpoint(play=str(play), record=None, on_state=lambda s: None)
    callee = RtcEndpoint(play=None, record=rec, on_state=lambda s: None)
    try:
        await caller.accept_answer(await callee.accept_offer(await caller.create_offer()))
        await asyncio.sleep(seconds + 1.5)
        return {"connected": callee.sink.first_frame_at is not None}
    finally:
        await caller.close()
        await callee.close()


class _Pulses:
    """A source of silence with a ``PULSE_HZ`` pulse of 200 ms every second from 2 s on, paced
    by the loop clock; ``sent`` holds the loop time each pulse's first frame left the source."""

    def __init__(self) -> None:
        import math

        import av
        import numpy as np
        from aiortc.mediastreams import AudioStreamTrack

        from voice.endpoint import PTIME_S, SAMPLE_RATE

        sent: list[float] = []
        self.sent = sent

        class Track(AudioStreamTrack):
            def __init__(self) -> None:
                super().__init__()
                self._n = 0
                self._t0: float | None = None

            async def recv(self) -> Any:
                loop = asyncio.get_running_loop()
                samples = int(SAMPLE_RATE * PTIME_S)
                if self._t0 is None:
                    self._t0 = loop.time()
                else:
                    wait = self._t0 + self._n / SAMPLE_RATE - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                t = (np.arange(samples) + self._n) / SAMPLE_RATE
                on = (t >= 2.0) & ((t % 1.0) < 0.2)
                pcm = (np.sin(2 * math.pi * PULSE_HZ * t) * 0.5 * 32767 * on).astype(np.int16)
                if on[0] and (t[0] % 1.0) < PTIME_S / 2:
                    sent.append(loop.time())
                frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = self._n
                frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
                self._n += samples
                return frame

        self.track = Track()


async def bench_mouth_to_ear(n_relays: int, pulses: int) -> dict[str, Any]:
    """Pulse onset sent → heard at the callee over ``n_relays`` relays, no loss."""
    import numpy as np

    import voice.media

    src = _Pulses()
    real_open = voice.media.open_source

    def open_source(spec: str | None) -> Any:
        return (src.track, None) if spec == "bench:pulses" else real_open(spec)

    heard: list[float] = []
    quiet = [True]

    def on_frame(now: float, pcm: Any) -> None:
        loud = bool(np.max(np.abs(pcm)) > 3000)
        if loud and quiet[0]:
            heard.append(now)
        quiet[0] = not loud

    voice.media.open_source = open_source
    try:
        async with real_mesh(_chain(n_relays), {"A": {}, "D": {"auto_answer": True}}) as mesh:
            a, d = mesh.endpoints["A"], mesh.endpoints["D"]
            await wait_route(a, d)
            info = await a.voice.dial(d.node_id, play="bench:pulses", record=None)
            cid = bytes.fromhex(info.call_id)
            await _first_frame(d, cid)
            c = d.voice._calls[cid]
            assert c.endpoint is not None
            c.endpoint.sink.on_frame = on_frame
            await asyncio.sleep(2.5 + pulses)
            await _end(a, d, cid)
    finally:
        voice.media.open_source = real_open
    # pair each pulse sent with the first onset heard after it and before the next one
    delays: list[float] = []
    for i, t in enumerate(src.sent):
        nxt = src.sent[i + 1] if i + 1 < len(src.sent) else t + 1.0
        after = [h for h in heard if t <= h < nxt]
        if after:
            delays.append((after[0] - t) * 1000)
    return {"relays": n_relays, "pulses": len(src.sent), "heard": len(delays),
            "mouth_to_ear_ms_median": round(statistics.median(delays), 1) if delays else None,
            "mouth_to_ear_ms_max": round(max(delays), 1) if delays else None}


async def quality_async(quick: bool) -> dict[str, Any]:
    res: dict[str, Any] = {}
    workdir = Path(tempfile.mkdtemp(prefix="cmq", dir="/tmp"))
    try:
        res["quality"] = await bench_quality(workdir, [3] if quick else [0, 1, 3],
                                             [0.0, 5.0] if quick else [0.0, 5.0, 10.0])
        res["mouth_to_ear"] = await bench_mouth_to_ear(3, 5 if quick else 15)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return res


async def main_async(runs: int, quick: bool, quality_only: bool = False,
                     gap_only: bool = False) -> dict[str, Any]:
    res: dict[str, Any] = {"loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}
    if quality_only:
        res.update(await quality_async(quick))
        return res
    if gap_only:
        res["gap"] = await bench_gap(runs)
        return res
    res["setup"] = [await bench_setup(n, runs) for n in (0, 1, 3)]
    count = 100 if quick else 300
    res["latency"] = [await bench_latency(n, count) for n in (0, 1, 3)]
    res["udp_baseline"] = await bench_udp_baseline(count)
    res["gap"] = await bench_gap(max(1, runs // 2))
    steps = [10, 50, 100] if quick else [10, 25, 50, 75, 100, 150, 200]
    res["concurrent"] = await bench_concurrent(steps, 3.0 if quick else 5.0)
    # the baseline of the relay's forwarding cost, measured here in the same run (single core)
    res["aioquic_memory"] = bench_aioquic_relay(1.5 if quick else 3.0)
    res["calls_per_core"] = calls_per_core(res["concurrent"],
                                           res["aioquic_memory"]["relay_rate_per_s"])
    res.update(await quality_async(quick))
    return res


def _fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def report_quality(res: dict[str, Any]) -> None:
    q = res["quality"]
    d = q["direct"]
    print(f"\nCall quality: PESQ wideband (P.862.2) of a {q['sample_s']} s espeak-ng sample, "
          "caller plays, callee records")
    print(f"(mesh redundancy {q['redundancy']}, second copy after {q['copy_delay_ms']:g} ms)")
    print("\n| path | loss per link | PESQ (MOS-LQO) | receiver-measured loss | recorded (s) "
          "| caller's packets sent twice | copies dropped by the callee |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| direct aiortc, no mesh | 0 % | {_fmt(d['pesq'], 2)} | - | {_fmt(d['recorded_s'], 1)} "
          "| - | - |")
    for r in q["rows"]:
        seen = "-" if r["loss_seen"] is None else f"{100 * r['loss_seen']:.1f} %"
        print(f"| mesh, {r['relays']} relays | {r['loss_percent']:g} % | {_fmt(r['pesq'], 2)} "
              f"| {seen} | {_fmt(r['recorded_s'], 1)} | {r['copies_sent']}/{r['media_packets']} "
              f"| {r['copies_dropped']} |")
    m = res["mouth_to_ear"]
    print(f"\nmouth-to-ear over {m['relays']} relays (source frame out → callee decoder frame "
          f"out): median {_fmt(m['mouth_to_ear_ms_median'])} ms, max "
          f"{_fmt(m['mouth_to_ear_ms_max'])} ms ({m['heard']}/{m['pulses']} pulses heard)")


def report(res: dict[str, Any]) -> None:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if "setup" not in res:
        print(f"Voice benchmark, call quality only ({machine}; endpoints on {res['loop']})")
        report_quality(res)
        return
    print(f"Voice benchmark ({machine}; endpoints in-process on {res['loop']}, relays are meshd "
          f"processes on loopback; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          "at the end)")
    print("\n| path | calls | setup median (ms) | setup max (ms) |")
    print("|---|---:|---:|---:|")
    for r in res["setup"]:
        print(f"| {r['relays']} relays | {r['ok']}/{r['calls']} | {_fmt(r['setup_ms_median'])} "
              f"| {_fmt(r['setup_ms_max'])} |")
    lat = {r["relays"]: r["one_way_ms_median"] for r in res["latency"]}
    print("\n| path | received | one-way median (ms) |")
    print("|---|---:|---:|")
    for r in res["latency"]:
        print(f"| mesh, {r['relays']} relays | {r['received']}/{r['sent']} | {_fmt(r['one_way_ms_median'], 3)} |")
    b = res["udp_baseline"]
    print(f"| plain UDP, direct | | {_fmt(b['udp_direct_ms'], 3)} |")
    print(f"| plain UDP, via one asyncio forwarder | | {_fmt(b['udp_via_relay_ms'], 3)} |")
    per_hop_1 = (lat[1] - lat[0]) if lat.get(1) and lat.get(0) else None
    per_hop_3 = (lat[3] - lat[0]) / 3 if lat.get(3) and lat.get(0) else None
    print(f"\nadded one-way latency per relay hop (median): mesh {_fmt(per_hop_1, 3)} ms (1 relay), "
          f"{_fmt(per_hop_3, 3)} ms (3 relays); plain asyncio UDP forwarder "
          f"{_fmt(b['added_per_hop_ms'], 3)} ms")
    report_gap(res["gap"])
    print("\n| calls via one relay | loss | relay CPU (cores) | relay waited for a CPU | relay CPU "
          "per forwarded packet (µs) | endpoints CPU (cores) | lost into / in / out of the relay "
          "| kernel UDP buffer drops | dropped in endpoint link queues |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in res["concurrent"]:
        la, ld = r["links"]["A"], r["links"]["D"]
        w = r["where_lost"]
        where = f"{w['into_relay']} / {w['in_relay']} / {w['out_of_relay']}" if w else "-"
        print(f"| {r['calls']} | {100 * r['loss']:.2f} % | {r['relay_cpu']:.2f} "
              f"| {100 * r['relay_waited']:.0f} % | {_fmt(r['relay_us_per_packet'], 0)} "
              f"| {r['endpoints_cpu']:.2f} | {where} | {r['udp_rcvbuf_errors']} "
              f"| {la['queue_full'] + ld['queue_full'] + la['stale'] + ld['stale']} |")
    c = res["calls_per_core"]
    print(f"\ncalls per relay core: {c['calls'] or '-'} calls at < 1 % loss with the relay at "
          f"{_fmt(c['relay_cpu'], 2)} core → **{_fmt(c['calls_per_core'], 0)} calls per relay core**"
          f"{'' if c['stopped_by_loss'] else ' (the largest step offered; not a limit)'}; "
          f"relay forwarding cost {_fmt(c['relay_us_per_packet'], 0)} µs of CPU per packet there, "
          f"against aioquic alone in memory (same run, one datagram per packet, receive + send) "
          f"{_fmt(c['aioquic_us_per_packet'], 0)} µs per packet = {_fmt(c['aioquic_rate_per_s'], 0)} "
          f"packets/s = {_fmt(c['aioquic_calls_per_core'], 0)} calls per core")
    report_quality(res)


def report_gap(g: dict[str, Any]) -> None:
    rec, sink, moved = g["recording_gap_s"], g["sink_gap_s"], g["route_moved_s"]
    for key, words in (("a_to_d", "caller -> callee"), ("d_to_a", "callee -> caller")):
        print(f"audio gap when the carrying relay is killed (kill -9), {words}: in the recording "
              f"median {_fmt(rec[key]['median'], 2)} s, max {_fmt(rec[key]['max'], 2)} s; the "
              f"sink's pause median {_fmt(sink[key]['median'], 2)} s, max "
              f"{_fmt(sink[key]['max'], 2)} s ({rec[key]['n']} kills)")
    print(f"routes moved off the dead relay after median {_fmt(moved['median'], 2)} s, max "
          f"{_fmt(moved['max'], 2)} s ({moved['n']} route changes, {g['kills']} calls)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer packets and steps")
    ap.add_argument("--quality-only", action="store_true",
                    help="only the call quality rows (PESQ, mouth-to-ear)")
    ap.add_argument("--gap-only", action="store_true",
                    help="only the relay-kill rows (--runs calls, each direction's relay killed)")
    ap.add_argument("--redundancy", choices=("auto", "on", "off"), default="auto",
                    help="two copies of each SRTP packet on the mesh: auto (above 1 %% loss), on, off")
    ap.add_argument("--copy-delay-ms", type=float, default=None,
                    help="the second copy follows the first after this long (default: the node's)")
    ap.add_argument("--asyncio", action="store_true",
                    help="run the endpoints on the stock asyncio loop, not uvloop")
    args = ap.parse_args()
    if os.environ.get(NS_ENV) != "1":
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            sys.exit("bench/voice.py needs root and unshare(1): it runs in a private network namespace")
        script = ("ip link set lo up && ip addr add 127.0.0.2/8 dev lo && "
                  f"exec {sys.executable} {Path(__file__).resolve()} " + " ".join(sys.argv[1:]))
        env = {**os.environ, NS_ENV: "1"}
        sys.exit(subprocess.run(["unshare", "--net", "sh", "-c", script], env=env, cwd=ROOT,
                                check=False).returncode)
    import logging
    logging.basicConfig(level=logging.ERROR)
    import voice.service as vs

    vs.MEDIA_REDUNDANCY = args.redundancy
    if args.copy_delay_ms is not None:
        vs.MEDIA_COPY_DELAY_S = args.copy_delay_ms / 1000
    os.chdir(tempfile.gettempdir())
    runner: Any = asyncio.run
    if not args.asyncio:
        try:  # the endpoints run on the loop meshd runs on
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    res = runner(main_async(args.runs, args.quick, args.quality_only, args.gap_only))
    if args.json:
        print(json.dumps(res, indent=1))
    elif args.gap_only:
        report_gap(res["gap"])
    else:
        report(res)


if __name__ == "__main__":
    main()
