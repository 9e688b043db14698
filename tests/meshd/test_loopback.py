"""Tier 3: real meshd processes on loopback with static peers, driven by real meshctl."""

from __future__ import annotations

import pytest

from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow

# not hex: NODE resolves a unique NodeId prefix before a display name
NAMES = ("ann", "bob", "cy")


def test_three_daemons_link_lose_and_relink() -> None:
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in NAMES}
    with Cluster() as c:
        for n in NAMES:
            peers = [x for m in NAMES if m != n for x in ("--peer", addr[m])]
            c.add(n, ["--listen", addr[n], *peers])
        for d in c:
            d.wait_ready()
        for n in NAMES:
            others = set(NAMES) - {n}
            seen = wait_until(lambda n=n, o=others: set(c[n].neighbours()) >= o and c[n].neighbours(),
                              15, what=f"{n} sees {others}")
            for o in others:
                assert seen[o]["rtt_ms"] is not None and seen[o]["rtt_ms"] >= 0
                assert seen[o]["node_id"] == c[o].node_id
        # kill -9 one: the others report it lost within 5 s of the first packet for it (one
        # that went silent on a quiet link is probed at that packet and lost 2 s later; with
        # no traffic at all only the link's idle hold notices, after up to half a minute)
        c["cy"].kill9()
        for n in ("ann", "bob"):
            c[n].meshctl("ping", "cy", "--count", "1", "--timeout", "1")
        for n in ("ann", "bob"):
            wait_until(lambda n=n: "cy" not in c[n].neighbours(), 5, what=f"{n} loses cy")
        # restart with the same state: the same NodeId comes back and relinks
        old_id = c["cy"].node_id
        c["cy"].start()
        assert c["cy"].wait_ready()["node_id"] == old_id
        for n in ("ann", "bob"):
            wait_until(lambda n=n: "cy" in c[n].neighbours(), 15, what=f"{n} relinks cy")
        # one-hop ping by display name and by NodeId prefix
        rc, res = c["ann"].meshctl("ping", "bob", "--count", "2")
        assert rc == 0, res
        assert res["received"] == 2 and res["node_id"] == c["bob"].node_id
        rc, res = c["ann"].meshctl("ping", c["cy"].node_id[:8], "--count", "1")
        assert rc == 0, res
        assert res["node_id"] == c["cy"].node_id
        # clean shutdown on SIGTERM exits 0
        assert c["bob"].stop() == 0
