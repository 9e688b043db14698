"""meshctl situation and bulletin: the situation files and emergency bulletins."""

from __future__ import annotations

import argparse
import json
from typing import Any

from carmesh.meshctl.common import (
    CALL_TIMEOUT_S,
    ExitCode,
    Output,
    _clock,
    _duration,
    _global_options,
    _num,
    _positive_float,
    _str,
    _table,
    register,
    who,
)
from meshd.control.client import ControlClient


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
    summ = sub.add_parser("summary", help="shelters and town totals of needs, occupancy and "
                                          "supplies; vehicles with power beside shelters "
                                          "that need it")
    summ.add_argument("--stale", type=_positive_float, default=6 * 3600.0, metavar="S",
                      help="records older than S seconds are marked stale (default 6 h)")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)


def _show_records(records: list[Any], out: Output) -> None:
    if not records:
        out.line("no records")
    for r in records:
        owner = _str(r.get("name") or str(r.get("owner", ""))[:8])
        out.line(f"{_str(r.get('kind'))} of {owner} (updated {_clock(r.get('updated_ms'))})")
        for k, v in sorted((r.get("fields") or {}).items()):
            out.line(f"    {_str(k)}: {json.dumps(v, ensure_ascii=False)}")


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
    if args.action == "summary":
        res = await client.call("situation.summary", {"stale_s": args.stale},
                                timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            _show_summary(res, out)
        return ExitCode.OK
    if args.action == "show":
        res = await client.call("situation.show", {"node": args.node}, timeout=CALL_TIMEOUT_S)
        if not out.json:
            out.line(f"situation of {who(res.get('name'), res.get('node_id'), args.node)}")
    else:
        params = {"kind": args.kind} if args.kind else {}
        res = await client.call("situation.list", params, timeout=CALL_TIMEOUT_S)
    if out.json:
        out.document(res)
    else:
        _show_records(res.get("records") or [], out)
    return ExitCode.OK


def _show_summary(res: dict[str, Any], out: Output) -> None:
    shelters = res.get("shelters") or []
    rows = []
    for s in shelters:
        people = f"{_num(s.get('occupancy'))}/{_num(s.get('capacity'))}"
        rows.append([_str(s.get("name") or None), _str(s.get("place") or None), people,
                     _num(s.get("free")), _str(s.get("needs")),
                     _duration(s.get("age_s")) + " ago" + (" STALE" if s.get("stale") else "")])
    if rows:
        for line in _table(rows, ["SHELTER", "PLACE", "PEOPLE", "FREE", "NEEDS", "UPDATED"]):
            out.line(line)
    else:
        out.line("no shelter records")
    t = res.get("totals") or {}
    needs = ", ".join(f"{k} x{v}" for k, v in (t.get("needs") or {}).items()) or "none"
    supplies = ", ".join(f"{k} {v}" for k, v in (t.get("supplies") or {}).items()) or "none"
    out.line(f"town: {t.get('shelters', 0)} shelter(s) ({t.get('open', 0)} open, "
             f"{t.get('stale', 0)} stale), {t.get('occupancy', 0)}/{t.get('capacity', 0)} "
             f"people, {t.get('free', 0)} free")
    out.line(f"  needs (shelters): {needs}")
    out.line(f"  supplies: {supplies}")
    out.line(f"  power on offer: {t.get('vehicles_offering_power', 0)} vehicle(s), "
             f"{_num(t.get('power_offer_kwh'))} kWh")
    for s in shelters:
        if not s.get("needs_power"):
            continue
        offers = s.get("power_offers") or []
        out.line(f"power for {_str(s.get('name') or None)}:" + ("" if offers else " none offered"))
        for o in offers:
            dist = f"{_num(o.get('distance_km'), 2)} km" if o.get("distance_km") is not None \
                else "distance unknown"
            out.line(f"    {_str(o.get('name') or None)}  {_num(o.get('kwh'))} kWh  {dist}"
                     f"  {_str(o.get('outlets') or None)}" + ("  STALE" if o.get("stale") else ""))


def _bulletin_setup(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    pub = sub.add_parser("publish", help="publish a bulletin signed with this node's key "
                                         "(an authority in the trust configuration)")
    pub.add_argument("--title", required=True, metavar="T")
    pub.add_argument("--body", required=True, metavar="B")
    pub.add_argument("--expires", type=_positive_float, default=24 * 3600.0, metavar="S",
                     help="seconds until it expires (default one day, at most 30 days)")
    sub.add_parser("list", help="live bulletins, newest first")
    upd = sub.add_parser("update", help="replace a bulletin's text everywhere (same id, a "
                         "higher version; its publisher only)")
    upd.add_argument("id", metavar="ID", help="bulletin id or a unique prefix (4+ hex)")
    upd.add_argument("--title", metavar="T")
    upd.add_argument("--body", metavar="B")
    upd.add_argument("--expires", type=_positive_float, metavar="S",
                     help="seconds from now until it expires (default: unchanged)")
    sub.add_parser("retract", help="withdraw a bulletin everywhere (its publisher only)"
                   ).add_argument("id", metavar="ID")
    for sp in sub.choices.values():
        _global_options(sp, suppress=True)



def _show_bulletin(b: dict[str, Any], out: Output) -> None:
    a = b.get("authority") or {}
    version = b.get("version") or 1
    out.line(f"[{_clock(b.get('issued_ms'))}] {_str(b.get('title'))} -- "
             f"{_str(a.get('name') or None)} ({_str(a.get('role'))}), "
             f"expires {_clock(b.get('expires_ms'))}"
             + (f", version {version}" if version != 1 else "")
             + f", reached {_str(b.get('reached'))} node(s)  id {str(b.get('bulletin_id'))[:8]}")
    out.line("    " + str(b.get("body", "")).replace("\n", "\n    "))


@register("bulletin", "emergency bulletins from authority keys: publish, list, update, retract",
          _bulletin_setup)
async def _bulletin(client: ControlClient, args: argparse.Namespace, out: Output) -> int:
    if args.action == "update":
        params: dict[str, Any] = {"id": args.id}
        if args.title is not None:
            params["title"] = args.title
        if args.body is not None:
            params["body"] = args.body
        if args.title is None and args.body is None:
            return out.fail(ExitCode.USAGE, "bulletin update needs --title or --body")
        if args.expires is not None:
            params["expires_s"] = args.expires
        res = await client.call("bulletin.update", params, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            out.line(f"updated {str(res.get('bulletin_id'))[:12]} to version "
                     f"{_str(res.get('version'))}")
        return ExitCode.OK
    if args.action == "retract":
        res = await client.call("bulletin.retract", {"id": args.id}, timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            out.line(f"retracted {str(res.get('bulletin_id'))[:12]}")
        return ExitCode.OK
    if args.action == "publish":
        res = await client.call("bulletin.publish", {"title": args.title, "body": args.body,
                                                     "expires_s": args.expires},
                                timeout=CALL_TIMEOUT_S)
        if out.json:
            out.document(res)
        else:
            out.line(f"published {str(res.get('bulletin_id'))[:12]}")
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
