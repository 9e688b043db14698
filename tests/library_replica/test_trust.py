"""Community trust, pure core: fingerprints, version ordering, verdicts, the carried pool."""

from __future__ import annotations

import dataclasses

import pytest

from library_replica.bulletins import (
    KIND_PUBLISH,
    KIND_TRUST_UPDATE,
    Authority,
    AuthorityRole,
    BulletinBoard,
    TrustConfig,
    TrustStore,
    TrustVerdict,
    fingerprint,
    format_fingerprint,
    parse_fingerprint,
    parse_trust_update,
    prepare_bulletin,
    prepare_trust_update,
)
from library_replica.carried import CarriedPool
from library_replica.ops import LibraryError, Refused, encode_body, new_doc_id
from meshd.core.codec import unpack
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

NOW = 1_790_000_000_000
HOUR = 3600_000
YEAR = 365 * 24 * HOUR


def _update(root: Author, version: int, auths: list[Authority], *, revoked: tuple[bytes, ...] = (),
            signer: Author | None = None, community: str = "Town") -> Op:
    doc_id, body = prepare_trust_update((signer or root).sign, root.pub, version, auths,
                                        revoked=revoked, community=community)
    # as the root's tool publishes it: ephemeral, outside the root key's chain
    return root.op(KIND_TRUST_UPDATE, doc_id, body, hlc(NOW), expiry_ms=NOW + YEAR)


def _bulletin(who: Author, root: bytes, tv: int, *, signer: Author | None = None,
              expires: int = NOW + HOUR) -> Op:
    doc_id = new_doc_id(who.pub + root + tv.to_bytes(8, "big"))
    body = prepare_bulletin((signer or who).sign, who.pub, doc_id, title="給水", text="九時",
                            issued_ms=NOW, expires_ms=expires, root=root, trust_version=tv)
    return who.op(KIND_PUBLISH, doc_id, body, hlc(NOW), expiry_ms=expires)


def test_fingerprint_forms() -> None:
    root = Author().pub
    fp = fingerprint(root)
    text = format_fingerprint(fp)
    assert len(fp) == 16 and text.count("-") == 7 and len(text) == 39
    assert parse_fingerprint(text) == (fp, None)
    assert parse_fingerprint(text.replace("-", " ").upper()) == (fp, None)
    assert parse_fingerprint(root.hex()) == (fp, root)
    for bad in ("abcd", "zz" * 16, fp.hex() + "00"):
        with pytest.raises(LibraryError):
            parse_fingerprint(bad)


def test_versions_only_move_forward_and_stale_updates_are_kept_not_applied() -> None:
    root, city, dealer = Author(), Author(), Author()
    store = TrustStore(TrustConfig(root.pub, 5, {}))
    v7 = _update(root, 7, [Authority(city.pub, AuthorityRole.CITY, "市")])
    v6 = _update(root, 6, [Authority(dealer.pub, AuthorityRole.DEALER, "店")])
    assert store.classify(v7)[0] is TrustVerdict.ADOPT
    assert store.apply(v7) and store.version == 7
    # an older update of our root arriving late: authorised (kept, so peers stop offering
    # it), never applied
    assert store.classify(v6)[0] is TrustVerdict.STALE
    store.authorize(v6, NOW)
    assert not store.apply(v6) and store.version == 7
    assert store.authority(city.pub) is not None and store.authority(dealer.pub) is None
    assert store.classify(v7)[0] is TrustVerdict.STALE  # the same version again


def test_forged_trust_updates_are_refused_everywhere() -> None:
    root, mallory = Author(), Author()
    forged = _update(root, 9, [Authority(mallory.pub, AuthorityRole.CITY, "偽")], signer=mallory)
    for store in (TrustStore(), TrustStore(TrustConfig(root.pub, 1, {})),
                  TrustStore(pinned=fingerprint(root.pub))):
        with pytest.raises(Refused) as exc:
            store.classify(forged)
        assert exc.value.reason == "signature"
    # mallory's own, validly signed update is another community's: carried, not adopted
    own = _update(mallory, 9, [Authority(mallory.pub, AuthorityRole.CITY, "偽")])
    pinned = TrustStore(TrustConfig(root.pub, 1, {}))
    assert pinned.classify(own)[0] is TrustVerdict.CARRY
    assert not pinned.apply(own) and pinned.root == root.pub
    with pytest.raises(Refused) as exc:  # without a carrier, the plain authoriser refuses
        pinned.authorize(own, NOW)
    assert exc.value.reason == "not_root"


