"""`meshctl status|neighbours|routes NODE` over three hops of real daemons on loopback."""

from __future__ import annotations

import subprocess

import pytest

from meshd.services.info import PRIVATE_FIELDS
from tests.daemons import MESHCTL, Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow

NAMES = ["ann", "bob", "cy", "dan"]  # a line: ann - bob - cy - dan


def test_far_node_answers_for_itself_and_unreachable_is_exit_4() -> None:
    ports = {n: free_udp_port() for n in NAMES}
    with Cluster() as c:
        ann = c.add("ann", ["--listen", f"127.0.0.1:{ports['ann']}", "--metrics", "off"])
        ann.wait_ready()
        for i, n in enumerate(NAMES[1:], 1):
            admin = ["--admin", ann.node_id] if n == "dan" else []
            c.add(n, ["--listen", f"127.0.0.1:{ports[n]}", "--peer",
                      f"127.0.0.1:{ports[NAMES[i - 1]]}", "--metrics", "off", *admin])
        for d in c:
            d.wait_ready()
        dan = c["dan"]

        def reached() -> bool:
            rc, res = ann.meshctl("routes")
            return rc == 0 and {r["name"] for r in res["routes"] if r["reachable"]} == {
                "bob", "cy", "dan"}

        wait_until(reached, 30, what="ann's routes to everyone")
        wait_until(lambda: c["bob"].meshctl("routes")[0] == 0 and len(
            [r for r in c["bob"].meshctl("routes")[1]["routes"] if r["reachable"]]) == 3, 30,
            what="bob's routes")

        # status: dan's own answer, three hops away; ann is dan's admin: the whole answer
        rc, far = ann.meshctl("status", "dan")
        assert rc == 0, far
        rc, own = dan.meshctl("status")
        assert rc == 0
        assert far["disclosure"] == "full"
        for key in ("node_id", "short_id", "name", "role", "version", "ready", "neighbours",
                    "state_dir", "pid", "listen"):
            assert far[key] == own[key], key
        assert far["node_id"] == dan.node_id and far["name"] == "dan" and far["neighbours"] == 1
        # bob is not an admin: public facts only, private fields null, same keys
        rc, pub = c["bob"].meshctl("status", dan.node_id[:8])
        assert rc == 0, pub
        assert pub["disclosure"] == "public" and pub["node_id"] == dan.node_id
        assert set(pub) == set(far)
        assert all(pub[k] is None for k in PRIVATE_FIELDS["status"])
        assert pub["name"] == "dan" and pub["routes"] == own["routes"]

        # neighbours: dan's link to cy, link quality included, the address only for admins
        rc, nb = c["bob"].meshctl("neighbours", "dan")
        assert rc == 0, nb
        assert nb["node_id"] == dan.node_id and nb["disclosure"] == "public"
        assert [(n["name"], n["node_id"]) for n in nb["neighbours"]] == [("cy", c["cy"].node_id)]
        link = nb["neighbours"][0]
        assert link["state"] == "up" and link["cost"] > 0 and link["rtt_ms"] is not None
        assert link["address"] is None and link["tx_bytes"] is None
        rc, nb_admin = ann.meshctl("neighbours", "dan")
        assert rc == 0 and nb_admin["neighbours"][0]["address"] == f"127.0.0.1:{ports['cy']}"
        rc, own_nb = dan.meshctl("neighbours")
        assert set(own_nb["neighbours"][0]) == set(link)  # the local command's shape

        # routes: dan's own table (ann is reached through cy there)
        rc, rt = ann.meshctl("routes", "dan")
        assert rc == 0, rt
        far_routes = {r["name"]: r for r in rt["routes"]}
        assert set(far_routes) == {"ann", "bob", "cy"}
        assert far_routes["ann"]["next_hop"] == c["cy"].node_id

        # human output names who answered
        r = subprocess.run([*MESHCTL, "--state-dir", str(ann.state_dir), "status", "dan"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0 and f"answer from dan ({dan.node_id[:8]}), full facts" in r.stdout
        assert str(dan.state_dir) in r.stdout

        # unknown node: exit 4; dan gone: exit 4 (no answer, or no route)
        rc, res = ann.meshctl("status", "nobody")
        assert rc == 4, res
        dan.kill9()
        rc, res = ann.meshctl("status", "dan", "--timeout", "2")
        assert rc == 4 and res["error"]["code"] in ("timeout", "unreachable"), res
        rc, res = ann.meshctl("neighbours", "dan", "--timeout", "2")
        assert rc == 4, res
