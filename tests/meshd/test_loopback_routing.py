"""Tier 3: a line of four real daemons on loopback: routes, multi-hop ping, topology, events."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshd.control.client import ControlClient
from meshd.paths import default_socket_path
from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow

NAMES = ["ann", "bob", "cy", "dan"]  # not hex: ids resolve before names


def _routes(c: Cluster, src: str) -> dict[str, dict[str, object]]:
    rc, res = c[src].meshctl("routes")
    return {r["name"]: r for r in res["routes"] if r["reachable"]} if rc == 0 else {}


async def _collect(path: Path, patterns: list[str], until: asyncio.Event) -> list[tuple[str, dict]]:
    got: list[tuple[str, dict]] = []
    async with await ControlClient.connect(path) as client:
        sub = await client.subscribe(patterns)
        until.set()
        async for name, data in sub:
            got.append((name, data))
            if name == "route.changed" and data.get("name") == "dan" and data.get("next_hop") is None:
                break
    return got


def test_line_of_four_routes_topology_and_events() -> None:
    ports = {n: free_udp_port() for n in NAMES}
    with Cluster() as c:
        for i, n in enumerate(NAMES):
            peers = ["--peer", f"127.0.0.1:{ports[NAMES[i - 1]]}"] if i else []
            c.add(n, ["--listen", f"127.0.0.1:{ports[n]}", *peers])
        for d in c:
            d.wait_ready()
        routes = wait_until(lambda: len(r := _routes(c, "ann")) == 3 and r, 20, what="ann's routes")
        assert routes["dan"]["next_hop_name"] == "bob" and routes["bob"]["metric"] < routes["dan"]["metric"]
        rc, res = c["ann"].meshctl("ping", "dan", "--count", "2")
        assert rc == 0 and [r["hops"] for r in res["replies"]] == [3, 3], res
        rc, topo = c["ann"].meshctl("topology")
        assert rc == 0
        names = {n["node_id"]: n["name"] for n in topo["nodes"]}
        assert sorted(names.values()) == sorted(NAMES) and all(n["answered"] for n in topo["nodes"])
        pairs = {tuple(sorted((names[x["a"]], names[x["b"]]))) for x in topo["links"]}
        assert pairs == {("ann", "bob"), ("bob", "cy"), ("cy", "dan")}
        # events: kill dan; ann hears the route to dan go away
        sock = default_socket_path(c["ann"].state_dir)

        async def scenario() -> list[tuple[str, dict]]:
            ready = asyncio.Event()
            task = asyncio.create_task(_collect(sock, ["route.*", "neighbour.*"], ready))
            await ready.wait()
            await asyncio.to_thread(c["dan"].kill9)
            return await asyncio.wait_for(task, 30)

        events = asyncio.run(scenario())
        assert any(n == "route.changed" and d["name"] == "dan" and d["next_hop"] is None
                   for n, d in events), events
        rc, res = c["ann"].meshctl("ping", "dan", "--count", "1", "--timeout", "1")
        assert rc == 4, res
