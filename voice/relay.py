"""The mesh relay candidate: one UDP socket per call that tunnels an endpoint's packets over the mesh.

Theory of operation
-------------------
Each side's node opens a ``RelaySocket`` for the call and writes its address
into the *remote* SDP it hands its own WebRTC endpoint, as the only candidate
(``typ relay``, before ``a=end-of-candidates``; aiortc ignores candidates that
come later).  The endpoint therefore sends everything (STUN checks, DTLS,
SRTP) to the relay socket; the node forwards each datagram as one ``media``
mesh packet (per-call flow id) to the far node, whose relay socket emits it to
the far endpoint.  DTLS-SRTP stays end to end: relay cars see ciphertext.

Whom to emit to is *latched*, never guessed: only a STUN binding request that
carries the USERNAME and MESSAGE-INTEGRITY (RFC 8445 §7.2.2, RFC 5389 §15.4)
computed with the ICE credentials this node carried in the SDP makes its
source address eligible.  Anything else from an unauthenticated source is
dropped.  Packets from the mesh that arrive before the latch are held (a few,
for up to ``HOLD_S``) instead of waiting for aioice's 500 ms retransmit.
STUN responses go back to the socket that sent the matching request
(transaction id), since an endpoint with several host candidates probes from
each; everything else goes to the source that most recently sent media (DTLS
or RTP), else to the first authenticated source.

On a lossy mesh the node sends each SRTP packet twice (``Redundancy`` decides
when) and the far node drops the repeat (``DedupeWindow``) before emitting it:
relay cars forward both copies as any other packets.

The pure helpers (``classify``, ``stun_binding_request``, ``MediaFramer``,
``DedupeWindow``, ``Redundancy``, SDP munging) do no I/O; ``RelaySocket`` is
the asyncio adapter.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import re
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError

__all__ = [
    "DEDUPE_WINDOW",
    "HOLD_S",
    "MAX_UDP",
    "REDUNDANCY_LOSS",
    "DedupeWindow",
    "IceCredentials",
    "MediaFramer",
    "PacketKind",
    "Redundancy",
    "RelaySocket",
    "StunRequest",
    "classify",
    "ice_credentials",
    "sends_twice",
    "strip_and_add_relay",
    "stun_binding_request",
]

logger = logging.getLogger(__name__)

#: how long packets from the mesh wait for the latch, seconds
HOLD_S = 2.0
#: how many packets wait for the latch at most
HOLD_MAX = 64
#: largest datagram we accept from an endpoint (an Ethernet frame's payload)
MAX_UDP = 1500
#: authenticated source addresses remembered per relay socket
MAX_SOURCES = 8
#: STUN transactions remembered for routing responses
MAX_TRANSACTIONS = 256

#: digests of recent SRTP/SRTCP datagrams remembered per call, to drop a second copy
DEDUPE_WINDOW = 128
#: end-to-end loss (fraction) above which a call's SRTP crosses the mesh twice
REDUNDANCY_LOSS = 0.01

_STUN_MAGIC = 0x2112A442
_STUN_HEADER = struct.Struct("!HHI12s")
_ATTR_USERNAME = 0x0006
_ATTR_INTEGRITY = 0x0008
_BINDING_REQUEST = 0x0001


class PacketKind(enum.Enum):
    """What an endpoint datagram is, by its first byte (RFC 7983 §7)."""

    STUN = "stun"
    DTLS_HANDSHAKE = "dtls-handshake"
    DTLS = "dtls"
    RTP = "rtp"
    OTHER = "other"


def classify(data: bytes) -> PacketKind:
    """Demultiplex one datagram the way WebRTC stacks do (RFC 7983)."""
    if not data:
        return PacketKind.OTHER
    b = data[0]
    if b <= 3:
        return PacketKind.STUN
    if 20 <= b <= 63:
        return PacketKind.DTLS_HANDSHAKE if b == 22 else PacketKind.DTLS
    if 128 <= b <= 191:
        return PacketKind.RTP
    return PacketKind.OTHER


def sends_twice(kind: PacketKind) -> bool:
    """STUN and DTLS handshake packets cross the mesh twice: on a lossy mesh that cuts setup time."""
    return kind in (PacketKind.STUN, PacketKind.DTLS_HANDSHAKE)


@dataclass(frozen=True, slots=True)
class StunRequest:
    """An authenticated-looking STUN binding request: its username and transaction id."""

    username: str
    transaction_id: bytes


def stun_transaction_id(data: bytes) -> bytes | None:
    """The transaction id of any STUN message, or None if ``data`` is not STUN."""
    if len(data) < 20 or classify(data) is not PacketKind.STUN:
        return None
    _t, _l, magic, tid = _STUN_HEADER.unpack_from(data)
    return bytes(tid) if magic == _STUN_MAGIC else None


def stun_is_response(data: bytes) -> bool:
    """True for a STUN success or error response (class bits 10 or 11)."""
    if len(data) < 20:
        return False
    mtype = struct.unpack_from("!H", data)[0]
    return bool(mtype & 0x0100)


def stun_binding_request(data: bytes, password: str) -> StunRequest:
    """Check a STUN binding request's MESSAGE-INTEGRITY with ``password``; raise ``DecodeError`` otherwise.

    RFC 5389 §15.4: HMAC-SHA1 over the message up to the attribute, with the
    header length field set as if the message ended right after it; the key of
    ICE's short-term credentials is the password itself (RFC 8445 §7.2.2).
    """
    if len(data) < 20 or len(data) > MAX_UDP:
        raise DecodeError("stun-size", f"{len(data)} bytes")
    mtype, mlen, magic, tid = _STUN_HEADER.unpack_from(data)
    if magic != _STUN_MAGIC or mtype != _BINDING_REQUEST or mlen + 20 != len(data) or mlen % 4:
        raise DecodeError("stun-header", "not a binding request")
    pos = 20
    username: str | None = None
    while pos + 4 <= len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        vstart = pos + 4
        vend = vstart + alen
        if vend > len(data):
            raise DecodeError("stun-attr", "attribute overruns message")
        if atype == _ATTR_USERNAME:
            try:
                username = data[vstart:vend].decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("stun-attr", "username not utf-8") from None
        elif atype == _ATTR_INTEGRITY:
            if alen != 20 or username is None:
                raise DecodeError("stun-integrity", "malformed or before USERNAME")
            header = struct.pack("!HH", mtype, vend - 20) + data[4:20]
            mac = hmac.new(password.encode("utf-8"), header + data[20:pos], hashlib.sha1).digest()
            if not hmac.compare_digest(mac, data[vstart:vend]):
                raise DecodeError("stun-integrity", "MESSAGE-INTEGRITY mismatch")
            return StunRequest(username, bytes(tid))
        pos = vstart + ((alen + 3) & ~3)
    raise DecodeError("stun-integrity", "no MESSAGE-INTEGRITY")


# ---------------------------------------------------------------------- SDP

@dataclass(frozen=True, slots=True)
class IceCredentials:
    """The ICE username fragment and password of one SDP (RFC 8839 §5.4)."""

    ufrag: str
    pwd: str


_UFRAG = re.compile(r"^a=ice-ufrag:(\S+)\s*$", re.MULTILINE)
_PWD = re.compile(r"^a=ice-pwd:(\S+)\s*$", re.MULTILINE)


def ice_credentials(sdp: str) -> IceCredentials:
    """The first ``a=ice-ufrag``/``a=ice-pwd`` of ``sdp``; raise ``DecodeError`` if missing."""
    u, p = _UFRAG.search(sdp), _PWD.search(sdp)
    if u is None or p is None:
        raise DecodeError("sdp", "no ICE credentials")
    return IceCredentials(u.group(1), p.group(1))


#: type preference 0 (relay), local preference 65535, component 1 (RFC 8445 §5.1.2.1)
RELAY_PRIORITY = (0 << 24) | (65535 << 8) | (256 - 1)


def strip_and_add_relay(sdp: str, host: str, port: int) -> str:
    """``sdp`` with every candidate removed and the relay candidate ``host:port`` as the only one.

    The candidate goes before ``a=end-of-candidates`` in each media section
    (added if missing): aiortc ignores candidates trickled after it.
    """
    cand = f"a=candidate:meshrelay 1 udp {RELAY_PRIORITY} {host} {port} typ relay raddr 0.0.0.0 rport 0"
    eol = "\r\n"
    lines = [ln for ln in sdp.replace("\r\n", "\n").split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    sections: list[list[str]] = [[]]
    for ln in lines:
        if ln.startswith("m="):
            sections.append([])
        sections[-1].append(ln)
    out.extend(sections[0])
    for sec in sections[1:]:
        body = [ln for ln in sec if not ln.startswith("a=candidate:") and ln != "a=end-of-candidates"]
        body.append(cand)
        body.append("a=end-of-candidates")
        out.extend(body)
    return eol.join(out) + eol


# ---------------------------------------------------------------------- framing

class MediaFramer:
    """Splits endpoint datagrams into mesh payloads of at most ``max_payload`` bytes and joins them back.

    Payload: ``0x00 ‖ datagram`` whole, or ``0x01 ‖ id u16 ‖ index u8 ‖ count u8 ‖ part``
    (a DTLS flight with a certificate can exceed one mesh packet).
    Reassembly keeps at most ``max_pending`` partial datagrams.
    """

    _FRAG = struct.Struct("!BHBB")

    def __init__(self, max_payload: int, max_pending: int = 16) -> None:
        self._max = max_payload
        self._next_id = 0
        self._pending: OrderedDict[int, dict[int, bytes]] = OrderedDict()
        self._max_pending = max_pending

    def split(self, datagram: bytes) -> list[bytes]:
        """Mesh payloads for one datagram."""
        if 1 + len(datagram) <= self._max:
            return [b"\x00" + datagram]
        room = self._max - self._FRAG.size
        parts = [datagram[i:i + room] for i in range(0, len(datagram), room)]
        if len(parts) > 8:
            raise ValueError("datagram too large to relay")
        self._next_id = (self._next_id + 1) & 0xFFFF
        return [self._FRAG.pack(1, self._next_id, i, len(parts)) + p for i, p in enumerate(parts)]

    def join(self, payload: bytes) -> bytes | None:
        """The datagram once complete, else None; raise ``DecodeError`` for a malformed payload."""
        if not payload:
            raise DecodeError("media-empty", "empty media payload")
        if payload[0] == 0:
            return payload[1:]
        if payload[0] != 1 or len(payload) < self._FRAG.size:
            raise DecodeError("media-kind", f"media payload kind {payload[0]}")
        _k, fid, idx, count = self._FRAG.unpack_from(payload)
        if not 2 <= count <= 8 or idx >= count:
            raise DecodeError("media-frag", f"fragment {idx}/{count}")
        parts = self._pending.setdefault(fid, {})
        parts[idx] = payload[self._FRAG.size:]
        self._pending.move_to_end(fid)
        while len(self._pending) > self._max_pending:
            self._pending.popitem(last=False)
        if len(parts) < count:
            return None
        del self._pending[fid]
        data = b"".join(parts[i] for i in range(count) if i in parts)
        return data if len(data) <= MAX_UDP else None


# ---------------------------------------------------------------------- redundancy

class DedupeWindow:
    """The 64-bit digests (BLAKE2b) of the last ``size`` datagrams: ``seen`` is True for a repeat.

    The receiving node asks it for every SRTP/SRTCP datagram (first byte 128–191) that
    came over the mesh, and drops a repeat before its endpoint sees it: the sending node
    may send each one twice.  Only those: an SRTP packet never repeats byte for byte (its
    sequence number or SRTCP index is in it), but a STUN retransmission does and must pass.
    """

    def __init__(self, size: int = DEDUPE_WINDOW) -> None:
        if size < 1:
            raise ValueError("window size must be positive")
        self._size = size
        self._digests: set[bytes] = set()
        self._order: deque[bytes] = deque()

    def seen(self, datagram: bytes) -> bool:
        """True if ``datagram`` was among the last ``size`` ones offered; remember it if not."""
        d = hashlib.blake2b(datagram, digest_size=8).digest()
        if d in self._digests:
            return True
        self._digests.add(d)
        self._order.append(d)
        if len(self._order) > self._size:
            self._digests.discard(self._order.popleft())
        return False


class Redundancy:
    """Whether a call's SRTP crosses the mesh twice: ``mode`` is ``auto``, ``on`` or ``off``.

    ``auto`` starts with single copies and switches to two copies for the rest of the
    call once the loss the endpoint measures (from getStats: the larger of the far end's
    report of our stream and our inbound loss) exceeds ``threshold``.  It never switches back: with
    two copies the loss the endpoint sees is what remains after redundancy, so a low
    reading then says nothing about the path.
    """

    MODES = ("auto", "on", "off")

    def __init__(self, mode: str = "auto", threshold: float = REDUNDANCY_LOSS) -> None:
        if mode not in self.MODES:
            raise ValueError(f"redundancy mode {mode!r}")
        self.mode = mode
        self.threshold = threshold
        self.active = mode == "on"

    def observe(self, loss: float | None) -> bool:
        """Take one loss reading (fraction, None if unknown); True if this turned copies on."""
        if self.mode != "auto" or self.active or loss is None or loss <= self.threshold:
            return False
        self.active = True
        return True


# ---------------------------------------------------------------------- adapter

class RelaySocket(asyncio.DatagramProtocol):
    """One call's relay socket: endpoint datagrams go to ``forward``; ``deliver`` emits mesh datagrams.

    ``forward(datagram, twice)`` is called for each authenticated endpoint
    datagram (``twice`` for STUN and DTLS handshake packets).  Call
    ``set_credentials`` with the far side's ICE credentials (those in the SDP
    handed to the local endpoint as remote) and the local endpoint's ufrag.
    """

    def __init__(self, forward: Callable[[bytes, bool], None], *, drops: DropCounter,
                 clock: Callable[[], float], label: str = "") -> None:
        self._forward = forward
        self._drops = drops
        self._clock = clock
        self._label = label
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)
        self._creds: IceCredentials | None = None
        self._local_ufrag: str | None = None
        self._sources: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._media_source: tuple[str, int] | None = None
        self._transactions: OrderedDict[bytes, tuple[str, int]] = OrderedDict()
        self._held_in: deque[tuple[float, bytes]] = deque()  # from the mesh, waiting for the latch
        self._held_out: deque[tuple[tuple[str, int], bytes]] = deque()  # from the endpoint, before creds
        self.latched_at: float | None = None
        self.packets_in = 0  # endpoint -> mesh
        self.packets_out = 0  # mesh -> endpoint
        self.closed = False

    @classmethod
    async def open(cls, host: str, forward: Callable[[bytes, bool], None], *, drops: DropCounter,
                   label: str = "") -> RelaySocket:
        """Bind a relay socket on ``host`` (port chosen by the kernel)."""
        loop = asyncio.get_running_loop()
        _t, proto = await loop.create_datagram_endpoint(
            lambda: cls(forward, drops=drops, clock=loop.time, label=label), local_addr=(host, 0))
        return proto

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        # stock asyncio allocates max_size per received datagram (256 KiB by default)
        if hasattr(transport, "max_size"):
            transport.max_size = MAX_UDP + 64  # uvloop has no such attribute and needs none
        self.address = transport.get_extra_info("sockname")[:2]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def error_received(self, exc: Exception) -> None:
        logger.debug("%srelay socket error: %s", self._label, exc)

    def set_credentials(self, remote: IceCredentials, local_ufrag: str | None) -> None:
        """Credentials that authenticate the local endpoint's binding requests."""
        self._creds = remote
        self._local_ufrag = local_ufrag
        held, self._held_out = self._held_out, deque()
        for addr, data in held:
            self.datagram_received(data, addr)

    def _authenticate(self, data: bytes, addr: tuple[str, int]) -> bool:
        assert self._creds is not None
        try:
            req = stun_binding_request(data, self._creds.pwd)
        except DecodeError as exc:
            self._drops.drop(exc.reason, self._label, str(exc))
            return False
        remote, _, local = req.username.partition(":")
        if remote != self._creds.ufrag or (self._local_ufrag is not None and local != self._local_ufrag):
            self._drops.drop("stun-username", self._label, req.username)
            return False
        first = not self._sources
        self._sources[addr] = None
        self._sources.move_to_end(addr)
        while len(self._sources) > MAX_SOURCES:
            self._sources.popitem(last=False)
        if first:
            self.latched_at = self._clock()
            self._flush_held()
        return True

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        addr = (addr[0], addr[1])
        if len(data) > MAX_UDP:
            self._drops.drop("relay-oversize", self._label, f"{len(data)} bytes")
            return
        kind = classify(data)
        if addr not in self._sources:
            if self._creds is None:
                if kind is PacketKind.STUN and len(self._held_out) < 16:
                    self._held_out.append((addr, data))
                return
            if kind is not PacketKind.STUN or stun_is_response(data) or not self._authenticate(data, addr):
                self._drops.drop("relay-unlatched", self._label, f"from {addr[0]}:{addr[1]}")
                return
        if kind is PacketKind.STUN:
            tid = stun_transaction_id(data)
            if tid is not None and not stun_is_response(data):
                self._transactions[tid] = addr
                while len(self._transactions) > MAX_TRANSACTIONS:
                    self._transactions.popitem(last=False)
        elif kind in (PacketKind.RTP, PacketKind.DTLS, PacketKind.DTLS_HANDSHAKE):
            self._media_source = addr
        self.packets_in += 1
        self._forward(data, sends_twice(kind))

    def _target(self, data: bytes) -> tuple[str, int] | None:
        if classify(data) is PacketKind.STUN and stun_is_response(data):
            tid = stun_transaction_id(data)
            if tid is not None and tid in self._transactions:
                return self._transactions[tid]
        if self._media_source is not None:
            return self._media_source
        return next(iter(self._sources), None)

    def deliver(self, data: bytes) -> None:
        """Emit a datagram that came over the mesh to the latched endpoint (or hold it)."""
        if self.transport is None or self.closed:
            return
        target = self._target(data)
        if target is None:
            now = self._clock()
            while self._held_in and (len(self._held_in) >= HOLD_MAX or self._held_in[0][0] < now - HOLD_S):
                self._held_in.popleft()
                self._drops.drop("relay-hold-expired", self._label)
            self._held_in.append((now, data))
            return
        self.packets_out += 1
        self.transport.sendto(data, target)

    def _flush_held(self) -> None:
        now = self._clock()
        held, self._held_in = self._held_in, deque()
        for ts, data in held:
            if ts >= now - HOLD_S:
                self.deliver(data)

    def close(self) -> None:
        """Close the socket; later ``deliver`` calls do nothing."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
