"""meshctl sync: replication with neighbours."""

from __future__ import annotations

import argparse

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _ago,
    _str,
    _table,
    register,
)
from meshd.control.client import ControlClient


def _sync_setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status"], help="status: per-peer sync progress")



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
