"""The console's data model and the poller that keeps it current from the control API.

Theory of operation
-------------------
``MeshModel`` holds what the console shows: the node's status, its neighbours
with a short history of RTT and loss per neighbour, routes, the topology,
calls with a history of their RTT, sync per peer, library results, the
situation board, bulletins and a log of events.  It does no I/O and never
reads a clock: every ``apply_*`` takes the daemon's result and ``now`` (wall
clock seconds, because the daemon reports wall times such as ``up_since``).
Results are untrusted JSON: each row is read with strict types and a row that
does not fit is dropped and counted (``MeshModel.malformed``), never raised.

``Poller`` is the asyncio adapter: it connects to the control socket,
subscribes to every event, polls the list methods every ``interval_s`` (the
slower ones every few intervals), feeds the model, and calls ``on_change``.
When the daemon goes away it marks the model disconnected and reconnects with
a capped backoff; after reconnecting it re-reads everything, so nothing missed
while disconnected stays stale.  A method the daemon does not serve
(``unknown_method``) is marked unavailable and not polled again until the next
connection (a restarted daemon may be newer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from meshd.control.client import ControlClient
from meshd.control.protocol import NoDaemon
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.core.tasks import cancel_and_wait
from meshd.core.text import terminal_safe

__all__ = [
    "AGGREGATE_S",
    "DROP_REASONS",
    "EVENT_PATTERNS",
    "POLLED",
    "Alert",
    "Call",
    "Client",
    "Link",
    "LogLine",
    "Mail",
    "MeshModel",
    "Message",
    "Neighbour",
    "Poller",
    "RelayFlow",
    "Route",
    "SyncPeer",
    "TopoNode",
    "Topology",
    "drop_reason",
    "sparkline",
]

log = logging.getLogger(__name__)

#: events the console subscribes to (all of them: the log pane shows every event)
EVENT_PATTERNS: Final = ("*",)
#: polled methods and their period in poll intervals
POLLED: Final[Mapping[str, int]] = {
    "status": 1, "neighbours": 1, "routes": 1, "calls": 1, "sync.status": 2,
    "topology": 3, "situation.list": 5, "bulletin.list": 5, "relay.flows": 1, "messages": 3,
    "mail.list": 3,
}
#: repeated events of one kind (and subject) within this many seconds share one log line
AGGREGATE_S: Final = 10.0
#: samples of RTT/loss history kept per neighbour and per call
HISTORY: Final = 120
#: log lines kept
LOG_LINES: Final = 1000
#: how long a lost neighbour stays in the overview's alerts, seconds
LOST_ALERT_S: Final = 120.0
#: the routing metric meaning "unreachable" (RFC 8966 section 2.1: 0xFFFF)
ROUTE_INFINITY: Final = 0xFFFF
#: loss above which a neighbour raises an alert (fraction)
LOSS_ALERT: Final = 0.2

_BLOCKS: Final = "▁▂▃▄▅▆▇█"
_HEX: Final = frozenset("0123456789abcdef")


def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> str:
    """The last ``width`` values as block characters scaled 0..``top`` (default: their max)."""
    vals = list(values)[-width:] if width > 0 else []
    nums = [v for v in vals if v is not None]
    hi = top if top is not None else (max(nums) if nums else 0.0)
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        elif hi <= 0:
            out.append(_BLOCKS[0])
        else:
            i = int(min(max(v / hi, 0.0), 1.0) * (len(_BLOCKS) - 1) + 0.5)
            out.append(_BLOCKS[i])
    return "".join(out).rjust(width)


# --------------------------------------------------------------------------- remote text

#: keys whose text may span lines (a message, a bulletin or document body)
_MULTILINE_KEYS: Final = frozenset({"body", "text"})


def clean(value: Any, key: str | None = None) -> Any:
    """``value`` with every string (keys too) made terminal-safe; multi-line only under ``body``/``text``.

    Everything the daemon sends passes through here before the model keeps it:
    names, titles, messages, bulletins and situation values come from other nodes.
    """
    if isinstance(value, str):
        return terminal_safe(value, multiline=key in _MULTILINE_KEYS)
    if isinstance(value, dict):
        return {clean(k) if isinstance(k, str) else k: clean(v, k if isinstance(k, str) else None)
                for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v, key) for v in value]
    return value


# --------------------------------------------------------------------------- strict readers

def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def _int(v: Any) -> int | None:
    return v if type(v) is int else None


class _Bad(ValueError):
    """A row that does not have the shape we need."""


def _need_str(d: Mapping[str, Any], key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _Bad(key)
    return v


def _rows(result: Any, key: str) -> list[Any]:
    """``result[key]`` as a list (a mapping keyed by id becomes its values with that id)."""
    if not isinstance(result, dict):
        raise _Bad(f"result is not an object (wanted {key!r})")
    v = result.get(key)
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return [dict(row, node_id=k) if isinstance(row, dict) else row for k, row in v.items()]
    raise _Bad(f"{key!r} missing")


# --------------------------------------------------------------------------- rows

@dataclass(frozen=True, slots=True)
class Neighbour:
    """One neighbour link as the daemon reports it."""

    node_id: str
    name: str
    role: str
    address: str
    state: str
    rtt_ms: float | None
    loss: float | None
    cost: float | None
    up_since: float | None  #: wall-clock seconds
    tx_packets: int | None
    rx_packets: int | None

    @classmethod
    def parse(cls, d: Any) -> Neighbour:
        if not isinstance(d, dict):
            raise _Bad("neighbour")
        return cls(_need_str(d, "node_id"), _str(d.get("name")) or "", _str(d.get("role")) or "",
                   _str(d.get("address")) or "", _str(d.get("state")) or "",
                   _num(d.get("rtt_ms")), _num(d.get("loss")), _num(d.get("cost")),
                   _num(d.get("up_since")), _int(d.get("tx_packets")), _int(d.get("rx_packets")))


@dataclass(frozen=True, slots=True)
class Route:
    """One route: destination, next hop, metric, seqno, age."""

    destination: str
    name: str
    next_hop: str
    next_hop_name: str
    metric: float | None
    seqno: int | None
    age_s: float | None
    reachable: bool  #: False for a retracted route (infinite metric)

    @classmethod
    def parse(cls, d: Any) -> Route:
        if not isinstance(d, dict):
            raise _Bad("route")
        metric = _num(d.get("metric"))
        reachable = d.get("reachable")
        if not isinstance(reachable, bool):
            reachable = metric is None or metric < ROUTE_INFINITY
        return cls(_need_str(d, "destination"), _str(d.get("name")) or "",
                   _str(d.get("next_hop")) or "", _str(d.get("next_hop_name")) or "",
                   metric, _int(d.get("seqno")), _num(d.get("age_s")), reachable)


@dataclass(frozen=True, slots=True)
class TopoNode:
    """A node of the topology."""

    node_id: str
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class Link:
    """An undirected link of the topology with its cost (``a`` < ``b``)."""

    a: str
    b: str
    cost: float | None


@dataclass(frozen=True, slots=True)
class Topology:
    """The mesh as this node knows it; ``complete`` is False when built from our own links only."""

    nodes: tuple[TopoNode, ...]
    links: tuple[Link, ...]
    complete: bool

    def name_of(self, node_id: str) -> str:
        """Display name of ``node_id`` (its short id if the node has none)."""
        for n in self.nodes:
            if n.node_id == node_id and n.name:
                return n.name
        return node_id[:8]

    def adjacency(self) -> dict[str, list[tuple[str, float | None]]]:
        """node id -> [(neighbour id, cost)], every node present, neighbours sorted by name."""
        adj: dict[str, list[tuple[str, float | None]]] = {n.node_id: [] for n in self.nodes}
        for ln in self.links:
            adj.setdefault(ln.a, []).append((ln.b, ln.cost))
            adj.setdefault(ln.b, []).append((ln.a, ln.cost))
        for v in adj.values():
            v.sort(key=lambda x: (self.name_of(x[0]), x[0]))
        return adj


def _parse_topology(result: Any) -> Topology:
    nodes: dict[str, TopoNode] = {}
    for d in _rows(result, "nodes"):
        if isinstance(d, dict) and isinstance(d.get("node_id"), str):
            nid = d["node_id"]
            nodes[nid] = TopoNode(nid, _str(d.get("name")) or "", _str(d.get("role")) or "")
    links: dict[tuple[str, str], Link] = {}
    for d in _rows(result, "links"):
        if not isinstance(d, dict):
            continue
        a, b = _str(d.get("a")), _str(d.get("b"))
        if a is None or b is None or a == b:
            continue
        a, b = min(a, b), max(a, b)
        cost = _num(d.get("cost"))
        old = links.get((a, b))
        # a link reported from both ends: show the worse of the two costs
        if old is not None and old.cost is not None and (cost is None or old.cost > cost):
            cost = old.cost
        links[(a, b)] = Link(a, b, cost)
        for x in (a, b):
            nodes.setdefault(x, TopoNode(x, "", ""))
    return Topology(tuple(nodes.values()), tuple(links.values()), True)


@dataclass(frozen=True, slots=True)
class Call:
    """One call with its live quality."""

    call_id: str
    peer: str
    peer_name: str
    state: str
    direction: str  #: ``in``/``out`` or the daemon's ``caller``/``callee``
    duration_s: float | None
    rtt_ms: float | None
    jitter_ms: float | None
    loss: float | None
    reason: str  #: why it ended ("" while live)
    setup_ms: float | None

    @property
    def live(self) -> bool:
        """The call has not ended."""
        return self.state not in ("ended", "closed")

    @classmethod
    def parse(cls, d: Any) -> Call:
        if not isinstance(d, dict):
            raise _Bad("call")
        q = d.get("quality")
        q = q if isinstance(q, dict) else {}
        return cls(_need_str(d, "call_id"), _str(d.get("peer")) or "",
                   _str(d.get("peer_name")) or "", _str(d.get("state")) or "",
                   _str(d.get("direction")) or _str(d.get("role")) or "",
                   _num(d.get("duration_s")), _num(q.get("rtt_ms")), _num(q.get("jitter_ms")),
                   _num(q.get("loss")), _str(d.get("reason")) or "", _num(d.get("setup_ms")))


@dataclass(frozen=True, slots=True)
class SyncPeer:
    """Sync with one peer: traffic each way and catch-up progress (None: nothing in flight)."""

    node_id: str
    name: str
    up: bool | None
    last_sync: float | None
    ops_in: int | None
    ops_out: int | None
    bytes_in: int | None
    bytes_out: int | None
    failures: int | None
    progress: float | None  #: 0.0-1.0 of the current catch-up
    expected: int | None

    @classmethod
    def parse(cls, d: Any) -> SyncPeer:
        if not isinstance(d, dict):
            raise _Bad("sync peer")
        nid = _str(d.get("node_id")) or _str(d.get("peer"))
        if nid is None:
            raise _Bad("node_id")
        progress = _num(d.get("progress"))
        expected: int | None = None
        cu = d.get("catch_up")
        if isinstance(cu, dict):
            exp = sum(v for k in ("in_expected", "out_expected")
                      if (v := _int(cu.get(k))) is not None)
            done = sum(v for k in ("in_done", "out_done") if (v := _int(cu.get(k))) is not None)
            expected = exp
            progress = 1.0 if exp <= 0 else min(1.0, done / exp)
        up = d.get("up")
        return cls(nid, _str(d.get("name")) or _str(d.get("peer_name")) or "",
                   up if isinstance(up, bool) else None, _num(d.get("last_sync")),
                   _int(d.get("ops_in")), _int(d.get("ops_out")), _int(d.get("bytes_in")),
                   _int(d.get("bytes_out")), _int(d.get("failures")), progress, expected)


@dataclass(slots=True, eq=False)
class LogLine:
    """One line of the log pane: an event, or ``count`` events of one kind and subject from
    ``first_ts`` to ``ts`` (the text is the latest one's)."""

    ts: float  #: wall-clock seconds (the latest event's)
    kind: str  #: event name, or ``console`` for the console's own notes
    text: str
    count: int = 1
    first_ts: float | None = None
    subject: str = ""
    #: ``MeshModel.log_total`` when the line was appended (is it still in the log?)
    seq: int = 0

    @property
    def span_s(self) -> float:
        """Seconds from the first to the latest event of the line."""
        return 0.0 if self.first_ts is None else max(0.0, self.ts - self.first_ts)


@dataclass(frozen=True, slots=True)
class RelayFlow:
    """A flow this node relays for others (``relay.flows``): a call's media, seen from a relay."""

    source: str
    source_name: str
    destination: str
    destination_name: str
    service: str
    flow_id: int
    packets: int
    bytes: int
    dropped: int
    loss: float | None
    rate_pps: float | None
    age_s: float | None
    idle_s: float | None

    @classmethod
    def parse(cls, d: Any) -> RelayFlow:
        if not isinstance(d, dict):
            raise _Bad("flow")
        fid = _int(d.get("flow_id"))
        if fid is None:
            raise _Bad("flow_id")
        return cls(_need_str(d, "source"), _str(d.get("source_name")) or "",
                   _need_str(d, "destination"), _str(d.get("destination_name")) or "",
                   _str(d.get("service")) or "", fid, _int(d.get("packets")) or 0,
                   _int(d.get("bytes")) or 0, _int(d.get("dropped")) or 0, _num(d.get("loss")),
                   _num(d.get("rate_pps")), _num(d.get("age_s")), _num(d.get("idle_s")))


@dataclass(frozen=True, slots=True)
class Message:
    """A text message this node received (``messages``)."""

    message_id: str
    sender: str
    sender_name: str
    received_ms: int | None
    text: str
    via: str  #: "mail" when it came carried by sync, "" when direct

    @classmethod
    def parse(cls, d: Any) -> Message:
        if not isinstance(d, dict):
            raise _Bad("message")
        return cls(_need_str(d, "message_id"), _str(d.get("from")) or "",
                   _str(d.get("from_name")) or "", _int(d.get("received_ms")),
                   _need_str(d, "text"), _str(d.get("via")) or "")


@dataclass(frozen=True, slots=True)
class Mail:
    """A message this node queued for a node out of reach (``mail.list``)."""

    message_id: str
    to: str
    to_name: str
    queued_ms: int | None
    status: str
    delivered_ms: int | None

    @classmethod
    def parse(cls, d: Any) -> Mail:
        if not isinstance(d, dict):
            raise _Bad("mail")
        return cls(_need_str(d, "message_id"), _str(d.get("to")) or "",
                   _str(d.get("to_name")) or "", _int(d.get("queued_ms")),
                   _str(d.get("status")) or "", _int(d.get("delivered_ms")))


@dataclass(frozen=True, slots=True)
class Alert:
    """Something that needs the admin's attention, with where to look.

    ``detail`` says which peer and which reason in words; ``view`` (a view id) and
    ``select`` (a row key there) are where Enter on the alert leads."""

    text: str
    detail: str = ""
    view: str = ""
    select: str = ""


def _summary(data: Mapping[str, Any], limit: int = 160) -> str:
    """A one-line ``k=v`` rendering of an event's scalar fields."""
    parts = []
    for k, v in data.items():
        if isinstance(v, str | int | float | bool) or v is None:
            s = terminal_safe(str(v))  # one line: a newline in a message must not fake a log line
            if isinstance(v, str) and len(v) == 32 and all(c in _HEX for c in v):
                s = v[:8]  # a NodeId: the short form people type
            parts.append(f"{k}={s[:40]}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- the model

@dataclass(slots=True)
class MeshModel:
    """Everything the console shows; updated by ``apply``/``apply_event``; no I/O, no clock."""

    history: int = HISTORY
    connected: bool = False
    #: why we are not connected, or the socket we are connected to
    connection_note: str = "connecting…"
    status: dict[str, Any] | None = None
    status_at: float | None = None  #: wall time of the last status
    neighbours: dict[str, Neighbour] = field(default_factory=dict)
    rtt_history: dict[str, deque[float | None]] = field(default_factory=dict)
    loss_history: dict[str, deque[float | None]] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    topology: Topology | None = None
    calls: list[Call] = field(default_factory=list)
    call_rtt: dict[str, deque[float | None]] = field(default_factory=dict)
    sync_peers: list[SyncPeer] = field(default_factory=list)
    sync_totals: dict[str, Any] = field(default_factory=dict)
    library_query: str = ""
    library_results: list[dict[str, Any]] = field(default_factory=list)
    library_doc: dict[str, Any] | None = None
    situation: list[dict[str, Any]] = field(default_factory=list)
    bulletins: list[dict[str, Any]] = field(default_factory=list)
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    #: lines ever appended to ``log`` (views use it to append only what is new)
    log_total: int = 0
    #: bumped when a line already in ``log`` changed (a repeated event joined it)
    log_edits: int = 0
    relay_flows: list[RelayFlow] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    outbox: list[Mail] = field(default_factory=list)
    mail_carried: int | None = None
    #: this node's key is an authority in the trust configuration (may publish bulletins)
    authority: bool | None = None
    #: open log lines by (kind, subject), for joining repeated events
    _open_lines: dict[tuple[str, str], LogLine] = field(default_factory=dict)
    #: methods the daemon answered ``unknown_method`` to
    unavailable: set[str] = field(default_factory=set)
    #: last error per method (other than unknown_method)
    errors: dict[str, str] = field(default_factory=dict)
    #: (node id, name, reason, wall time) of neighbours lost recently
    lost: deque[tuple[str, str, str, float]] = field(default_factory=lambda: deque(maxlen=32))
    #: rows dropped because they did not have the expected shape
    malformed: int = 0
    #: bumped on every change; views re-render when it moves
    version: int = 0

    # -- connection -------------------------------------------------------------------

    def set_connected(self, connected: bool, note: str, now: float) -> None:
        """Record a connection change (logged once per change)."""
        if connected != self.connected or note != self.connection_note:
            self.note(("connected to " if connected else "disconnected: ") + note, now)
        self.connected = connected
        self.connection_note = note
        if connected:
            self.unavailable.clear()
            self.errors.clear()
        self.version += 1

    def note(self, text: str, now: float) -> None:
        """Add the console's own line to the log."""
        self.log.append(LogLine(now, "console", text))
        self.log_total += 1
        self.version += 1

    def set_unavailable(self, method: str) -> None:
        """The daemon does not serve ``method``."""
        self.unavailable.add(method)
        self.version += 1

    def set_error(self, method: str, message: str) -> None:
        """``method`` failed with ``message`` (shown in its screen)."""
        self.errors[method] = terminal_safe(message, multiline=True)
        self.version += 1

    # -- results ----------------------------------------------------------------------

    def apply(self, method: str, result: Any, now: float) -> None:
        """Apply a polled result of ``method``; a malformed one is counted and ignored."""
        handler = _APPLY.get(method)
        if handler is None:
            return
        try:
            handler(self, clean(result), now)
        except _Bad as exc:
            self.malformed += 1
            self.set_error(method, f"daemon sent a malformed {method} result ({exc})")
            return
        self.errors.pop(method, None)
        self.version += 1

    def _keep(self, parse: Callable[[Any], Any], rows: Iterable[Any]) -> list[Any]:
        out = []
        for r in rows:
            try:
                out.append(parse(r))
            except _Bad:
                self.malformed += 1
        return out

    def _apply_status(self, result: Any, now: float) -> None:
        if not isinstance(result, dict) or not isinstance(result.get("node_id"), str):
            raise _Bad("status")
        self.status = result
        self.status_at = now

    def _apply_neighbours(self, result: Any, now: float) -> None:
        rows: list[Neighbour] = self._keep(Neighbour.parse, _rows(result, "neighbours"))
        self.neighbours = {n.node_id: n for n in rows}
        for n in rows:
            self.rtt_history.setdefault(n.node_id, deque(maxlen=self.history)).append(n.rtt_ms)
            self.loss_history.setdefault(n.node_id, deque(maxlen=self.history)).append(n.loss)
        for hist in (self.rtt_history, self.loss_history):
            for gone in set(hist) - set(self.neighbours):
                del hist[gone]

    def _apply_routes(self, result: Any, now: float) -> None:
        self.routes = sorted(self._keep(Route.parse, _rows(result, "routes")),
                             key=lambda r: (r.name or r.destination, r.destination))

    def _apply_topology(self, result: Any, now: float) -> None:
        self.topology = _parse_topology(result)

    def _apply_calls(self, result: Any, now: float) -> None:
        calls: list[Call] = self._keep(Call.parse, _rows(result, "calls"))
        # live calls first, then ended ones newest first (the daemon lists oldest first)
        self.calls = [c for c in calls if c.live] + [c for c in reversed(calls) if not c.live]
        for c in self.calls:
            self.call_rtt.setdefault(c.call_id, deque(maxlen=self.history)).append(c.rtt_ms)
        for gone in set(self.call_rtt) - {c.call_id for c in self.calls}:
            del self.call_rtt[gone]

    def _apply_sync(self, result: Any, now: float) -> None:
        self.sync_peers = self._keep(SyncPeer.parse, _rows(result, "peers"))
        assert isinstance(result, dict)  # _rows checked
        self.sync_totals = {k: v for k, v in result.items() if k != "peers"}

    def _apply_situation(self, result: Any, now: float) -> None:
        self.situation = [r for r in _first_list(result, ("records", "situation", "entries"))
                          if isinstance(r, dict)]

    def _apply_bulletins(self, result: Any, now: float) -> None:
        self.bulletins = [r for r in _first_list(result, ("bulletins",)) if isinstance(r, dict)]
        trust = result.get("trust") if isinstance(result, dict) else None
        if isinstance(trust, dict) and isinstance(trust.get("authority"), bool):
            self.authority = trust["authority"]

    def _apply_flows(self, result: Any, now: float) -> None:
        self.relay_flows = self._keep(RelayFlow.parse, _rows(result, "flows"))

    def _apply_messages(self, result: Any, now: float) -> None:
        # newest first: the daemon lists them oldest first
        self.messages = list(reversed(self._keep(Message.parse, _rows(result, "messages"))))

    def _apply_mail(self, result: Any, now: float) -> None:
        self.outbox = sorted(self._keep(Mail.parse, _rows(result, "outbox")),
                             key=lambda m: -(m.queued_ms or 0))
        assert isinstance(result, dict)  # _rows checked
        self.mail_carried = _int(result.get("carried"))

    def apply_search(self, query: str, result: Any) -> None:
        """Results of ``library.search`` for ``query``."""
        self.library_query = query
        result = clean(result)
        try:
            self.library_results = [r for r in _rows(result, "results") if isinstance(r, dict)
                                    and isinstance(r.get("doc_id"), str)]
            self.errors.pop("library.search", None)
        except _Bad as exc:
            self.malformed += 1
            self.library_results = []
            self.errors["library.search"] = f"daemon sent a malformed result ({exc})"
        self.version += 1

    def apply_document(self, result: Any) -> None:
        """A document from ``library.show``."""
        result = clean(result)
        doc = result.get("document", result) if isinstance(result, dict) else None
        if isinstance(doc, dict):
            self.library_doc = doc
            self.errors.pop("library.show", None)
        else:
            self.malformed += 1
            self.errors["library.show"] = "daemon sent a malformed document"
        self.version += 1

    # -- events -----------------------------------------------------------------------

    def apply_event(self, name: str, data: Mapping[str, Any], ts: float | None,
                    now: float) -> None:
        """Apply a pushed event and log it; ``ts`` is the daemon's wall time (None: unknown)."""
        name, data = terminal_safe(name), clean(dict(data))
        when = ts if ts is not None else now
        nid = _str(data.get("node_id"))
        # the name before the event changes anything: a lost neighbour is still named
        who = "" if nid is None else self.name_of(nid) + " "
        if name == "neighbour.up":
            try:
                n = Neighbour.parse(dict(data))
            except _Bad:
                self.malformed += 1
            else:
                self.neighbours[n.node_id] = n
        elif name == "neighbour.lost" and nid is not None:
            gone = self.neighbours.pop(nid, None)
            self.lost.append((nid, gone.name if gone else "", _str(data.get("reason")) or "",
                              when))
        if name == "neighbour.up" and nid is not None:
            who = self.name_of(nid) + " "
        self._log_event(name, _subject(data), who + _summary(data), when)
        self.version += 1

    def _log_event(self, kind: str, subject: str, text: str, when: float) -> None:
        """Append an event to the log, or join it to the open line of the same kind and subject
        when that line began at most ``AGGREGATE_S`` earlier."""
        key = (kind, subject)
        line = self._open_lines.get(key)
        if line is not None and line.first_ts is not None and (
                0 <= when - line.first_ts <= AGGREGATE_S) and (
                self.log_total - line.seq < (self.log.maxlen or 0)):
            line.count += 1
            line.ts = when
            line.text = text
            self.log_edits += 1
            return
        line = LogLine(when, kind, text, first_ts=when, subject=subject, seq=self.log_total)
        self.log.append(line)
        self.log_total += 1
        self._open_lines[key] = line
        if len(self._open_lines) > 256:  # forget the oldest open lines
            for k in list(self._open_lines)[:128]:
                del self._open_lines[k]

    # -- derived ----------------------------------------------------------------------

    def name_of(self, node_id: str) -> str:
        """Best display name we know for ``node_id`` (short id otherwise)."""
        n = self.neighbours.get(node_id)
        if n is not None and n.name:
            return n.name
        if self.status and self.status.get("node_id") == node_id:
            return str(self.status.get("name") or node_id[:8])
        if self.topology is not None:
            return self.topology.name_of(node_id)
        for r in self.routes:
            if r.destination == node_id and r.name:
                return r.name
        return node_id[:8]

    def uptime_s(self, now: float) -> float | None:
        """The daemon's uptime at ``now`` (its last report plus the time since)."""
        if self.status is None or self.status_at is None:
            return None
        up = _num(self.status.get("uptime_s"))
        return None if up is None else up + max(0.0, now - self.status_at)

    def effective_topology(self) -> Topology | None:
        """The topology from the daemon, else one built from our own neighbour links."""
        if self.topology is not None:
            return self.topology
        if self.status is None:
            return None
        me = str(self.status.get("node_id"))
        nodes = [TopoNode(me, str(self.status.get("name") or ""),
                          str(self.status.get("role") or ""))]
        links = []
        for n in self.neighbours.values():
            nodes.append(TopoNode(n.node_id, n.name, n.role))
            links.append(Link(min(me, n.node_id), max(me, n.node_id), n.cost))
        return Topology(tuple(nodes), tuple(links), False)

    def alerts(self, now: float) -> list[Alert]:
        """What needs the admin's attention, most serious first, each with its details."""
        out: list[Alert] = []
        if not self.connected:
            out.append(Alert(f"no daemon: {self.connection_note}",
                             "the console retries by itself; start meshd or check --socket"))
            return out
        st = self.status or {}
        if st.get("ready") is False:
            out.append(Alert("daemon is not ready", "it is still starting (replaying its store "
                             "or binding its listeners)", "log"))
        if st and not self.neighbours:
            out.append(Alert("no neighbours: this node is isolated",
                             "no link is up: check the interfaces, --peer addresses and "
                             "whether other nodes are in range", "neighbours"))
        for n in sorted(self.neighbours.values(), key=lambda n: n.name):
            if n.loss is not None and n.loss > LOSS_ALERT:
                who = n.name or n.node_id[:8]
                out.append(Alert(
                    f"high loss to {who}: {100 * n.loss:.0f}%",
                    f"{who} ({n.node_id}) at {n.address or 'an unknown address'}: "
                    f"{100 * n.loss:.0f}% of its recent hellos did not arrive; RTT "
                    f"{'-' if n.rtt_ms is None else f'{n.rtt_ms:.1f} ms'}, link cost "
                    f"{'-' if n.cost is None else f'{n.cost:.0f}'}", "neighbours", n.node_id))
        for nid, name, reason, when in reversed(self.lost):
            if now - when <= LOST_ALERT_S and nid not in self.neighbours:
                who = name or self.name_of(nid)
                out.append(Alert(
                    f"lost neighbour {who} {_ago(now - when)} ago"
                    + (f" ({reason})" if reason else ""),
                    f"{who} ({nid}): link down {_ago(now - when)} ago, "
                    f"{reason or 'no reason given'}; the log has its events", "log", nid[:8]))
        drops = st.get("drops")
        if isinstance(drops, dict):
            counts = {str(r): v for r, v in drops.items() if type(v) is int and v > 0}
            total = sum(counts.values())
            if total:
                top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                head = ", ".join(f"{n} {drop_reason(r)}" for r, n in top[:2])
                more = f" and {len(top) - 2} more reasons" if len(top) > 2 else ""
                out.append(Alert(f"{total} packets refused: {head}{more}",
                                 self._drops_detail(top, st.get("drop_sources"))))
        for method, msg in sorted(self.errors.items()):
            out.append(Alert(f"{method}: {msg}", f"the daemon's answer to {method}: {msg}"))
        return out

    def _drops_detail(self, top: list[tuple[str, int]], sources: Any) -> str:
        """Per reason: how many, what it means, and from which peers (``status.drop_sources``)."""
        by_reason: dict[str, list[str]] = {}
        if isinstance(sources, list):
            for s in sources:
                if not isinstance(s, dict):
                    continue
                r, p, n = _str(s.get("reason")), _str(s.get("peer")), _int(s.get("count"))
                if r is None or p is None or n is None:
                    continue
                who = self._short_name(p) if p else "no single peer"
                by_reason.setdefault(r, []).append(f"{who} ×{n}")
        lines = []
        for r, n in top:
            line = f"{n} × {r}: {drop_reason(r)}"
            if r in by_reason:
                line += " — from " + ", ".join(by_reason[r])
            lines.append(line)
        if not isinstance(sources, list):
            lines.append("(this daemon does not say which peers; the meshd log names each "
                         "peer's first drop of a kind)")
        return "\n".join(lines)

    def _short_name(self, short: str) -> str:
        """``name (short id)`` for a peer named by its short id, when we know it."""
        for nid in [*self.neighbours, *(r.destination for r in self.routes)]:
            if nid.startswith(short):
                name = self.name_of(nid)
                return f"{name} ({short})" if name != short else short
        return short


#: what a drop reason means, in words (the reasons meshd and its services count)
DROP_REASONS: Final[Mapping[str, str]] = {
    "bad_hello": "hellos that did not parse", "oversize": "packets over the size limit",
    "short": "truncated packets", "version": "packets of another protocol version",
    "malformed": "messages that did not parse", "field": "messages with a bad field",
    "channel": "datagrams on an unknown channel", "empty": "empty datagrams",
    "service": "packets for a service this node does not run",
    "hop_limit": "packets whose hop limit ran out here",
    "no_route": "packets for a destination this node has no route to",
    "flood": "handshakes refused as a flood", "info_rate": "info requests over the rate limit",
    "signature": "announcements with a bad signature", "stale": "stale announcements",
    "future": "announcements dated in the future", "replay": "replayed messages",
    "unfeasible": "route updates that failed the feasibility condition",
    "fragment": "bad fragments", "fragment_quota": "fragments over a sender's quota",
    "pending_full": "messages refused while the queue was full",
    "early-datagram": "datagrams before the link handshake finished",
    "early-stream": "streams before the link handshake finished",
    "stream-overflow": "streams that sent more than they may",
    "media-unknown-flow": "call media for no known call",
    "relay-unlatched": "call media from an unauthenticated address",
}


def drop_reason(reason: str) -> str:
    """``reason`` in words (the reason itself when unknown)."""
    return DROP_REASONS.get(reason, reason.replace("_", " ").replace("-", " "))


def _subject(data: Mapping[str, Any]) -> str:
    """What an event is about (a node, a call, a destination, an owner), for joining repeats."""
    for k in ("node_id", "call_id", "destination", "owner", "message_id", "to"):
        v = data.get(k)
        if isinstance(v, str):
            return v
    return ""


def _ago(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"


def _first_list(result: Any, keys: Sequence[str]) -> list[Any]:
    """``result[k]`` for the first of ``keys`` present, else the first list member."""
    if isinstance(result, list):
        return result
    if not isinstance(result, dict):
        raise _Bad("result is not an object")
    for k in keys:
        v = result.get(k)
        if isinstance(v, list):
            return v
    for v in result.values():
        if isinstance(v, list):
            return v
    raise _Bad("no list in result")


_APPLY: Final[Mapping[str, Callable[[MeshModel, Any, float], None]]] = {
    "status": MeshModel._apply_status,
    "neighbours": MeshModel._apply_neighbours,
    "routes": MeshModel._apply_routes,
    "topology": MeshModel._apply_topology,
    "calls": MeshModel._apply_calls,
    "sync.status": MeshModel._apply_sync,
    "situation.list": MeshModel._apply_situation,
    "bulletin.list": MeshModel._apply_bulletins,
    "relay.flows": MeshModel._apply_flows,
    "messages": MeshModel._apply_messages,
    "mail.list": MeshModel._apply_mail,
}


# --------------------------------------------------------------------------- the poller

class Client(Protocol):
    """The part of ``ControlClient`` the poller uses (a seam for tests)."""

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any: ...

    async def subscribe(self, patterns: list[str]) -> Any: ...

    async def close(self) -> None: ...


Connect = Callable[[Path], Awaitable[Client]]


async def _connect(path: Path) -> Client:
    return await ControlClient.connect(path, timeout=2.0)


class Poller:
    """Keeps ``model`` current from the daemon on ``socket_path``; reconnects by itself."""

    #: a request that takes longer than this counts as a dead daemon, seconds
    CALL_TIMEOUT_S: Final = 10.0
    #: reconnect backoff bounds, seconds
    BACKOFF_MIN_S: Final = 0.25
    BACKOFF_MAX_S: Final = 2.0

    def __init__(self, socket_path: Path, model: MeshModel, on_change: Callable[[], None], *,
                 interval_s: float = 1.0, clock: Callable[[], float] = time.time,
                 connect: Connect = _connect) -> None:
        self.socket_path = socket_path
        self.model = model
        self.on_change = on_change
        self.interval_s = interval_s
        self.clock = clock
        self._connect = connect
        self._client: Client | None = None
        self._wake = asyncio.Event()
        self._due: set[str] = set()
        #: completed connections (1 after the first, 2 after a reconnect, ...)
        self.connections = 0

    def poke(self, *methods: str) -> None:
        """Poll ``methods`` (all polled methods if none) now rather than at their next turn."""
        self._due.update(methods or POLLED)
        self._wake.set()

    async def request(self, method: str, params: dict[str, Any] | None = None, *,
                      timeout: float | None = None) -> Any:
        """An on-demand request; ``ControlError`` as the daemon sent it, ``NoDaemon`` if none."""
        client = self._client
        if client is None:
            raise NoDaemon(self.model.connection_note)
        return await client.call(method, params, timeout=timeout or self.CALL_TIMEOUT_S)

    async def run(self) -> None:
        """Connect, poll and follow events until cancelled, reconnecting whenever needed."""
        backoff = self.BACKOFF_MIN_S
        while True:
            try:
                client = await self._connect(self.socket_path)
            except (NoDaemon, LocalProtocolError) as exc:  # LocalProtocolError: an unsafe socket
                self.model.set_connected(False, str(exc), self.clock())
                self.on_change()
                await asyncio.sleep(backoff)
                backoff = min(self.BACKOFF_MAX_S, backoff * 2)
                continue
            backoff = self.BACKOFF_MIN_S
            try:
                await self._serve(client)
            except NoDaemon as exc:
                self.model.set_connected(False, str(exc), self.clock())
                self.on_change()
            except Exception as exc:  # the adapter's outer boundary: a bug must not freeze us
                log.exception("console: polling %s failed", self.socket_path)
                self.model.set_connected(False, f"console error ({type(exc).__name__}: {exc}); "
                                         "reconnecting", self.clock())
                self.on_change()
                await asyncio.sleep(self.BACKOFF_MAX_S)
            finally:
                self._client = None
                with contextlib.suppress(Exception):
                    await client.close()
            await asyncio.sleep(self.BACKOFF_MIN_S)

    async def _serve(self, client: Client) -> None:
        subscription = await client.subscribe(list(EVENT_PATTERNS))
        self._client = client
        self.connections += 1
        self.model.set_connected(True, str(self.socket_path), self.clock())
        events = asyncio.create_task(self._follow(subscription), name="tui-events")
        try:
            tick = 0
            self._due.update(POLLED)
            while True:
                if events.done():
                    events.result()  # raises NoDaemon when the stream ended
                    raise NoDaemon("event stream ended")
                due = {m for m, every in POLLED.items() if tick % every == 0} | self._due
                self._due.clear()
                for method in POLLED:  # fixed order: status first
                    if method in due and method not in self.model.unavailable:
                        await self._fetch(client, method)
                self.on_change()
                tick += 1
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
        finally:
            await cancel_and_wait(events, NoDaemon)

    async def _fetch(self, client: Client, method: str) -> None:
        try:
            result = await client.call(method, timeout=self.CALL_TIMEOUT_S)
        except ControlError as exc:
            if exc.code == "unknown_method":
                self.model.set_unavailable(method)
            else:
                self.model.set_error(method, exc.message)
            return
        self.model.apply(method, result, self.clock())

    async def _follow(self, subscription: Any) -> None:
        async for name, data in subscription:
            self.model.apply_event(name, data, getattr(subscription, "last_ts", None),
                                   self.clock())
            family = name.split(".", 1)[0]
            if family == "route":
                self.poke("routes", "topology")
            elif family == "neighbour":
                self.poke("neighbours", "status", "topology")
            elif family == "call":
                self.poke("calls")
            elif family == "sync":
                self.poke("sync.status")
            elif family in ("situation", "bulletin"):
                self.poke("situation.list", "bulletin.list")
            elif family == "message":
                self.poke("messages")
            elif family == "mail":
                self.poke("mail.list", "messages")
            self.on_change()
