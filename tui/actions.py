"""What the console's actions send and how it tells the admin what happened, in words.

Pure helpers (no I/O): the app (``tui.app``) asks for input with a form, sends
one control request through the poller's connection and shows the sentence
these functions make, as a notification and a line in the Log.
"""

from __future__ import annotations

import json
from typing import Any

from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError

__all__ = [
    "ActionError",
    "call_done",
    "describe_error",
    "parse_fields",
    "send_done",
]


class ActionError(ValueError):
    """Input the admin typed that cannot be sent (said in words)."""


#: what an action is called in error sentences, by control method
_WHAT = {
    "call": "place the call", "answer": "answer the call", "decline": "decline the call",
    "hangup": "hang up", "send": "send the message", "situation.set": "set the situation record",
    "bulletin.publish": "publish the bulletin",
}


def describe_error(method: str, exc: BaseException, target: str = "") -> str:
    """A sentence saying why ``method`` (aimed at ``target``, e.g. a node name) failed."""
    what = _WHAT.get(method, method)
    who = target or "the node"
    if isinstance(exc, NoDaemon):
        return f"could not {what}: the daemon is not answering ({exc})"
    if not isinstance(exc, ControlError):
        return f"could not {what}: {exc}"
    msg = exc.message.rstrip(".")
    if exc.code == "unknown_method":
        return f"could not {what}: this daemon does not offer {method}"
    if exc.code == "not_found":
        return f"could not {what}: no node or call matches {who!r} ({msg})"
    if exc.code == "ambiguous":
        cands = exc.data.get("candidates")
        names = ", ".join(str(c.get("name") or str(c.get("node_id", ""))[:8])
                          for c in cands if isinstance(c, dict)) if isinstance(cands, list) else ""
        return (f"could not {what}: {who!r} matches several nodes"
                + (f" ({names}); type more of the id" if names else f" ({msg})"))
    if exc.code == "unreachable":
        return f"could not {what}: {who} is out of reach now ({msg})"
    if exc.code == "timeout":
        return f"could not {what}: {who} did not answer in time ({msg})"
    if exc.code == "bad_request":
        return f"could not {what}: the daemon refused the request ({msg})"
    return f"could not {what}: {msg}"


def parse_fields(text: str) -> dict[str, Any]:
    """``capacity=40; open=true; needs=water,blankets`` → fields for ``situation.set``.

    Pairs are separated by ``;`` (commas belong to list values); a value is JSON
    when it parses (as with ``meshctl situation set --field``), else text.
    """
    fields: dict[str, Any] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        k, sep, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if not sep or not k:
            raise ActionError(f"{part!r} is not NAME=VALUE")
        try:
            fields[k] = json.loads(v)
        except json.JSONDecodeError:
            fields[k] = v
    if not fields:
        raise ActionError("give at least one NAME=VALUE")
    return fields


def _who(res: dict[str, Any], fallback: str) -> str:
    name = res.get("peer_name") or res.get("name")
    return str(name) if isinstance(name, str) and name else fallback


def call_done(verb: str, res: Any, fallback: str) -> str:
    """The confirmation after ``call``/``answer``/``decline``/``hangup`` succeeded."""
    if not isinstance(res, dict):
        return f"{verb}: the daemon sent an odd answer"
    state = res.get("state")
    return f"{verb} {_who(res, fallback)}" + (f" (call {state})" if isinstance(state, str) else "")


def send_done(res: Any, fallback: str) -> str:
    """The confirmation after ``send``: delivered (with the round trip) or queued as mail."""
    if not isinstance(res, dict):
        return "sent: the daemon sent an odd answer"
    status = res.get("status")
    if status == "queued":
        return (f"{fallback} is out of reach: the message is queued as mail and carried by "
                "passing nodes (see Mail)")
    rtt = res.get("rtt_ms")
    rtt_s = f" in {rtt:.1f} ms" if isinstance(rtt, int | float) else ""
    return f"message {status or 'sent'} to {fallback}{rtt_s}"
