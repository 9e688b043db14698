"""Call scenarios with real aiortc endpoints over the in-process mesh; run inside a fresh network namespace.

``python -m tests.voice.scenarios OUTDIR NAME...`` runs the named scenarios in
one process and writes ``OUTDIR/result.json`` (one entry per scenario) plus the
recordings.  ``run_isolated`` runs it under ``unshare --net`` with
``127.0.0.2`` on the namespace's loopback (aioice skips 127.0.0.1 as a host
candidate), so WebRTC never touches the machine's real interfaces and the
namespace disappears with the process, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from carmesh.dev.harness import MESHCTL
from meshd.control.server import ControlServer
from meshd.core.errors import ControlError
from meshd.core.packet import MeshPacket, Service
from tests.voice.fakemesh import FakeMesh, MeshNode
from tests.voice.realmesh import Mesh, real_mesh, wait_route
from voice.service import VoiceService

#: how long the mesh has no path after a relay dies (routing converges within 3 s), seconds
OUTAGE_S = 2.0
TONE_A = 440.0
TONE_D = 660.0
ROOT = Path(__file__).resolve().parents[2]


def run_isolated(outdir: Path, names: list[str], timeout: float = 110.0, *,
                 uvloop: bool = False, second_loopback: bool = True) -> dict[str, Any]:
    """Run scenarios in a child process in its own network namespace; return its result.json.

    ``second_loopback=False`` leaves the namespace with 127.0.0.1 only: WebRTC then has no
    address it can use (aioice skips 127.0.0.1), as on a loopback-only host."""
    extra = "ip addr add 127.0.0.2/8 dev lo && " if second_loopback else ""
    script = (f"ip link set lo up && {extra}"
              f"VOICE_UVLOOP={int(uvloop)} "
              f"exec {sys.executable} -m tests.voice.scenarios {outdir} {' '.join(names)}")
    proc = subprocess.run(["unshare", "--net", "sh", "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"scenario child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads((outdir / "result.json").read_text())
    return result


def service(node: MeshNode, **kw: Any) -> VoiceService:
    kw.setdefault("auto_answer", False)
    kw.setdefault("answer_play", None)
    kw.setdefault("answer_record", None)
    return VoiceService(node, relay_host="127.0.0.1", **kw)


def ended(node: MeshNode, call_id: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda e, d: e == "call.ended" and d.get("call_id") == call_id


def summary(node: MeshNode, svc: VoiceService, call_id: str) -> dict[str, Any]:
    info = svc.info(bytes.fromhex(call_id)).to_json()
    info["events"] = [e for e, d in node.control.items if d.get("call_id") == call_id]
    return info


async def _line(out: Path, reverse: bool = False, loss: float = 0.0) -> dict[str, Any]:
    mesh = FakeMesh(out / "keys", ["A", "B", "C", "D"], hop_delay_s=0.002, loss=loss, seed=5)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    caller, callee = (d, a) if reverse else (a, d)
    f_caller, f_callee = (TONE_D, TONE_A) if reverse else (TONE_A, TONE_D)
    rec_callee, rec_caller = out / "callee.wav", out / "caller.wav"
    s_callee = service(callee, auto_answer=True, answer_play=Path(f"tone:{f_callee:g}"),
                       answer_record=rec_callee)
    s_caller = service(caller)
    info = await s_caller.dial(callee.node_id, play=f"tone:{f_caller:g}", record=str(rec_caller))
    cid = info.call_id
    await callee.control.wait_for(lambda e, d: e == "call.audio" and d["call_id"] == cid, 15)
    await asyncio.sleep(4.0)  # RTT needs an RTCP sender report and the receiver report to it
    s_caller.hangup(bytes.fromhex(cid))
    await callee.control.wait_for(ended(callee, cid), 10)
    await caller.control.wait_for(ended(caller, cid), 10)
    plain = [(r, p) for r in ("B", "C") for p in mesh.seen_packets[r]
             if b"a=fingerprint" in p.payload or b"v=0" in p.payload or b"a=ice-pwd" in p.payload]
    res = {"caller": summary(caller, s_caller, cid), "callee": summary(callee, s_callee, cid),
           "rec_callee": str(rec_callee), "rec_caller": str(rec_caller),
           "tone_caller": f_caller, "tone_callee": f_callee,
           "forwarded": dict(mesh.forwarded),
           "relay_saw_plaintext": bool(plain),
           "plaintext_seen": [(r, p.service, p.flow_id, p.payload[:96].hex()) for r, p in plain[:3]]}
    await s_caller.close()
    await s_callee.close()
    return res


async def line_a_to_d(out: Path) -> dict[str, Any]:
    return await _line(out)


async def line_d_to_a(out: Path) -> dict[str, Any]:
    return await _line(out, reverse=True)


async def loss5(out: Path) -> dict[str, Any]:
    """5 % end-to-end loss over three hops (each hop loses 1.7 %)."""
    return await _line(out, loss=1 - 0.95 ** (1 / 3))


async def redundant(out: Path) -> dict[str, Any]:
    """A–B–C–D with 5 % loss on each hop (14 % end to end): the endpoints' loss turns the
    second copy of each SRTP packet on at both ends; the far node drops the repeats."""
    mesh = FakeMesh(out / "keys", ["A", "B", "C", "D"], hop_delay_s=0.002, loss=0.05, seed=9)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    rec_d, rec_a = out / "callee.wav", out / "caller.wav"
    sd = service(d, auto_answer=True, answer_play=Path(f"tone:{TONE_D:g}"), answer_record=rec_d)
    sa = service(a)
    info = await sa.dial(d.node_id, play=f"tone:{TONE_A:g}", record=str(rec_a))
    cid = info.call_id
    await d.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == cid, 15)
    await asyncio.sleep(6.0)
    ca, cd = sa._calls[bytes.fromhex(cid)], sd._calls[bytes.fromhex(cid)]
    res: dict[str, Any] = {
        "rec_callee": str(rec_d), "rec_caller": str(rec_a),
        "tone_caller": TONE_A, "tone_callee": TONE_D,
        "active": [ca.redundancy.active, cd.redundancy.active],
        "copies_sent": [ca.copies_sent, cd.copies_sent],
        "copies_dropped": [ca.copies_dropped, cd.copies_dropped],
        "delivered": [ca.relay.packets_out if ca.relay else 0,
                      cd.relay.packets_out if cd.relay else 0],
        "endpoint_loss": [ca.quality.loss if ca.quality else None,
                          cd.quality.loss if cd.quality else None]}
    sa.hangup(bytes.fromhex(cid))
    await d.control.wait_for(ended(d, cid), 10)
    await sa.close()
    await sd.close()
    return res


async def _two(out: Path, **callee_kw: Any) -> tuple[FakeMesh, MeshNode, MeshNode, VoiceService,
                                                     VoiceService]:
    mesh = FakeMesh(out / "keys", ["A", "B", "C", "D"], hop_delay_s=0.002, seed=7)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    return mesh, a, d, service(a), service(d, **callee_kw)


def _reasons(a: MeshNode, sa: VoiceService, d: MeshNode, sd: VoiceService, cid: str) -> dict[str, Any]:
    out: dict[str, Any] = {"caller": summary(a, sa, cid)}
    with contextlib.suppress(KeyError):
        out["callee"] = summary(d, sd, cid)
    return out


async def busy(out: Path) -> dict[str, Any]:
    mesh, a, d, sa, sd = await _two(out, auto_answer=True, answer_play=Path("tone:500"))
    c = mesh.by_name["C"]
    sc = service(c)
    first = await sc.dial(d.node_id, play="tone:300", record=None)
    await d.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == first.call_id, 15)
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    await a.control.wait_for(ended(a, info.call_id), 15)
    res = _reasons(a, sa, d, sd, info.call_id)
    res["first_call_state"] = sd.info(bytes.fromhex(first.call_id)).state
    for svc in (sa, sc, sd):
        await svc.close()
    return res


async def declined(out: Path) -> dict[str, Any]:
    _mesh, a, d, sa, sd = await _two(out)
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    await d.control.wait_for(lambda e, x: e == "call.incoming", 10)
    await a.control.wait_for(lambda e, x: e == "call.state" and x["state"] == "ringing", 10)
    sd.hangup(bytes.fromhex(info.call_id))
    await a.control.wait_for(ended(a, info.call_id), 10)
    await d.control.wait_for(ended(d, info.call_id), 10)
    res = _reasons(a, sa, d, sd, info.call_id)
    await sa.close()
    await sd.close()
    return res


async def unreachable(out: Path) -> dict[str, Any]:
    mesh, a, d, sa, sd = await _two(out, auto_answer=True)
    mesh.cut("C", "D")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    await a.control.wait_for(ended(a, info.call_id), 20)
    res = _reasons(a, sa, d, sd, info.call_id)
    res["elapsed_s"] = loop.time() - t0
    await sa.close()
    await sd.close()
    return res


async def _hangup_by(out: Path, side: str) -> dict[str, Any]:
    _mesh, a, d, sa, sd = await _two(out, auto_answer=True, answer_play=Path("tone:660"))
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    await d.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == info.call_id, 15)
    (sa if side == "caller" else sd).hangup(bytes.fromhex(info.call_id))
    await a.control.wait_for(ended(a, info.call_id), 10)
    await d.control.wait_for(ended(d, info.call_id), 10)
    res = _reasons(a, sa, d, sd, info.call_id)
    await sa.close()
    await sd.close()
    return res


async def hangup_caller(out: Path) -> dict[str, Any]:
    return await _hangup_by(out, "caller")


async def hangup_callee(out: Path) -> dict[str, Any]:
    return await _hangup_by(out, "callee")


async def tampered(out: Path) -> dict[str, Any]:
    """A relay flips one byte inside every offer (where the SDP and its fingerprint travel)."""
    mesh, a, d, sa, sd = await _two(out, auto_answer=True)
    altered = 0

    def tamper(pkt: MeshPacket) -> MeshPacket:
        nonlocal altered
        if pkt.service == Service.SIG and pkt.source == a.node_id and len(pkt.payload) > 600:
            altered += 1
            body = bytearray(pkt.payload)
            body[len(body) // 2] ^= 0x01
            return dataclasses.replace(pkt, payload=bytes(body))
        return pkt

    mesh.tamper = tamper
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    await a.control.wait_for(ended(a, info.call_id), 20)
    res = _reasons(a, sa, d, sd, info.call_id)
    res["altered"] = altered
    res["callee_drops"] = dict(sd.drops.counts)
    res["callee_incoming"] = len(d.control.of("call.incoming"))
    await sa.close()
    await sd.close()
    return res


async def diamond(out: Path) -> dict[str, Any]:
    """A–B–D and A–C–D; the relay carrying the call dies; routing takes OUTAGE_S to find the other.

    Tones both ways, both ends record: the outage cuts both directions."""
    mesh = FakeMesh(out / "keys", ["A", "B", "C", "D"], hop_delay_s=0.002, seed=9, line=False)
    for x, y in (("A", "B"), ("B", "D"), ("A", "C"), ("C", "D")):
        mesh.link(x, y)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    rec, rec_a = out / "callee.wav", out / "caller.wav"
    sa = service(a)
    sd = service(d, auto_answer=True, answer_play=Path(f"tone:{TONE_D:g}"), answer_record=rec)
    info = await sa.dial(d.node_id, play=f"tone:{TONE_A:g}", record=str(rec_a))
    cid = bytes.fromhex(info.call_id)
    await d.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == info.call_id, 15)
    await asyncio.sleep(2.0)
    relay = max(("B", "C"), key=lambda r: mesh.forwarded[r])
    other = "C" if relay == "B" else "B"
    killed_at = time.monotonic()  # the sinks' clock: the node's
    mesh.kill(relay)  # kill -9: its links are gone
    mesh.cut(other, "D")  # routing has not converged yet
    await asyncio.sleep(OUTAGE_S)
    mesh.link(other, "D")
    # what the outage really lasted (a loaded machine oversleeps): the bound is on top of it
    outage = time.monotonic() - killed_at
    await asyncio.sleep(3.0)
    ep = sd._calls[cid].endpoint
    gaps = [(at - killed_at, g) for at, g in ep.sink.gaps] if ep is not None else []
    ep_a = sa._calls[cid].endpoint
    gaps_a = [(at - killed_at, g) for at, g in ep_a.sink.gaps] if ep_a is not None else []
    state = sd.info(cid).state
    generation = sd.session(cid).generation
    sa.hangup(cid)
    await d.control.wait_for(ended(d, info.call_id), 10)
    res = {"relay": relay, "other": other, "gaps": gaps, "gaps_caller": gaps_a,
           "outage_s": outage, "state_after": state, "rec_callee": str(rec),
           "rec_caller": str(rec_a), "forwarded": dict(mesh.forwarded),
           "callee": summary(d, sd, info.call_id), "generation": generation,
           "generation_caller": sa.session(cid).generation}
    await sa.close()
    await sd.close()
    return res


async def _meshctl(sock: Path, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *MESHCTL, "--socket", str(sock), *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 40)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def meshctl(out: Path) -> dict[str, Any]:
    """``meshctl call``/``calls``/``answer``/``decline`` against real control servers."""
    mesh = FakeMesh(out / "keys", ["A", "B", "D"], hop_delay_s=0.002, seed=3)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    rec = out / "callee.wav"
    sa = service(a)
    sd = service(d, auto_answer=True, answer_play=Path("tone:660"), answer_record=rec)
    servers = []
    for node, svc in ((a, sa), (d, sd)):
        srv = ControlServer(Path(f"/tmp/cmv-{os.getpid()}-{node.name}.sock"), svc.handlers())
        await srv.start()
        node.control.also.append(srv)
        servers.append(srv)
    res: dict[str, Any] = {"rec_callee": str(rec)}
    try:
        res["call"] = await _meshctl(servers[0].path, "call", "D", "--play", "tone:440",
                                     "--duration", "4", "--json")
        res["calls_json"] = await _meshctl(servers[1].path, "calls", "--json")
        res["calls_text"] = await _meshctl(servers[1].path, "calls")
        # declined through meshctl: the callee answers by hand this time
        sd.auto_answer = False
        caller = asyncio.ensure_future(_meshctl(servers[0].path, "call", "D"))
        incoming = await d.control.wait_for(lambda e, x: e == "call.incoming" and not x["auto_answer"],
                                            15)
        res["decline"] = await _meshctl(servers[1].path, "decline", incoming["call_id"][:10])
        res["declined_call"] = await caller
        res["unknown_node"] = await _meshctl(servers[0].path, "call", "nosuchnode")
    finally:
        for srv in servers:
            await srv.close()
        await sa.close()
        await sd.close()
    return res


async def _ctl_pair(out: Path, auto_answer: bool) -> tuple[MeshNode, MeshNode, VoiceService,
                                                           VoiceService, list[ControlServer]]:
    mesh = FakeMesh(out / "keys", ["A", "B", "D"], hop_delay_s=0.002, seed=13)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    sa = service(a)
    sd = service(d, auto_answer=auto_answer, answer_play=Path("tone:660"))
    servers = []
    for node, svc in ((a, sa), (d, sd)):
        srv = ControlServer(Path(f"/tmp/cmv-{os.getpid()}-{node.name}-{out.name}.sock"),
                            svc.handlers())
        await srv.start()
        node.control.also.append(srv)
        servers.append(srv)
    return a, d, sa, sd, servers


async def _interrupt_call(out: Path, sig: int, when: str) -> dict[str, Any]:
    """``meshctl call D`` interrupted with ``sig`` once the call is ``when`` (ringing|active)."""
    a, d, sa, sd, servers = await _ctl_pair(out, auto_answer=when == "active")
    try:
        proc = await asyncio.create_subprocess_exec(
            *MESHCTL, "--socket", str(servers[0].path), "call", "D",
            "--play", "tone:440", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        if when == "ringing":
            await a.control.wait_for(lambda e, x: e == "call.state" and x["state"] == "ringing", 15)
        else:  # audio both ways: each end has its media setup time before the hang-up
            await d.control.wait_for(lambda e, x: e == "call.audio", 15)
            await a.control.wait_for(lambda e, x: e == "call.audio", 15)
        cid = next(x["call_id"] for e, x in a.control.items if e == "call.state")
        assert proc.stdout is not None
        while when not in (await asyncio.wait_for(proc.stdout.readline(), 15)).decode():
            pass  # meshctl printed the state: it follows the call
        proc.send_signal(sig)
        rest, err = await asyncio.wait_for(proc.communicate(), 20)
        await d.control.wait_for(ended(d, cid), 15)
        return {"code": proc.returncode, "out": rest.decode(), "err": err.decode(),
                "caller": sa.info(bytes.fromhex(cid)).to_json(),
                "callee": sd.info(bytes.fromhex(cid)).to_json()}
    finally:
        for srv in servers:
            await srv.close()
        await sa.close()
        await sd.close()


async def sigint_ringing(out: Path) -> dict[str, Any]:
    return await _interrupt_call(out, signal.SIGINT, "ringing")


async def sigterm_ringing(out: Path) -> dict[str, Any]:
    return await _interrupt_call(out, signal.SIGTERM, "ringing")


async def sigterm_active(out: Path) -> dict[str, Any]:
    return await _interrupt_call(out, signal.SIGTERM, "active")


async def no_address(out: Path) -> dict[str, Any]:
    """A namespace with 127.0.0.1 only: ``meshctl call`` must fail loudly, not record silence."""
    _a, d, sa, sd, servers = await _ctl_pair(out, auto_answer=True)
    try:
        res = await _meshctl(servers[0].path, "call", "D", "--play", "tone:440",
                             "--duration", "30", "--json")
        doc = json.loads(res[1])
        await d.control.wait_for(ended(d, doc["call_id"]), 20)
        return {"call": res, "callee": sd.info(bytes.fromhex(doc["call_id"])).to_json()}
    finally:
        for srv in servers:
            await srv.close()
        await sa.close()
        await sd.close()


async def _real_call(mesh: Mesh, caller: str, callee: str, seconds: float, rec: Path,
                     freq: float) -> dict[str, Any]:
    a, d = mesh.endpoints[caller], mesh.endpoints[callee]
    await wait_route(a, d)
    info = await a.voice.dial(d.node_id, play=f"tone:{freq:g}", record=None)
    cid = info.call_id
    for _ in range(300):
        c = d.voice._calls.get(bytes.fromhex(cid))
        if c is not None and c.endpoint is not None and c.endpoint.sink.first_frame_at is not None:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds)
    a.voice.hangup(bytes.fromhex(cid))
    for _ in range(200):
        if d.voice.info(bytes.fromhex(cid)).state == "ended" and \
                a.voice.info(bytes.fromhex(cid)).state == "ended":
            break
        await asyncio.sleep(0.05)
    return {"caller": a.voice.info(bytes.fromhex(cid)).to_json(),
            "callee": d.voice.info(bytes.fromhex(cid)).to_json(), "rec_callee": str(rec),
            "tone_caller": freq}


async def real_line(out: Path) -> dict[str, Any]:
    """A and D in-process, B and C real meshd relays: A–B–C–D; A calls D, then D calls A."""
    rec_d, rec_a = out / "d.wav", out / "a.wav"
    links = [("A", "B"), ("B", "C"), ("C", "D")]
    async with real_mesh(links, {"A": {"auto_answer": True, "answer_record": rec_a},
                                 "D": {"auto_answer": True, "answer_record": rec_d}}) as mesh:
        first = await _real_call(mesh, "A", "D", 3.0, rec_d, TONE_A)
        second = await _real_call(mesh, "D", "A", 3.0, rec_a, TONE_D)
        # the real control socket of node A, served with voice plugged in through add_service
        rec_ctl = out / "ctl.wav"
        d_ep = mesh.endpoints["D"]
        d_ep.voice.answer_record = str(rec_ctl)
        sock = mesh.endpoints["A"].node.control.path
        ctl = await _meshctl(sock, "call", "D", "--play", "tone:550", "--duration", "4", "--json")
        calls = await _meshctl(sock, "calls", "--json")
    return {"a_to_d": first, "d_to_a": second, "meshctl_call": ctl, "meshctl_calls": calls,
            "rec_ctl": str(rec_ctl)}


async def real_diamond(out: Path) -> dict[str, Any]:
    """A–B–D and A–C–D with B and C real meshd relays; the relay carrying the call is kill -9'd."""
    return await diamond_kill(out)


