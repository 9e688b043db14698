"""Identity, NodeId and signed announcements (tier 1: pure, literal times)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from meshd.core.codec import pack, unpack
from meshd.core.errors import LocalProtocolError, VerificationError
from meshd.core.identity import (
    ANNOUNCE_MAX_AGE_S,
    ANNOUNCE_MAX_SKEW_S,
    Announcement,
    AnnouncementBook,
    Identity,
    Role,
    SeqnoFile,
    node_id_of,
    short_id,
)

T0 = 1_800_000_000.0


def test_node_id_is_sha256_prefix_of_both_public_keys() -> None:
    ident = Identity.generate()
    expected = hashlib.sha256(ident.ed25519_pub + ident.x25519_pub).digest()[:16]
    assert ident.node_id == expected == node_id_of(ident.ed25519_pub, ident.x25519_pub)
    assert short_id(ident.node_id) == ident.node_id.hex()[:8]
    assert len(ident.hex) == 32


def test_key_file_created_0600_and_reloaded(tmp_path: Path) -> None:
    a = Identity.load_or_create(tmp_path / "st")
    key = tmp_path / "st" / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    b = Identity.load_or_create(tmp_path / "st")
    assert a.node_id == b.node_id


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    Identity.load_or_create(tmp_path)
    (tmp_path / "identity.key").chmod(0o644)
    with pytest.raises(LocalProtocolError, match="readable by others"):
        Identity.load_or_create(tmp_path)


def test_announcement_roundtrip_and_fields() -> None:
    ident = Identity.generate()
    ann = ident.announce(7, T0, "car-1", Role.CAR)
    again = Announcement.decode(ann.raw)
    assert again == ann
    assert (ann.node_id, ann.seqno, ann.name, ann.role) == (ident.node_id, 7, "car-1", Role.CAR)
    assert ann.timestamp == T0


def _tamper(raw: bytes, **changes: object) -> bytes:
    outer = unpack(raw, 1024)
    body = unpack(outer["b"], 1024)
    body.update(changes)
    return pack({"b": pack(body), "s": outer["s"]})


def test_forged_announcements_are_refused() -> None:
    ident, other = Identity.generate(), Identity.generate()
    ann = ident.announce(1, T0, "car", Role.CAR)
    # body changed after signing
    with pytest.raises(VerificationError):
        Announcement.decode(_tamper(ann.raw, name="mallory"))
    # someone else's keys claimed with our signature
    with pytest.raises(VerificationError):
        Announcement.decode(_tamper(ann.raw, ed=other.ed25519_pub))
    # a valid announcement of another node offered as ours
    book = AnnouncementBook()
    with pytest.raises(VerificationError, match="identity"):
        book.accept(other.announce(1, T0, "car", Role.CAR), T0, expect=ident.node_id)


def test_stale_future_and_replayed_refused_restart_accepted(tmp_path: Path) -> None:
    ident = Identity.load_or_create(tmp_path)
    seq = SeqnoFile(tmp_path / "announce.seqno")
    book = AnnouncementBook()
    first = ident.announce(seq.next(), T0, "car", Role.CAR)
    assert book.accept(first, T0) is True
    assert book.accept(first, T0 + 1) is False  # exact duplicate: nothing new, not an attack
    with pytest.raises(VerificationError, match="stale"):
        AnnouncementBook().accept(ident.announce(5, T0 - ANNOUNCE_MAX_AGE_S - 1, "c", Role.CAR), T0)
    with pytest.raises(VerificationError, match="future"):
        AnnouncementBook().accept(ident.announce(5, T0 + ANNOUNCE_MAX_SKEW_S + 1, "c", Role.CAR), T0)
    second = ident.announce(seq.next(), T0 + 10, "car", Role.CAR)
    assert book.accept(second, T0 + 10)
    with pytest.raises(VerificationError, match="replay"):
        book.accept(first, T0 + 11)  # an old seqno replayed
    # restart: the seqno file continues above the last one used
    seq2 = SeqnoFile(tmp_path / "announce.seqno")
    restarted = Identity.load_or_create(tmp_path).announce(seq2.next(), T0 + 20, "car", Role.CAR)
    assert restarted.seqno == second.seqno + 1
    assert book.accept(restarted, T0 + 20)


def test_seqno_is_on_disk_before_use(tmp_path: Path) -> None:
    s = SeqnoFile(tmp_path / "seq")
    value = s.next()
    assert (tmp_path / "seq").read_text().strip() == str(value)
    assert stat.S_IMODE((tmp_path / "seq").stat().st_mode) == 0o600


def test_a_lost_seqno_file_continues_from_wall_time_above_the_old_seqnos(tmp_path: Path) -> None:
    """Issue 11 item 10: a deleted (or corrupt) seqno file must not restart the counter at 1."""
    clock = [T0]
    path = tmp_path / "announce.seqno"
    seq = SeqnoFile(path, wall_clock=lambda: clock[0])
    used = [seq.next() for _ in range(3)]  # three signings within one wall-clock second
    assert used == [1_800_000_000, 1_800_000_001, 1_800_000_002]
    clock[0] = T0 + 600  # ten minutes later the refresh signs with the clock again
    assert seq.next() == 1_800_000_600
    assert seq.next(at_least=1_800_000_650) == 1_800_000_650  # routing asks for more
    path.unlink()
    clock[0] = T0 + 700
    lost = SeqnoFile(path, wall_clock=lambda: clock[0], expect_existing=True)
    assert lost.next() == 1_800_000_700  # above 1_800_000_650: no replay at the neighbours
    path.write_text("garbage\n")
    clock[0] = T0 + 701
    corrupt = SeqnoFile(path, wall_clock=lambda: clock[0])
    assert corrupt.next() == 1_800_000_701
    # persisted, monotone with the file: a clock set back does not go back
    clock[0] = T0
    assert SeqnoFile(path, wall_clock=lambda: clock[0]).next() == 1_800_000_702


def test_seqno_on_a_full_disk_is_used_and_leaves_no_tmp(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 8: a start on a full disk crashed writing announce.seqno and left .tmp."""
    path = tmp_path / "announce.seqno"
    path.write_text("7\n")
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if os.fstat(fd).st_size:  # the data write reaches the disk here
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    seq = SeqnoFile(path, wall_clock=lambda: T0)
    assert seq.next() == 1_800_000_000
    assert path.read_text() == "7\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["announce.seqno"]
    # without a wall clock there is no safe value to fall back to: the error surfaces
    with pytest.raises(OSError):
        SeqnoFile(path).next()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["announce.seqno"]


def test_unknown_role_refused() -> None:
    ident = Identity.generate()
    raw = ident.announce(1, T0, "x", Role.PHONE).raw
    with pytest.raises(VerificationError):
        Announcement.decode(_tamper(raw, role="tank"))
