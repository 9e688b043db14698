"""Dealers' member certificates and key statements (revocation, successor), pure core:
forged ones refused, who may revoke whom, successors ranked and contested, records read
across a chain of devices."""

from __future__ import annotations

import pytest

from library_replica.bulletins import (
    KIND_TRUST_UPDATE,
    Authority,
    AuthorityRole,
    TrustStore,
    TrustVerdict,
    fingerprint,
    prepare_trust_update,
)
from library_replica.keycerts import (
    KIND_MEMBER,
    KIND_REVOKE,
    MAX_PER_SUBJECT,
    KeyRegistry,
    KeyStatement,
    Rank,
    member_doc_id,
    prepare_key_statement,
    prepare_member_certificate,
    statement_doc_id,
)
from library_replica.ops import Refused, encode_body
from library_replica.situation import KIND_SET, RecordKind, SituationBoard, prepare_set
from meshd.core.codec import unpack
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

NOW = 1_790_000_000_000
YEAR = 365 * 24 * 3600_000


class Town:
    """A root, a dealer and a city authority; a node's TrustStore at version 1."""

    def __init__(self) -> None:
        self.root, self.dealer, self.city, self.relay = Author(), Author(), Author(), Author()
        self.store = TrustStore(pinned=fingerprint(self.root.pub))
        assert self.store.apply(self.update(1, [self.dealer, self.city]))

    def update(self, version: int, auths: list[Author], *, revoked: tuple[bytes, ...] = ()
               ) -> Op:
        roles = [Authority(a.pub, AuthorityRole.DEALER if a is self.dealer else
                           AuthorityRole.CITY, "x") for a in auths]
        doc_id, body = prepare_trust_update(self.root.sign, self.root.pub, version, roles,
                                            revoked=revoked, community="Town")
        return self.root.op(KIND_TRUST_UPDATE, doc_id, body, hlc(NOW), expiry_ms=NOW + YEAR)

    def cert(self, member: bytes, *, by: Author | None = None, signer: Author | None = None,
             tv: int = 1) -> Op:
        by = by or self.dealer
        doc_id, body = prepare_member_certificate((signer or by).sign, by.pub, member,
                                                  root=self.root.pub, trust_version=tv,
                                                  issued_ms=NOW)
        return self.relay.op(KIND_MEMBER, doc_id, body, hlc(NOW), expiry_ms=NOW + YEAR)

    def statement(self, signer: Author, subject: bytes, successor: bytes | None = None, *,
                  sign_with: Author | None = None, at: int = NOW) -> Op:
        doc_id, body = prepare_key_statement((sign_with or signer).sign, signer.pub, subject,
                                             successor=successor, made_ms=at)
        return self.relay.op(KIND_REVOKE, doc_id, body, hlc(at), expiry_ms=at + YEAR)


def test_a_dealer_enrols_members_without_the_root() -> None:
    t = Town()
    car, stranger = Author(), Author()
    assert not t.store.enrols() and not t.store.member(car.pub)
    assert t.store.take_key(t.cert(car.pub)) is True
    assert t.store.take_key(t.cert(car.pub)) is False  # the same certificate again
    assert t.store.enrols() and t.store.member(car.pub) and not t.store.member(stranger.pub)
    # a city is no dealer; a stranger no authority; a certificate ahead of us is carried
    with pytest.raises(Refused) as exc:
        t.store.take_key(t.cert(stranger.pub, by=t.city))
    assert exc.value.reason == "not_dealer"
    with pytest.raises(Refused):
        t.store.take_key(t.cert(stranger.pub, by=stranger))
    assert t.store.take_key(t.cert(stranger.pub, by=stranger, tv=9)) is None
    assert not t.store.member(stranger.pub)
    # nothing pinned: carried, not refused
    assert TrustStore().classify_key(t.cert(car.pub))[0] is TrustVerdict.CARRY


