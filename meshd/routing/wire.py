"""The routing message on the wire (babeld's message.c): one MessagePack map per link datagram.

``decode_message`` takes untrusted bytes: sizes are checked before parsing and
every field's type and range after; anything else raises ``DecodeError``.
Fields: ``v`` version, ``iv`` the sender's update interval (centiseconds),
``a`` announcements, ``u`` updates (origin, seqno, metric), ``r`` seqno
requests (origin, seqno, hop count), ``q`` announcement requests, ``w``
wildcard (send me your table), ``t`` this is the answer to a wildcard, ``s`` the
sender is a stub (announces only itself, relays nothing: send it only your own route).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from meshd.core.codec import Fields, unpack
from meshd.core.errors import DecodeError
from meshd.core.identity import NodeId

__all__ = ["INFINITY", "MAX_ROUTING_PAYLOAD", "OVERHEAD", "Message", "Update", "decode_message",
           "packed_len"]

#: Babel's infinite metric: unreachable, and what a retraction carries
INFINITY = 0xFFFF
#: a link datagram is at most MESH_MTU (1,100 bytes) including the channel byte
MAX_ROUTING_PAYLOAD = 1099
_NODE_ID_LEN = 16
_MAX_SEQNO = 2**63 - 1
_MAX_ANN_SIZE = 512
_MAX_ITEMS = 128
#: room left for the map and array headers of a message (generous)
OVERHEAD = 40

class Update(NamedTuple):
    origin: NodeId
    seqno: int
    metric: int


@dataclass(frozen=True, slots=True)
class Message:
    interval_cs: int
    anns: list[bytes]
    updates: list[Update]
    requests: list[tuple[NodeId, int, int]]
    ann_requests: list[NodeId]
    wildcard: bool
    table_answer: bool
    stub: bool = False


def _node_id(v: object) -> NodeId:
    if type(v) is not bytes or len(v) != _NODE_ID_LEN:
        raise DecodeError("field", "node id: 16 bytes")
    return v


def _int(v: object, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise DecodeError("field", f"int in [{lo}, {hi}]")
    return v


def _triple(v: object) -> tuple[object, object, object]:
    if type(v) is not list or len(v) != 3:
        raise DecodeError("field", "entry of 3")
    return v[0], v[1], v[2]


def decode_message(data: bytes, max_payload: int = MAX_ROUTING_PAYLOAD) -> Message:
    """Parse one routing message (without the channel byte); raises ``DecodeError``."""
    obj = unpack(data, max_payload, max_items=_MAX_ITEMS)
    f = Fields(obj)
    if f.int("v", 0, 255) != 1:
        raise DecodeError("version", "routing message version")
    interval_cs = f.int("iv", 1, 65535)
    assert isinstance(obj, dict)
    anns = []
    for raw in (f.list("a", max_len=_MAX_ITEMS) if "a" in obj else []):
        if type(raw) is not bytes or len(raw) > _MAX_ANN_SIZE:
            raise DecodeError("field", "announcement bytes")
        anns.append(raw)
    updates = []
    for e in (f.list("u", max_len=_MAX_ITEMS) if "u" in obj else []):
        o, s, m = _triple(e)
        updates.append(Update(_node_id(o), _int(s, 0, _MAX_SEQNO), _int(m, 0, INFINITY)))
    requests = []
    for e in (f.list("r", max_len=_MAX_ITEMS) if "r" in obj else []):
        o, s, h = _triple(e)
        requests.append((_node_id(o), _int(s, 0, _MAX_SEQNO), _int(h, 0, 255)))
    ann_requests = [_node_id(o) for o in (f.list("q", max_len=_MAX_ITEMS) if "q" in obj else [])]
    wildcard = f.bool("w") if "w" in obj else False
    table_answer = f.bool("t") if "t" in obj else False
    stub = f.bool("s") if "s" in obj else False
    return Message(interval_cs, anns, updates, requests, ann_requests, wildcard, table_answer,
                   stub)


def packed_len(v: object) -> int:
    """Upper bound of the MessagePack size of one list item (bytes, int, or a flat list)."""
    if type(v) is bytes:
        return len(v) + 5
    if type(v) is list:
        return 5 + sum(len(x) + 5 if type(x) is bytes else 9 for x in v)
    return 9
