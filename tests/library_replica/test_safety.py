"""The safety registry: name folding, person records + notes merged, the name index."""

from __future__ import annotations

import itertools
import os
import random

import pytest

from library_replica.keycerts import KeyRegistry, KeyStatement, Rank
from library_replica.ops import LibraryError, Refused, encode_body
from library_replica.safety import (
    KIND_NOTE,
    KIND_PERSON,
    SafetyRegistry,
    authorize_safety,
    check_reading,
    fold,
    person_id,
    prepare_note,
    prepare_person,
)
from library_replica.safety_index import WINDOW, SafetyIndex, parse_name_query
from meshd.core.errors import LocalProtocolError
from tests.library_replica.factory import Author, hlc

T0 = 1_790_000_000_000


def _register(desk: Author, at: int, name: str, reading: str = "", **kw: str):  # type: ignore[no-untyped-def]
    pid, body = prepare_person(desk.pub, os.urandom(16), by="desk", name=name, reading=reading,
                               **kw)  # type: ignore[arg-type]
    return pid, desk.op(KIND_PERSON, pid, body, hlc(at))


# -- folding --------------------------------------------------------------------------------

def test_fold_makes_width_case_and_kana_agree() -> None:
    assert fold("タナカ ユキ") == fold("たなか　ゆき") == fold("ﾀﾅｶ ﾕｷ") == "たなかゆき"
    assert fold("ｶﾞｯｺｳ") == fold("ガッコウ") == "がっこう"  # half-width voiced marks compose
    assert fold("Ｓｕｚｕｋｉ Ken") == "suzukiken"
    assert fold("ヴィ・エー") == "ゔぃえー"
    assert fold("田中 由紀") == "田中由紀"


def test_check_reading_accepts_kana_only() -> None:
    assert check_reading(" ﾀﾅｶ ﾕｷ ") == "タナカ ユキ"
    assert check_reading("すずき けん") == "すずき けん"
    assert check_reading("") == ""
    for bad in ("田中", "tanaka", "たなか1", "たな\nか"):
        with pytest.raises(ValueError, match="kana"):
            check_reading(bad)


def test_prepare_refuses_bad_input() -> None:
    pub = Author().pub
    with pytest.raises(LocalProtocolError, match="name longer"):
        prepare_person(pub, os.urandom(16), by="d", name="x" * 10_000)
    with pytest.raises(LocalProtocolError, match="status is one of"):
        prepare_person(pub, os.urandom(16), by="d", name="田中", status="fine")
    with pytest.raises(LocalProtocolError, match="kana"):
        prepare_person(pub, os.urandom(16), by="d", name="田中", reading="tanaka")
    with pytest.raises(LocalProtocolError, match="empty"):
        prepare_person(pub, os.urandom(16), by="d", name="   ")
    with pytest.raises(LocalProtocolError, match="control"):
        prepare_person(pub, os.urandom(16), by="d", name="田中\x1b[2J")
    with pytest.raises(LocalProtocolError, match="needs a status"):
        prepare_note(by="d")
    # and valid input still passes
    pid, _ = prepare_person(pub, b"n" * 16, by="d", name="田中 由紀", reading="たなか ゆき",
                            status="safe")
    assert pid == person_id(pub, b"n" * 16)


# -- merge ----------------------------------------------------------------------------------

def test_notes_from_others_add_to_the_record_in_any_order() -> None:
    desk, hospital, relative = Author(), Author(), Author()
    pid, reg = _register(desk, T0, "田中 由紀", "たなか ゆき", status="safe", place="第一小学校")
    n1 = hospital.op(KIND_NOTE, pid, prepare_note(by="hospital", status="injured",
                                                  place="市民病院", note="moved to the hospital"),
                     hlc(T0 + 1000))
    n2 = relative.op(KIND_NOTE, pid, prepare_note(by="kin", note="家族が確認しました"),
                     hlc(T0 + 2000))
    views = []
    for order in itertools.permutations([reg, n1, n2]):
        reg_ = SafetyRegistry()
        for op in order:
            authorize_safety(op, T0)
            assert reg_.apply(op)
        view = reg_.get(pid)
        assert view is not None
        views.append(view)
    assert all(v == views[0] for v in views)
    v = views[0]
    # newest status and place win; a later note without a status leaves them
    assert (v.name, v.reading, v.status, v.place) == ("田中 由紀", "たなか ゆき", "injured",
                                                      "市民病院")
    assert [(e.kind, e.author_name) for e in v.entries] == [
        ("registered", "desk"), ("note", "hospital"), ("note", "kin")]
    assert v.registrant == desk.pub


