"""meshctl commands about this node and the mesh: status, neighbours, ping, send, messages, routes, traceroute, topology, mail."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    CONNECT_TIMEOUT_S,
    PING_GRACE_S,
    ExitCode,
    Output,
    _clock,
    _duration,
    _fetch_list,
    _float_in,
    _nonneg_float,
    _num,
    _pct,
    _ping_timeout,
    _positive_int,
    _str,
    _table,
    register,
    who,
)
from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError

#: how long a remote query (``status|neighbours|routes NODE``) waits for the far node, seconds
REMOTE_TIMEOUT_S = 5.0


def _remote_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("node", metavar="NODE", nargs="?", default=None,
                   help=f"ask this node over the mesh for its own {what} (authenticated; "
                        "exit 4 when it does not answer)")
    p.add_argument("-W", "--timeout", type=_ping_timeout, default=REMOTE_TIMEOUT_S, metavar="S",
                   help=f"with NODE: seconds to wait for its answer, at most 60 "
                        f"(default {REMOTE_TIMEOUT_S:g})")


def _ask(args: argparse.Namespace, kind: str,
         params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any] | None, float]:
    """(method, params, timeout) of a local request, or of the remote one when NODE is given."""
    if args.node is None:
        return kind, params, CALL_TIMEOUT_S
    return ("remote", {"node": args.node, "kind": kind, "timeout": args.timeout, **(params or {})},
            args.timeout + PING_GRACE_S)


def _answered_by(res: Any, args: argparse.Namespace, out: Output) -> None:
    if args.node is not None and isinstance(res, dict):
        out.line(f"answer from {_str(res.get('name') or None)} "
                 f"({str(res.get('node_id', ''))[:8]}), {_str(res.get('disclosure'))} facts")


def _status_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=_nonneg_float, default=0.0, metavar="S",
                   help="retry until the daemon is ready or S seconds have passed")
    _remote_args(p, "status")


@register("status", "show this node (or NODE over the mesh); exit 0 once the daemon is ready",
          _status_setup)
async def _status(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    method, params, timeout = _ask(args, "status")
    res = await client.call(method, params, timeout=timeout)
    _answered_by(res, args, out)
    return _show_status(res, out)


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
        clock = st.get("clock")
        warning = None
        if isinstance(clock, dict):
            rows.append(("clock", _clock_row(clock)))
            warning = clock.get("warning")
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            out.line(f"{k:<{width}}  {v}")
        if isinstance(warning, str):
            out.line(f"warning: {_str(warning)}")
    if not ready:
        out.error("daemon is not ready yet")
        return ExitCode.FAILED
    return ExitCode.OK


def _clock_row(clock: dict[str, Any]) -> str:
    """``status``'s clock line: the correction applied and how many neighbours it rests on."""
    offset = clock.get("offset_s")
    n = len(clock["neighbours"]) if isinstance(clock.get("neighbours"), dict) else 0
    if not isinstance(offset, int | float):
        return "-"
    if offset == 0:
        return f"system clock (compared with {n} neighbour{'s' if n != 1 else ''})" if n else \
            "system clock (no neighbour to compare with)"
    return f"system clock {offset:+.0f} s (corrected by {n} neighbour{'s' if n != 1 else ''})"


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

def _neighbours_setup(p: argparse.ArgumentParser) -> None:
    _remote_args(p, "neighbours")


@register("neighbours", "list neighbour links and their quality (this node's, or NODE's)",
          _neighbours_setup)
