"""First byte of every link datagram: which core on the receiving node gets it.

A QUIC DATAGRAM frame between two neighbours carries exactly one message; its
first byte says which pure core parses the rest.  Unknown channels are counted
and dropped.
"""

from __future__ import annotations

import enum

__all__ = ["Channel"]


class Channel(enum.IntEnum):
    NEIGHBOUR = 0x01  #: hello / IHU between the two ends of a link (meshd.routing.neighbours)
    ROUTING = 0x02  #: Babel-style routing messages (meshd.routing.table)
    PACKET = 0x03  #: an end-to-end mesh packet being forwarded (meshd.core.packet)
