"""Tier 4: ``--interface`` names picked up when they appear, without a restart (issue 11, item 14).

A head unit brings its hotspot up after meshd started, or a USB adapter is plugged in
later: meshd is started naming interfaces that do not exist yet, the veth pairs are
created afterwards, and the neighbour links come up by zeroconf alone.
"""

from __future__ import annotations

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import Cluster, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

FLAGS = ["--no-web", "--metrics", "off"]


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def test_interfaces_named_before_they_exist_and_added_later_are_picked_up(
        devnet: DevNet) -> None:
    a, b, c = devnet.add_node("a"), devnet.add_node("b"), devnet.add_node("c")
    with Cluster(log_level="info") as cl:
        # none of these interfaces exists yet (devnet names them to-<peer>)
        cl.add("a", ["--interface", "to-b", "--interface", "to-c", *FLAGS], prefix=_ns(a))
        cl.add("b", ["--interface", "to-a", *FLAGS], prefix=_ns(b))
        for d in (cl["a"], cl["b"]):
            status = d.wait_ready()  # was: exit 1, "no network interface named 'to-b'"
            assert status["listen"] == []
        assert "to-b" in cl["a"].log() and "waiting for it" in cl["a"].log()

        assert devnet.link(a, b) == ("to-b", "to-a")
        wait_until(lambda: "b" in cl["a"].neighbours(), 30, what="a links to b")
        wait_until(lambda: "a" in cl["b"].neighbours(), 30, what="b links to a")
        rc, st = cl["a"].meshctl("status")
        assert rc == 0 and st["listen"] == [f"{devnet.address(a, b)}:7420"]

        # a second named interface appears while a runs with the first
        cl.add("c", ["--interface", "to-a", *FLAGS], prefix=_ns(c))
        cl["c"].wait_ready()
        devnet.link(a, c)
        wait_until(lambda: set(cl["a"].neighbours()) == {"b", "c"}, 30, what="a links to c too")
        wait_until(lambda: "a" in cl["c"].neighbours(), 30, what="c links to a")
        rc, st = cl["a"].meshctl("status")
        assert rc == 0 and sorted(st["listen"]) == sorted(
            [f"{devnet.address(a, b)}:7420", f"{devnet.address(a, c)}:7420"])
        rc, res = cl["b"].meshctl("ping", "c", "--count", "1")  # through a
        assert rc == 0, res
