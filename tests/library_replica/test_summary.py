"""Needs across shelters: totals, stale records, power offers nearest first."""

from __future__ import annotations

from typing import Any

from library_replica.situation import KIND_SET, SituationBoard, prepare_set
from library_replica.summary import canonical_need, distance_km, town_summary
from tests.library_replica.factory import Author, hlc

T0 = 1_790_000_000_000
HOUR_MS = 3_600_000


def _set(board: SituationBoard, who: Author, kind: str, at_ms: int, **fields: Any) -> None:
    doc_id, body = prepare_set(who.pub, kind, fields)
    assert board.apply(who.op(KIND_SET, doc_id, body, hlc(at_ms)))


def test_distance_and_needs() -> None:
    # Tokyo station to Shinjuku station: about 6.2 km
    assert 6.0 < distance_km((35.6812, 139.7671), (35.6896, 139.7006)) < 6.4
    assert canonical_need(" Phone_Charging ") == canonical_need("phone charging") == \
        "phone-charging"


def test_town_summary_totals_stale_and_power_offers_nearest_first() -> None:
    gym, school, hall, near, far, nowhere, off = (Author() for _ in range(7))
    board = SituationBoard()
    now = T0 + 10 * HOUR_MS
    _set(board, gym, "shelter", now - 60_000, name="Gym", capacity=100, occupancy=80,
         needs=["water", "phone_charging"], supplies={"water": 40, "blankets": 10},
         open=True, lat=35.0, lon=139.0, location="1-2 Chuo")
    _set(board, school, "shelter", now - 120_000, name="School", capacity=50, occupancy=50,
         needs="water, food", supplies={"water": 5}, open=True)
    _set(board, hall, "shelter", now - 8 * HOUR_MS, name="Hall", capacity=30, occupancy=2,
         needs=["medical-power"], open=False)
    _set(board, near, "vehicle", now - 1000, battery_offer_kwh=5, outlets=["AC100V"],
         lat=35.001, lon=139.0, available=True)
    _set(board, far, "vehicle", now - 1000, battery_offer_kwh=40, lat=35.2, lon=139.0)
    _set(board, nowhere, "vehicle", now - 1000, battery_offer_kwh=12.5)
    _set(board, off, "vehicle", now - 1000, battery_offer_kwh=30, available=False)
    names = {near.pub: "car-near", far.pub: "car-far", nowhere.pub: "car-x"}
    res = town_summary(board.records(), now_ms=now, names=names, nodes={})
    by_name = {s["name"]: s for s in res["shelters"]}
    assert list(by_name) == ["Gym", "Hall", "School"]
    assert (by_name["Gym"]["free"], by_name["Gym"]["occupancy_pct"]) == (20, 80)
    assert by_name["Gym"]["needs"] == ["water", "phone-charging"]
    assert by_name["Hall"]["stale"] and not by_name["Gym"]["stale"]
    assert by_name["Hall"]["age_s"] == 8 * 3600
    t = res["totals"]
    assert (t["shelters"], t["open"], t["stale"], t["capacity"], t["occupancy"], t["free"]) == \
        (3, 2, 1, 180, 132, 48)
    assert t["needs"] == {"water": 2, "food": 1, "medical-power": 1, "phone-charging": 1}
    assert t["supplies"] == {"blankets": 10, "water": 45}
    assert (t["shelters_needing_power"], t["vehicles_offering_power"], t["power_offer_kwh"]) \
        == (2, 3, 57.5)
    # the gym (located) gets the near car, then the far one, then the one with no location
    gym_offers = by_name["Gym"]["power_offers"]
    assert [o["name"] for o in gym_offers] == ["car-near", "car-far", "car-x"]
    assert gym_offers[0]["distance_km"] == 0.11 and gym_offers[2]["distance_km"] is None
    # the hall has no location: biggest offers first; the school needs no power
    assert [o["name"] for o in by_name["Hall"]["power_offers"]] == ["car-far", "car-x",
                                                                     "car-near"]
    assert by_name["School"]["power_offers"] == [] and not by_name["School"]["needs_power"]
    # a shorter stale threshold marks more
    res = town_summary(board.records(), now_ms=now, names=names, nodes={}, stale_after_s=90)
    assert [s["stale"] for s in res["shelters"]] == [False, True, True]