def test_a_note_before_its_record_waits_and_a_record_only_its_registrant_writes() -> None:
    desk, other = Author(), Author()
    nonce = b"x" * 16
    pid, body = prepare_person(desk.pub, nonce, by="desk", name="鈴木 健")
    reg = SafetyRegistry()
    note = other.op(KIND_NOTE, pid, prepare_note(by="o", status="missing"), hlc(T0 + 5))
    assert reg.apply(note) and reg.get(pid) is None
    assert reg.apply(desk.op(KIND_PERSON, pid, body, hlc(T0)))
    view = reg.get(pid)
    assert view is not None and view.status == "missing"
    # another key cannot write the record itself (its id binds the registrant's key)
    forged = other.op(KIND_PERSON, pid, prepare_person(desk.pub, nonce, by="x",
                                                       name="偽物")[1], hlc(T0 + 9))
    with pytest.raises(Refused, match="registrant"):
        authorize_safety(forged, T0)
    assert not reg.apply(forged)
    assert reg.get(pid).name == "鈴木 健"  # type: ignore[union-attr]
    # a second registration op by the registrant corrects the record (last writer wins)
    assert reg.apply(desk.op(KIND_PERSON, pid, prepare_person(desk.pub, nonce, by="desk",
                                                              name="鈴木 健一")[1],
                             hlc(T0 + 10)))
    assert reg.get(pid).name == "鈴木 健一"  # type: ignore[union-attr]


def test_a_successor_corrects_its_predecessors_registration() -> None:
    """A lost phone (OLD) registered a person; the owner's new device (NEW), named its
    successor by a key statement, corrects the record; a stranger naming OLD cannot."""
    old, new, stranger = Author(), Author(), Author()
    keys = KeyRegistry()
    reg = SafetyRegistry(keys.continues)
    nonce = b"n" * 16
    pid, body = prepare_person(old.pub, nonce, by="phone", name="佐藤 花", status="safe",
                               place="体育館")
    assert reg.apply(old.op(KIND_PERSON, pid, body, hlc(T0)))
    reg.drain_changed()
    note = stranger.op(KIND_NOTE, pid, prepare_note(by="desk", status="injured"), hlc(T0 + 1))
    assert reg.apply(note)
    # the correction names the registrant: its id checks without a lookup
    cpid, cbody = prepare_person(new.pub, nonce, by="new phone", name="佐藤 花子",
                                 reading="さとう はなこ", status="injured", place="病院",
                                 registrant=old.pub)
    assert cpid == pid
    fix = new.op(KIND_PERSON, pid, cbody, hlc(T0 + 2))
    authorize_safety(fix, T0)
    forged = stranger.op(KIND_PERSON, pid, prepare_person(
        stranger.pub, nonce, by="x", name="偽物", registrant=old.pub)[1], hlc(T0 + 3))
    assert reg.apply(fix) and reg.apply(forged)
    # no statement yet: neither counts (the record is OLD's)
    v = reg.get(pid)
    assert v is not None and v.name == "佐藤 花" and v.registrant == old.pub
    assert [e.kind for e in v.entries] == ["registered", "note"]
    # the statement arrives after the correction: read again, NEW's correction counts
    keys.add_statement(KeyStatement(old.pub, old.pub, new.pub, T0), Rank.SELF)
    assert reg.successors_changed() == 1 and reg.drain_changed() == {pid}
    v = reg.get(pid)
    assert v is not None and (v.name, v.reading, v.status, v.place) == (
        "佐藤 花子", "さとう はなこ", "injured", "病院")
    assert v.registrant == old.pub and v.registered.author == old.pub
    assert [(e.kind, e.author) for e in v.entries] == [
        ("registered", old.pub), ("note", stranger.pub), ("corrected", new.pub)]
    # OLD cannot correct for NEW (the chain runs one way), NEW is not its own predecessor
    assert not keys.continues(old.pub, new.pub) and not keys.continues(new.pub, new.pub)
    # a contested successor (a thief signs another with the stolen key): nobody corrects
    keys.add_statement(KeyStatement(old.pub, old.pub, stranger.pub, T0), Rank.SELF)
    v = reg.get(pid)
    assert v is not None and v.name == "佐藤 花" and len(v.entries) == 2
    # the dealer names NEW: it wins over self-signed statements
    keys.add_statement(KeyStatement(old.pub, Author().pub, new.pub, T0), Rank.DEALER)
    assert reg.get(pid).name == "佐藤 花子"  # type: ignore[union-attr]
    # a successor's successor corrects too (the chain of devices), and a correction seen
    # before the registration shows the record
    newer = Author()
    keys.add_statement(KeyStatement(new.pub, new.pub, newer.pub, T0), Rank.SELF)
    assert keys.continues(newer.pub, old.pub)
    nonce2 = b"m" * 16
    pid2, b2 = prepare_person(newer.pub, nonce2, by="n", name="伊藤", registrant=old.pub)
    reg2 = SafetyRegistry(keys.continues)
    assert reg2.apply(newer.op(KIND_PERSON, pid2, b2, hlc(T0)))
    assert reg2.ids() == [pid2] and reg2.get(pid2).registrant == old.pub  # type: ignore[union-attr]
    # without a key registry no correction counts
    reg3 = SafetyRegistry()
    reg3.apply(newer.op(KIND_PERSON, pid2, b2, hlc(T0 + 1)))
    assert reg3.ids() == [] and reg3.get(pid2) is None


