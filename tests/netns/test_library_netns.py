"""Tier 4: the library and mail across real daemons in network namespaces (root; CI runs these).

A line ann -- bob -- cy with zeroconf discovery on the veth interfaces.  Node
names are not hex: NODE resolves a unique NodeId prefix before a display name.
"""

from __future__ import annotations

from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import Cluster, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def _ok(cl: Cluster, name: str, *args: str) -> Any:
    rc, res = cl[name].meshctl(*args, timeout=60)
    assert rc == 0, (name, args, rc, res)
    return res


def _reachable(cl: Cluster, src: str, dst: str) -> bool:
    rc, res = cl[src].meshctl("routes")
    return rc == 0 and any(r["name"] == dst and r["reachable"] for r in res["routes"])


def _probe(cl: Cluster, name: str, pred: Any, *args: str) -> Any:
    rc, res = cl[name].meshctl(*args)
    return pred(res) if rc == 0 else None


def test_edit_found_far_away_and_mail_reaches_a_node_once_it_is_back(devnet: DevNet) -> None:
    ann, bob, cy = devnet.line(3, ["ann", "bob", "cy"])
    with Cluster(log_level="info") as cl:
        for node in (ann, bob, cy):
            ifaces = [x for i in devnet.interfaces(node) for x in ("--interface", i)]
            cl.add(node.name, ifaces, prefix=_ns(node))
        for d in cl:
            d.wait_ready()
        wait_until(lambda: _reachable(cl, "ann", "cy"), 40, what="a route from ann to cy")

        # a document created and then edited at ann is found by a search at cy
        doc = _ok(cl, "ann", "library", "add", "--collection", "know-how", "--title",
                  "Shelter water", "--body", "Water at the school from nine.")["doc_id"]
        _ok(cl, "ann", "library", "edit", doc, "--body", "給水は体育館で十時から。Water at the gym.")
        hits = wait_until(lambda: _probe(cl, "cy", lambda r: r["results"] or None, "library",
                                         "search", "体育館"), 40, 0.3, "cy finds ann's edit")
        assert [h["doc_id"] for h in hits] == [doc]

        # cy's link goes down: ann has no route, so the message is queued as mail
        devnet.set_link_up(bob, cy, False)
        wait_until(lambda: not _reachable(cl, "ann", "cy"), 30, what="ann loses its route to cy")
        res = _ok(cl, "ann", "send", "cy", "避難所に毛布があります")
        assert res["status"] == "queued", res
        assert _ok(cl, "ann", "mail")["outbox"][0]["status"] == "queued"
        wait_until(lambda: _probe(cl, "bob", lambda r: r["carried"] == 1, "mail"), 30, 0.3,
                   "bob carries the mail")
        assert _ok(cl, "cy", "messages")["messages"] == []

        # cy meets bob again: it opens the mail, and ann learns it was delivered
        devnet.set_link_up(bob, cy, True)
        inbox = wait_until(lambda: _probe(cl, "cy", lambda r: r["messages"] or None,
                                          "messages"), 60, 0.5, "cy receives the mail")
        assert [(m["text"], m["from_name"], m["via"]) for m in inbox] == [
            ("避難所に毛布があります", "ann", "mail")]
        out = wait_until(lambda: _probe(cl, "ann", lambda r: r["outbox"] if r["outbox"][0][
            "status"] == "delivered" else None, "mail"), 60, 0.5, "ann sees delivered")
        assert out[0]["message_id"] == res["message_id"]
