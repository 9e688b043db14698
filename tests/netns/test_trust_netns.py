"""Tier 4: community trust across real daemons in network namespaces (root; CI runs these).

The issue's line A -- B -- C on veth links with zeroconf discovery: ann (A) is the city
authority the root adds, cy (C) is enrolled with the file ann hands out, bob (B) never
enrols.  ann's bulletin is shown at cy, not at bob, whose store holds it as carried
unverified; after `trust authority remove` of ann the bulletin disappears at cy.  Then a
revoked node key (cy's, by the statement its owner signed in advance) loses its links at
every node the revocation reaches.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.daemons import MESHCTL, Cluster, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.slow]


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def _ok(cl: Cluster, name: str, *args: str) -> Any:
    rc, res = cl[name].meshctl(*args, timeout=60)
    assert rc == 0, (name, args, rc, res)
    return res


def _until(cl: Cluster, name: str, pred: Any, *args: str, what: str) -> Any:
    def probe() -> Any:
        rc, res = cl[name].meshctl(*args)
        return pred(res) if rc == 0 else None

    return wait_until(probe, 60, 0.3, what)


def _carried(cl: Cluster, name: str) -> dict[str, str]:
    return {i["op_id"]: i["kind"] for i in _ok(cl, name, "trust", "show")["carried"]["items"]}


def _reachable(cl: Cluster, src: str, dst: str) -> bool:
    rc, res = cl[src].meshctl("routes")
    return rc == 0 and any(r["name"] == dst and r["reachable"] for r in res["routes"])


def test_line_a_b_c_shown_at_enrolled_c_carried_by_b_and_gone_after_removal(
        devnet: DevNet, tmp_path: Path) -> None:
    root_key = tmp_path / "root.key"  # offline: made before any daemon runs
    r = subprocess.run([*MESHCTL, "--state-dir", str(tmp_path / "none"), "--json", "trust",
                        "init", "--root-key", str(root_key), "--community", "Test Town"],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    fp = json.loads(r.stdout)["fingerprint"]
    ann, bob, cy = devnet.line(3, ["ann", "bob", "cy"])
    with Cluster(log_level="info") as cl:
        for node in (ann, bob, cy):
            ifaces = [x for i in devnet.interfaces(node) for x in ("--interface", i)]
            cl.add(node.name, [*ifaces, "--no-web"], prefix=_ns(node))
        for d in cl:
            d.wait_ready()
        wait_until(lambda: _reachable(cl, "ann", "cy"), 40, what="a route from ann to cy")

        ann_key = _ok(cl, "ann", "trust", "join", fp)["key"]
        added = _ok(cl, "ann", "trust", "authority", "add", ann_key, "--role", "city",
                    "--name", "City of Test", "--root-key", str(root_key))
        enrol = tmp_path / "town.trust.toml"
        _ok(cl, "ann", "trust", "export", str(enrol))
        assert _ok(cl, "cy", "trust", "join", str(enrol))["version"] == added["version"]

        pub = _ok(cl, "ann", "bulletin", "publish", "--title", "給水車", "--body",
                  "Water at nine")
        shown = _until(cl, "cy", lambda r: r["bulletins"] or None, "bulletin", "list",
                       what="cy shows ann's bulletin")
        assert [(b["op_id"], b["authority"]["name"]) for b in shown] == [
            (pub["op_id"], "City of Test")]
        # bob relayed it (cy has no other neighbour) and holds it, carried unverified
        carried = wait_until(lambda: (c := _carried(cl, "bob")).get(pub["op_id"]) and c, 60,
                             0.3, "bob carries the bulletin")
        assert carried[pub["op_id"]] == "bulletin.publish" and "trust.update" in carried.values()
        assert _ok(cl, "bob", "bulletin", "list")["bulletins"] == []
        assert _ok(cl, "bob", "trust", "show")["pinned"] == "none"

        removed = _ok(cl, "ann", "trust", "authority", "remove", ann_key, "--root-key",
                      str(root_key))
        assert removed["authorities"] == [] and removed["version"] > added["version"]
        _until(cl, "cy", lambda r: r["version"] == removed["version"], "trust", "show",
               what="cy adopts the update through bob")
        _until(cl, "cy", lambda r: r["bulletins"] == [], "bulletin", "list",
               what="the bulletin disappears at cy")
        assert pub["op_id"] not in _carried(cl, "cy")
        assert "Traceback" not in cl.logs()


def test_a_revoked_node_key_loses_its_links_at_every_node_the_revocation_reaches(
        devnet: DevNet, tmp_path: Path) -> None:
    """cy's owner signed its revocation in advance; published at ann, it reaches bob (no
    trust needed: the key signed it itself), and both refuse cy's links from then on."""
    ann, bob, cy = devnet.line(3, ["ann", "bob", "cy"])
    with Cluster(log_level="info") as cl:
        for node in (ann, bob, cy):
            ifaces = [x for i in devnet.interfaces(node) for x in ("--interface", i)]
            cl.add(node.name, [*ifaces, "--no-web"], prefix=_ns(node))
        for d in cl:
            d.wait_ready()
        wait_until(lambda: _reachable(cl, "ann", "cy"), 40, what="a route from ann to cy")
        stmt = tmp_path / "cy.statement"
        made = _ok(cl, "cy", "trust", "statement", str(stmt))
        cy_key = made["key"]
        _ok(cl, "ann", "trust", "publish", str(stmt))
        for name in ("ann", "bob"):
            _until(cl, name, lambda r: any(x["key"] == cy_key for x in r["revocations"]),
                   "trust", "show", what=f"{name} holds cy's revocation")
        wait_until(lambda: "cy" not in cl["bob"].neighbours(), 30,
                   what="bob closes cy's link")
        # cy keeps trying (discovery finds bob again): every link is closed as it comes up
        wait_until(lambda: "its key was revoked" in cl["bob"].log(), 30,
                   what="bob says why")
        wait_until(lambda: not _reachable(cl, "ann", "cy"), 30, what="ann loses cy's route")
        assert "cy" not in cl["bob"].neighbours()
        assert "Traceback" not in cl.logs()