def test_a_correction_naming_a_registrant_is_checked_like_a_registration() -> None:
    old, new = Author(), Author()
    nonce = b"k" * 16
    pid, body = prepare_person(new.pub, nonce, by="n", name="x", registrant=old.pub)
    # the id binds the named registrant: another document is refused
    with pytest.raises(Refused, match="registrant"):
        authorize_safety(new.op(KIND_PERSON, person_id(new.pub, nonce), body, hlc(T0)), T0)
    # naming oneself is malformed; a short key too
    with pytest.raises(LocalProtocolError):
        prepare_person(new.pub, nonce, by="n", name="x", registrant=new.pub)
    with pytest.raises(LocalProtocolError):
        prepare_person(new.pub, nonce, by="n", name="x", registrant=b"k" * 31)
    selfref = encode_body({"b": "n", "i": nonce, "n": "x", "r": "", "c": "", "o": new.pub})
    with pytest.raises(Refused, match="author itself"):
        authorize_safety(new.op(KIND_PERSON, person_id(new.pub, nonce), selfref, hlc(T0)), T0)
    short = encode_body({"b": "n", "i": nonce, "n": "x", "r": "", "c": "", "o": b"o" * 31})
    with pytest.raises(Refused):
        authorize_safety(new.op(KIND_PERSON, pid, short, hlc(T0)), T0)


@pytest.mark.parametrize("body", [
    {"b": "d", "s": "fine"},
    {"b": "d", "s": 3},
    {"b": "d"},
    {"b": "d" * 300, "s": "safe"},
    {"s": "safe"},
    {"b": "d", "t": "x" * 1001},
])
def test_malformed_notes_are_refused_and_counted(body: dict[str, object]) -> None:
    a = Author()
    op = a.op(KIND_NOTE, b"p" * 16, encode_body(body), hlc(T0))
    with pytest.raises(Refused):
        authorize_safety(op, T0)
    reg = SafetyRegistry()
    assert not reg.apply(op)
    assert sum(reg.drops.counts.values()) == 1


def test_malformed_person_bodies_are_refused() -> None:
    a = Author()
    nonce = b"n" * 16
    pid = person_id(a.pub, nonce)
    for body in ({"b": "d", "i": nonce, "n": "x" * 101, "r": "", "c": ""},
                 {"b": "d", "i": nonce, "n": "田中", "r": "tanaka", "c": ""},
                 {"b": "d", "i": b"short", "n": "田中", "r": "", "c": ""},
                 {"b": "d", "i": nonce, "n": "", "r": "", "c": ""}):
        with pytest.raises(Refused):
            authorize_safety(a.op(KIND_PERSON, pid, encode_body(body), hlc(T0)), T0)
    ok = {"b": "d", "i": nonce, "n": "田中", "r": "たなか", "c": ""}
    authorize_safety(a.op(KIND_PERSON, pid, encode_body(ok), hlc(T0)), T0)


# -- the index --------------------------------------------------------------------------------