async def diamond_kill(out: Path, after_s: float = 6.0) -> dict[str, Any]:
    """A calls D (tones both ways, both recorded) across three relays in parallel (A–B–D,
    A–C–D, A–E–D, real meshd each).  The relay that carries A's audio is killed with
    SIGKILL; if D's audio took another relay (routes need not be symmetric), that one is
    killed too once A's audio is back, so each direction loses its relay once.  Each kill:
    when each end's route left the dead relay (node clock); at the end, both sinks' gaps."""
    rec_a, rec_d = out / "a.wav", out / "d.wav"
    links = [(x, y) for r in ("B", "C", "E") for x, y in (("A", r), (r, "D"))]
    async with real_mesh(links, {"A": {}, "D": {"auto_answer": True, "answer_record": rec_d,
                                              "answer_play": Path(f"tone:{TONE_D:g}")}}) as mesh:
        a, d = mesh.endpoints["A"], mesh.endpoints["D"]
        await wait_route(a, d)
        loop = asyncio.get_running_loop()
        by_id: dict[str, str] = {}
        for name, daemon in mesh.relays.items():  # meshctl status: blocking, so off the loop
            by_id[(await loop.run_in_executor(None, daemon.wait_ready))["node_id"]] = name
        info = await a.voice.dial(d.node_id, play=f"tone:{TONE_A:g}", record=str(rec_a))
        cid = bytes.fromhex(info.call_id)
        for _ in range(300):
            ca, cd = a.voice._calls.get(cid), d.voice._calls.get(cid)
            if all(c is not None and c.endpoint is not None
                   and c.endpoint.sink.first_frame_at is not None for c in (ca, cd)):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        start = time.monotonic()  # the sinks' clock: the node's
        kills: list[dict[str, Any]] = []
        cut = {"a_to_d": False, "d_to_a": False}
        while not all(cut.values()) and len(kills) < 2:
            hops = {"a_to_d": a.node.next_hop(d.node_id), "d_to_a": d.node.next_hop(a.node_id)}
            dead = hops["a_to_d"] if not cut["a_to_d"] else hops["d_to_a"]
            if dead is None:
                break
            relay = by_id[dead.hex()]
            killed_at = time.monotonic()
            await loop.run_in_executor(None, mesh.relays[relay].kill9)
            carried = [k for k, h in hops.items() if h == dead]
            for k in carried:
                cut[k] = True
            moved: dict[str, float | None] = {k: None for k in carried}
            end = killed_at + after_s
            while (now := time.monotonic()) < end:  # when each end's route left it
                for key, ep, dest in (("a_to_d", a, d), ("d_to_a", d, a)):
                    nh = ep.node.next_hop(dest.node_id)
                    if key in moved and moved[key] is None and nh is not None and nh != dead:
                        moved[key] = round(now - killed_at, 3)
                await asyncio.sleep(0.02)
            kills.append({"relay": relay, "at_s": round(killed_at - start, 3),
                          "carried": carried, "route_moved_s": moved})
        res: dict[str, Any] = {"kills": kills, "cut": cut, "rec_a": str(rec_a),
                               "rec_d": str(rec_d)}
        for key, ep in (("at_d", d), ("at_a", a)):  # at_d: A's audio heard at D
            c = ep.voice._calls[cid]
            sink = c.endpoint.sink if c.endpoint else None
            res[key] = {
                "gaps": [(round(at - start, 3), round(g, 3)) for at, g in sink.gaps] if sink else [],
                "last_frame_s": round(sink.last_frame_at - start, 3)
                if sink and sink.last_frame_at else None,
                "state_after": ep.voice.info(cid).state,
                "generation": ep.voice.session(cid).generation}
        res["span_s"] = round(time.monotonic() - start, 3)
        a.voice.hangup(cid)
        await asyncio.sleep(0.5)
        return res