def test_forged_certificates_and_statements_are_refused_everywhere() -> None:
    t = Town()
    car, thief = Author(), Author()
    bare = TrustStore()  # forgeries stop at the first hop, trust or no trust
    # the dealer's name on a certificate the thief signed
    for store in (t.store, bare):
        with pytest.raises(Refused) as exc:
            store.classify_key(t.cert(thief.pub, signer=thief))
        assert exc.value.reason == "signature"
        # a revocation of the car in the car's name, signed by the thief
        with pytest.raises(Refused) as exc:
            store.classify_key(t.statement(car, car.pub, thief.pub, sign_with=thief))
        assert exc.value.reason == "signature"
    # a relay that swaps the successor breaks the signature
    good = t.statement(car, car.pub, Author().pub)
    fields = dict(unpack(good.body, 4096))
    fields["n"] = thief.pub
    swapped = t.relay.op(KIND_REVOKE, good.doc_id, encode_body(fields), hlc(NOW) + 1,
                         expiry_ms=NOW + YEAR)
    with pytest.raises(Refused) as exc:
        t.store.classify_key(swapped)
    assert exc.value.reason == "signature"
    # a statement filed under another subject's document
    misfiled = t.relay.op(KIND_REVOKE, statement_doc_id(thief.pub), good.body, hlc(NOW) + 2,
                          expiry_ms=NOW + YEAR)
    with pytest.raises(Refused) as exc:
        t.store.classify_key(misfiled)
    assert exc.value.reason == "doc_id"
    cert = t.cert(car.pub)
    wrong = t.relay.op(KIND_MEMBER, member_doc_id(thief.pub), cert.body, hlc(NOW) + 3,
                       expiry_ms=NOW + YEAR)
    with pytest.raises(Refused):
        t.store.classify_key(wrong)
    assert not t.store.revoked(car.pub) and not t.store.keys.has_certificates()


