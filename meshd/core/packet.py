"""End-to-end mesh packets: the fixed header relays read, and the service registry.

A mesh packet travels hop by hop inside link datagrams (``Channel.PACKET``).
Relays parse only the fixed 39-byte header; the payload belongs to the service
at the destination (and is sealed end to end for ``msg`` and ``sig``)::

    0      1          2         3        19       35         39
    | ver  | hop limit| service | source | dest   | flow id  | payload ...
      u8     u8         u8        16 B     16 B     u32 BE

The header is binary rather than MessagePack because every relay decodes it
for every forwarded voice packet.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import NODE_ID_LEN, NodeId

__all__ = [
    "DEFAULT_HOP_LIMIT",
    "HEADER_LEN",
    "MeshPacket",
    "PacketHeader",
    "Service",
    "decrement_hop_limit",
    "max_payload",
    "peek_header",
]

PACKET_VERSION = 1
DEFAULT_HOP_LIMIT = 32
_HEADER = struct.Struct("!BBB16s16sI")
HEADER_LEN = _HEADER.size  # 39


class Service(enum.IntEnum):
    """Services registered by name on a node; the wire carries the code."""

    PING = 1  #: echo with timestamps (ping, traceroute)
    MSG = 2  #: sealed text messages
    SIG = 3  #: sealed, signed call signalling
    MEDIA = 4  #: the voice relay's opaque packets, per-call flow id
    INFO = 5  #: read-only node facts for the admin view
    FRAG = 6  #: a fragment of a larger end-to-end message


def max_payload(link_mtu: int) -> int:
    """Largest payload that fits one link datagram of ``link_mtu`` bytes (channel byte included)."""
    return link_mtu - 1 - HEADER_LEN


PacketHeader = tuple[int, int, NodeId, NodeId, int]
"""(hop limit, service, source, destination, flow id) of a packet, read by ``peek_header``."""

_HOP_BYTES = [bytes((i,)) for i in range(256)]


def peek_header(data: bytes, offset: int = 0, max_size: int = 65536) -> PacketHeader:
    """The header of the packet at ``data[offset:]`` without copying its payload (a relay's
    hot path); raises ``DecodeError`` exactly as ``MeshPacket.decode`` would."""
    size = len(data) - offset
    if size > max_size:
        raise DecodeError("oversize", f"packet {size} > {max_size}")
    if size < HEADER_LEN:
        raise DecodeError("short", f"packet of {size} bytes")
    ver, hop, svc, src, dst, flow = _HEADER.unpack_from(data, offset)
    if ver != PACKET_VERSION:
        raise DecodeError("version", f"packet version {ver}")
    return hop, svc, src, dst, flow


def decrement_hop_limit(data: bytes, offset: int = 0) -> bytes:
    """``data`` with the hop limit of the packet at ``data[offset:]`` one less (the caller
    checked it was > 1): what ``MeshPacket.decode(...).forwarded().encode()`` gives for the
    packet, without decoding and re-encoding it."""
    at = offset + 1
    return b"".join((data[:at], _HOP_BYTES[data[at] - 1], data[at + 1:]))


@dataclass(frozen=True, slots=True)
class MeshPacket:
    """One end-to-end packet; ``encode``/``decode`` are exact inverses."""

    source: NodeId
    destination: NodeId
    hop_limit: int
    service: int
    flow_id: int
    payload: bytes

    def encode(self) -> bytes:
        if len(self.source) != NODE_ID_LEN or len(self.destination) != NODE_ID_LEN:
            raise LocalProtocolError("node ids are 16 bytes")
        if not 0 <= self.hop_limit <= 255 or not 0 <= self.service <= 255:
            raise LocalProtocolError("hop limit and service fit one byte")
        return _HEADER.pack(PACKET_VERSION, self.hop_limit, self.service, self.source,
                            self.destination, self.flow_id & 0xFFFFFFFF) + self.payload

    @classmethod
    def decode(cls, data: bytes, max_size: int = 65536) -> MeshPacket:
        """Parse a packet; raises ``DecodeError`` for anything short, oversized or of another version."""
        if len(data) > max_size:
            raise DecodeError("oversize", f"packet {len(data)} > {max_size}")
        if len(data) < HEADER_LEN:
            raise DecodeError("short", f"packet of {len(data)} bytes")
        ver, hop, svc, src, dst, flow = _HEADER.unpack_from(data)
        if ver != PACKET_VERSION:
            raise DecodeError("version", f"packet version {ver}")
        return cls(src, dst, hop, svc, flow, bytes(data[HEADER_LEN:]))

    def forwarded(self) -> MeshPacket:
        """The same packet with its hop limit decremented (the caller checks it was > 1)."""
        return MeshPacket(self.source, self.destination, self.hop_limit - 1, self.service,
                          self.flow_id, self.payload)
