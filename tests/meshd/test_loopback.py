"""Tier 3: real meshd processes on loopback with static peers, driven by real meshctl."""

from __future__ import annotations

import pytest

from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow


def test_three_daemons_link_lose_and_relink() -> None:
    ports = {n: free_udp_port() for n in "abc"}
    addr = {n: f"127.0.0.1:{p}" for n, p in ports.items()}
    with Cluster() as c:
        for n in "abc":
            peers = [x for m in "abc" if m != n for x in ("--peer", addr[m])]
            c.add(n, ["--listen", addr[n], *peers])
        for d in c:
            d.wait_ready()
        for n in "abc":
            others = set("abc") - {n}
            seen = wait_until(lambda n=n, o=others: set(c[n].neighbours()) >= o and c[n].neighbours(),
                              15, what=f"{n} sees {others}")
            for o in others:
                assert seen[o]["rtt_ms"] is not None and seen[o]["rtt_ms"] >= 0
                assert seen[o]["node_id"] == c[o].node_id
        # kill -9 one: the others report it lost within 5 s
        c["c"].kill9()
        for n in "ab":
            wait_until(lambda n=n: "c" not in c[n].neighbours(), 5, what=f"{n} loses c")
        # restart with the same state: the same NodeId comes back and relinks
        old_id = c["c"].node_id
        c["c"].start()
        assert c["c"].wait_ready()["node_id"] == old_id
        for n in "ab":
            wait_until(lambda n=n: "c" in c[n].neighbours(), 15, what=f"{n} relinks c")
        # one-hop ping by name and by id prefix
        rc, res = c["a"].meshctl("ping", "b", "--count", "2")
        assert rc == 0, res
        assert res["received"] == 2
        rc, res = c["a"].meshctl("ping", c["c"].node_id[:8], "--count", "1")
        assert rc == 0, res
        # clean shutdown on SIGTERM exits 0
        assert c["b"].stop() == 0
