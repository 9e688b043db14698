"""meshctl sync: replication with neighbours."""

from __future__ import annotations

import argparse

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _ago,
    _positive_float,
    _str,
    _table,
    register,
)
from meshd.control.client import ControlClient


def _sync_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "reach"],
                   help="status: per-peer sync progress; reach: which known nodes hold this "
                        "node's library version")
    p.add_argument("--timeout", type=_positive_float, default=2.0, metavar="S",
                   help="reach: seconds to wait for each node's answer (default 2)")


async def _reach(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res = await client.call("sync.reach", {"timeout_s": min(args.timeout, 30.0)},
                            timeout=CALL_TIMEOUT_S + args.timeout)
    if out.json:
        out.document(res)
        return ExitCode.OK
    out.line(f"library version {_str(res.get('version'))}: held by {_str(res.get('current'))} "
             f"of {_str(res.get('known'))} known node(s)")
    rows = [(str(n.get("node_id", ""))[:8], _str(n.get("name") or None),
             _str(n.get("version")) if n.get("answered") else "no answer",
             "yes" if n.get("current") else "no") for n in res.get("nodes") or []]
    for text in _table(rows, ("NODE", "NAME", "VERSION", "CURRENT")):
        out.line(text)
    return ExitCode.OK


@register("sync", "replication with neighbours: `sync status` shows each peer's last sync, "
          "ops and bytes each way, and what is left to move; `sync reach` which nodes hold "
          "this node's library version", _sync_setup)
async def _sync(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.action == "reach":
        return await _reach(client, args, out)
    res = await client.call("sync.status", timeout=CALL_TIMEOUT_S)
    peers = res.get("peers") if isinstance(res, dict) else None
    if not isinstance(peers, dict):
        return out.fail(ExitCode.FAILED, "daemon sent a malformed sync status")
    if out.json:
        out.document(res)
        return ExitCode.OK
    out.line(f"ops stored: {_str(res.get('ops'))}, waiting for predecessors: "
             f"{_str(res.get('pending'))}, quarantined authors: {len(res.get('quarantined') or [])}")
    held = res.get("local_writes_held")
    if isinstance(held, str):
        out.line(f"local writes held: {held}")
    rows = []
    for node_id, p in sorted(peers.items()):
        if not isinstance(p, dict):
            continue
        fetch, send = p.get("to_fetch"), p.get("to_send") or 0
        if p.get("up_to_date"):
            progress = "up to date"
        elif fetch is None:
            progress = "reconciling"
        elif fetch or send:
            progress = f"{fetch} to fetch, {send} to send"
        else:
            progress = "-"
        rows.append((node_id[:8], _str(p.get("name") or None), "up" if p.get("up") else "down",
                     _ago(p.get("last_sync")), f"{_str(p.get('ops_in'))}/{_str(p.get('ops_out'))}",
                     f"{_str(p.get('bytes_in'))}/{_str(p.get('bytes_out'))}", progress))
    if rows:
        for text in _table(rows, ("PEER", "NAME", "LINK", "LAST SYNC", "OPS IN/OUT",
                                  "BYTES IN/OUT", "CATCH-UP")):
            out.line(text)
    else:
        out.line("no sync peers yet")
    for node_id, p in sorted(peers.items()):
        if isinstance(p, dict) and p.get("up_to_date"):
            out.line(f"up to date with {_str(p.get('name') or node_id[:8])}")
    return ExitCode.OK


# ---------------------------------------------------------------------------- library, situation, bulletins, mail

#: imports and exports of big folders take a while: meshctl waits this long, seconds
