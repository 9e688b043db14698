"""Reliable, ordered, message-framed streams over the simulator's lossy datagrams.

Theory of operation
-------------------
The link layer gives sync (and anything else that must arrive whole) QUIC
streams; the simulator's links only carry datagrams that may be lost,
duplicated or reordered.  ``StreamMux`` is the smallest QUIC-like layer between
the two, a pure core like the ones it carries (``receive``,
``datagrams_to_send``, ``get_timer``/``handle_timer``, ``next_event``): every
message is one datagram with a per-stream sequence number; the receiver
delivers in order, buffers what comes early, drops what it has seen and
answers every data datagram with a cumulative acknowledgement; the sender
re-sends everything unacknowledged every ``rto_s`` until acknowledged (with
``backoff=True`` the interval doubles after each re-send without progress, up
to ``max_rto_s``, and drops back to ``rto_s`` when an acknowledgement moves: as
QUIC's probe timeout does, RFC 9002 section 6.2.1).  No flow control: the
protocols on top bound what they have in flight.

A stream is named on the wire by who opened it and its number;
``StreamKey(peer, mine, n)`` is that name seen from one end.  ``reset`` drops a
stream (stop re-sending, ignore what still arrives); ``reset_peer`` drops every
stream with a peer (its link went down, or we restarted).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["MessageReceived", "StreamKey", "StreamMux", "StreamOpened"]

_DATA, _ACK = 0, 1
_HEAD = struct.Struct(">BBII")  # kind, opened by the sender, stream number, seq


class StreamKey(NamedTuple):
    """A stream seen from one end: the peer, whether we opened it, its number."""

    peer: bytes
    mine: bool
    n: int


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream to us."""

    key: StreamKey


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The next message of a stream, in order."""

    key: StreamKey
    data: bytes


@dataclass(slots=True)
class _Stream:
    next_seq: int = 0
    unacked: dict[int, bytes] = field(default_factory=dict)
    resend_at: float | None = None
    expected: int = 0
    early: dict[int, bytes] = field(default_factory=dict)
    dead: bool = False
    rto: float = 0.0  # the current re-send interval (0: not set yet)


class StreamMux:
    """Every stream of one simulated node (see module docstring)."""

    def __init__(self, rto_s: float = 0.2, *, backoff: bool = False,
                 max_rto_s: float = 3.2) -> None:
        self.rto_s = rto_s
        self.backoff = backoff
        self.max_rto_s = max_rto_s
        self._streams: dict[StreamKey, _Stream] = {}
        self._opened: dict[bytes, int] = {}  # peer -> streams we opened
        self._seen: dict[bytes, int] = {}  # peer -> highest stream number it opened, + 1
        self._out: list[tuple[bytes, bytes]] = []
        self._events: list[StreamOpened | MessageReceived] = []
        self._resend: dict[StreamKey, float] = {}  # streams with unacknowledged data: when
        self.resent = 0
        self.resent_bytes = 0

    def open(self, peer: bytes) -> StreamKey:
        """A new stream to ``peer`` (the peer learns of it with the first message)."""
        n = self._opened.get(peer, 0)
        self._opened[peer] = n + 1
        key = StreamKey(peer, True, n)
        self._streams[key] = _Stream()
        return key

    def send(self, key: StreamKey, msg: bytes, now: float) -> None:
        s = self._streams.get(key)
        if s is None or s.dead:
            return
        if not s.rto:
            s.rto = self.rto_s
        seq = s.next_seq
        s.next_seq += 1
        s.unacked[seq] = msg
        self._out.append((key.peer, _HEAD.pack(_DATA, key.mine, key.n, seq) + msg))
        if s.resend_at is None:
            s.resend_at = self._resend[key] = now + s.rto

    def reset(self, key: StreamKey) -> None:
        """Stop re-sending on ``key`` and ignore what still arrives on it."""
        s = self._streams.get(key)
        if s is not None:
            s.dead = True
            s.unacked.clear()
            s.resend_at = None
            self._resend.pop(key, None)
            s.early.clear()

    def reset_peer(self, peer: bytes) -> None:
        """Forget every stream with ``peer`` (numbering starts again)."""
        for key in [k for k in self._streams if k.peer == peer]:
            del self._streams[key]
            self._resend.pop(key, None)
        self._opened.pop(peer, None)
        self._seen.pop(peer, None)

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        if len(data) < _HEAD.size:
            return
        kind, by_sender, n, seq = _HEAD.unpack_from(data)
        key = StreamKey(src, not by_sender, n)
        s = self._streams.get(key)
        if kind == _ACK:
            if s is not None:
                done = [q for q in s.unacked if q < seq]
                for q in done:
                    del s.unacked[q]
                if done:
                    s.rto = self.rto_s
                if not s.unacked:
                    s.resend_at = None
                    self._resend.pop(key, None)
            return
        if s is None:
            if not by_sender or n < self._seen.get(src, 0):
                return  # a stream of ours we forgot, or one of theirs long gone
            self._seen[src] = n + 1
            s = self._streams[key] = _Stream()
            self._events.append(StreamOpened(key))
        if not s.dead and seq >= s.expected:
            s.early[seq] = data[_HEAD.size:]
            while s.expected in s.early:
                self._events.append(MessageReceived(key, s.early.pop(s.expected)))
                s.expected += 1
        self._out.append((src, _HEAD.pack(_ACK, key.mine, n, s.expected)))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> StreamOpened | MessageReceived | None:
        return self._events.pop(0) if self._events else None

    def get_timer(self) -> float | None:
        return min(self._resend.values(), default=None)

    def handle_timer(self, now: float) -> None:
        for key, at in list(self._resend.items()):
            if at <= now:
                s = self._streams[key]
                for seq, msg in sorted(s.unacked.items()):
                    self._out.append((key.peer, _HEAD.pack(_DATA, key.mine, key.n, seq) + msg))
                    self.resent += 1
                    self.resent_bytes += len(msg) + _HEAD.size
                if self.backoff:
                    s.rto = min(s.rto * 2, self.max_rto_s)
                s.resend_at = self._resend[key] = now + (s.rto or self.rto_s)
