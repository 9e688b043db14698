"""Tier 3: compaction in real daemons on loopback, driven through real meshctl.

ann -- cy, and later joy -- cy.  cy is the community's authority (a member), so it
compacts; it runs with ``--compact-after 10 --compact-quiet 15``.  A document ann
edits ten times is compacted by cy; ann takes the snapshot and drops the history;
joy, started afterwards, gets the same text from the snapshot.  ann's situation record,
updated 16 times, is snapshotted by ann itself (an owner needs no membership) and every
node drops the old updates.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest

from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.core.identity import Identity
from tests.daemons import Cluster, free_udp_port, meshctl_ok, meshctl_until, wait_until

# one scenario whose own bounded waits add up to more than the suite's 120 s per test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_ok = functools.partial(meshctl_ok, timeout=120)


def _store(r: dict[str, Any]) -> dict[str, Any]:
    st: dict[str, Any] = r["store"]
    return st


def _superseded_at_least(n: int, r: dict[str, Any]) -> bool:
    return bool(_store(r)["superseded"] >= n)


def test_a_member_compacts_the_others_drop_the_history_and_a_joiner_gets_the_snapshot() -> None:
    with Cluster(log_level="info") as cl:
        ids = {}
        for name in ("ann", "cy", "joy"):
            (cl.root / name).mkdir()
            ids[name] = Identity.load_or_create(cl.root / name)
        root = Identity.generate()
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(root.ed25519_pub, 1, {ids["cy"].ed25519_pub: Authority(
            ids["cy"].ed25519_pub, AuthorityRole.CITY, "City of Test")}).to_toml())
        ports = {n: free_udp_port() for n in ("ann", "cy")}
        # quiet 4 s: the 10 edits come through meshctl one after the other, and the 10-op
        # threshold is reached only by the last, so no snapshot can come mid-burst; the
        # daemons look every 2 s (half the quiet time)
        common = ["--trust", str(trust), "--compact-after", "10", "--compact-quiet", "4"]
        cl.add("cy", ["--listen", f"127.0.0.1:{ports['cy']}", *common])
        cl.add("ann", ["--listen", f"127.0.0.1:{ports['ann']}", "--peer",
                       f"127.0.0.1:{ports['cy']}", *common])
        for d in cl:
            d.wait_ready()
        ann, cy = cl["ann"], cl["cy"]
        wait_until(lambda: "cy" in ann.neighbours(), 30, what="ann -- cy linked")
        doc = _ok(ann, "library", "add", "--collection", "work", "--title", "minutes",
                  "--body", "meeting 0")["doc_id"]
        for i in range(1, 10):
            _ok(ann, "library", "edit", doc, "--body", f"meeting {i}: " + "water " * i)
        final = "meeting 9: " + "water " * 9
        # cy (a member) compacts once the document is quiet; both ends drop the history
        for d in (cy, ann):
            meshctl_until(d, lambda r: _store(r)["superseded"] >= 10, "sync", "status",
                          timeout=150, what=f"{d.name} dropped the superseded ops")
        for d in (cy, ann):
            shown = _ok(d, "library", "show", doc)
            assert shown["body"] == final and shown["title"] == "minutes"
            hist = _ok(d, "library", "history", doc)["history"]
            assert hist[0]["kind"] == "library.snapshot"
        # ann (no member) never compacts: one snapshot, by cy
        assert [h["author_name"] for h in _ok(ann, "library", "history", doc)["history"]
                if h["kind"] == "library.snapshot"] == ["cy"]
        ops_cy = _ok(cy, "sync", "status")["ops"]
        # a node that joins now gets the document from the snapshot
        ports["joy"] = free_udp_port()  # picked when bound: one picked early was taken meanwhile
        joy = cl.add("joy", ["--listen", f"127.0.0.1:{ports['joy']}", "--peer",
                             f"127.0.0.1:{ports['cy']}", *common])
        joy.wait_ready()
        shown = meshctl_until(joy, lambda r: r if r.get("body") == final else None,
                              "library", "show", doc, timeout=60, what="joy has the document")
        assert shown["title"] == "minutes"
        st = meshctl_until(joy, lambda r: r if r["ops"] >= ops_cy else None, "sync", "status",
                           timeout=60, what="joy caught up")
        assert st["refused"].get("superseded", 0) == 0
        # ann's old edits are gone from its store: nothing superseded flows to joy
        assert _store(st)["superseded"] == 0
        # situation: ann (no member: an owner needs none) snapshots its own record after
        # 16 updates; every node drops the superseded updates and shows the last values
        before = {d.name: _store(_ok(d, "sync", "status"))["superseded"] for d in (ann, cy, joy)}
        for i in range(16):
            _ok(ann, "situation", "set", "vehicle", "--field", f"battery_offer_kwh={i}.5",
                "--field", f"seats={i % 5}")
        for d in (ann, cy, joy):
            meshctl_until(d, functools.partial(_superseded_at_least, before[d.name] + 16),
                          "sync", "status", timeout=120,
                          what=f"{d.name} dropped ann's old updates")
            rec = _ok(d, "situation", "show", "ann")["records"][0]["fields"]
            assert rec == {"battery_offer_kwh": 15.5, "seats": 0}, (d.name, rec)