def test_pinning_by_fingerprint_adopts_the_first_update_of_that_root() -> None:
    root, other, city = Author(), Author(), Author()
    store = TrustStore(pinned=fingerprint(root.pub))
    assert store.root is None and store.version == 0
    assert store.classify(_update(other, 3, []))[0] is TrustVerdict.CARRY
    assert store.apply(_update(root, 3, [Authority(city.pub, AuthorityRole.CITY, "市")]))
    assert store.root == root.pub and store.config is not None
    assert store.config.community == "Town" and store.authority(city.pub) is not None
    # pins conflict
    with pytest.raises(LibraryError):
        store.pin_fingerprint(fingerprint(other.pub))
    with pytest.raises(LibraryError):
        store.pin(TrustConfig(other.pub, 99, {}))
    assert not store.pin(TrustConfig(root.pub, 2, {}))  # older than held: no change
    assert store.pin(TrustConfig(root.pub, 4, {})) and store.version == 4


def test_bulletin_verdicts_show_carry_refuse() -> None:
    root, city, stranger, other_root = Author(), Author(), Author(), Author()
    cfg = TrustConfig(root.pub, 5, {city.pub: Authority(city.pub, AuthorityRole.CITY, "市")})
    pinned = BulletinBoard(TrustStore(cfg))
    bare = BulletinBoard(TrustStore())
    ok = _bulletin(city, root.pub, 5)
    b = pinned.classify(ok, NOW)
    assert b is not None and b.authority.name == "市"
    assert bare.classify(ok, NOW) is None  # no trust: carried
    # a key that is no authority at a version we hold: refused at the first hop
    with pytest.raises(Refused) as exc:
        pinned.classify(_bulletin(stranger, root.pub, 5), NOW)
    assert exc.value.reason == "not_authority"
    # relying on a version we do not have yet, or another community: carried
    assert pinned.classify(_bulletin(stranger, root.pub, 6), NOW) is None
    assert pinned.classify(_bulletin(stranger, other_root.pub, 1), NOW) is None
    # a body signed by another key than its author is refused with or without trust
    forged = _bulletin(city, root.pub, 5, signer=stranger)
    for board in (pinned, bare):
        with pytest.raises(Refused) as exc:
            board.classify(forged, NOW)
        assert exc.value.reason == "signature"
    # a relay cannot move a bulletin to another community or version
    moved = dataclasses.replace(ok, body=ok.body.replace(root.pub, other_root.pub))
    with pytest.raises(Refused) as exc:
        bare.classify(moved, NOW)
    assert exc.value.reason == "signature"


def test_revocation_hides_and_refuses() -> None:
    root, city = Author(), Author()
    store = TrustStore(TrustConfig(root.pub, 1, {city.pub: Authority(city.pub,
                                                                     AuthorityRole.CITY, "市")}))
    board = BulletinBoard(store)
    op = _bulletin(city, root.pub, 1)
    assert board.apply(op, NOW)
    assert store.apply(_update(root, 2, [], revoked=(city.pub,)))
    assert board.active(NOW) == []
    assert board.drop_untrusted() == [op.op_id]
    with pytest.raises(Refused) as exc:
        board.classify(op, NOW)
    assert exc.value.reason == "revoked"
    # a revoked key stays refused even when it claims a version from the future
    with pytest.raises(Refused) as exc:
        board.classify(_bulletin(city, root.pub, 99), NOW)
    assert exc.value.reason == "revoked"