def test_who_may_revoke_a_key() -> None:
    t = Town()
    phone, car, other_car = Author(), Author(), Author()
    t.store.take_key(t.cert(car.pub))
    # a stranger, and a city authority, may not revoke someone else's key
    with pytest.raises(Refused) as exc:
        t.store.take_key(t.statement(Author(), phone.pub))
    assert exc.value.reason == "not_owner"
    with pytest.raises(Refused):
        t.store.take_key(t.statement(t.city, phone.pub))
    # a dealer revokes only the members it enrolled (the other may come with its certificate)
    assert t.store.take_key(t.statement(t.dealer, other_car.pub)) is None
    assert not t.store.revoked(other_car.pub)
    assert t.store.take_key(t.statement(t.dealer, car.pub)) is True
    assert t.store.revoked(car.pub) and not t.store.member(car.pub)
    # the owner's statement, made in advance by the phone's own key: verifies anywhere
    bare = TrustStore()
    for store in (t.store, bare):
        assert store.take_key(t.statement(phone, phone.pub, at=NOW - YEAR // 2)) is True
        assert store.revoked(phone.pub)
    # the root's
    root_made = t.statement(t.root, other_car.pub)
    assert t.store.classify_key(root_made)[2] is Rank.ROOT
    assert TrustStore(pinned=fingerprint(t.root.pub)).take_key(root_made) is True
    # a revoked authority loses its bulletins' authority too
    assert t.store.take_key(t.statement(t.city, t.city.pub)) is True
    assert t.store.authority(t.city.pub) is None and t.store.authority(t.dealer.pub)


def test_removing_or_revoking_the_dealer_ends_its_memberships() -> None:
    t = Town()
    car = Author()
    t.store.take_key(t.cert(car.pub))
    assert t.store.member(car.pub)
    assert t.store.apply(t.update(2, [t.city]))  # the dealer is removed
    assert not t.store.member(car.pub) and not t.store.revoked(car.pub)
    assert t.store.apply(t.update(3, [t.dealer, t.city]))  # and added again
    assert t.store.member(car.pub)
    assert t.store.apply(t.update(4, [t.dealer, t.city], revoked=(t.dealer.pub,)))
    assert not t.store.member(car.pub) and not t.store.dealer(t.dealer.pub)
    # a revoked dealer's new certificates and revocations are refused
    with pytest.raises(Refused):
        t.store.take_key(t.cert(Author().pub))
    with pytest.raises(Refused):
        t.store.take_key(t.statement(t.dealer, car.pub))


def test_successors_rank_and_a_thiefs_contest() -> None:
    t = Town()
    phone, new_phone, thief_phone, dealer_phone = Author(), Author(), Author(), Author()
    t.store.take_key(t.cert(phone.pub))
    keys = t.store.keys
    # made in advance by the owner: the new phone carries on the record, and is a member
    assert t.store.take_key(t.statement(phone, phone.pub, new_phone.pub)) is True
    assert keys.successor(phone.pub) == new_phone.pub
    assert keys.person(new_phone.pub) == phone.pub and keys.person(phone.pub) == phone.pub
    assert t.store.member(new_phone.pub) and not t.store.member(phone.pub)
    # the thief holds the old key and signs another successor: contested, nobody continues
    assert t.store.take_key(t.statement(phone, phone.pub, thief_phone.pub)) is True
    assert keys.successor(phone.pub) is None and keys.contested(phone.pub)
    assert keys.person(new_phone.pub) == new_phone.pub
    assert not t.store.member(thief_phone.pub) and t.store.revoked(phone.pub)
    # the thief fills the subject's list with more; the dealer, seeing the owner, still wins
    for _ in range(MAX_PER_SUBJECT + 2):
        t.store.take_key(t.statement(phone, phone.pub, Author().pub))
    assert t.store.take_key(t.statement(t.dealer, phone.pub, dealer_phone.pub)) is True
    assert keys.successor(phone.pub) == dealer_phone.pub
    assert keys.person(dealer_phone.pub) == phone.pub
    # a chain: the successor is lost too, and names its own
    third = Author()
    t.store.take_key(t.statement(dealer_phone, dealer_phone.pub, third.pub))
    assert keys.person(third.pub) == phone.pub and t.store.revoked(dealer_phone.pub)


def test_registry_cycles_and_ranks_are_bounded() -> None:
    a, b = Author().pub, Author().pub
    reg = KeyRegistry()
    assert reg.add_statement(KeyStatement(a, a, b, NOW), Rank.SELF)
    assert reg.add_statement(KeyStatement(b, b, a, NOW), Rank.SELF)  # a cycle a -> b -> a
    assert reg.person(a) in (a, b) and reg.person(b) in (a, b)
    # the same statement at a lower rank changes nothing; at a higher it does
    assert not reg.add_statement(KeyStatement(a, a, b, NOW), Rank.SELF)
    assert reg.add_statement(KeyStatement(a, a, b, NOW), Rank.DEALER)


def _set(owner: Author, safety: str, at: int) -> Op:
    doc_id, body = prepare_set(owner.pub, RecordKind.PERSON, {"safety": safety})
    return owner.op(KIND_SET, doc_id, body, hlc(at))


def test_the_successor_carries_on_the_person_record() -> None:
    t = Town()
    old, new = Author(), Author()
    board = SituationBoard(person=t.store.keys.person)
    assert board.apply(_set(old, "needs_help", NOW))
    assert board.apply(_set(new, "safe", NOW + 60_000))
    # before any statement: two people
    assert len(list(board.records(RecordKind.PERSON))) == 2
    t.store.take_key(t.statement(old, old.pub, new.pub))
    recs = list(board.records(RecordKind.PERSON))
    assert len(recs) == 1 and recs[0].owner == new.pub and recs[0].fields["safety"] == "safe"
    got = board.get(new.pub, RecordKind.PERSON)
    assert got is not None and got.fields["safety"] == "safe"
    assert [r.owner for r in board.of_owner(old.pub)] == [new.pub]
    # a board with no person map keeps them apart (as before)
    plain = SituationBoard()
    plain.apply(_set(old, "needs_help", NOW))
    plain.apply(_set(new, "safe", NOW + 1))
    assert len(list(plain.records())) == 2
