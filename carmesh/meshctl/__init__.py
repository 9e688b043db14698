"""``meshctl``: talk to a running ``meshd`` through its control socket.

Every subcommand is one entry in ``COMMANDS`` (see ``register``): a name, a
help line, a function that adds its arguments to an argparse sub-parser, and an
async ``run(client, args, out) -> exit code``.  Later commands register the same
way, in this module or in their own.

``--state-dir``, ``--socket`` and ``--json`` are accepted before or after the
subcommand: each sub-parser repeats them with ``default=SUPPRESS``, so a value
given after the subcommand wins and an absent one leaves the top-level value.

Exit codes (the contract in docs/cli.md): 0 success; 1 the operation failed;
2 usage (argparse errors, an ambiguous NODE, a request the daemon calls bad);
3 no daemon answering on the socket; 4 target unreachable or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.core.tasks import cancel_and_wait
from meshd.paths import STATE_DIR_ENV, default_socket_path, default_state_dir

__all__ = [
    "COMMANDS",
    "Command",
    "ExitCode",
    "Output",
    "exit_code_for",
    "main",
    "register",
]

#: how long meshctl waits for the socket to accept a connection, seconds
CONNECT_TIMEOUT_S = 2.0
#: how long a plain request may take before the daemon counts as not answering, seconds
CALL_TIMEOUT_S = 10.0
#: extra time the daemon gets beyond a ping's own timeout, seconds
PING_GRACE_S = 5.0


class ExitCode(enum.IntEnum):
    OK = 0  #: success
    FAILED = 1  #: the operation failed
    USAGE = 2  #: bad command line, ambiguous NODE, request refused as malformed
    NO_DAEMON = 3  #: nothing answering on the control socket
    UNREACHABLE = 4  #: the target is unreachable, unknown, or timed out


#: the ``error.code`` of a --json error document for a failure found by meshctl itself
_EXIT_NAME = {ExitCode.FAILED: "failed", ExitCode.USAGE: "usage", ExitCode.NO_DAEMON: "no_daemon",
              ExitCode.UNREACHABLE: "unreachable", ExitCode.OK: "ok"}

_CODE_EXIT = {
    "unreachable": ExitCode.UNREACHABLE,
    "timeout": ExitCode.UNREACHABLE,
    "not_found": ExitCode.UNREACHABLE,
    "ambiguous": ExitCode.USAGE,
    "bad_request": ExitCode.USAGE,
    "failed": ExitCode.FAILED,
    "unknown_method": ExitCode.FAILED,
}


def exit_code_for(err: ControlError) -> ExitCode:
    """The meshctl exit code for a control error code."""
    return _CODE_EXIT.get(err.code, ExitCode.FAILED)


class Output:
    """Where a command writes: human text or one JSON document on stdout, messages on stderr."""

    def __init__(self, as_json: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json = as_json
        self._out = stdout
        self._err = stderr

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def err(self) -> TextIO:
        return self._err if self._err is not None else sys.stderr

    def line(self, text: str = "") -> None:
        """A line of human output (suppressed under --json)."""
        if not self.json:
            print(text, file=self.out, flush=True)

    def document(self, obj: Any) -> None:
        """The one JSON document of a --json run."""
        print(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False), file=self.out,
              flush=True)

    def error(self, text: str) -> None:
        """A diagnostic on stderr, prefixed with the program name."""
        print(f"meshctl: {text}", file=self.err, flush=True)

    def fail(self, code: ExitCode, text: str) -> ExitCode:
        """Report a local failure: stderr, plus an ``{"error": ...}`` document under --json."""
        self.error(text)
        if self.json:
            self.document({"error": {"code": _EXIT_NAME[code], "message": text, "data": {}}})
        return code

    def control_error(self, err: ControlError) -> ExitCode:
        """Report a control error (stderr; plus an ``{"error": ...}`` document under --json)."""
        self.error(err.message if err.code not in ("not_found", "unreachable", "timeout")
                   else f"{err.code.replace('_', ' ')}: {err.message}")
        if err.code == "ambiguous":
            for c in err.data.get("candidates", []):
                if isinstance(c, dict):
                    print(f"  {c.get('node_id', '')}  {c.get('name', '')}", file=self.err)
        if self.json:
            self.document({"error": err.to_json()})
        return exit_code_for(err)


Setup = Callable[[argparse.ArgumentParser], None]
Run = Callable[[ControlClient, argparse.Namespace, Output], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Command:
    """One meshctl subcommand: ``setup`` adds its arguments, ``run`` returns its exit code."""

    name: str
    help: str
    setup: Setup
    run: Run


#: every subcommand, by name, in registration order
COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, setup: Setup | None = None) -> Callable[[Run], Run]:
    """Decorator: add ``run`` to ``COMMANDS`` as subcommand ``name``, arguments from ``setup``."""
    def deco(run: Run) -> Run:
        if name in COMMANDS:
            raise LocalProtocolError(f"meshctl command {name!r} registered twice")
        COMMANDS[name] = Command(name, help, setup or (lambda _p: None), run)
        return run
    return deco


async def _fetch_list(client: ControlClient, out: Output, method: str, key: str,
                      params: dict[str, Any] | None, *, timeout: float, what: str,
                      empty: str) -> list[Any] | int:
    """Call ``method`` and return its ``key`` list for a table, or the exit code when done.

    Done means: the daemon's answer was malformed (exit 1), ``--json`` printed it whole
    (exit 0), or the list was empty and ``empty`` was printed (exit 0).
    """
    res = await client.call(method, params, timeout=timeout)
    items = res.get(key) if isinstance(res, dict) else None
    if not isinstance(items, list):
        return out.fail(ExitCode.FAILED, f"daemon sent a malformed {what}")
    if out.json:
        out.document(res)
        return ExitCode.OK
    if not items:
        out.line(empty)
        return ExitCode.OK
    return items


# ---------------------------------------------------------------------------- formatting

def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> list[str]:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header).rstrip()] + [fmt.format(*row).rstrip() for row in rows]


def _num(v: Any, digits: int = 1) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return "-"
    return f"{100 * v:.0f}%"


def _duration(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _str(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return ", ".join(str(x) for x in v) or "-"
    return str(v)


# ---------------------------------------------------------------------------- status

def _status_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=_nonneg_float, default=0.0, metavar="S",
                   help="retry until the daemon is ready or S seconds have passed")


@register("status", "show this node; exit 0 once the daemon is ready", _status_setup)
async def _status(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    return _show_status(await client.call("status", timeout=CALL_TIMEOUT_S), out)


def _show_status(st: Any, out: Output) -> int:
    if not isinstance(st, dict):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed status")
    ready = st.get("ready") is True
    if out.json:
        out.document(st)
    else:
        rows = [
            ("node", f"{_str(st.get('node_id'))} ({_str(st.get('short_id'))})"),
            ("name", _str(st.get("name"))),
            ("role", _str(st.get("role"))),
            ("version", _str(st.get("version"))),
            ("ready", "yes" if ready else "no"),
            ("uptime", _duration(st.get("uptime_s"))),
            ("state dir", _str(st.get("state_dir"))),
            ("listen", _str(st.get("listen"))),
            ("interfaces", _str(st.get("interfaces"))),
            ("neighbours", _str(st.get("neighbours"))),
            ("routes", _str(st.get("routes"))),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            out.line(f"{k:<{width}}  {v}")
    if not ready:
        out.error("daemon is not ready yet")
        return ExitCode.FAILED
    return ExitCode.OK


async def _status_wait(args: argparse.Namespace, out: Output) -> int:
    """``status --wait S``: poll, connecting afresh as needed, until ready or S seconds pass."""
    deadline = time.monotonic() + args.wait
    last: NoDaemon | ControlError | None = None
    last_status: Any = None
    while True:
        remaining = deadline - time.monotonic()
        try:
            connect_s = max(0.1, min(CONNECT_TIMEOUT_S, remaining))
            async with await ControlClient.connect(args.socket_path, timeout=connect_s) as client:
                last_status = await client.call(
                    "status", timeout=max(0.1, min(CALL_TIMEOUT_S, remaining)))
                last = None
                if isinstance(last_status, dict) and last_status.get("ready") is True:
                    break
        except (NoDaemon, ControlError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    if isinstance(last, NoDaemon):
        return out.fail(ExitCode.NO_DAEMON, str(last))
    if isinstance(last, ControlError):
        return out.control_error(last)
    return _show_status(last_status, out)


# ---------------------------------------------------------------------------- neighbours

@register("neighbours", "list neighbour links and their quality")
async def _neighbours(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    nbs = await _fetch_list(client, out, "neighbours", "neighbours", None,
                         timeout=CALL_TIMEOUT_S, what="neighbour list",
                         empty="no neighbours")
    if isinstance(nbs, int):
        return nbs
    now = time.time()
    rows = []
    for n in nbs:
        if not isinstance(n, dict):
            continue
        up_since = n.get("up_since")
        up = (_duration(now - up_since)
              if isinstance(up_since, int | float) and not isinstance(up_since, bool) else "-")
        rows.append((
            _str(n.get("short_id") or str(n.get("node_id", ""))[:8]),
            _str(n.get("name")),
            _str(n.get("role")),
            _str(n.get("address")),
            _str(n.get("state")),
            _num(n.get("rtt_ms")),
            _pct(n.get("loss")),
            f"{_num(n.get('tx_packets'))}/{_num(n.get('rx_packets'))}",
            f"{_num(n.get('tx_bytes'))}/{_num(n.get('rx_bytes'))}",
            up,
            "out" if n.get("initiator") is True else "in" if n.get("initiator") is False else "-",
        ))
    header = ("NODE", "NAME", "ROLE", "ADDRESS", "STATE", "RTT_MS", "LOSS", "PKTS_TX/RX",
              "BYTES_TX/RX", "UP", "DIR")
    for text in _table(rows, header):
        out.line(text)
    return ExitCode.OK


# ---------------------------------------------------------------------------- ping

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _float_in(text: str, lo: float, hi: float, lo_open: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
        raise argparse.ArgumentTypeError(
            f"must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}")
    return v


def _ping_timeout(text: str) -> float:
    return _float_in(text, 0.0, 60.0, True)


def _nonneg_float(text: str) -> float:
    return _float_in(text, 0.0, 86400.0, False)


def _ping_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="NodeId, unique id prefix or unique display name")
    p.add_argument("-c", "--count", type=_positive_int, default=4, metavar="N",
                   help="echo requests to send (default 4)")
    p.add_argument("-W", "--timeout", type=_ping_timeout, default=2.0, metavar="S",
                   help="seconds to wait for each reply, at most 60 (default 2)")
    p.add_argument("-i", "--interval", type=_nonneg_float, default=1.0, metavar="S",
                   help="seconds between the starts of two echoes (default 1)")


@register("ping", "send echo requests to NODE over the mesh", _ping_setup)
async def _ping(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    node_id: str | None = None
    name: str | None = None
    replies: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    sent = 0
    interrupted = False
    fatal: ControlError | None = None
    try:
        for seq in range(1, args.count + 1):
            started = time.monotonic()
            sent += 1
            try:
                r = await client.call("ping", {"node": args.node, "timeout": args.timeout},
                                      timeout=args.timeout + PING_GRACE_S)
            except ControlError as exc:
                if isinstance(exc.data.get("node_id"), str):
                    node_id = exc.data["node_id"]
                    name = exc.data.get("name") if isinstance(exc.data.get("name"), str) else name
                if exc.code not in ("unreachable", "timeout"):
                    fatal = exc  # not_found, ambiguous, bad_request, failed: retrying cannot help
                    break
                errors.append({"seq": seq, "code": exc.code, "message": exc.message})
                out.line(f"seq={seq}: {exc.code}: {exc.message}")
            else:
                if not isinstance(r, dict) or not isinstance(r.get("rtt_ms"), int | float):
                    return out.fail(ExitCode.FAILED, "daemon sent a malformed ping reply")
                node_id = r.get("node_id") if isinstance(r.get("node_id"), str) else node_id
                name = r.get("name") if isinstance(r.get("name"), str) else name
                reply = {"seq": seq, "rtt_ms": float(r["rtt_ms"]), "hops": r.get("hops")}
                replies.append(reply)
                who = f"{name} ({node_id[:8]})" if name and node_id else node_id or args.node
                out.line(f"reply from {who}: seq={seq} hops={_str(reply['hops'])} "
                         f"time={reply['rtt_ms']:.2f} ms")
            if seq < args.count:
                await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except asyncio.CancelledError:
        interrupted = True
    if fatal is not None and not replies and not errors:
        return out.control_error(fatal)
    received = len(replies)
    rtts = [r["rtt_ms"] for r in replies]
    loss = (sent - received) / sent if sent else 1.0
    rtt = ({"min": min(rtts), "avg": sum(rtts) / len(rtts), "max": max(rtts)} if rtts
           else {"min": None, "avg": None, "max": None})
    if out.json:
        out.document({"node": args.node, "node_id": node_id, "name": name, "sent": sent,
                      "received": received, "loss": loss, "rtt_ms": rtt, "replies": replies,
                      "errors": errors})
    else:
        out.line(f"--- {name or node_id or args.node} ping statistics ---")
        out.line(f"{sent} sent, {received} received, {100 * loss:.0f}% loss")
        if rtts:
            out.line(f"rtt min/avg/max = {rtt['min']:.2f}/{rtt['avg']:.2f}/{rtt['max']:.2f} ms")
    if interrupted:  # Ctrl-C: like ping(8), the summary above and the usual exit code
        return ExitCode.OK if received else ExitCode.UNREACHABLE
    if fatal is not None:
        return out.control_error(fatal)
    return ExitCode.OK if received else ExitCode.UNREACHABLE


# ---------------------------------------------------------------------------- send, messages

#: how long ``send`` waits for the far end's acknowledgement by default, seconds
SEND_TIMEOUT_S = 10.0


def _send_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="NodeId, unique id prefix or unique display name")
    p.add_argument("text", metavar="TEXT", help="the message (sealed end to end)")
    p.add_argument("-W", "--timeout", type=_ping_timeout, default=SEND_TIMEOUT_S, metavar="S",
                   help=f"seconds to wait for the acknowledgement, at most 60 "
                        f"(default {SEND_TIMEOUT_S:g})")


@register("send", "send a sealed text message to NODE and wait for its acknowledgement",
          _send_setup)
async def _send(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("send", {"node": args.node, "text": args.text,
                                     "timeout": args.timeout},
                            timeout=args.timeout + PING_GRACE_S)
    if not isinstance(res, dict):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed send result")
    if out.json:
        out.document(res)
    else:
        node_id = res.get("node_id")
        who = str(node_id)[:8] if isinstance(node_id, str) else args.node
        if res.get("status") == "queued":  # no route: carried as mail (see `meshctl mail`)
            out.line(f"queued for {who}: message {_str(res.get('message_id'))} "
                     "(no route now; carried by passing nodes, `meshctl mail` shows delivery)")
        else:
            out.line(f"{_str(res.get('status'))} to {who}: message "
                     f"{_str(res.get('message_id'))}, {_str(res.get('attempts'))} attempt(s), "
                     f"{_num(res.get('rtt_ms'))} ms")
    return ExitCode.OK


def _clock(ms: Any) -> str:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


@register("messages", "list the text messages this node received, oldest first")
async def _messages(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    msgs = await _fetch_list(client, out, "messages", "messages", None,
                         timeout=CALL_TIMEOUT_S, what="message list",
                         empty="no messages")
    if isinstance(msgs, int):
        return msgs
    rows = [(_clock(m.get("received_ms")), str(m.get("from", ""))[:8] or "-",
             _str(m.get("from_name") or None), " ".join(str(m.get("text", "")).split()))
            for m in msgs if isinstance(m, dict)]
    for text in _table(rows, ("RECEIVED", "FROM", "NAME", "TEXT")):
        out.line(text)
    return ExitCode.OK


def _routes_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help="also list routes that are not selected (other next hops)")


@register("routes", "list the routes this node knows: destination, next hop, metric, seqno, age",
          _routes_setup)
async def _routes(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    routes = await _fetch_list(client, out, "routes", "routes", {"all": args.all},
                         timeout=CALL_TIMEOUT_S, what="route list",
                         empty="no routes")
    if isinstance(routes, int):
        return routes
    rows = [(str(r.get("destination", ""))[:8], _str(r.get("name") or None),
             str(r.get("next_hop", ""))[:8], _str(r.get("next_hop_name") or None),
             "inf" if not r.get("reachable", True) else _str(r.get("metric")),
             _str(r.get("seqno")), _duration(r.get("age_s")),
             "*" if r.get("selected") else "")
            for r in routes if isinstance(r, dict)]
    for text in _table(rows, ("DEST", "NAME", "VIA", "VIA_NAME", "METRIC", "SEQNO", "AGE", "SEL")):
        out.line(text)
    return ExitCode.OK


def _traceroute_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", metavar="NODE", help="node id, unique id prefix, or display name")
    p.add_argument("-W", "--timeout", type=lambda t: _float_in(t, 0, 60, True), default=2.0,
                   metavar="S", help="seconds to wait for each probe (default 2)")
    p.add_argument("-m", "--max-hops", type=_positive_int, default=16, metavar="N",
                   help="give up after N hops (default 16, at most 64)")


@register("traceroute", "show the hops a packet takes to NODE", _traceroute_setup)
async def _traceroute(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.max_hops > 64:
        return out.fail(ExitCode.USAGE, "--max-hops is at most 64")
    res = await client.call("traceroute", {"node": args.node, "timeout": args.timeout,
                                           "max_hops": args.max_hops},
                            timeout=args.timeout * args.max_hops + PING_GRACE_S)
    hops = res.get("hops") if isinstance(res, dict) else None
    if not isinstance(hops, list):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed traceroute result")
    if out.json:
        out.document(res)
        return ExitCode.OK
    out.line(f"traceroute to {_str(res.get('name') or None)} ({str(res.get('node_id'))[:8]})")
    for h in hops:
        if not isinstance(h, dict):
            continue
        if h.get("node_id") is None:
            out.line(f"{h.get('hop'):>3}  *")
        else:
            out.line(f"{h.get('hop'):>3}  {_str(h.get('name') or None)} ({str(h['node_id'])[:8]})"
                     f"  {_num(h.get('rtt_ms'), 2)} ms")
    return ExitCode.OK


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
    import signal  # here, not at the top: keeps this command's change in this command

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
    import contextlib

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

@register("tui", "the admin console (Textual): live views of this node and the mesh")
async def _tui(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    # The console keeps its own connection and reconnects by itself when the daemon
    # restarts; this first connection only proved a daemon answers.
    await client.close()
    if out.json:
        return out.fail(ExitCode.USAGE, "tui is interactive: it has no --json output")
    from tui.app import run_console  # textual loads only for this command

    await run_console(args.socket_path)
    return ExitCode.OK


@register("topology", "draw the mesh as this node knows it: nodes, and links with their cost")
async def _topology(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("topology", timeout=CALL_TIMEOUT_S + 5)
    nodes = res.get("nodes") if isinstance(res, dict) else None
    links = res.get("links") if isinstance(res, dict) else None
    if not isinstance(nodes, list) or not isinstance(links, list):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed topology")
    if out.json:
        out.document(res)
        return ExitCode.OK
    names = {n.get("node_id"): n.get("name") or str(n.get("node_id", ""))[:8]
             for n in nodes if isinstance(n, dict)}
    rows = [(str(n.get("node_id", ""))[:8], _str(n.get("name") or None), _str(n.get("role") or None),
             "yes" if n.get("answered") else "no") for n in nodes if isinstance(n, dict)]
    for text in _table(rows, ("NODE", "NAME", "ROLE", "ANSWERED")):
        out.line(text)
    out.line("")
    lrows = [(f"{names.get(x.get('a'), '?')} -- {names.get(x.get('b'), '?')}", _str(x.get("cost")))
             for x in links if isinstance(x, dict)]
    for text in _table(lrows, ("LINK", "COST")):
        out.line(text)
    return ExitCode.OK


def _sync_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status"], help="status: per-peer sync progress")


def _ago(ts: Any) -> str:
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts <= 0:
        return "never"
    return _duration(time.time() - ts) + " ago"


@register("sync", "replication with neighbours: `sync status` shows each peer's last sync, "
          "ops and bytes each way, and catch-up progress", _sync_setup)
async def _sync(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("sync.status", timeout=CALL_TIMEOUT_S)
    peers = res.get("peers") if isinstance(res, dict) else None
    if not isinstance(peers, dict):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed sync status")
    if out.json:
        out.document(res)
        return ExitCode.OK
    out.line(f"ops stored: {_str(res.get('ops'))}, waiting for predecessors: "
             f"{_str(res.get('pending'))}, quarantined authors: {len(res.get('quarantined') or [])}")
    rows = []
    for node_id, p in sorted(peers.items()):
        if not isinstance(p, dict):
            continue
        cu = p.get("catch_up")
        progress = "-"
        if isinstance(cu, dict):
            exp = (cu.get("in_expected") or 0) + (cu.get("out_expected") or 0)
            done = (cu.get("in_done") or 0) + (cu.get("out_done") or 0)
            progress = f"{done}/{exp}" if exp else "reconciling"
        rows.append((node_id[:8], _str(p.get("name") or None), "up" if p.get("up") else "down",
                     _ago(p.get("last_sync")), f"{_str(p.get('ops_in'))}/{_str(p.get('ops_out'))}",
                     f"{_str(p.get('bytes_in'))}/{_str(p.get('bytes_out'))}", progress))
    if rows:
        for text in _table(rows, ("PEER", "NAME", "LINK", "LAST SYNC", "OPS IN/OUT",
                                  "BYTES IN/OUT", "CATCH-UP")):
            out.line(text)
    else:
        out.line("no sync peers yet")
    return ExitCode.OK


# ---------------------------------------------------------------------------- library, situation, bulletins, mail

#: imports and exports of big folders take a while: meshctl waits this long, seconds
LIBRARY_BULK_TIMEOUT_S = 600.0


def _library_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="add a document; prints its id")
    a.add_argument("--collection", required=True, metavar="C")
    a.add_argument("--title", required=True, metavar="T")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--body", metavar="TEXT")
    g.add_argument("--file", type=Path, metavar="PATH", help="read the body from PATH (UTF-8)")
    a.add_argument("--tag", action="append", default=[], metavar="X", help="repeatable")
    a.add_argument("--lang", metavar="L")
    e = sub.add_parser("edit", help="change a document's body or title")
    e.add_argument("id", metavar="ID", help="document id or a unique prefix (4+ hex)")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--body", metavar="TEXT")
    g.add_argument("--file", type=Path, metavar="PATH")
    g.add_argument("--title", metavar="T")
    sub.add_parser("show", help="print a document").add_argument("id", metavar="ID")
    s = sub.add_parser("search", help="ranked full-text search (any language)")
    s.add_argument("query", metavar="QUERY")
    s.add_argument("--collection", metavar="C")
    s.add_argument("--limit", type=_positive_int, default=10, metavar="N")
    sub.add_parser("history", help="who changed a document, and when").add_argument(
        "id", metavar="ID")
    sub.add_parser("import", help="import a folder of Markdown files (the daemon reads it)"
                   ).add_argument("dir", type=Path, metavar="DIR")
    sub.add_parser("export", help="export the library as Markdown files (the daemon writes)"
                   ).add_argument("dir", type=Path, metavar="DIR")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _read_body(args: argparse.Namespace) -> str | None:
    if getattr(args, "file", None) is not None:
        try:
            return str(args.file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ControlError("bad_request", f"cannot read {args.file}: {exc}") from None
    body = getattr(args, "body", None)
    return body if isinstance(body, str) else None


async def _with_progress(client: ControlClient, method: str, params: dict[str, Any],
                         out: Output) -> Any:
    """Call ``method`` while drawing its ``library.progress`` events on stderr (not with --json)."""
    if out.json:
        return await client.call(method, params, timeout=LIBRARY_BULK_TIMEOUT_S)
    sub = await client.subscribe(["library.progress"])

    async def draw() -> None:
        width = 30
        async for _event, data in sub:
            done, total = data.get("done"), data.get("total")
            if not isinstance(done, int) or not isinstance(total, int) or total <= 0:
                continue
            filled = width * min(done, total) // total
            out.err.write(f"\r{_str(data.get('phase')):<8} [{'#' * filled}{'.' * (width - filled)}]"
                          f" {done}/{total} {str(data.get('path') or '')[-30:]:<30}")
            out.err.flush()

    task = asyncio.create_task(draw())
    try:
        return await client.call(method, params, timeout=LIBRARY_BULK_TIMEOUT_S)
    finally:
        await cancel_and_wait(task, NoDaemon)
        out.err.write("\r" + " " * 90 + "\r")
        out.err.flush()


def _show_document(d: dict[str, Any], out: Output) -> None:
    out.line(f"{_str(d.get('title'))}  [{_str(d.get('collection'))}]"
             + ("  (deleted)" if d.get("deleted") else ""))
    out.line(f"id {_str(d.get('doc_id'))}  tags {', '.join(d.get('tags') or []) or '-'}  "
             f"lang {_str(d.get('lang') or None)}  updated {_clock(d.get('updated_ms'))}  "
             f"changes {_str(d.get('changes'))}")
    out.line("")
    out.line(str(d.get("body", "")))


@register("library", "the community library: add, edit, show, search, history, import, export",
          _library_setup)
async def _library(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    act = args.action
    res: Any
    if act == "add":
        params = {"collection": args.collection, "title": args.title, "body": _read_body(args),
                  "tags": args.tag}
        if args.lang:
            params["lang"] = args.lang
        res = await client.call("library.add", params, timeout=CALL_TIMEOUT_S * 3)
        if out.json:
            out.document(res)
        else:
            out.line(str(res.get("doc_id")))
        return ExitCode.OK
    if act == "edit":
        params = {"id": args.id}
        body = _read_body(args)
        if body is not None:
            params["body"] = body
        if args.title is not None:
            params["title"] = args.title
        res = await client.call("library.edit", params, timeout=CALL_TIMEOUT_S * 3)
        if out.json:
            out.document(res)
        else:
            out.line(f"edited {_str(res.get('doc_id'))} ({_str(res.get('ops'))} op(s))")
        return ExitCode.OK
    if act == "show":
        res = await client.call("library.show", {"id": args.id}, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            _show_document(res, out)
        return ExitCode.OK
    if act == "search":
        params = {"query": args.query, "limit": args.limit}
        if args.collection:
            params["collection"] = args.collection
        res = await client.call("library.search", params, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        hits = res.get("results") or []
        if not hits:
            out.line("no results")
        for h in hits:
            out.line(f"{str(h.get('doc_id'))[:12]}  [{_str(h.get('collection'))}] "
                     f"{_str(h.get('title'))}")
            out.line("    " + " ".join(str(h.get("snippet", "")).split()))
        return ExitCode.OK
    if act == "history":
        res = await client.call("library.history", {"id": args.id}, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        rows = [(_clock(h.get("time_ms")), str(h.get("author", ""))[:8],
                 _str(h.get("author_name") or None), _str(h.get("kind")),
                 ",".join(h.get("fields") or []) or "-",
                 f"+{_str(h.get('inserted'))}/-{_str(h.get('deleted'))}")
                for h in res.get("history") or []]
        for text in _table(rows, ("TIME", "AUTHOR", "NAME", "KIND", "FIELDS", "BODY")):
            out.line(text)
        return ExitCode.OK
    method = "library.import" if act == "import" else "library.export"
    res = await _with_progress(client, method, {"path": str(args.dir.absolute())}, out)
    if out.json:
        out.document(res)
        return ExitCode.OK
    out.line(f"{act} {_str(res.get('path'))}: {_str(res.get('summary'))} "
             f"in {_num(res.get('elapsed_s'), 2)} s")
    for e in res.get("errors") or []:
        out.error(f"{e.get('path')}: {e.get('error')}")
    return ExitCode.OK


def _field_value(text: str) -> Any:
    """``K=V`` values: JSON when it parses (numbers, true/false, null, lists, objects), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _situation_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("set", help="set fields of this node's record of KIND")
    s.add_argument("kind", metavar="KIND",
                   help="person, household, shelter, shop, dealer or vehicle")
    s.add_argument("--field", action="append", default=[], metavar="K=V",
                   help="repeatable; V is JSON if it parses (3, true, [\"water\"]), else text; "
                        "null clears")
    sub.add_parser("show", help="the records of NODE").add_argument("node", metavar="NODE")
    lst = sub.add_parser("list", help="every record, most recently updated first")
    lst.add_argument("--kind", metavar="KIND")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _show_records(records: list[Any], out: Output) -> None:
    if not records:
        out.line("no records")
    for r in records:
        who = r.get("name") or str(r.get("owner", ""))[:8]
        out.line(f"{_str(r.get('kind'))} of {who} (updated {_clock(r.get('updated_ms'))})")
        for k, v in sorted((r.get("fields") or {}).items()):
            out.line(f"    {k}: {json.dumps(v, ensure_ascii=False)}")


