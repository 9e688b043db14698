"""`meshctl topology --json|--dot`: every link with its cost, redundant paths included."""

from __future__ import annotations

import subprocess

import pydot
import pytest

from carmesh.meshctl.node import topology_dot
from tests.daemons import MESHCTL, Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")

A, B, C = "a" * 32, "b" * 32, "c" * 32


def _graph(text: str) -> pydot.Dot:
    graphs = pydot.graph_from_dot_data(text)
    assert graphs is not None and len(graphs) == 1, text
    return graphs[0]


def test_dot_export_escapes_names_and_marks_self_and_silent_nodes() -> None:
    topo = {"self": A, "nodes": [
        {"node_id": A, "name": 'car "1" \\ \x1b[2J', "role": "car", "answered": True},
        {"node_id": B, "name": "bob", "role": "phone", "answered": True},
        {"node_id": C, "name": "", "role": "", "answered": False}],
        "links": [{"a": A, "b": B, "cost": 256}, {"a": B, "b": C, "cost": 300},
                  {"a": A, "b": C, "cost": 512}]}
    g = _graph(topology_dot(topo))
    nodes = {n.get_name().strip('"'): n for n in g.get_nodes() if n.get_name() not in (
        "node", "edge", "graph")}
    assert set(nodes) == {A, B, C}
    assert nodes[A].get("label") == '"car \\"1\\" \\\\ [2J\\naaaaaaaa\\ncar"'
    assert nodes[A].get("peripheries") == "2" and "dashed" in nodes[C].get("style")
    edges = {frozenset((e.get_source().strip('"'), e.get_destination().strip('"'))):
             e.get("label").strip('"') for e in g.get_edges()}
    assert edges == {frozenset((A, B)): "256", frozenset((B, C)): "300",
                     frozenset((A, C)): "512"}


@pytest.mark.slow
def test_triangle_every_link_with_cost_in_json_and_dot() -> None:
    names = ["ann", "bob", "cy"]
    ports = {n: free_udp_port() for n in names}
    with Cluster() as c:
        c.add("ann", ["--listen", f"127.0.0.1:{ports['ann']}", "--metrics", "off"])
        c.add("bob", ["--listen", f"127.0.0.1:{ports['bob']}", "--metrics", "off",
                      "--peer", f"127.0.0.1:{ports['ann']}"])
        c.add("cy", ["--listen", f"127.0.0.1:{ports['cy']}", "--metrics", "off",
                     "--peer", f"127.0.0.1:{ports['ann']}", "--peer", f"127.0.0.1:{ports['bob']}"])
        for d in c:
            d.wait_ready()
        ids = {d.node_id: d.name for d in c}

        def full() -> dict | None:
            rc, topo = c["ann"].meshctl("topology")
            ok = (rc == 0 and len(topo["links"]) == 3
                  and all(n["answered"] for n in topo["nodes"]))
            return topo if ok else None

        topo = wait_until(full, 30, 0.5, "all three links")
        assert topo["self"] == c["ann"].node_id
        pairs = {frozenset((ids[x["a"]], ids[x["b"]])): x["cost"] for x in topo["links"]}
        # the redundant link is there too: a shortest-hop tree from ann would hold two
        assert set(pairs) == {frozenset(p) for p in (("ann", "bob"), ("bob", "cy"),
                                                     ("ann", "cy"))}
        assert all(isinstance(v, int) and v > 0 for v in pairs.values())

        r = subprocess.run([*MESHCTL, "--state-dir", str(c["ann"].state_dir), "topology",
                            "--dot"], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        g = _graph(r.stdout)
        edges = {frozenset((ids[e.get_source().strip('"')], ids[e.get_destination().strip('"')]))
                 for e in g.get_edges()}
        assert edges == set(pairs)
        for e in g.get_edges():
            assert int(e.get("cost").strip('"')) > 0
        rc, res = c["ann"].meshctl("topology", "--dot")  # --json too: usage error
        assert rc == 2, res
