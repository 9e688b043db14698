"""Tier 3: the safety registry and the town summary in real daemons on loopback.

Four daemons in a line ann -- bob -- cy -- dan (static peers; sync carries ops
neighbour to neighbour).  ann is a shelter desk; cy, two hops away, searches
and adds a note; shelters at ann, bob and cy publish needs; dan, a car, offers
battery power and totals the town.  Names are not hex: NODE resolves an id prefix first.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemons import (
    MESHCTL,
    Cluster,
    free_udp_port,
    meshctl_ok,
    meshctl_until,
    wait_until,
)

pytestmark = pytest.mark.slow

NAMES = ("ann", "bob", "cy", "dan")


_ok = meshctl_ok


_eventually = functools.partial(meshctl_until, timeout=40)


def _found(res: dict[str, Any]) -> list[str]:
    return sorted(p["name"] for p in res["people"])


@pytest.fixture(scope="module")
def line() -> Iterator[Cluster]:
    ports = {n: free_udp_port() for n in NAMES}
    with Cluster(log_level="info") as cl:
        for i, n in enumerate(NAMES):
            peers = ["--peer", f"127.0.0.1:{ports[NAMES[i - 1]]}"] if i else []
            cl.add(n, ["--listen", f"127.0.0.1:{ports[n]}", *peers])
        for d in cl:
            d.wait_ready()
        wait_until(lambda: {"ann", "cy"} <= set(cl["bob"].neighbours())
                   and "dan" in cl["cy"].neighbours(), 30, what="ann -- bob -- cy -- dan")
        yield cl


def test_desk_registers_evacuees_found_two_hops_away_and_a_note_comes_back(
        line: Cluster) -> None:
    ann, cy = line["ann"], line["cy"]
    ids = {}
    for name, reading, status in (("田中 由紀", "たなか ゆき", "safe"),
                                  ("鈴木 健", "スズキ ケン", "needs_help"),
                                  ("佐藤 花子", "ｻﾄｳ ﾊﾅｺ", "safe")):
        res = _ok(ann, "safety", "add", name, "--reading", reading, "--status", status,
                  "--at", "第一小学校 体育館", "--note", "受付で登録")
        assert res["name"] == name and res["status"] == status and len(res["id"]) == 32
        assert res["registered_by"]["name"] == "ann"
        ids[name] = res["id"]
    # at cy, two hops away: the kanji surname, a katakana and a hiragana reading
    got = _eventually(cy, lambda r: r if _found(r) == ["田中 由紀"] else None,
                      "safety", "search", "田中", what="cy finds 田中 by kanji surname")
    assert got["people"][0]["reading"] == "たなか ゆき"
    assert got["people"][0]["place"] == "第一小学校 体育館"
    assert _found(_ok(cy, "safety", "search", "スズキ")) == ["鈴木 健"]  # as registered
    assert _found(_ok(cy, "safety", "search", "すずき")) == ["鈴木 健"]  # hiragana for katakana
    assert _found(_ok(cy, "safety", "search", "さとう")) == ["佐藤 花子"]  # registered half-width
    assert _found(_ok(cy, "safety", "search", "サトウ")) == ["佐藤 花子"]
    # part of a given name, in kanji and in kana
    _eventually(cy, lambda r: r if _found(r) == ["佐藤 花子"] else None,
                "safety", "search", "花", what="cy finds 花子 by one kanji")
    assert _found(_ok(cy, "safety", "search", "ゆき")) == ["田中 由紀"]
    assert _found(_ok(cy, "safety", "search", "ケン")) == ["鈴木 健"]
    # without --json: one line per person
    r = subprocess.run([*MESHCTL, "--state-dir", str(cy.state_dir), "safety", "search", "たなか"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and "田中 由紀 (たなか ゆき)  safe @ 第一小学校 体育館" in r.stdout, r

    # a note at cy shows at ann, with both authors named and the newest status first
    pid = ids["田中 由紀"]
    noted = _ok(cy, "safety", "note", pid[:10], "--status", "injured", "--at", "市民病院",
                "--note", "moved to the hospital")
    assert noted["status"] == "injured" and noted["authors"] == ["ann", "cy"]
    shown = _eventually(ann, lambda r: r if len(r["notes"]) == 2 else None,
                        "safety", "show", pid, what="ann sees cy's note")
    assert (shown["status"], shown["place"]) == ("injured", "市民病院")
    assert shown["authors"] == ["ann", "cy"]
    assert [(n["kind"], n["author_name"], n["status"], n["note"]) for n in shown["notes"]] == [
        ("registered", "ann", "safe", "受付で登録"),
        ("note", "cy", "injured", "moved to the hospital")]
    r = subprocess.run([*MESHCTL, "--state-dir", str(ann.state_dir), "safety", "show", pid],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0 and "note by cy: injured @ 市民病院 \"moved to the hospital\"" \
        in r.stdout, r.stdout


def test_bad_input_exits_2_and_changes_nothing(line: Cluster) -> None:
    ann = line["ann"]
    pid = _ok(ann, "safety", "add", "山本 一郎", "--reading", "やまもと いちろう")["id"]
    before = _ok(ann, "safety", "show", pid)
    cases = [
        (("safety", "add", "山" * 10_000), "longer than"),
        (("safety", "add", "不明 太郎", "--status", "fine"), "status is one of"),
        (("safety", "add", "読み 間違", "--reading", "yomi"), "kana"),
        (("safety", "note", "0123456789abcdef0123456789abcdef", "--status", "safe"),
         "no person"),
        (("safety", "note", "zz", "--status", "safe"), "ID is"),
        (("safety", "note", pid, "--status", "gone"), "status is one of"),
        (("safety", "show", "ffff0000"), "no person"),
        (("safety", "search", "x" * 300), "query"),
    ]
    for args, message in cases:
        rc, err = ann.meshctl(*args)
        assert rc == 2, (args, rc, err)
        assert message in err["error"]["message"], (args, err)
    rc, _ = ann.meshctl("safety", "note", pid)  # --status is required
    assert rc == 2
    for q in ("山山山", "太郎", "間違"):
        assert _ok(ann, "safety", "search", q)["people"] == [], q
    assert _ok(ann, "safety", "show", pid) == before


def test_three_shelters_totalled_at_a_fourth_node_with_power_beside_the_shelter(
        line: Cluster) -> None:
    ann, bob, cy, dan = (line[n] for n in NAMES)
    _ok(ann, "situation", "set", "shelter", "--field", "name=第一小学校", "--field",
        "capacity=120", "--field", "occupancy=95", "--field", "needs=water,blankets",
        "--field", 'supplies={"water": 40}', "--field", "open=true",
        "--field", "lat=35.6581", "--field", "lon=139.7017")
    _ok(bob, "situation", "set", "shelter", "--field", "name=公民館", "--field", "capacity=60",
        "--field", "occupancy=60", "--field", "needs=water,food", "--field",
        'supplies={"water": 10, "food": 25}', "--field", "open=true")
    _ok(cy, "situation", "set", "shelter", "--field", "name=市民病院別館", "--field",
        "capacity=30", "--field", "occupancy=12", "--field", "needs=medical-power,phone_charging",
        "--field", "open=true", "--field", "location=市民病院", "--field", "lat=35.6600",
        "--field", "lon=139.7000")
    _ok(dan, "situation", "set", "vehicle", "--field", "battery_offer_kwh=12.5", "--field",
        "outlets=AC100V,USB", "--field", "available=true", "--field", "lat=35.6610",
        "--field", "lon=139.7005")
    summary = _eventually(dan, lambda r: r if r["totals"]["shelters"] == 3 else None,
                          "situation", "summary", what="dan sees three shelters")
    t = summary["totals"]
    assert (t["capacity"], t["occupancy"], t["free"], t["open"], t["stale"]) == \
        (210, 167, 43, 3, 0)
    assert t["needs"] == {"water": 2, "blankets": 1, "food": 1, "medical-power": 1,
                          "phone-charging": 1}
    assert t["supplies"] == {"food": 25, "water": 50}
    assert (t["shelters_needing_power"], t["vehicles_offering_power"]) == (1, 1)
    by_name = {s["name"]: s for s in summary["shelters"]}
    assert by_name["公民館"]["free"] == 0 and by_name["第一小学校"]["occupancy_pct"] == 79
    hospital = by_name["市民病院別館"]
    assert hospital["needs_power"] and hospital["place"] == "市民病院"
    [offer] = hospital["power_offers"]
    assert offer["name"] == "dan" and offer["kwh"] == 12.5 and offer["outlets"] == ["AC100V",
                                                                                     "USB"]
    assert 0.1 < offer["distance_km"] < 0.2
    assert by_name["第一小学校"]["power_offers"] == []
    # the car's offer reaches the far end of the line too, beside the shelter that needs it
    far = _eventually(ann, lambda r: r if r["totals"]["vehicles_offering_power"] == 1 and
                      r["totals"]["shelters"] == 3 else None, "situation", "summary",
                      what="ann sees dan's power offer")
    hosp = next(s for s in far["shelters"] if s["name"] == "市民病院別館")
    assert [o["name"] for o in hosp["power_offers"]] == ["dan"]
    r = subprocess.run([*MESHCTL, "--state-dir", str(dan.state_dir), "situation", "summary"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert "town: 3 shelter(s) (3 open, 0 stale), 167/210 people, 43 free" in r.stdout
    assert "power for 市民病院別館:" in r.stdout and "12.5 kWh" in r.stdout
    rc, _ = dan.meshctl("situation", "summary", "--stale", "0")
    assert rc == 2


def test_a_restart_replays_the_registry_and_keeps_its_index(line: Cluster) -> None:
    cy = line["cy"]
    before = _ok(cy, "safety", "search", "田中")
    assert _found(before) == ["田中 由紀"] and before["people"][0]["status"] == "injured"
    cy.stop()
    cy.start()
    cy.wait_ready()  # status answers at once; safety methods wait for the replay
    assert _ok(cy, "safety", "search", "田中") == before
    assert _found(_ok(cy, "safety", "search", "ｽｽﾞｷ")) == ["鈴木 健"]
    assert "safety registry replayed" in cy.log()
