"""Bulletins as notices: updates, retractions and receipts, in any order."""

from __future__ import annotations

import itertools

from library_replica.bulletins import (
    KIND_PUBLISH,
    Authority,
    AuthorityRole,
    BulletinBoard,
    TrustConfig,
    TrustStore,
    prepare_bulletin,
)
from library_replica.notices import (
    KIND_RETRACT,
    KIND_SEEN,
    KIND_UPDATE,
    NoticeBoard,
    prepare_retract,
    prepare_seen,
    prepare_update,
)
from library_replica.ops import Refused, new_doc_id
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

NOW = 1_790_000_000_000
HOUR = 3600_000
DOC = new_doc_id(b"notice")


ROOT = Author()


def _world() -> tuple[Author, TrustStore]:
    city = Author()
    trust = TrustStore(TrustConfig(ROOT.pub, 1, {
        city.pub: Authority(city.pub, AuthorityRole.CITY, "City")}))
    return city, trust


def _publish(city: Author) -> Op:
    body = prepare_bulletin(city.sign, city.pub, DOC, title="給水", text="体育館で給水",
                            issued_ms=NOW, expires_ms=NOW + HOUR, root=ROOT.pub, trust_version=1)
    return city.op(KIND_PUBLISH, DOC, body, hlc(NOW), expiry_ms=NOW + HOUR)


def _update(city: Author, v: int, text: str, signer: Author | None = None) -> Op:
    body = prepare_update((signer or city).sign, city.pub, DOC, version=v, title="給水",
                          text=text, issued_ms=NOW + v, expires_ms=NOW + HOUR)
    return city.op(KIND_UPDATE, DOC, body, hlc(NOW + v), expiry_ms=NOW + HOUR)


def _retract(city: Author, v: int) -> Op:
    body = prepare_retract(city.sign, city.pub, DOC, version=v, issued_ms=NOW + v,
                           expires_ms=NOW + HOUR)
    return city.op(KIND_RETRACT, DOC, body, hlc(NOW + v), expiry_ms=NOW + HOUR)


def _shown(ops: list[Op], trust: TrustStore) -> list[tuple[str, int, int]]:
    board, notices = BulletinBoard(trust), NoticeBoard(trust)
    for op in ops:
        if op.kind == KIND_PUBLISH:
            assert board.apply(op, NOW)
        else:
            assert notices.apply(op, NOW)
    return [(n.bulletin.text, n.version, n.reached)
            for n in notices.show(board.active(NOW), NOW)]


def test_the_newest_version_shows_in_any_order_and_receipts_count_keys() -> None:
    city, trust = _world()
    a, b = Author(), Author()
    seen = [who.op(KIND_SEEN, DOC, prepare_seen(), hlc(NOW), expiry_ms=NOW + HOUR)
            for who in (a, b, a)]
    ops = [_publish(city), _update(city, 2, "午後は公民館"), _update(city, 3, "明日も公民館"),
           *seen]
    for order in itertools.permutations(ops[:3]):
        assert _shown([*order, *seen], trust) == [("明日も公民館", 3, 2)]


def test_a_retraction_hides_the_notice_everywhere_and_wins_a_tie() -> None:
    city, trust = _world()
    pub, upd, ret = _publish(city), _update(city, 2, "更新"), _retract(city, 3)
    for order in itertools.permutations([pub, upd, ret]):
        assert _shown(list(order), trust) == []
    # an older retraction than the newest update: the update shows
    assert _shown([pub, _retract(city, 2), _update(city, 3, "再開")], trust) == [("再開", 3, 0)]


def test_changes_by_another_key_or_forged_are_refused_or_never_shown() -> None:
    city, trust = _world()
    notices = NoticeBoard(trust)
    stranger = Author()
    forged = _update(city, 2, "偽物", signer=stranger)
    try:
        notices.authorize(forged, NOW)
    except Refused as exc:
        assert exc.reason == "signature"
    else:
        raise AssertionError("a forged update was accepted")
    # another authority's update of the city's notice is kept but never shown
    other = Author()
    trust2 = TrustStore(TrustConfig(ROOT.pub, 1, {
        city.pub: Authority(city.pub, AuthorityRole.CITY, "City"),
        other.pub: Authority(other.pub, AuthorityRole.DEALER, "Dealer")}))
    body = prepare_update(other.sign, other.pub, DOC, version=9, title="x", text="乗っ取り",
                          issued_ms=NOW, expires_ms=NOW + HOUR)
    hijack = other.op(KIND_UPDATE, DOC, body, hlc(NOW), expiry_ms=NOW + HOUR)
    assert _shown([_publish(city), hijack], trust2) == [("体育館で給水", 1, 0)]
    # a receipt with a body, or without an expiry, is refused
    bad = Author().op(KIND_SEEN, DOC, b"\x81\xa1a\x01", hlc(NOW), expiry_ms=NOW + HOUR)
    assert not notices.apply(bad, NOW)