@pytest.fixture
def people() -> tuple[SafetyRegistry, SafetyIndex, dict[str, bytes]]:
    desk = Author()
    reg = SafetyRegistry()
    ids: dict[str, bytes] = {}
    for i, (name, reading) in enumerate([("田中 由紀", "たなか ゆき"), ("田中 健", "タナカ ケン"),
                                          ("中田 由美", "なかた ゆみ"), ("Ken Suzuki", ""),
                                          ("佐藤 花子", "ｻﾄｳ ﾊﾅｺ"), ("O'Brien Sean", "")]):
        pid, op = _register(desk, T0 + i, name, reading)
        assert reg.apply(op)
        ids[name] = pid
    index = SafetyIndex()
    assert index.upsert_many(reg.people()) == 6
    assert index.upsert_many(reg.people()) == 0  # unchanged people are skipped
    return reg, index, ids


def _names(reg: SafetyRegistry, index: SafetyIndex, q: str) -> list[str]:
    return [reg.get(p).name for p in index.search(q)]  # type: ignore[union-attr]


def test_search_by_kanji_kana_partial_and_width(
        people: tuple[SafetyRegistry, SafetyIndex, dict[str, bytes]]) -> None:
    reg, index, _ = people
    # kanji surname (two characters: the n-gram table); exact-prefix names first
    got = _names(reg, index, "田中")
    assert set(got) == {"田中 由紀", "田中 健"}  # 中田 does not contain 田中
    # reading in katakana, hiragana, half-width katakana: all the same
    for q in ("タナカ", "たなか", "ﾀﾅｶ"):
        assert set(_names(reg, index, q)) == {"田中 由紀", "田中 健"}, q
    # the full name with or without a space, and the reading of one
    assert _names(reg, index, "田中由紀") == ["田中 由紀"]
    assert _names(reg, index, "田中 由紀") == ["田中 由紀"]
    assert _names(reg, index, "タナカ ユキ") == ["田中 由紀"]
    # a partial given name: one kanji (unigram) and two kana (bigram)
    assert set(_names(reg, index, "由")) == {"田中 由紀", "中田 由美"}
    assert _names(reg, index, "ゆき") == ["田中 由紀"]
    assert _names(reg, index, "ハナ") == ["佐藤 花子"]  # registered in half-width kana
    # Latin: case and full width; non-letters go through the trigram table
    assert _names(reg, index, "ＳＵＺＵＫＩ") == ["Ken Suzuki"]
    assert _names(reg, index, "suzu ke") == ["Ken Suzuki"]
    assert _names(reg, index, "o'brien") == ["O'Brien Sean"]
    assert _names(reg, index, "o'brien se") == ["O'Brien Sean"]
    assert _names(reg, index, "山本") == []
    with pytest.raises(LibraryError):
        index.search("   ")
    with pytest.raises(LibraryError):
        index.search("x" * 201)


def test_exact_names_rank_before_partial_matches() -> None:
    desk = Author()
    reg, index = SafetyRegistry(), SafetyIndex()
    for i, name in enumerate(["田中 健太郎", "田中 健", "山田中 健"]):
        _, op = _register(desk, T0 + i, name)
        reg.apply(op)
    index.upsert_many(reg.people())
    assert _names(reg, index, "田中 健") == ["田中 健", "田中 健太郎", "山田中 健"]


def test_a_corrected_name_is_reindexed() -> None:
    desk = Author()
    nonce = b"c" * 16
    reg, index = SafetyRegistry(), SafetyIndex()
    pid, body = prepare_person(desk.pub, nonce, by="d", name="高橋 一郎")
    reg.apply(desk.op(KIND_PERSON, pid, body, hlc(T0)))
    index.upsert_many(reg.people())
    reg.apply(desk.op(KIND_PERSON, pid, prepare_person(desk.pub, nonce, by="d",
                                                       name="高橋 次郎")[1], hlc(T0 + 1)))
    index.upsert_many(reg.get(p) for p in reg.drain_changed())  # type: ignore[misc]
    assert index.search("一郎") == [] and index.search("次郎") == [pid]
    assert len(index) == 1


def test_a_common_surname_is_answered_from_a_window_of_the_newest() -> None:
    rng = random.Random(3)
    desk = Author()
    reg, index = SafetyRegistry(), SafetyIndex()
    for i in range(WINDOW + 300):
        given = "".join(rng.choice("一二三四五六七八九") for _ in range(2))
        _, op = _register(desk, T0 + i, f"佐藤 {given}", "さとう")
        reg.apply(op)
    index.upsert_many(reg.people())
    hits = index.search("さとう", limit=200)
    assert len(hits) == 200
    assert len(set(hits)) == 200


def test_parse_name_query_folds_and_splits() -> None:
    q = parse_name_query("ﾀﾅｶ　由紀 ' ")
    assert q.long_words == ("たなか",) and q.short_words == ("由紀",)
