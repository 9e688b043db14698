"""Real daemons on loopback: the OpenMetrics endpoint agrees with `meshctl`, JSON logs parse."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemons import Cluster, Daemon, free_udp_port, wait_until

pytestmark = pytest.mark.slow

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def documented_metrics() -> set[str]:
    """The metric names in docs/metrics.md's table."""
    text = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(carmesh_[a-z_]+)` \|", text, re.M))


def exposed_metrics(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return set(re.findall(r"^# HELP (carmesh_\S+) ", text, re.M))


def by(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for k, v in samples.get(name, {}).items()}


def one(samples: Samples, name: str) -> float:
    return samples[name][()]


def _links_agree(d: Daemon, port: int) -> bool | str:
    """One scrape and one `meshctl neighbours` that read the same link state."""
    m = scrape(port)
    rc, res = d.meshctl("neighbours")
    assert rc == 0
    nbs = {n["node_id"]: n for n in res["neighbours"]}
    rtt = by(m, "carmesh_link_rtt_seconds", "peer")
    loss = by(m, "carmesh_link_loss_ratio", "peer")
    cost = by(m, "carmesh_link_cost", "peer")
    assert set(cost) == set(nbs) == set(loss), (cost, nbs)
    for peer, n in nbs.items():
        assert len(peer) == 32  # full NodeIds, not short ones
        if cost[peer] != n["cost"] or round(loss[peer], 4) != n["loss"]:
            return f"cost/loss moved: {peer[:8]}"
        if n["rtt_ms"] is None or round(rtt[peer] * 1000, 3) != n["rtt_ms"]:
            return f"rtt moved: {rtt.get(peer)} vs {n['rtt_ms']}"
    return True


def test_metrics_match_meshctl_on_a_line_of_three() -> None:
    ports = {n: free_udp_port() for n in ("ann", "bob", "cy")}
    mport = {n: free_tcp_port() for n in ("ann", "bob")}
    with Cluster() as c:
        c.add("ann", ["--listen", f"127.0.0.1:{ports['ann']}", "--metrics",
                      f"127.0.0.1:{mport['ann']}", "--log-format", "json"])
        c.add("bob", ["--listen", f"127.0.0.1:{ports['bob']}", "--peer",
                      f"127.0.0.1:{ports['ann']}", "--metrics", f":{mport['bob']}"])
        c.add("cy", ["--listen", f"127.0.0.1:{ports['cy']}", "--peer",
                     f"127.0.0.1:{ports['bob']}", "--metrics", "off"])
        for d in c:
            d.wait_ready()
        bob = c["bob"]
        wait_until(lambda: len(bob.neighbours()) == 2, 20, what="bob's two neighbours")
        wait_until(lambda: c["ann"].meshctl("ping", "cy", "--count", "3", "--interval", "0")[0] == 0,
                   20, what="ann reaches cy through bob")

        m = scrape(mport["bob"])
        rc, st = bob.meshctl("status")
        assert rc == 0 and st["metrics"] == f"http://127.0.0.1:{mport['bob']}/metrics"
        assert one(m, "carmesh_neighbours") == st["neighbours"] == 2
        assert one(m, "carmesh_routes") == st["routes"]
        assert by(m, "carmesh_drops_total", "reason") == {k: float(v) for k, v in
                                                           st["drops"].items()}
        # bob relayed the pings (requests and replies) between ann and cy
        assert one(m, "carmesh_relayed_packets_total") >= 6
        assert set(by(m, "carmesh_relay_drops_total", "where")) >= {"hop_limit", "no_route",
                                                                    "link", "media_relay"}
        info = {dict(k)["name"]: dict(k)["peer"] for k in m["carmesh_neighbour_info"]}
        assert info == {"ann": c["ann"].node_id, "cy": c["cy"].node_id}
        # application metrics come from the services, and agree with their own commands
        rc, sync = bob.meshctl("sync", "status")
        assert rc == 0 and one(m, "carmesh_sync_ops") == sync["ops"]
        assert set(by(m, "carmesh_calls", "state")) >= {"dialling", "ringing", "active", "ended"}
        for name in ("carmesh_bulletins", "carmesh_mail_carried", "carmesh_store_bytes"):
            assert one(m, name) >= 0
        # every metric the docs promise is served, and nothing undocumented
        assert exposed_metrics(mport["bob"]) == documented_metrics()
        # link RTT, loss and cost: the same figures as `meshctl neighbours`
        wait_until(lambda: _links_agree(bob, mport["bob"]), 30, 0.0, "a scrape equal to meshctl")

        # a published op shows in the sync and store figures
        rc, res = bob.meshctl("situation", "set", "vehicle", "--field", "power_w=1500")
        assert rc == 0, res
        m2 = wait_until(lambda: (s := scrape(mport["bob"]))["carmesh_sync_ops"][()] > one(
            m, "carmesh_sync_ops") and s, 10, what="sync ops to grow")
        assert one(m2, "carmesh_store_bytes") > one(m, "carmesh_store_bytes")

        rc, st = c["cy"].meshctl("status")
        assert rc == 0 and st["metrics"] is None  # --metrics off

        # --log-format json: one object per line
        c["ann"].stop()
        lines = [ln for ln in c["ann"].log_path.read_text().splitlines() if ln.strip()]
        assert len(lines) > 5
        recs: list[dict[str, Any]] = [json.loads(ln) for ln in lines]
        assert all({"ts", "level", "logger", "msg"} <= r.keys() for r in recs)
        assert any(r["msg"].startswith("metrics at http://127.0.0.1:") for r in recs)
        assert any(r.get("peer") == c["bob"].node_id[:8] for r in recs)