def test_carried_pool_bounds_count_bytes_and_expiry() -> None:
    root = Author()
    pool = CarriedPool(max_ops=3, max_bytes=1000)
    ops = [_bulletin(Author(), root.pub, 1, expires=NOW + (i + 1) * HOUR) for i in range(5)]
    for op in ops[:3]:
        pool.admit(op, 300, NOW)
    pool.admit(ops[0], 300, NOW)  # idempotent
    assert len(pool) == 3 and pool.bytes == 900
    with pytest.raises(Refused) as exc:
        pool.admit(ops[3], 10, NOW)
    assert exc.value.reason == "carry_full"
    assert pool.discard(ops[2].op_id) and not pool.discard(ops[2].op_id)
    with pytest.raises(Refused) as exc:  # room for one more op, not for its bytes
        pool.admit(ops[3], 401, NOW)
    assert exc.value.reason == "carry_full"
    pool.admit(ops[3], 400, NOW)
    assert pool.bytes == 1000
    # expiry: the first bulletin lives an hour
    assert pool.expire(NOW + HOUR) == [ops[0].op_id]
    assert ops[0].op_id not in pool and pool.bytes == 700
    # only ops with an expiry, and not too far ahead
    chained = Author().op(KIND_TRUST_UPDATE, new_doc_id(b"x"), b"\x80", hlc(NOW))
    with pytest.raises(Refused) as exc:
        pool.admit(chained, 10, NOW)
    assert exc.value.reason == "carry_no_expiry"
    far = _update(root, 1, [])
    with pytest.raises(Refused) as exc:
        CarriedPool(max_lifetime_ms=HOUR).admit(far, 10, NOW)
    assert exc.value.reason == "carry_expiry"
    # ops the store no longer holds leave after a grace period
    assert pool.retain(lambda _: False, NOW + 1000) == []
    assert sorted(pool.retain(lambda i: i == ops[1].op_id, NOW + 120_000)) == [ops[3].op_id]
    assert [e.op_id for e in pool] == [ops[1].op_id]


def test_trust_file_keeps_community_and_revoked_keys() -> None:
    root, a, r = Author(), Author(), Author()
    cfg = TrustConfig(root.pub, 1_790_000_123, {a.pub: Authority(a.pub, AuthorityRole.DEALER,
                                                                  'Dealer "North"')},
                      'Town of "Example"', frozenset({r.pub}))
    text = cfg.to_toml()
    assert format_fingerprint(fingerprint(root.pub)) in text
    assert TrustConfig.from_toml(text) == cfg
    with pytest.raises(LibraryError):
        TrustConfig.from_toml(text.replace(r.pub.hex(), "abcd"))


def test_members_are_signed_listed_and_revocation_ends_membership() -> None:
    root, a, m, lost, stranger = Author(), Author(), Author(), Author(), Author()
    auth = Authority(a.pub, AuthorityRole.DEALER, "Dealer")
    doc_id, body = prepare_trust_update(root.sign, root.pub, 2, [auth],
                                        members=[m.pub, lost.pub], community="Town")
    op = root.op(KIND_TRUST_UPDATE, doc_id, body, hlc(NOW), expiry_ms=NOW + YEAR)
    cfg = parse_trust_update(op)
    assert cfg.members == frozenset({m.pub, lost.pub})
    ts = TrustStore(pinned=fingerprint(root.pub))
    assert ts.apply(op)
    assert [ts.member(k) for k in (root.pub, a.pub, m.pub, lost.pub, stranger.pub)] == \
        [True, True, True, True, False]
    # a member list cannot be changed by a relay: the root signed it
    tampered = dict(unpack(op.body, 1 << 20))
    tampered["m"] = [m.pub, lost.pub, stranger.pub]
    forged = root.op(KIND_TRUST_UPDATE, doc_id, encode_body(tampered), hlc(NOW) + 1,
                     expiry_ms=NOW + YEAR)
    with pytest.raises(Refused):
        parse_trust_update(forged)
    # revoking the lost phone takes it off the members (and a revoked key is no member)
    _, body3 = prepare_trust_update(root.sign, root.pub, 3, [auth], members=[m.pub, lost.pub],
                                    revoked=[lost.pub], community="Town")
    assert ts.apply(root.op(KIND_TRUST_UPDATE, doc_id, body3, hlc(NOW) + 2,
                            expiry_ms=NOW + YEAR))
    assert ts.revoked(lost.pub) and not ts.member(lost.pub) and ts.member(m.pub)
    assert ts.config is not None and lost.pub not in ts.config.members
    # the enrolment file keeps them; an update with no members verifies as before
    assert TrustConfig.from_toml(ts.config.to_toml()) == ts.config
    assert parse_trust_update(_update(root, 4, [auth])).members == frozenset()
