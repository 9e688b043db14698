"""``meshctl watch``: follow what a terminal user must not miss (calls, messages, bulletins).

It subscribes to the daemon's event stream and prints one line per event until
Ctrl-C or SIGTERM (exit 0), or until the daemon goes away (exit 3).  Human lines
escape every control and bidi character of remote text (names, message texts,
titles), so a peer can neither move the cursor nor reorder what the line says;
``--json`` prints each event as one JSON object per line (JSON Lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from typing import Any

from carmesh.meshctl.common import ExitCode, Output, register
from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.text import terminal_safe

__all__ = ["WATCHED", "describe"]

#: the events ``watch`` follows
WATCHED = ("call.incoming", "call.ended", "message.received", "bulletin.published")

#: characters that reorder or hide text (bidi embeddings, overrides, isolates, marks)
#: longest remote text shown on one line (the rest is cut with an ellipsis)
_MAX_SHOWN = 400


def _shown(value: Any, limit: int = _MAX_SHOWN) -> str:
    """``value`` as one terminal line: cut at ``limit`` characters, then escaped (``terminal_safe``)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return terminal_safe(text)


def _who(node_id: Any, name: Any) -> str:
    short = _shown(node_id, 64)[:8] if node_id else "?"
    return f"{_shown(name, 64)} ({short})" if name else short


def describe(event: str, data: dict[str, Any]) -> str | None:
    """The human line for one event (without the time), or None for one not shown."""
    if event == "call.incoming":
        cid = _shown(data.get("call_id", ""), 64)
        line = f"call      incoming from {_who(data.get('peer'), data.get('peer_name'))}"
        if data.get("auto_answer"):
            return line + f" (answered automatically) call {cid[:12]}"
        return line + f"; answer: meshctl answer {cid[:12]}  decline: meshctl decline {cid[:12]}"
    if event == "call.ended":
        reason = _shown(data.get("reason") or "ended", 64)
        return (f"call      {_shown(data.get('call_id', ''), 64)[:12]} with"
                f" {_who(data.get('peer'), data.get('peer_name'))} ended: {reason}")
    if event == "message.received":
        via = " (via mail)" if data.get("via") == "mail" else ""
        return (f"message   from {_who(data.get('from'), data.get('from_name'))}{via}:"
                f" {_shown(data.get('text', ''))}")
    if event == "bulletin.published":
        b = data.get("bulletin")
        if not isinstance(b, dict):
            return None
        auth = b.get("authority")
        who = _shown(auth.get("name", ""), 64) if isinstance(auth, dict) else ""
        return (f"bulletin  [{who or '?'}] {_shown(b.get('title', ''), 200)}:"
                f" {_shown(b.get('body', ''))}")
    return None


def _setup(p: argparse.ArgumentParser) -> None:
    p.epilog = ("one line per event: incoming calls and how they ended, messages, bulletins;"
                " --json: one JSON object per line. Exit 0 on Ctrl-C or SIGTERM, 3 when the"
                " daemon goes away.")


@register("watch", "follow incoming calls, messages and bulletins as they happen", _setup)
async def watch(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    sub = await client.subscribe(list(WATCHED))
    status = await client.call("status", timeout=10.0)
    me = _who(status.get("node_id"), status.get("name")) if isinstance(status, dict) else "?"
    print(f"meshctl: watching {me}: calls, messages, bulletins (Ctrl-C to stop)",
          file=out.err, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            nxt = asyncio.ensure_future(sub.__anext__())
            await asyncio.wait({nxt, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, NoDaemon):
                    await nxt
                return ExitCode.OK
            try:
                event, data = nxt.result()
            except NoDaemon as exc:
                return out.fail(ExitCode.NO_DAEMON, f"the daemon went away: {exc}")
            ts = sub.last_ts if sub.last_ts is not None else time.time()
            try:
                if out.json:
                    print(json.dumps({"event": event, "ts": ts, "data": data},
                                     ensure_ascii=False), file=out.out, flush=True)
                    continue
                line = describe(event, data)
                if line is not None:
                    print(f"{time.strftime('%H:%M:%S', time.localtime(ts))}  {line}",
                          file=out.out, flush=True)
            except BrokenPipeError:  # `meshctl watch | head`: the reader is gone
                with contextlib.suppress(OSError):  # no second error when Python exits
                    os.dup2(os.open(os.devnull, os.O_WRONLY), out.out.fileno())
                return ExitCode.OK
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stopping.cancel()
