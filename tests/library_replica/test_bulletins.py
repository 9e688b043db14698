"""Bulletins: authority keys only, expiry inside the signed body, root-signed trust updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from library_replica.bulletins import (
    KIND_PUBLISH,
    KIND_TRUST_UPDATE,
    Authority,
    AuthorityRole,
    BulletinBoard,
    TrustConfig,
    TrustStore,
    prepare_bulletin,
    prepare_trust_update,
)
from library_replica.ops import Refused, encode_body, new_doc_id
from meshd.core.codec import unpack
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

NOW = 1_790_000_000_000
HOUR = 3600_000


#: the community root of the ``world`` fixture (``_bulletin`` names it)
ROOT: list[Author] = [Author()]


@pytest.fixture
def world(tmp_path: Path) -> tuple[Author, Author, BulletinBoard]:
    root, city = ROOT[0], Author()
    config = TrustConfig(root.pub, 1, {city.pub: Authority(city.pub, AuthorityRole.CITY, "市役所")})
    path = tmp_path / "trust.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    loaded = TrustConfig.load(path)
    assert loaded == config
    return root, city, BulletinBoard(TrustStore(loaded))


def _bulletin(who: Author, expires: int, *, issued: int = NOW, signer: Author | None = None,
              envelope_expiry: int | None = None, root: bytes = b"", version: int = 1) -> Op:
    doc_id = new_doc_id(who.pub + expires.to_bytes(8, "big"))
    body = prepare_bulletin((signer or who).sign, who.pub, doc_id, title="避難指示",
                            text="川沿いの地区は北小学校へ避難してください。",
                            issued_ms=issued, expires_ms=expires, root=root or ROOT[0].pub,
                            trust_version=version)
    return who.op(KIND_PUBLISH, doc_id, body, hlc(issued),
                  expiry_ms=expires if envelope_expiry is None else envelope_expiry)


def test_authority_bulletin_is_shown(world: tuple[Author, Author, BulletinBoard]) -> None:
    _, city, board = world
    op = _bulletin(city, NOW + HOUR)
    board.authorize(op, NOW)
    assert board.apply(op, NOW)
    [b] = board.active(NOW)
    assert b.title == "避難指示" and b.authority.role is AuthorityRole.CITY
    assert b.authority.name == "市役所"


def test_bulletin_not_signed_by_an_authority_is_refused(
        world: tuple[Author, Author, BulletinBoard]) -> None:
    _, city, board = world
    stranger = Author()
    op = _bulletin(stranger, NOW + HOUR)
    with pytest.raises(Refused) as exc:
        board.authorize(op, NOW)
    assert exc.value.reason == "not_authority"
    # an envelope claiming the city as author, with a body signed by someone else
    forged = _bulletin(city, NOW + HOUR, signer=stranger)
    with pytest.raises(Refused) as exc:
        board.authorize(forged, NOW)
    assert exc.value.reason == "signature"
    assert not board.apply(op, NOW) and not board.apply(forged, NOW)
    assert board.active(NOW) == []


def test_expiry_is_inside_the_signed_body(world: tuple[Author, Author, BulletinBoard]) -> None:
    _, city, board = world
    op = _bulletin(city, NOW + HOUR)
    fields = unpack(op.body, 1 << 16)
    fields["x"] = NOW + 20 * HOUR  # a relay extends the expiry
    tampered = dataclasses.replace(op, expiry_ms=NOW + 20 * HOUR, body=encode_body(fields))
    with pytest.raises(Refused) as exc:
        board.authorize(tampered, NOW)
    assert exc.value.reason == "signature"
    mismatch = _bulletin(city, NOW + HOUR, envelope_expiry=NOW + 2 * HOUR)
    with pytest.raises(Refused) as exc:
        board.authorize(mismatch, NOW)
    assert exc.value.reason == "expiry"


def test_expired_bulletin_disappears(world: tuple[Author, Author, BulletinBoard]) -> None:
    _, city, board = world
    short = _bulletin(city, NOW + HOUR)
    long = _bulletin(city, NOW + 5 * HOUR)
    assert board.apply(short, NOW) and board.apply(long, NOW)
    assert len(board.active(NOW)) == 2
    assert board.next_expiry_ms() == NOW + HOUR  # when the service next wakes to purge
    later = NOW + 2 * HOUR
    assert [b.op_id for b in board.active(later)] == [long.op_id]
    assert board.purge(later) == [short.op_id]
    assert board.purge(later) == []
    assert board.next_expiry_ms() == NOW + 5 * HOUR
    # arriving after its expiry, it is refused outright
    fresh = BulletinBoard(board.trust)
    with pytest.raises(Refused) as exc:
        fresh.authorize(short, later)
    assert exc.value.reason == "expired"
    assert not fresh.apply(short, later)


def test_trust_update_signed_by_root_adds_and_revokes(
        world: tuple[Author, Author, BulletinBoard]) -> None:
    root, city, board = world
    dealer = Author()
    d_op = _bulletin(dealer, NOW + HOUR)
    assert not board.apply(d_op, NOW)
    doc_id, body = prepare_trust_update(root.sign, root.pub, 2, [
        Authority(dealer.pub, AuthorityRole.DEALER, "販売店")])
    upd = root.op(KIND_TRUST_UPDATE, doc_id, body, hlc(NOW))
    board.trust.authorize(upd, NOW)
    assert board.trust.apply(upd)
    assert board.trust.config.version == 2
    assert board.apply(d_op, NOW)
    # the city is no longer an authority: its bulletins are hidden and refused
    c_op = _bulletin(city, NOW + HOUR)
    assert not board.apply(c_op, NOW)
    assert [b.author for b in board.active(NOW)] == [dealer.pub]
    # replaying the same version is stale
    assert not board.trust.apply(upd)


def test_trust_update_not_from_root_is_refused(
        world: tuple[Author, Author, BulletinBoard]) -> None:
    root, city, board = world
    mallory = Author()
    doc_id, body = prepare_trust_update(mallory.sign, mallory.pub, 9, [
        Authority(mallory.pub, AuthorityRole.MAKER, "偽メーカー")])
    as_mallory = mallory.op(KIND_TRUST_UPDATE, doc_id, body, hlc(NOW))
    with pytest.raises(Refused) as exc:
        board.trust.authorize(as_mallory, NOW)
    assert exc.value.reason == "not_root"
    # claiming the root as author does not help without the root's signature
    as_root = dataclasses.replace(as_mallory, author=root.pub, seq=1, prev=None)
    with pytest.raises(Refused) as exc:
        board.trust.authorize(as_root, NOW)
    assert exc.value.reason == "signature"
    assert board.trust.authority(city.pub) is not None
    assert board.trust.authority(mallory.pub) is None


def test_bad_trust_file_is_refused() -> None:
    from library_replica.ops import LibraryError

    with pytest.raises(LibraryError):
        TrustConfig.from_toml('root = "abcd"')
    with pytest.raises(LibraryError):
        TrustConfig.from_toml('root = "' + "00" * 32 + '"\n[[authority]]\nkey = "00"\nrole = "city"')
    with pytest.raises(LibraryError):
        TrustConfig.from_toml("not toml [")


def test_trust_file_roundtrip_with_awkward_names() -> None:
    keys = [Author().pub for _ in range(3)]
    names = ['市 "防災" 課', "back\\slash\nnew line", "販売店\t🚗"]
    config = TrustConfig(Author().pub, 7, {
        k: Authority(k, role, n) for k, role, n in zip(keys, AuthorityRole, names, strict=True)})
    assert TrustConfig.from_toml(config.to_toml()) == config