@register("situation", "situation files: who is safe, shelters, shops, battery power on offer",
          _situation_setup)
async def _situation(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res: Any
    if args.action == "set":
        fields: dict[str, Any] = {}
        for item in args.field:
            k, sep, v = item.partition("=")
            if not sep or not k:
                return out.fail(ExitCode.USAGE, f"--field {item!r}: expected K=V")
            fields[k] = _field_value(v)
        if not fields:
            return out.fail(ExitCode.USAGE, "situation set needs at least one --field K=V")
        res = await client.call("situation.set", {"kind": args.kind, "fields": fields},
                                timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            _show_records([res], out)
        return ExitCode.OK
    if args.action == "show":
        res = await client.call("situation.show", {"node": args.node}, timeout=CALL_TIMEOUT_S)
    else:
        params = {"kind": args.kind} if args.kind else {}
        res = await client.call("situation.list", params, timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
    else:
        _show_records(res.get("records") or [], out)
    return ExitCode.OK


def _bulletin_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pub = sub.add_parser("publish", help="publish a bulletin signed with this node's key "
                                         "(an authority in the trust configuration)")
    pub.add_argument("--title", required=True, metavar="T")
    pub.add_argument("--body", required=True, metavar="B")
    pub.add_argument("--expires", type=_positive_float, default=24 * 3600.0, metavar="S",
                     help="seconds until it expires (default one day, at most 30 days)")
    sub.add_parser("list", help="live bulletins, newest first")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _positive_float(text: str) -> float:
    return _float_in(text, 0.0, 30 * 24 * 3600.0, True)


def _show_bulletin(b: dict[str, Any], out: Output) -> None:
    a = b.get("authority") or {}
    out.line(f"[{_clock(b.get('issued_ms'))}] {_str(b.get('title'))} -- "
             f"{_str(a.get('name') or None)} ({_str(a.get('role'))}), "
             f"expires {_clock(b.get('expires_ms'))}")
    out.line("    " + str(b.get("body", "")))


@register("bulletin", "emergency bulletins from authority keys: publish, list", _bulletin_setup)
async def _bulletin(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.action == "publish":
        res = await client.call("bulletin.publish", {"title": args.title, "body": args.body,
                                                     "expires_s": args.expires},
                                timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            out.line(f"published {str(res.get('op_id'))[:12]}")
        return ExitCode.OK
    res = await client.call("bulletin.list", timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
        return ExitCode.OK
    bulletins = res.get("bulletins") or []
    if not bulletins:
        out.line("no bulletins")
    for b in bulletins:
        _show_bulletin(b, out)
    return ExitCode.OK


@register("mail", "messages queued for nodes out of reach (carried car to car): "
          "queued or delivered")
async def _mail(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("mail.list", timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
        return ExitCode.OK
    rows = [(str(m.get("message_id", ""))[:12], str(m.get("to", ""))[:8],
             _str(m.get("to_name") or None), _clock(m.get("queued_ms")), _str(m.get("status")),
             _clock(m.get("delivered_ms"))) for m in res.get("outbox") or []]
    if rows:
        for text in _table(rows, ("MESSAGE", "TO", "NAME", "QUEUED", "STATUS", "DELIVERED")):
            out.line(text)
    else:
        out.line("no queued mail")
    out.line(f"carrying {_str(res.get('carried'))} message(s) for other nodes")
    return ExitCode.OK


# ---------------------------------------------------------------------------- parsing and main

def _global_options(p: argparse.ArgumentParser, suppress: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help=f"node state directory (default ${STATE_DIR_ENV}, else "
                        "$XDG_STATE_HOME/carmesh, else ~/.local/state/carmesh)",
                   **({"default": None} | d))
    p.add_argument("--socket", type=Path, metavar="PATH",
                   help="control socket (default <state-dir>/control.sock)",
                   **({"default": None} | d))
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout",
                   **({"default": False} | d))


class _UsageError(Exception):
    """A command line argparse refused: ``(usage, message)`` of the parser that refused it."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises on a usage error, so ``main`` can also answer it in JSON."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.format_usage(), f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-parser per registered command."""
    parser = _Parser(
        prog="meshctl", description="Talk to a running meshd through its control socket.",
        epilog="exit codes: 0 success, 1 failed, 2 usage, 3 no daemon, 4 unreachable/timeout")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _global_options(sp, suppress=True)
        cmd.setup(sp)
    return parser


async def _run(args: argparse.Namespace, out: Output) -> int:
    cmd = COMMANDS[args.command]
    if args.command == "status" and args.wait > 0:
        return await _status_wait(args, out)
    try:
        client = await ControlClient.connect(args.socket_path, timeout=CONNECT_TIMEOUT_S)
    except NoDaemon as exc:
        return out.fail(ExitCode.NO_DAEMON, str(exc))
    try:
        return await cmd.run(client, args, out)
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    """Run meshctl with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help exits 0
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    except _UsageError as exc:
        usage, message = exc.args
        sys.stderr.write(usage)
        print(message, file=sys.stderr, flush=True)
        if "--json" in (sys.argv[1:] if argv is None else argv):
            Output(True).document({"error": {"code": "usage", "message": message, "data": {}}})
        return ExitCode.USAGE
    out = Output(bool(args.json))
    if args.command is None:
        parser.print_usage(sys.stderr)
        return out.fail(ExitCode.USAGE, "a command is required (see meshctl --help)")
    state_dir = args.state_dir if args.state_dir is not None else default_state_dir()
    args.socket_path = args.socket if args.socket is not None else default_socket_path(state_dir)
    try:
        return int(asyncio.run(_run(args, out)))
    except NoDaemon as exc:
        return out.fail(ExitCode.NO_DAEMON, str(exc))
    except ControlError as exc:
        return out.control_error(exc)
    except LocalProtocolError as exc:  # e.g. a socket path that is too long
        return out.fail(ExitCode.USAGE, str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
