"""Node identity and signed announcements.

Theory of operation
-------------------
A node owns an Ed25519 signing key and an X25519 key-agreement key, created on
first start and kept in ``<state>/identity.key`` (mode 0600).  Its NodeId is the
first 16 bytes of SHA-256(ed25519_pub ‖ x25519_pub), so anyone holding the two
public keys can check that they belong to a NodeId.

An ``Announcement`` binds the keys to a sequence number, a wall-clock timestamp,
a display name and a role, signed with the Ed25519 key.  ``AnnouncementBook``
(pure, wall time passed in) keeps the newest verified announcement per NodeId and
refuses forged ones (bad signature, keys that do not hash to the id), stale ones
(timestamp too old or too far in the future) and replays (a seqno not above the
one it holds).  Seqnos are reserved on disk *before* use (``SeqnoFile``), so a
restarted node continues above its last announcement and is not taken for a
replay.  The routing layer uses the announcement's seqno as the origin's
signed Babel seqno.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from meshd import PROTOCOL_VERSION
from meshd.core.codec import Fields, pack, unpack
from meshd.core.errors import LocalProtocolError, VerificationError

__all__ = [
    "ANNOUNCE_MAX_AGE_S",
    "ANNOUNCE_MAX_SKEW_S",
    "KEY_FILE",
    "SEQNO_FILE",
    "Announcement",
    "AnnouncementBook",
    "Identity",
    "NodeId",
    "Role",
    "SeqnoFile",
    "node_id_of",
    "short_id",
    "write_private",
]

NodeId = bytes  # 16 bytes
NODE_ID_LEN = 16
KEY_FILE = "identity.key"
SEQNO_FILE = "announce.seqno"
MAX_ANNOUNCEMENT_SIZE = 512
MAX_NAME_LEN = 64
#: an announcement older than this is stale; origins re-sign well before (ANNOUNCE_REFRESH_S)
ANNOUNCE_MAX_AGE_S = 3600.0
ANNOUNCE_REFRESH_S = 600.0
#: tolerated clock skew between nodes for timestamps in the future
ANNOUNCE_MAX_SKEW_S = 300.0
_SIG_DOMAIN = b"carmesh/announce/1\x00"

_log = logging.getLogger(__name__)


class Role(enum.StrEnum):
    CAR = "car"
    PHONE = "phone"
    DEALER = "dealer"


def node_id_of(ed25519_pub: bytes, x25519_pub: bytes) -> NodeId:
    """NodeId = first 16 bytes of SHA-256(ed25519_pub ‖ x25519_pub)."""
    if len(ed25519_pub) != 32 or len(x25519_pub) != 32:
        raise LocalProtocolError("public keys are 32 bytes each")
    return hashlib.sha256(ed25519_pub + x25519_pub).digest()[:NODE_ID_LEN]


def short_id(node_id: NodeId) -> str:
    """The 8-hex-character short form people type."""
    return node_id.hex()[:8]


def _raw_pub_ed(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_priv(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600 (fsync the file, rename, fsync the
    directory): after a crash the file holds the old or the new bytes, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # os.write may write less than asked (a nearly full disk)
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # a full disk (ENOSPC) or a crash of the write: leave no half-written .tmp behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True, slots=True)
class Identity:
    """A node's two private keys and the public facts derived from them."""

    signing_key: Ed25519PrivateKey
    agreement_key: X25519PrivateKey
    ed25519_pub: bytes = field(init=False)
    x25519_pub: bytes = field(init=False)
    node_id: NodeId = field(init=False)

    def __post_init__(self) -> None:
        ed = _raw_pub_ed(self.signing_key)
        x = self.agreement_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        object.__setattr__(self, "ed25519_pub", ed)
        object.__setattr__(self, "x25519_pub", x)
        object.__setattr__(self, "node_id", node_id_of(ed, x))

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, state_dir: Path) -> Identity:
        """Load ``identity.key`` from ``state_dir``, creating it (mode 0600) on first start."""
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / KEY_FILE
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise LocalProtocolError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
            f = Fields(unpack(path.read_bytes(), 256))
            if f.int("v") != 1:
                raise LocalProtocolError(f"{path}: unknown key file version")
            return cls(
                Ed25519PrivateKey.from_private_bytes(f.bytes("ed25519", size=32)),
                X25519PrivateKey.from_private_bytes(f.bytes("x25519", size=32)),
            )
        ident = cls.generate()
        write_private(path, pack({"v": 1, "ed25519": _raw_priv(ident.signing_key),
                                   "x25519": _raw_priv(ident.agreement_key)}))
        return ident

    @property
    def hex(self) -> str:
        return self.node_id.hex()

    def sign(self, data: bytes) -> bytes:
        return self.signing_key.sign(data)

    def announce(self, seqno: int, timestamp: float, name: str, role: Role) -> Announcement:
        """Create and sign this node's announcement."""
        body = pack({
            "v": PROTOCOL_VERSION, "ed": self.ed25519_pub, "x": self.x25519_pub,
            "seq": seqno, "ts": round(timestamp * 1000), "name": name[:MAX_NAME_LEN],
            "role": role.value,
        })
        sig = self.sign(_SIG_DOMAIN + body)
        return Announcement.decode(pack({"b": body, "s": sig}))


