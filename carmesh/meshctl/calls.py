"""meshctl commands for voice calls: call, answer, decline, hangup, calls."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _duration,
    _fetch_list,
    _float_in,
    _num,
    _pct,
    _str,
    _table,
    register,
)
from meshd.control.client import ControlClient
from meshd.core.errors import ControlError

# ---------------------------------------------------------------------------- calls (voice/)

#: how long the daemon may take to start a call (build the endpoint, gather, send the offer), seconds
CALL_START_TIMEOUT_S = 15.0
#: exit code of ``meshctl call`` by the reason the call ended
_CALL_END_EXIT = {"hung up": ExitCode.OK, "hung up by peer": ExitCode.OK, "busy": ExitCode.FAILED,
                  "declined": ExitCode.FAILED, "failed": ExitCode.FAILED,
                  "cancelled": ExitCode.FAILED, "missed": ExitCode.FAILED,
                  "unreachable": ExitCode.UNREACHABLE, "timeout": ExitCode.UNREACHABLE}


def _quality_text(q: Any) -> str:
    if not isinstance(q, dict):
        return "quality -"
    return (f"rtt {_num(q.get('rtt_ms'))} ms, jitter {_num(q.get('jitter_ms'))} ms, "
            f"loss {_pct(q.get('loss'))}")


def _call_media_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--play", metavar="FILE",
                   help="what to send: an audio file, tone:HZ, mic, or silence (default)")
    p.add_argument("--record", metavar="FILE",
                   help="where to record what is received: a .wav file, or speaker (default: nowhere)")


def _call_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="NodeId, unique id prefix or unique display name")
    _call_media_setup(p)
    p.add_argument("--duration", type=lambda t: _float_in(t, 0, 86400, True), metavar="S",
                   help="hang up S seconds after the call is answered (default: when the peer does)")


def _media_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in ("play", "record"):
        v = getattr(args, key)
        if v is not None:
            params[key] = v if v.startswith("tone:") or v in ("mic", "speaker", "silence") \
                else os.path.abspath(v)
    return params


@register("call", "call NODE over the mesh; blocks until the call ends, then prints a summary",
          _call_setup)
async def _call(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    assert me is not None
    # SIGTERM hangs up like Ctrl-C does (asyncio.run turns Ctrl-C into a cancellation)
    loop.add_signal_handler(signal.SIGTERM, me.cancel)
    try:
        return await _call_until_ended(client, args, out)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def _call_until_ended(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    sub = await client.subscribe(["call.*"])  # before dialling: no event can be missed
    dial = asyncio.ensure_future(client.call("call", {"node": args.node, **_media_params(args)},
                                             timeout=CALL_START_TIMEOUT_S))
    interrupted = False
    try:
        res = await asyncio.shield(dial)
    except asyncio.CancelledError:  # interrupted while the daemon sets the call up
        interrupted = True
        res = await dial
    call_id = res.get("call_id") if isinstance(res, dict) else None
    if not isinstance(call_id, str):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed call result")
    out.line(f"calling {_str(res.get('peer_name') or None)} ({str(res.get('peer'))[:8]}), "
             f"call {call_id}")
    loop = asyncio.get_running_loop()
    hangup_at: float | None = None
    final: dict[str, Any] | None = None
    if interrupted:
        await client.call("hangup", {"call": call_id}, timeout=CALL_TIMEOUT_S)
    while final is None:
        try:
            async with asyncio.timeout_at(hangup_at):
                event, data = await anext(sub)
        except TimeoutError:
            hangup_at = None
            await client.call("hangup", {"call": call_id}, timeout=CALL_TIMEOUT_S)
            continue
        except asyncio.CancelledError:  # Ctrl-C or SIGTERM: hang up, then report like a normal end
            if interrupted:
                raise
            interrupted = True
            hangup_at = None
            with contextlib.suppress(ControlError):  # it may have ended meanwhile
                await client.call("hangup", {"call": call_id}, timeout=CALL_TIMEOUT_S)
            continue
        if data.get("call_id") != call_id:
            continue
        if event == "call.state":
            state = data.get("state")
            if state == "active" and args.duration is not None and hangup_at is None:
                hangup_at = loop.time() + args.duration
            if state == "active":
                out.line(f"active (answered after {_num(data.get('answer_ms'))} ms)")
            elif state != "ended":
                out.line(f"{state}")
        elif event == "call.audio":
            out.line(f"audio flowing (media setup {_num(data.get('setup_ms'))} ms)")
        elif event == "call.ended":
            final = data
    reason = final.get("reason")
    if out.json:
        out.document(final)
    else:
        out.line(f"call {call_id} ended: {_str(reason)} after {_num(final.get('duration_s'))} s; "
                 f"answer {_num(final.get('answer_ms'))} ms, media setup "
                 f"{_num(final.get('setup_ms'))} ms; {_quality_text(final.get('quality'))}")
    detail = final.get("detail")
    if reason == "failed" and isinstance(detail, str):
        print(f"meshctl: call failed: {_str(detail)}", file=sys.stderr, flush=True)
    return _CALL_END_EXIT.get(str(reason), ExitCode.FAILED)


def _call_id_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("call", metavar="CALL", help="call id or a unique prefix of one (see meshctl calls)")


def _answer_setup(p: argparse.ArgumentParser) -> None:
    _call_id_setup(p)
    _call_media_setup(p)


def _show_call(res: Any, out: Output, verb: str) -> int:
    if not isinstance(res, dict):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed call")
    if out.json:
        out.document(res)
    else:
        out.line(f"{verb} call {_str(res.get('call_id'))} with "
                 f"{_str(res.get('peer_name') or None)} ({str(res.get('peer'))[:8]}): "
                 f"{_str(res.get('state'))}")
    return ExitCode.OK


@register("answer", "answer a ringing incoming CALL", _answer_setup)
async def _answer(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("answer", {"call": args.call, **_media_params(args)},
                            timeout=CALL_START_TIMEOUT_S)
    return _show_call(res, out, "answered")


@register("decline", "decline a ringing incoming CALL", _call_id_setup)
async def _decline(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    return _show_call(await client.call("decline", {"call": args.call}, timeout=CALL_TIMEOUT_S),
                      out, "declined")


@register("hangup", "hang up CALL", _call_id_setup)
async def _hangup(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    return _show_call(await client.call("hangup", {"call": args.call}, timeout=CALL_TIMEOUT_S),
                      out, "hung up")


@register("calls", "list live and recent calls with their state and quality")
async def _calls(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    calls = await _fetch_list(client, out, "calls", "calls", None,
                         timeout=CALL_TIMEOUT_S, what="call list",
                         empty="no calls")
    if isinstance(calls, int):
        return calls
    rows = []
    for c in calls:
        if not isinstance(c, dict):
            continue
        qv = c.get("quality")
        q: dict[str, Any] = qv if isinstance(qv, dict) else {}
        rows.append((str(c.get("call_id", ""))[:12], _str(c.get("peer_name") or None),
                     str(c.get("peer", ""))[:8], _str(c.get("role")), _str(c.get("state")),
                     _str(c.get("reason")), _duration(c.get("duration_s")),
                     _num(q.get("rtt_ms")), _num(q.get("jitter_ms")), _pct(q.get("loss"))))
    for text in _table(rows, ("CALL", "PEER", "ID", "ROLE", "STATE", "REASON", "TIME", "RTT_MS",
                              "JITTER_MS", "LOSS")):
        out.line(text)
    return ExitCode.OK


# ---------------------------------------------------------------------------- tui