async def _neighbours(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    method, params, timeout = _ask(args, "neighbours")
    nbs = await _fetch_list(client, out, method, "neighbours", params,
                         timeout=timeout, what="neighbour list",
                         empty="no neighbours", header=lambda r: _answered_by(r, args, out))
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
                out.line(f"reply from {who(name, node_id, args.node)}: seq={seq} hops={_str(reply['hops'])} "
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
        out.document({"node": args.node, "node_id": node_id, "name": name,
                      "short_id": node_id[:8] if node_id else None, "sent": sent,
                      "received": received, "loss": loss, "rtt_ms": rtt, "replies": replies,
                      "errors": errors})
    else:
        out.line(f"--- {who(name, node_id, args.node)} ping statistics ---")
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
        to = who(res.get("name"), res.get("node_id"), args.node)
        if res.get("status") == "queued":  # no route: carried as mail (see `meshctl mail`)
            out.line(f"queued for {to}: message {_str(res.get('message_id'))} "
                     "(no route now; carried by passing nodes, `meshctl mail` shows delivery)")
        else:
            out.line(f"{_str(res.get('status'))} to {to}: message "
                     f"{_str(res.get('message_id'))}, {_str(res.get('attempts'))} attempt(s), "
                     f"{_num(res.get('rtt_ms'))} ms")
    return ExitCode.OK



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


@register("leaves", "list the browsers attached to this node as leaves of the mesh, and the "
          "sealed messages held for each")
async def _leaves(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    leaves = await _fetch_list(client, out, "leaf.list", "leaves", None,
                               timeout=CALL_TIMEOUT_S, what="leaf list",
                               empty="no browsers attached")
    if isinstance(leaves, int):
        return leaves
    rows = [(str(x.get("leaf", ""))[:8], _str(x.get("name") or None),
             _clock(x.get("attached_ms")), _str(x.get("held")))
            for x in leaves if isinstance(x, dict)]
    for text in _table(rows, ("LEAF", "NAME", "ATTACHED", "HELD")):
        out.line(text)
    return ExitCode.OK


def _routes_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true",
                   help="also list routes that are not selected (other next hops)")
    _remote_args(p, "routes")


@register("routes", "list the routes this node (or NODE) knows: destination, next hop, metric, "
          "seqno, age",
          _routes_setup)
async def _routes(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    method, params, timeout = _ask(args, "routes", {"all": args.all})
    routes = await _fetch_list(client, out, method, "routes", params,
                         timeout=timeout, what="route list",
                         empty="no routes", header=lambda r: _answered_by(r, args, out))
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
    out.line(f"traceroute to {who(res.get('name'), res.get('node_id'), args.node)}")
    for h in hops:
        if not isinstance(h, dict):
            continue
        if h.get("node_id") is None:
            out.line(f"{h.get('hop'):>3}  *")
        else:
            out.line(f"{h.get('hop'):>3}  {who(h.get('name'), h.get('node_id'))}"
                     f"  {_num(h.get('rtt_ms'), 2)} ms")
    return ExitCode.OK


def _topology_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dot", action="store_true",
                   help="print the graph in Graphviz DOT (every link with its cost); "
                        "e.g. `meshctl topology --dot | dot -Tsvg > mesh.svg`")


def _dot_escape(text: Any) -> str:
    clean = "".join(ch for ch in str(text) if ch.isprintable())
    return clean.replace("\\", "\\\\").replace('"', '\\"')


def _dot_str(*lines: Any) -> str:
    """A DOT double-quoted string of ``lines`` (joined by DOT's ``\\n``): quotes and
    backslashes escaped, control characters dropped (names come from other nodes)."""
    return '"' + "\\n".join(_dot_escape(x) for x in lines) + '"'


def topology_dot(topo: dict[str, Any]) -> str:
    """The ``topology`` answer as an undirected Graphviz graph: nodes labelled with name,
    short id and role (this node doubled, nodes that did not answer dashed), every link
    labelled with its cost."""
    lines = ["graph carmesh {", "  graph [overlap=false, splines=true];",
             "  node [shape=box, style=rounded, fontname=\"sans-serif\"];",
             "  edge [fontname=\"sans-serif\", fontsize=10];"]
    me = topo.get("self")
    for n in topo.get("nodes", []):
        if not isinstance(n, dict):
            continue
        nid = str(n.get("node_id", ""))
        label = [x for x in (str(n.get("name") or ""), nid[:8], str(n.get("role") or "")) if x]
        attrs = [f"label={_dot_str(*label)}"]
        if nid == me:
            attrs.append("peripheries=2")
        if not n.get("answered"):
            attrs.append("style=\"rounded,dashed\"")
        lines.append(f"  {_dot_str(nid)} [{', '.join(attrs)}];")
    for x in topo.get("links", []):
        if not isinstance(x, dict):
            continue
        cost = x.get("cost")
        lines.append(f"  {_dot_str(x.get('a', ''))} -- {_dot_str(x.get('b', ''))} "
                     f"[label={_dot_str(cost)}, cost={_dot_str(cost)}];")
    lines.append("}")
    return "\n".join(lines)


@register("topology", "draw the mesh as this node knows it: nodes, and links with their cost "
          "(--json, or --dot for Graphviz)", _topology_setup)
async def _topology(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.dot and out.json:
        return out.fail(ExitCode.USAGE, "--dot and --json are two formats: give one")
    res = await client.call("topology", timeout=CALL_TIMEOUT_S + 5)
    nodes = res.get("nodes") if isinstance(res, dict) else None
    links = res.get("links") if isinstance(res, dict) else None
    if not isinstance(nodes, list) or not isinstance(links, list):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed topology")
    if out.json:
        out.document(res)
        return ExitCode.OK
    if args.dot:
        print(topology_dot(res), file=out.out, flush=True)
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
