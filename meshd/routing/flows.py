"""Flows this node relays: per (source, destination, service, flow id), packets, bytes, drops.

Theory of operation
-------------------
A relay forwards end-to-end packets it cannot read (calls' media is DTLS-SRTP
inside ``media`` packets).  What it can say about a call it carries is in the
packet header: who talks to whom, the service and the per-call flow id.  The
node hands every packet with a non-zero flow id that is not for itself to
``FlowTable.forwarded``, with whether the next hop's link took it; the table
keeps counters per flow and the packet rate over the last whole window.  Loss
is what this node could not pass on (no route, hop limit spent, link refused):
loss before this node is invisible to a relay.

Bounded: at most ``max_flows`` flows are kept (the least recently seen goes
first) and a flow idle for ``idle_s`` is forgotten at the next ``snapshot``.
Pure: ``now`` (monotonic seconds) is always passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

__all__ = ["FlowKey", "FlowStats", "FlowTable"]

#: flows kept at most
MAX_FLOWS: Final = 256
#: a flow with no packet for this long is forgotten, seconds
IDLE_S: Final = 30.0
#: the window the packet rate is measured over, seconds
RATE_WINDOW_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class FlowKey:
    """One relayed flow: both ends, the service code and the flow id from the header."""

    source: bytes
    destination: bytes
    service: int
    flow_id: int


@dataclass(slots=True)
class FlowStats:
    """Counters of one flow (``first``/``last``: monotonic seconds)."""

    first: float
    last: float
    packets: int = 0
    bytes: int = 0
    dropped: int = 0
    #: packets and start of the current rate window, and the last whole window's rate
    _window_packets: int = 0
    _window_start: float = 0.0
    rate_pps: float = 0.0

    @property
    def loss(self) -> float:
        """Share of the flow's packets this node could not pass on (0..1)."""
        total = self.packets + self.dropped
        return self.dropped / total if total else 0.0


class FlowTable:
    """Per-flow relay counters; see the module docstring."""

    def __init__(self, max_flows: int = MAX_FLOWS, idle_s: float = IDLE_S,
                 window_s: float = RATE_WINDOW_S) -> None:
        self._flows: OrderedDict[FlowKey, FlowStats] = OrderedDict()
        self.max_flows = max_flows
        self.idle_s = idle_s
        self.window_s = window_s

    def forwarded(self, key: FlowKey, size: int, passed: bool, now: float) -> None:
        """Count one packet of ``key`` (``size`` bytes) that this node passed on or dropped."""
        st = self._flows.get(key)
        if st is None:
            st = self._flows[key] = FlowStats(first=now, last=now, _window_start=now)
            while len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
        else:
            self._flows.move_to_end(key)
        self._roll(st, now)
        st.last = now
        if passed:
            st.packets += 1
            st.bytes += size
            st._window_packets += 1
        else:
            st.dropped += 1

    def _roll(self, st: FlowStats, now: float) -> None:
        elapsed = now - st._window_start
        if elapsed >= self.window_s:
            # a window with no packet at all after it means the flow paused: rate 0
            st.rate_pps = st._window_packets / elapsed if elapsed < 2 * self.window_s else 0.0
            st._window_packets = 0
            st._window_start = now

    def snapshot(self, now: float) -> list[tuple[FlowKey, FlowStats]]:
        """The live flows, most recently seen first; idle ones are forgotten."""
        for key in [k for k, st in self._flows.items() if now - st.last >= self.idle_s]:
            del self._flows[key]
        out = []
        for key, st in reversed(self._flows.items()):
            self._roll(st, now)
            out.append((key, st))
        return out

    def __len__(self) -> int:
        return len(self._flows)
