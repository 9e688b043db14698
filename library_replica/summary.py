"""Needs across shelters: the town's totals and who can lend power to whom.

Theory of operation
-------------------
``town_summary`` reads the materialised situation records (``SituationBoard``)
and answers what a coordinator asks first: per shelter, occupancy against
capacity, needs and supplies, and how old the record is (a record not updated
for ``stale_after_s`` is marked stale: its numbers may be wrong); town totals
(how many shelters need each thing, supplies summed, beds free); and, beside
each shelter that needs power (``phone-charging``, ``power``,
``medical-power``), the vehicles offering battery power (``battery_offer_kwh``
> 0 and not ``available=false``), nearest first when both records carry
``lat``/``lon`` (free fields, degrees), then the largest offers.

Needs are compared in a canonical form (lower case, ``_`` and spaces as
``-``).  Pure: the wall clock comes in as ``now_ms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from library_replica.situation import RecordKind, SituationRecord

__all__ = ["DEFAULT_STALE_S", "POWER_NEEDS", "canonical_need", "distance_km", "town_summary"]

#: a record not updated for this long is marked stale
DEFAULT_STALE_S = 6 * 3600
#: needs that a vehicle's battery can answer
POWER_NEEDS = frozenset({"phone-charging", "power", "medical-power", "charging", "充電",
                         "電源", "電力"})
_EARTH_KM = 6371.0088


def canonical_need(need: str) -> str:
    """``Phone_Charging`` and ``phone charging`` are ``phone-charging``."""
    return "-".join(need.strip().lower().replace("_", " ").split())


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (lat, lon) points in degrees (haversine)."""
    la1, lo1, la2, lo2 = map(math.radians, (*a, *b))
    h = math.sin((la2 - la1) / 2) ** 2 + math.cos(la1) * math.cos(la2) * \
        math.sin((lo2 - lo1) / 2) ** 2
    return 2 * _EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def _coords(fields: Mapping[str, Any]) -> tuple[float, float] | None:
    lat, lon = fields.get("lat"), fields.get("lon")
    if isinstance(lat, bool) or isinstance(lon, bool) or not isinstance(lat, int | float) or \
            not isinstance(lon, int | float):
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return (float(lat), float(lon))


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


def _place(fields: Mapping[str, Any]) -> str:
    for key in ("location", "place"):
        v = fields.get(key)
        if isinstance(v, str) and v:
            return v
    return ""


def town_summary(records: Iterable[SituationRecord], *, now_ms: int,
                 names: Mapping[bytes, str], nodes: Mapping[bytes, str],
                 stale_after_s: float = DEFAULT_STALE_S) -> dict[str, Any]:
    """The ``situation summary --json`` document (docs/cli.md) for ``records``."""
    stale_ms = stale_after_s * 1000

    def base(r: SituationRecord) -> dict[str, Any]:
        updated = r.updated_hlc >> 16
        coords = _coords(r.fields)
        name = r.fields.get("name")
        return {"owner": r.owner.hex(), "node_id": nodes.get(r.owner, ""),
                "node_name": names.get(r.owner, ""),
                "name": name if isinstance(name, str) and name else names.get(r.owner, ""),
                "place": _place(r.fields), "lat": coords[0] if coords else None,
                "lon": coords[1] if coords else None, "updated_ms": updated,
                "age_s": max(0, (now_ms - updated) // 1000),
                "stale": now_ms - updated > stale_ms}

    shelters: list[dict[str, Any]] = []
    vehicles: list[dict[str, Any]] = []
    for r in records:
        f = r.fields
        if r.kind == RecordKind.SHELTER:
            cap, occ = _int(f.get("capacity")), _int(f.get("occupancy"))
            needs = list(dict.fromkeys(canonical_need(n) for n in f.get("needs", ())))
            supplies = dict(f.get("supplies") or {})
            shelters.append({
                **base(r), "open": f.get("open") if isinstance(f.get("open"), bool) else None,
                "capacity": cap, "occupancy": occ,
                "free": cap - occ if cap is not None and occ is not None else None,
                "occupancy_pct": round(100 * occ / cap) if cap and occ is not None else None,
                "needs": needs, "supplies": supplies,
                "needs_power": any(n in POWER_NEEDS for n in needs), "power_offers": []})
        elif r.kind == RecordKind.VEHICLE:
            kwh = f.get("battery_offer_kwh")
            if not isinstance(kwh, int | float) or kwh <= 0 or f.get("available") is False:
                continue
            soc = f.get("battery_soc_pct")
            vehicles.append({**base(r), "kwh": float(kwh),
                             "soc_pct": soc if isinstance(soc, int | float) else None,
                             "outlets": list(f.get("outlets", ()))})
    shelters.sort(key=lambda s: (str(s["name"]), s["owner"]))
    vehicles.sort(key=lambda v: (-v["kwh"], v["owner"]))
    for s in shelters:
        if not s["needs_power"]:
            continue
        here = (s["lat"], s["lon"]) if s["lat"] is not None else None
        offers = []
        for v in vehicles:
            there = (v["lat"], v["lon"]) if v["lat"] is not None else None
            d = round(distance_km(here, there), 2) if here and there else None
            offers.append({"owner": v["owner"], "node_id": v["node_id"], "name": v["name"],
                           "kwh": v["kwh"], "soc_pct": v["soc_pct"], "outlets": v["outlets"],
                           "place": v["place"], "distance_km": d, "stale": v["stale"]})
        offers.sort(key=lambda o: (o["distance_km"] is None, o["distance_km"] or 0.0,
                                   -o["kwh"], o["owner"]))
        s["power_offers"] = offers
    need_counts: dict[str, int] = {}
    supply_totals: dict[str, int] = {}
    for s in shelters:
        for n in s["needs"]:
            need_counts[n] = need_counts.get(n, 0) + 1
        for item, count in s["supplies"].items():
            supply_totals[item] = supply_totals.get(item, 0) + count
    caps = [s["capacity"] for s in shelters if s["capacity"] is not None]
    occs = [s["occupancy"] for s in shelters if s["occupancy"] is not None]
    totals = {
        "shelters": len(shelters), "open": sum(1 for s in shelters if s["open"] is True),
        "stale": sum(1 for s in shelters if s["stale"]),
        "capacity": sum(caps), "occupancy": sum(occs),
        "free": sum(s["free"] for s in shelters if s["free"] is not None),
        "needs": dict(sorted(need_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "supplies": dict(sorted(supply_totals.items())),
        "shelters_needing_power": sum(1 for s in shelters if s["needs_power"]),
        "vehicles_offering_power": len(vehicles),
        "power_offer_kwh": round(sum(v["kwh"] for v in vehicles), 3),
    }
    return {"generated_ms": now_ms, "stale_after_s": stale_after_s, "shelters": shelters,
            "vehicles": vehicles, "totals": totals}
