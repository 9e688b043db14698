"""Tier 3: a phone routing as a stub (``--stub``) beside two cars, real daemons on loopback.

ann — bob — pia (``--stub``), and pia also linked to ann's neighbour only through bob.  The
cars carry pia's route; pia holds no route it learnt from a car's table, reaches ann through
its default route via bob, and relays nothing for the cars.
"""

from __future__ import annotations

import pytest

from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow


def _routes(c: Cluster, src: str) -> dict[str, dict[str, object]]:
    rc, res = c[src].meshctl("routes")
    return {r["name"]: r for r in res["routes"] if r["reachable"]} if rc == 0 else {}


def test_stub_phone_reaches_the_mesh_through_its_car_and_relays_nothing() -> None:
    with Cluster() as c:
        ports: dict[str, int] = {}
        for name, peer, extra in (("ann", None, []), ("bob", "ann", []),
                                  ("pia", "bob", ["--stub", "--role", "phone"])):
            ports[name] = free_udp_port()  # picked when bound: nothing else waits in between
            peers = ["--peer", f"127.0.0.1:{ports[peer]}"] if peer else []
            c.add(name, ["--listen", f"127.0.0.1:{ports[name]}", *peers, *extra])
            c[name].wait_ready()
        # the cars carry the phone's route: ann reaches pia through bob
        routes = wait_until(lambda: "pia" in (r := _routes(c, "ann")) and r, 20,
                            what="ann's route to pia")
        assert routes["pia"]["next_hop_name"] == "bob"
        # the phone reaches ann along its default route, though no car sent it ann's route
        rc, st = c["pia"].meshctl("status")
        assert rc == 0 and st["stub"] is True, st
        wait_until(lambda: (c["pia"].meshctl("status")[1].get("default_route") or {})
                   .get("name") == "bob", 20, what="pia's default route")
        assert "ann" not in _routes(c, "pia")
        # pia never got ann's announcement (no car sends a stub its table): it names ann by id
        ann_id = c["ann"].meshctl("status")[1]["node_id"]
        rc, res = c["pia"].meshctl("ping", ann_id, "--count", "2")
        assert rc == 0 and [r["hops"] for r in res["replies"]] == [2, 2], res
        rc, res = c["ann"].meshctl("ping", "pia", "--count", "1")
        assert rc == 0 and res["replies"][0]["hops"] == 2, res
        # a car is no stub and has no default route
        rc, st = c["bob"].meshctl("status")
        assert rc == 0 and st["stub"] is False and st["default_route"] is None, st
