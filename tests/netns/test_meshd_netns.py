"""Tier 4: real meshd daemons in network namespaces (root; CI runs these)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import Cluster, wait_until
from tests.netns.procs import JsonLines

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def _ifaces(net: DevNet, node: NetNode) -> list[str]:
    return [x for i in net.interfaces(node) for x in ("--interface", i)]


def test_line_discovery_by_zeroconf_only(devnet: DevNet, line3: list[NetNode]) -> None:
    a, b, c = line3
    with Cluster() as cl:
        for node in line3:
            cl.add(node.name, _ifaces(devnet, node), prefix=_ns(node))
        for d in cl:
            d.wait_ready()
        wait_until(lambda: set(cl["b"].neighbours()) == {"a", "c"}, 20, what="b sees a and c")
        wait_until(lambda: set(cl["a"].neighbours()) == {"b"}, 20, what="a sees b")
        wait_until(lambda: set(cl["c"].neighbours()) == {"b"}, 20, what="c sees b")
        # a and c never see each other: they share no link, and zeroconf does not cross b
        for _ in range(5):
            assert "c" not in cl["a"].neighbours() and "a" not in cl["c"].neighbours()
        nb = cl["b"].neighbours()
        assert nb["a"]["address"].startswith(devnet.address(a, b))
        assert nb["c"]["address"].startswith(devnet.address(c, b))
        assert all(v["rtt_ms"] is not None for v in nb.values())


def test_forged_certificate_and_wrong_pin_are_refused(devnet: DevNet) -> None:
    a, b, m = devnet.add_node("a"), devnet.add_node("b"), devnet.add_node("m")
    devnet.link(a, b)
    devnet.link(a, m)
    forged = devnet.popen(m, [sys.executable, str(Path(__file__).with_name("forged_peer.py")),
                              devnet.address(m, a), "7420", "--seconds", "12"],
                          stdout=subprocess.PIPE, text=True)
    out = JsonLines(forged, "mallory")
    assert out.wait_for(lambda evs: any(e.get("event") == "listening" for e in evs), 15)
    listening = next(e for e in out.events if e.get("event") == "listening")
    with Cluster() as cl:
        # b runs normally; a pins b to a NodeId that is not b's, and dials mallory (TOFU)
        cl.add("b", ["--listen", f"{devnet.address(b, a)}:7420"], prefix=_ns(b))
        b_id = cl["b"].wait_ready()["node_id"]
        wrong = "00" * 16
        cl.add("a", ["--listen", f"{devnet.address(a, b)}:7420",
                     "--peer", f"{wrong}@{devnet.address(b, a)}:7420",
                     "--peer", f"{devnet.address(m, a)}:7420"], prefix=_ns(a))
        cl["a"].wait_ready()

        def refused_both() -> dict[str, int] | None:
            rc, st = cl["a"].meshctl("status")
            drops = st.get("drops", {}) if rc == 0 else {}
            refused = {k: v for k, v in drops.items() if k.startswith("refused-")}
            # the pinned id does not match b ("identity"); mallory's certificate key is not
            # the key of the NodeId it announces ("cert-key")
            return refused if {"refused-identity", "refused-cert-key"} <= set(refused) else None

        wait_until(refused_both, 15, what="a refuses both peers")
        assert cl["a"].neighbours() == {}
        rc, nb = cl["a"].meshctl("neighbours")
        assert rc == 0 and nb["neighbours"] == []
        assert b_id != wrong and listening["node_id"] not in str(nb)
    forged.wait(20)
    assert not any(e.get("event") == "link_up" for e in out.events)