async def real_gap(out: Path) -> dict[str, Any]:
    """A–B–D, B a real meshd relay; nftables drops everything arriving at B for ``OUTAGE_S``
    mid-call: the audio of that stretch is lost, and the callee's recording must keep the time."""
    rec = out / "d.wav"
    links = [("A", "B"), ("B", "D")]
    async with real_mesh(links, {"A": {}, "D": {"auto_answer": True, "answer_record": rec}}) as mesh:
        a, d = mesh.endpoints["A"], mesh.endpoints["D"]
        await wait_route(a, d)
        info = await a.voice.dial(d.node_id, play=f"tone:{TONE_A:g}", record=None)
        cid = bytes.fromhex(info.call_id)
        for _ in range(300):
            c = d.voice._calls.get(cid)
            if c is not None and c.endpoint is not None and c.endpoint.sink.first_frame_at is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)
        table = "carmesh_test_gap"
        rule = (f"table inet {table} {{ chain input {{ type filter hook input priority 0; "
                f"udp dport {mesh.ports['B']} drop; }}; }}")
        await asyncio.to_thread(subprocess.run, ["nft", "-f", "-"], input=rule, text=True,
                                check=True)
        try:
            await asyncio.sleep(OUTAGE_S)
        finally:
            await asyncio.to_thread(subprocess.run, ["nft", "delete", "table", "inet", table],
                                    check=True)
        await asyncio.sleep(3.0)
        c = d.voice._calls[cid]
        assert c.endpoint is not None
        sink = c.endpoint.sink
        span = (sink.last_frame_at or 0.0) - (sink.first_frame_at or 0.0)
        gaps = [g for _, g in sink.gaps]
        filled = sink.filled_samples
        state = d.voice.info(cid).state
        a.voice.hangup(cid)
        for _ in range(100):
            if d.voice.info(cid).state == "ended":
                break
            await asyncio.sleep(0.05)
    return {"rec_callee": str(rec), "span_s": span, "gaps": gaps, "filled_samples": filled,
            "state_during": state}


