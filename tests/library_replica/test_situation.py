"""Situation files: per-field last-writer-wins, owner-only writes."""

from __future__ import annotations

import random

import pytest

from library_replica.ops import Refused, encode_body
from library_replica.situation import (
    KIND_SET,
    RecordKind,
    SituationBoard,
    authorize_situation,
    prepare_set,
    record_id,
)
from meshd.core.errors import LocalProtocolError
from tests.library_replica.factory import Author, hlc

T0 = 1_790_000_000_000


def test_owner_sets_and_reads_a_vehicle_record() -> None:
    car = Author()
    board = SituationBoard()
    doc_id, body = prepare_set(car.pub, "vehicle", {"seats": 3, "battery_offer_kwh": 12,
                                                    "outlets": ["AC100V"], "x-plate": "品川 300"})
    op = car.op(KIND_SET, doc_id, body, hlc(T0))
    authorize_situation(op, T0)
    assert board.apply(op)
    rec = board.get(car.pub, RecordKind.VEHICLE)
    assert rec is not None
    assert rec.fields == {"battery_offer_kwh": 12.0, "outlets": ("AC100V",), "seats": 3,
                          "x-plate": "品川 300"}


def test_non_owner_write_is_refused() -> None:
    owner, intruder = Author(), Author()
    doc_id, body = prepare_set(owner.pub, "person", {"safety": "safe"})
    forged = intruder.op(KIND_SET, doc_id, body, hlc(T0))  # intruder writes into owner's record
    with pytest.raises(Refused) as exc:
        authorize_situation(forged, T0)
    assert exc.value.reason == "not_owner"
    board = SituationBoard()
    assert not board.apply(forged)
    assert board.get(owner.pub, "person") is None and board.get(intruder.pub, "person") is None
    assert board.drops.counts["not_owner"] == 1


def test_per_field_lww_in_any_order() -> None:
    shelter = Author()
    doc_id = record_id(shelter.pub, "shelter")
    sets = [
        ({"capacity": 200, "occupancy": 10, "supplies": {"water_l": 500}}, 1),
        ({"occupancy": 80}, 2),
        ({"supplies": {"water_l": 120, "blankets": 40}, "needs": ["粉ミルク"]}, 3),
        ({"occupancy": 150, "needs": None}, 4),
        ({"open": True}, 5),
    ]
    ops = [shelter.op(KIND_SET, doc_id, prepare_set(shelter.pub, "shelter", f)[1], hlc(T0 + t))
           for f, t in sets]
    expected = {"capacity": 200, "occupancy": 150, "open": True,
                "supplies": {"water_l": 120, "blankets": 40}}
    rng = random.Random(1)
    for _ in range(50):
        order = ops[:]
        rng.shuffle(order)
        board = SituationBoard()
        for op in order:
            assert board.apply(op)
        rec = board.get(shelter.pub, "shelter")
        assert rec is not None and dict(rec.fields) == expected
        assert rec.updated_hlc == hlc(T0 + 5)


def test_malformed_and_mistyped_fields_are_refused() -> None:
    p = Author()
    doc_id = record_id(p.pub, "person")
    bad = [
        encode_body({"k": "person", "f": {"safety": "fine"}}),
        encode_body({"k": "person", "f": {"needs": "water"}}),
        encode_body({"k": "spaceship", "f": {"x": 1}}),
        encode_body({"k": "person", "f": {}}),
        encode_body({"k": "person", "f": {"Bad Name": 1}}),
        encode_body({"k": "person", "f": {"free": [1, 2]}}),
        b"\x92\x01",
    ]
    board = SituationBoard()
    for body in bad:
        op = p.op(KIND_SET, doc_id, body, hlc(T0))
        with pytest.raises(Refused):
            authorize_situation(op, T0)
        assert not board.apply(op)
    assert board.drops.total == len(bad)
    with pytest.raises(LocalProtocolError):
        prepare_set(p.pub, "vehicle", {"seats": -1})


def test_records_listing_by_kind_newest_first() -> None:
    a, b = Author(), Author()
    board = SituationBoard()
    for who, t in ((a, 1), (b, 2)):
        d, body = prepare_set(who.pub, "household", {"members": 3, "safety": "needs_help"})
        assert board.apply(who.op(KIND_SET, d, body, hlc(T0 + t)))
    d, body = prepare_set(a.pub, "vehicle", {"seats": 4})
    assert board.apply(a.op(KIND_SET, d, body, hlc(T0 + 3)))
    assert [r.owner for r in board.records("household")] == [b.pub, a.pub]
    assert len(list(board.records())) == 3
    assert {r.kind for r in board.of_owner(a.pub)} == {RecordKind.HOUSEHOLD, RecordKind.VEHICLE}


def test_typed_text_from_a_person_becomes_a_list_and_errors_say_what_is_expected() -> None:
    owner = Author()
    _, body = prepare_set(owner.pub, "person", {"needs": "water, blankets,", "safety": "safe"})
    op = owner.op(KIND_SET, record_id(owner.pub, "person"), body, hlc(1_790_000_000_000))
    board = SituationBoard()
    assert board.apply(op)
    [rec] = board.records()
    assert rec.fields["needs"] == ("water", "blankets")
    with pytest.raises(LocalProtocolError) as exc:
        prepare_set(owner.pub, "shelter", {"capacity": "lots"})
    assert "capacity: expected a whole number" in str(exc.value)
    with pytest.raises(LocalProtocolError) as exc:
        prepare_set(owner.pub, "person", {"safety": "fine"})
    assert "safe | needs_help" in str(exc.value)


def test_over_long_text_says_too_long_with_the_limit() -> None:
    """It used to say "expected text" for 501 characters of text (issue 11, item 13)."""
    owner = Author()
    prepare_set(owner.pub, "shelter", {"name": "x" * 500, "open": True})  # at the limit: fine
    cases = [("shelter", {"name": "x" * 501}, "name: too long (501 characters, max 500)"),
             ("shelter", {"color": "y" * 600}, "free field color: too long (600 characters, "
                                                "max 500)"),
             ("shelter", {"needs": ["z" * 101]}, "needs: an item is too long (max 100 characters)"),
             ("shelter", {"needs": ["w"] * 33}, "needs: too many items (33, max 32)")]
    for kind, fields, says in cases:
        with pytest.raises(LocalProtocolError) as exc:
            prepare_set(owner.pub, kind, fields)
        assert says in str(exc.value), str(exc.value)
    with pytest.raises(LocalProtocolError, match="name: expected text"):
        prepare_set(owner.pub, "shelter", {"name": 5})  # a wrong type still says what is expected
