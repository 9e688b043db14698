"""meshctl safety: the safety registry (安否確認): register people, add notes, search by name."""

from __future__ import annotations

import argparse
import unicodedata
from typing import Any

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _clock,
    _global_options,
    _positive_int,
    register,
)
from meshd.control.client import ControlClient

#: the statuses the daemon accepts (library_replica.safety.Status)
STATUSES = ("safe", "needs_help", "injured", "missing", "deceased", "unknown")


def _term(v: Any) -> str:
    """Mesh text made harmless for a terminal: control and format characters escaped."""
    s = "" if v is None else str(v)
    return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")
                   and ch != "\u200d" else ch for ch in s)


def _setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="register a person; prints the person id")
    add.add_argument("name", metavar="NAME")
    add.add_argument("--reading", default="", metavar="KANA",
                     help="the name's reading in hiragana or katakana")
    add.add_argument("--status", default="unknown", metavar="S",
                     help=" | ".join(STATUSES) + " (default unknown)")
    add.add_argument("--at", default="", metavar="PLACE", help="where the person is")
    add.add_argument("--note", default="", metavar="TEXT")
    add.add_argument("--contact", default="", metavar="TEXT")
    note = sub.add_parser("note", help="add a note (new status, place, text) to a person")
    note.add_argument("id", metavar="ID")
    note.add_argument("--status", required=True, metavar="S", help=" | ".join(STATUSES))
    note.add_argument("--at", default="", metavar="PLACE")
    note.add_argument("--note", default="", metavar="TEXT")
    fix = sub.add_parser("correct", help="correct a registration (its registrant, or the "
                                         "successor of a lost device that registered it)")
    fix.add_argument("id", metavar="ID")
    fix.add_argument("--name", default="", metavar="NAME")
    fix.add_argument("--reading", default="", metavar="KANA")
    fix.add_argument("--status", default="", metavar="S", help=" | ".join(STATUSES))
    fix.add_argument("--at", default="", metavar="PLACE")
    fix.add_argument("--note", default="", metavar="TEXT")
    fix.add_argument("--contact", default="", metavar="TEXT")
    search = sub.add_parser("search", help="find people by name or reading (kana, kanji, "
                                           "part of a name)")
    search.add_argument("text", metavar="TEXT")
    search.add_argument("--limit", type=_positive_int, default=20, metavar="N",
                        help="at most N people (1-200, default 20)")
    sub.add_parser("show", help="a person's record and every note").add_argument(
        "id", metavar="ID")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _summary_line(p: dict[str, Any]) -> str:
    reading = f" ({_term(p.get('reading'))})" if p.get("reading") else ""
    place = f" @ {_term(p.get('place'))}" if p.get("place") else ""
    return (f"{str(p.get('id', ''))[:12]}  {_term(p.get('name'))}{reading}  "
            f"{_term(p.get('status'))}{place}")


def _show_person(p: dict[str, Any], out: Output) -> None:
    out.line(_summary_line(p))
    if p.get("contact"):
        out.line(f"    contact: {_term(p.get('contact'))}")
    for n in p.get("notes") or []:
        who = _term(n.get("author_name") or str(n.get("author", ""))[:8])
        parts = [x for x in (
            _term(n.get("status")) if n.get("status") else "",
            f"@ {_term(n.get('place'))}" if n.get("place") else "",
            f"\"{_term(n.get('note'))}\"" if n.get("note") else "") if x]
        out.line(f"    [{_clock(n.get('time_ms'))}] {n.get('kind', 'note')} by {who}: "
                 + " ".join(parts))


@register("safety", "safety registry: register people, add notes, correct, search by name",
          _setup)
async def _safety(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    res: Any
    if args.action == "add":
        res = await client.call("safety.add", {
            "name": args.name, "reading": args.reading, "status": args.status,
            "place": args.at, "note": args.note, "contact": args.contact},
            timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            out.line(str(res.get("id", "")))
        return ExitCode.OK
    if args.action == "note":
        res = await client.call("safety.note", {"id": args.id, "status": args.status,
                                                "place": args.at, "note": args.note},
                                timeout=CALL_TIMEOUT_S)
    elif args.action == "correct":
        res = await client.call("safety.correct", {
            "id": args.id, "name": args.name, "reading": args.reading, "status": args.status,
            "place": args.at, "note": args.note, "contact": args.contact},
            timeout=CALL_TIMEOUT_S)
    elif args.action == "show":
        res = await client.call("safety.show", {"id": args.id}, timeout=CALL_TIMEOUT_S)
    else:
        res = await client.call("safety.search", {"query": args.text, "limit": args.limit},
                                timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
            return ExitCode.OK
        people = res.get("people") or []
        if not people:
            out.line("nobody found")
        for p in people:
            out.line(_summary_line(p))
            names = ", ".join(_term(a) for a in p.get("authors") or [])
            out.line(f"    {len(p.get('notes') or [])} entr(ies) by {names}, updated "
                     f"{_clock(p.get('updated_ms'))}")
        return ExitCode.OK
    if out.json:
        out.document(res)
    else:
        _show_person(res, out)
    return ExitCode.OK