async def reoffer(out: Path) -> dict[str, Any]:
    """The path breaks for longer than the endpoint tolerates (no audio for MEDIA_STALL_S), then
    comes back."""
    mesh = FakeMesh(out / "keys", ["A", "B", "D"], hop_delay_s=0.002, seed=11)
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    rec = out / "callee.wav"
    sa = service(a)
    sd = service(d, auto_answer=True, answer_play=Path("tone:660"), answer_record=rec)
    info = await sa.dial(d.node_id, play=f"tone:{TONE_A:g}", record=None)
    cid = bytes.fromhex(info.call_id)
    await d.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == info.call_id, 15)
    first_ep = sd._calls[cid].endpoint
    first_frame_at = first_ep.sink.first_frame_at if first_ep is not None else None
    await asyncio.sleep(1.0)
    mesh.cut("B", "D")
    cut_at = time.monotonic()
    await a.control.wait_for(lambda e, x: e == "call.media"
                             and x["state"] in ("failed", "closed", "stalled"), 70)
    failed_after = time.monotonic() - cut_at
    await asyncio.sleep(1.0)
    mesh.link("B", "D")
    restored_at = time.monotonic()
    # the re-offered endpoint records its first frame
    resumed_after = None
    for _ in range(300):
        c = sd._calls[cid]
        if sd.session(cid).generation > 0 and c.endpoint is not None \
                and c.endpoint.sink.first_frame_at is not None:
            resumed_after = c.endpoint.sink.first_frame_at - restored_at
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    last_ep = sd._calls[cid].endpoint
    last_frame_at = last_ep.sink.last_frame_at if last_ep is not None else None
    res = {"failed_after_s": failed_after, "resumed_after_s": resumed_after,
           "heard_span_s": (last_frame_at - first_frame_at)
           if last_frame_at is not None and first_frame_at is not None else None,
           "cut_after_audio_s": 1.0,
           "generation_callee": sd.session(cid).generation,
           "generation_caller": sa.session(cid).generation,
           "state_caller": sa.info(cid).state, "state_callee": sd.info(cid).state,
           "rec_callee": str(rec)}
    sa.hangup(cid)
    await d.control.wait_for(ended(d, info.call_id), 10)
    await sa.close()
    await sd.close()
    return res


