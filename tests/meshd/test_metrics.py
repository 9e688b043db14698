"""The OpenMetrics adapter in process: address parsing, merging, the collector and its HTTP endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from meshd.config import Config, ConfigError, load_config, parse_metrics_address
from meshd.core.channels import Channel
from meshd.core.identity import Identity
from meshd.metrics import MetricsServer, merge
from meshd.node import Node
from meshd.services.api import Metric

PEER = Identity.generate().node_id


def test_metrics_address_forms() -> None:
    assert parse_metrics_address("off") is None
    assert parse_metrics_address("OFF") is None
    assert parse_metrics_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_metrics_address("0.0.0.0:7481") == ("0.0.0.0", 7481)
    assert parse_metrics_address("[::1]:7481") == ("::1", 7481)
    # a port alone stays on loopback: only a named address leaves it
    assert parse_metrics_address(":9000") == ("127.0.0.1", 9000)
    assert parse_metrics_address("9000") == ("127.0.0.1", 9000)
    assert parse_metrics_address("10.0.0.1") == ("10.0.0.1", 7481)
    for bad in ("nowhere:1", "1.2.3.4:99999", "1.2.3.4:x"):
        with pytest.raises(ConfigError):
            parse_metrics_address(bad)


def test_metrics_and_log_format_config_keys(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('metrics = "off"\nlog-format = "json"\n')
    cfg = load_config(f)
    assert cfg.metrics == "off" and cfg.log_format == "json"
    assert Config().metrics is None and Config().log_format == "text"
    for bad in ('metrics = 7481\n', 'metrics = "example.org:80"\n', 'log-format = "xml"\n'):
        f.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(f)


def test_merge_sums_equal_labels_and_refuses_a_conflicting_family() -> None:
    a = Metric("carmesh_drops_total", "counter", "h", ("reason",), ((("x",), 1.0), (("y",), 2.0)))
    b = Metric("carmesh_drops_total", "counter", "h", ("reason",), ((("x",), 3.0),))
    bad = Metric("carmesh_drops_total", "gauge", "h", ("reason",), ((("x",), 100.0),))
    out = merge([a, bad, b])
    assert len(out) == 1 and dict(out[0].samples) == {("x",): 4.0, ("y",): 2.0}


class _Service:
    """The least a NodeService needs, plus ``metrics()``."""

    def __init__(self, fams: Iterable[Metric]) -> None:
        self.fams = list(fams)

    def handlers(self) -> dict[str, object]:
        return {}

    def stream_services(self) -> dict[str, object]:
        return {}

    def neighbour_up(self, peer: bytes) -> None: ...

    def neighbour_lost(self, peer: bytes) -> None: ...

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def metrics(self) -> list[Metric]:
        return self.fams


def _scrape(node: Node) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    server = MetricsServer(node, "127.0.0.1", 0)
    from prometheus_client import generate_latest

    text = generate_latest(server.registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_routing_and_service_drops_reach_status_and_metrics(tmp_path: Path) -> None:
    node = Node(Config(state_dir=tmp_path, name="m"))
    node.add_service(_Service([Metric("carmesh_drops_total", "counter", "h", ("reason",),
                                      ((("op-forged",), 2.0), (("malformed",), 1.0)))]))
    node.routing.neighbour_up(PEER, 256, node._now())
    node.datagram_received(PEER, bytes([Channel.ROUTING]) + b"\x80")  # routing refuses it
    node.datagram_received(PEER, bytes([9]))  # unknown channel: the node refuses it
    assert node.routing.drops.total == 1
    counts = node.drop_counts()
    assert counts["channel"] == 1 and counts["op-forged"] == 2
    assert sum(counts.values()) == 1 + 1 + 3  # routing's drop is in the status figures
    drops = _scrape(node)["carmesh_drops_total"]
    assert {dict(k)["reason"]: v for k, v in drops.items()} == counts


def test_endpoint_http(tmp_path: Path) -> None:
    node = Node(Config(state_dir=tmp_path, name="m"))

    async def main() -> list[bytes]:
        server = MetricsServer(node, "127.0.0.1", 0)
        await server.start()
        try:
            out = []
            for req in (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; "
                        b"version=1.0.0\r\n\r\n",
                        b"GET / HTTP/1.1\r\n\r\n", b"POST /metrics HTTP/1.1\r\n\r\n",
                        b"garbage\r\n\r\n", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000):
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(req)
                await w.drain()
                out.append(await asyncio.wait_for(r.read(), 10))
                w.close()
            return out
        finally:
            await server.close()

    plain, om, root, post, garbage, huge = asyncio.run(main())
    head, _, body = plain.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"text/plain; version=0.0.4" in head
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"carmesh_neighbours", "carmesh_routes", "carmesh_drops", "carmesh_relayed_packets",
            "carmesh_link_rtt_seconds"} <= names
    head, _, body = om.partition(b"\r\n\r\n")
    assert b"application/openmetrics-text" in head and body.endswith(b"# EOF\n")
    fams = {f.name: f for f in openmetrics_families(body.decode())}
    assert fams["carmesh_relayed_packets"].type == "counter"
    assert fams["carmesh_neighbours"].samples[0].value == 0
    assert root.startswith(b"HTTP/1.1 404") and post.startswith(b"HTTP/1.1 405")
    assert garbage.startswith(b"HTTP/1.1 400") and huge.startswith(b"HTTP/1.1 431")


ISSUE_17 = {"carmesh_neighbours", "carmesh_routes", "carmesh_link_rtt_seconds",
            "carmesh_link_loss_ratio", "carmesh_link_cost", "carmesh_calls",
            "carmesh_relayed_packets_total", "carmesh_relay_drops_total", "carmesh_sync_ops",
            "carmesh_sync_backlog_ops", "carmesh_bulletins", "carmesh_mail_carried",
            "carmesh_store_bytes", "carmesh_drops_total"}


def test_docs_list_every_metric_and_the_dashboard_uses_only_those() -> None:
    import json
    import re

    docs = Path(__file__).parents[2] / "docs"
    table = set(re.findall(r"^\| `(carmesh_[a-z_]+)` \|", (docs / "metrics.md").read_text(),
                           re.M))
    assert table >= ISSUE_17
    dash = json.loads((docs / "monitoring" / "grafana-dashboard.json").read_text())
    used: set[str] = set()
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            used |= set(re.findall(r"carmesh_[a-z_]+", t["expr"]))
    used |= set(re.findall(r"carmesh_[a-z_]+", json.dumps(dash["templating"])))
    assert used <= table and len(used) >= 15
    prom = (docs / "monitoring" / "prometheus.yml").read_text()
    assert "127.0.0.1:7481" in prom and "job_name: carmesh" in prom
