"""OpenMetrics for Prometheus: the node's live state, read on every scrape.

Theory of operation
-------------------
``NodeCollector`` is a prometheus-client custom collector: it keeps no
counters of its own.  On each scrape it reads the node (neighbour table,
routing table, link stats, drop counters, forwarding counters) and asks every
application service that is a ``MetricsSource`` (``meshd.services.api``) for
its families (sync, library, voice contribute theirs), so meshd never imports
an application package.  Families of the same name are merged and samples
with equal labels summed: every component adds its own
``carmesh_drops_total{reason}``.

``MetricsServer`` is a minimal HTTP/1.1 server on the node's event loop
(``asyncio.start_server``), so collection runs on the loop thread that owns the
state — no locks, no torn reads.  It answers ``GET``/``HEAD /metrics`` in the
format the scraper asks for (OpenMetrics when ``Accept`` says
``application/openmetrics-text``, as Prometheus does; the classic text format
otherwise) and nothing else; requests are size- and time-limited and closed
after one answer.  It binds ``127.0.0.1:7481`` unless the configuration names
another address (``--metrics ADDR:PORT``) or ``off``.  prometheus-client (about
5 MB) is imported by the first scrape, in a worker thread, not at start: a node
nobody scrapes never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from meshd import __version__
from meshd.config import DEFAULT_METRICS, parse_metrics_address
from meshd.routing.table import INFINITY
from meshd.services.api import Metric, MetricsSource

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric as PromMetric

    from meshd.node import Node

__all__ = ["DEFAULT_METRICS", "MetricsServer", "NodeCollector", "merge", "node_metrics",
           "parse_metrics_address"]

logger = logging.getLogger(__name__)

#: request line plus headers, bytes; seconds to send them; scrapes served at once
MAX_REQUEST = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16


# ------------------------------------------------------------------ what a node reports

Samples = list[tuple[tuple[str, ...], float]]


def _peer_samples(node: Node) -> tuple[Samples, Samples, Samples, Samples]:
    rtt: Samples = []
    loss: Samples = []
    cost: Samples = []
    info: Samples = []
    for peer in node.neighbours.links():
        stats = node.neighbours.stats(peer)
        key = (peer.hex(),)
        if stats.rtt_ms is not None:
            rtt.append((key, stats.rtt_ms / 1000.0))
        loss.append((key, float(stats.loss)))
        cost.append((key, float(stats.cost)))
        ann = node.announcement_of(peer)
        info.append(((peer.hex(), ann.name if ann else "", ann.role.value if ann else "",
                      stats.state.value), 1.0))
    return rtt, loss, cost, info


def node_metrics(node: Node) -> list[Metric]:
    """The node's own families (links, routing, forwarding, its drop counters)."""
    rtt, loss, cost, info = _peer_samples(node)
    routes = node.routing.routes(node._now())
    me = node.identity.node_id
    reachable = sum(1 for r in routes if r.selected and r.destination != me
                    and r.metric < INFINITY)
    relay_drops = node.relay_drop_counts()
    return [
        Metric("carmesh_node_info", "gauge", "This node: id, name, role and version (always 1).",
               ("node_id", "name", "role", "version"),
               (((me.hex(), node.name, node.role, __version__), 1.0),)),
        Metric("carmesh_neighbours", "gauge",
               "Usable neighbours (links whose hellos arrive), as in `meshctl status`.",
               samples=(((), float(len(node.neighbours.peers()))),)),
        Metric("carmesh_routes", "gauge",
               "Destinations in the routing table, as in `meshctl status`.",
               samples=(((), float(len(node.routing.destinations()))),)),
        Metric("carmesh_routes_reachable", "gauge",
               "Other nodes with a selected route of finite metric.",
               samples=(((), float(reachable)),)),
        Metric("carmesh_neighbour_info", "gauge",
               "A neighbour link: its name, role and state (always 1; join on peer).",
               ("peer", "name", "role", "state"), tuple(info)),
        Metric("carmesh_link_rtt_seconds", "gauge",
               "Smoothed round-trip time of the link to a neighbour (hello/IHU).",
               ("peer",), tuple(rtt)),
        Metric("carmesh_link_loss_ratio", "gauge",
               "Share of the neighbour's recent hellos that did not arrive (0..1).",
               ("peer",), tuple(loss)),
        Metric("carmesh_link_cost", "gauge",
               "Routing cost of the link to a neighbour (ETX plus RTT penalty; 65535 = unusable).",
               ("peer",), tuple(cost)),
        Metric("carmesh_relayed_packets_total", "counter",
               "Mesh packets this node forwarded for others.",
               samples=(((), float(node.forwarded)),)),
        Metric("carmesh_relay_drops_total", "counter",
               "Packets for others this node could not forward, by where they were lost.",
               ("where",), tuple(((w,), float(n)) for w, n in sorted(relay_drops.items()))),
        Metric("carmesh_link_dials_total", "counter",
               "Connect attempts to static and discovered peers, by kind.",
               ("kind",), tuple(((k,), float(n)) for k, n in sorted(node.links.dials.items()))),
        Metric("carmesh_link_refused_total", "counter",
               "Dials and links the far side refused (closed in or right after the handshake), "
               "by the reason it gave.",
               ("reason",),
               tuple(((r,), float(n)) for r, n in sorted(node.links.refused_by_peer.items()))),
        Metric("carmesh_drops_total", "counter",
               "Refused or malformed input, by reason, over the node, its cores and adapters.",
               ("reason",),
               tuple(((r,), float(n)) for r, n in sorted(node.core_drop_counts().items()))),
    ]