async def answer_errors(out: Path) -> dict[str, Any]:
    """A missing --play file is refused and leaves the call ringing; a second answer is refused."""
    _mesh, a, d, sa, sd = await _two(out)
    info = await sa.dial(d.node_id, play="tone:440", record=None)
    cid = bytes.fromhex(info.call_id)
    await d.control.wait_for(lambda e, x: e == "call.incoming", 10)
    res: dict[str, Any] = {}
    try:
        await sd.answer(cid, play=str(out / "missing.wav"), record=None)
    except ControlError as exc:
        res["missing_file"] = exc.code
    res["state_after_missing"] = sd.info(cid).state
    outcomes = await asyncio.gather(sd.answer(cid, play="tone:660", record=None),
                                    sd.answer(cid, play="tone:660", record=None),
                                    return_exceptions=True)
    res["double"] = sorted("ok" if o is None else getattr(o, "code", repr(o)) for o in outcomes)
    await a.control.wait_for(lambda e, x: e == "call.audio" and x["call_id"] == info.call_id, 15)
    res["state_caller"] = sa.info(cid).state
    sa.hangup(cid)
    await d.control.wait_for(ended(d, info.call_id), 10)
    await sa.close()
    await sd.close()
    return res


SCENARIOS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {
    "line_a_to_d": line_a_to_d,
    "line_d_to_a": line_d_to_a,
    "loss5": loss5,
    "redundant": redundant,
    "busy": busy,
    "declined": declined,
    "unreachable": unreachable,
    "hangup_caller": hangup_caller,
    "hangup_callee": hangup_callee,
    "tampered": tampered,
    "diamond": diamond,
    "meshctl": meshctl,
    "real_line": real_line,
    "reoffer": reoffer,
    "answer_errors": answer_errors,
    "real_diamond": real_diamond,
    "real_gap": real_gap,
    "sigint_ringing": sigint_ringing,
    "sigterm_ringing": sigterm_ringing,
    "sigterm_active": sigterm_active,
    "no_address": no_address,
}


async def main(outdir: Path, names: list[str]) -> None:
    results: dict[str, Any] = {}
    for name in names:
        sub = outdir / name
        sub.mkdir(parents=True, exist_ok=True)
        try:
            results[name] = await asyncio.wait_for(SCENARIOS[name](sub), 90)
        except Exception as exc:  # report, do not hide: the parent test asserts on it
            import traceback
            results[name] = {"error": f"{type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc()}
    (outdir / "result.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=os.environ.get("VOICE_LOG", "WARNING"))
    if os.environ.get("VOICE_UVLOOP") == "1":  # meshd runs on uvloop: the service must too
        import uvloop
        uvloop.run(main(Path(sys.argv[1]), sys.argv[2:]))
    else:
        asyncio.run(main(Path(sys.argv[1]), sys.argv[2:]))