def verify_ed25519(pub: bytes, sig: bytes, data: bytes) -> bool:
    """True when ``sig`` is a valid Ed25519 signature of ``data`` by ``pub``."""
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(sig, data)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Announcement:
    """A verified, signed statement of a node's keys, seqno, time, name and role.

    Only ``decode`` builds one, and it checks the signature, so holding an
    ``Announcement`` means the signature was valid (freshness is the book's job).
    """

    node_id: NodeId
    ed25519_pub: bytes
    x25519_pub: bytes
    seqno: int
    timestamp: float  # wall-clock seconds
    name: str
    role: Role
    version: int
    raw: bytes  # the signed wire form, relayed as is
    #: set for a leaf (a browser attached to a car): the car it is attached through, named
    #: in the leaf's own signed body (docs/protocols.md, "Leaves")
    gateway: NodeId | None = None

    @classmethod
    def decode(cls, data: bytes) -> Announcement:
        """Parse and verify the signature. Raises ``DecodeError``/``VerificationError``."""
        outer = Fields(unpack(data, MAX_ANNOUNCEMENT_SIZE))
        body = outer.bytes("b", max_len=MAX_ANNOUNCEMENT_SIZE)
        sig = outer.bytes("s", size=64)
        f = Fields(unpack(body, MAX_ANNOUNCEMENT_SIZE))
        ed = f.bytes("ed", size=32)
        x = f.bytes("x", size=32)
        role_s = f.str("role", max_len=16)
        try:
            role = Role(role_s)
        except ValueError:
            raise VerificationError("role", role_s) from None
        ann = cls(
            node_id=node_id_of(ed, x), ed25519_pub=ed, x25519_pub=x,
            seqno=f.int("seq", 0, 2**63 - 1), timestamp=f.int("ts", 0, 2**53) / 1000.0,
            name=f.str("name", max_len=MAX_NAME_LEN), role=role,
            version=f.int("v", 0, 255), raw=bytes(data),
            gateway=f.opt_bytes("gw", size=NODE_ID_LEN),
        )
        if not verify_ed25519(ed, sig, _SIG_DOMAIN + body):
            raise VerificationError("signature", f"announcement of {short_id(ann.node_id)}")
        return ann

    @property
    def hex(self) -> str:
        return self.node_id.hex()

    def check_fresh(self, wall_now: float) -> None:
        """Raise ``VerificationError`` if the timestamp is too old or too far ahead."""
        if self.timestamp > wall_now + ANNOUNCE_MAX_SKEW_S:
            raise VerificationError("future", f"{self.timestamp - wall_now:.0f}s ahead")
        if self.timestamp < wall_now - ANNOUNCE_MAX_AGE_S:
            raise VerificationError("stale", f"{wall_now - self.timestamp:.0f}s old")


class AnnouncementBook:
    """The newest verified announcement per NodeId (pure: wall time passed in).

    ``accept`` returns True when the announcement is new information, False for
    an exact duplicate of what we hold, and raises ``VerificationError`` for a
    forged, stale or replayed one.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._by_id: dict[NodeId, Announcement] = {}
        self._max = max_entries

    def accept(self, ann: Announcement, wall_now: float, expect: NodeId | None = None) -> bool:
        if expect is not None and ann.node_id != expect:
            raise VerificationError("identity", f"{short_id(ann.node_id)} is not {short_id(expect)}")
        old = self._by_id.get(ann.node_id)
        if old is not None:
            if ann.raw == old.raw:
                return False
            if ann.seqno <= old.seqno:
                raise VerificationError("replay", f"{short_id(ann.node_id)} seq {ann.seqno} <= {old.seqno}")
        ann.check_fresh(wall_now)
        if old is None and len(self._by_id) >= self._max:
            raise VerificationError("capacity", "announcement book full")
        self._by_id[ann.node_id] = ann
        return True

    def get(self, node_id: NodeId) -> Announcement | None:
        return self._by_id.get(node_id)

    def forget(self, node_id: NodeId) -> None:
        self._by_id.pop(node_id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Announcement]:
        return iter(list(self._by_id.values()))


class SeqnoFile:
    """A monotonically increasing counter persisted (fsync'd) before each value is used.

    With a ``wall_clock`` (unix seconds) every value is also at least the current wall-clock
    second, so the counter tracks time: a node whose file was lost (deleted, corrupt) starts
    again above every seqno it signed before — neighbours would otherwise refuse it as a
    replay (issue 11, item 10) — as long as its clock is not behind the clock it signed
    with and it signed no more than one seqno per second on average (refreshes are minutes
    apart, routing bumps at least ``BUMP_MIN_GAP_S`` apart).  If the value cannot be written
    (a full disk) it is still used, with an error logged: the wall-clock floor keeps the next
    start above it, and a node that stays reachable beats one that is muted.
    """

    def __init__(self, path: Path, wall_clock: Callable[[], float] | None = None, *,
                 expect_existing: bool = False) -> None:
        self._path = path
        self._wall = wall_clock
        self._last = 0
        self._write_failed = False
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = None
        if text is not None:
            try:
                self._last = max(0, int(text.strip() or 0))
            except ValueError:
                _log.warning("%s is corrupt (%r): %s", path, text[:40], self._recovery())
        elif expect_existing:
            _log.warning("%s is missing though the node has an identity: %s", path,
                         self._recovery())

    def _recovery(self) -> str:
        if self._wall is None:
            return "starting again at 1 (neighbours may refuse it as a replay)"
        return "continuing from the wall-clock second, above the seqnos signed before"

    @property
    def last(self) -> int:
        return self._last

    def next(self, at_least: int = 0) -> int:
        """Reserve and return the next seqno (and at least ``at_least``); on disk before it returns."""
        floor = int(self._wall()) if self._wall is not None else 0
        value = max(self._last + 1, at_least, floor)
        try:
            write_private(self._path, f"{value}\n".encode())
        except OSError as exc:
            if self._wall is None:
                raise
            if not self._write_failed:
                what = ("the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                        else str(exc))
                _log.error("cannot persist the announcement seqno to %s (%s): using %d anyway,"
                           " the wall-clock floor keeps the next start above it; free some"
                           " space", self._path, what, value)
            self._write_failed = True
        else:
            self._write_failed = False
        self._last = value
        return value