def merge(families: Iterable[Metric]) -> list[Metric]:
    """Families with the same name merged (samples with equal labels summed), in first-seen order.

    A family whose kind or label names disagree with an earlier one of the same name is
    left out and logged: a scrape never fails because one service misreports.
    """
    merged: dict[str, tuple[Metric, dict[tuple[str, ...], float]]] = {}
    for fam in families:
        have = merged.get(fam.name)
        if have is None:
            have = merged[fam.name] = (fam, {})
        elif (have[0].kind, have[0].labels) != (fam.kind, fam.labels):
            logger.warning("metric %s reported twice with different kind or labels; "
                           "the second is left out", fam.name)
            continue
        values = have[1]
        for labels, value in fam.samples:
            values[labels] = values.get(labels, 0.0) + value
    return [Metric(first.name, first.kind, first.help, first.labels, tuple(values.items()))
            for first, values in merged.values()]


class NodeCollector:
    """A prometheus-client collector that reads ``node`` and its services on every scrape."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def families(self) -> list[Metric]:
        fams = node_metrics(self._node)
        for svc in self._node.app_services():
            if isinstance(svc, MetricsSource):
                try:
                    fams.extend(svc.metrics())
                except Exception:  # one service failing must not fail the scrape
                    logger.exception("metrics of %s", type(svc).__name__)
        return merge(fams)

    def collect(self) -> Iterator[PromMetric]:
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        for fam in self.families():
            prom: GaugeMetricFamily | CounterMetricFamily
            if fam.kind == "counter":
                prom = CounterMetricFamily(fam.name, fam.help, labels=fam.labels)
            else:
                prom = GaugeMetricFamily(fam.name, fam.help, labels=fam.labels)
            for labels, value in fam.samples:
                prom.add_metric(list(labels), value)
            yield prom


# ------------------------------------------------------------------ the HTTP endpoint

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class MetricsServer:
    """``GET /metrics`` on the node's event loop (see the module docstring)."""

    def __init__(self, node: Node, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._node = node
        self._registry: CollectorRegistry | None = None
        self._server: asyncio.Server | None = None
        self._active = 0

    @property
    def registry(self) -> CollectorRegistry:
        """The node's collector registry (built, and prometheus-client imported, on first use)."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry(auto_describe=False)
            registry.register(NodeCollector(self._node))
            with contextlib.suppress(Exception):  # /proc missing: no process_* metrics
                ProcessCollector(registry=registry)
            self._registry = registry
        return self._registry

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind and serve; raises ``OSError`` if the address is taken or not ours."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port,
                                                  limit=MAX_REQUEST)
        sock = self._server.sockets[0].getsockname()
        self.port = int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._active += 1
        try:
            if self._active > MAX_CONNECTIONS:
                await self._respond(writer, 503, b"busy\n", "text/plain; charset=utf-8")
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except TimeoutError:
                await self._respond(writer, 408, b"", "text/plain; charset=utf-8")
                return
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"", "text/plain; charset=utf-8")
                return
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            await self._answer(head, writer)
        except ConnectionError:
            pass
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._respond(writer, 400, b"bad request\n", "text/plain; charset=utf-8")
            return
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path != "/metrics":
            await self._respond(writer, 404, b"carmesh metrics are at /metrics\n",
                                "text/plain; charset=utf-8")
            return
        if method not in ("GET", "HEAD"):
            await self._respond(writer, 405, b"GET only\n", "text/plain; charset=utf-8",
                                extra="Allow: GET, HEAD\r\n")
            return
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        if "prometheus_client.exposition" not in sys.modules:  # first scrape: off the loop
            await asyncio.to_thread(importlib.import_module, "prometheus_client.exposition")
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        await self._respond(writer, 200, body, content_type, head_only=method == "HEAD")

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes,
                       content_type: str, *, extra: str = "", head_only: bool = False) -> None:
        header = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n")
        writer.write(header.encode("latin-1") + (b"" if head_only else body))
        await writer.drain()

