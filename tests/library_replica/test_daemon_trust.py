"""Tier 3: community trust across real daemons on loopback, driven through real meshctl.

A line ann -- bob -- cy.  The root key is made offline (`trust init`, no daemon);
ann joins by fingerprint and becomes the city authority (`trust authority add`,
signed in meshctl with the root key, published through ann's daemon); cy joins
with the enrolment file ann exports; bob never joins.  Then a fourth node, mal,
linked to ann only, offers a forged bulletin.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from carmesh.meshctl.trust import load_root_key
from library_replica.bulletins import KIND_PUBLISH, prepare_bulletin
from library_replica.ops import new_doc_id
from meshd.core.identity import Identity
from sync.node_service import DB_NAME
from sync.store import OpStore
from tests.daemons import (
    MESHCTL,
    Cluster,
    Daemon,
    free_udp_port,
    meshctl_ok,
    meshctl_until,
    wait_until,
)

pytestmark = pytest.mark.slow


_ok = meshctl_ok


_eventually = meshctl_until


def _carried(d: Daemon) -> dict[str, str]:
    """op id -> kind of what ``d`` carries unverified."""
    return {i["op_id"]: i["kind"] for i in _ok(d, "trust", "show")["carried"]["items"]}


async def _forge_bulletin(db: Path, root: bytes) -> bytes:
    """Store, in a stopped node's database, a bulletin by a key that is no authority: the
    envelope and the body are validly signed by that key, which claims to speak for ``root``
    at trust version 1.  The daemon will offer it to its neighbours."""
    store = await OpStore.open(db, wall_clock=time.time)
    store.register_authorizer("bulletin", lambda op, now: None)  # the forger's own rules
    forger = Identity.generate()
    now_ms = int(time.time() * 1000)
    doc_id = new_doc_id(b"forged")
    body = prepare_bulletin(forger.sign, forger.ed25519_pub, doc_id, title="Evacuate now",
                            text="Forged: go to the river", issued_ms=now_ms,
                            expires_ms=now_ms + 3600_000, root=root, trust_version=1)
    op = await store.add_local(forger.signing_key, kind=KIND_PUBLISH, doc_id=doc_id, body=body,
                               expiry_ms=now_ms + 3600_000)
    await store.close()
    return op.op_id


async def _holds(db: Path, op_id: bytes) -> bool:
    store = await OpStore.open(db, wall_clock=time.time)
    try:
        return op_id in store
    finally:
        await store.close()


def test_enrolled_shows_unenrolled_carries_revocation_withdraws_forgery_stops() -> None:
    with Cluster(log_level="info") as cl:
        # the root key, offline: no daemon runs yet
        keys = cl.root / "keys"
        keys.mkdir()
        root_key = keys / "root.key"
        r = subprocess.run([*MESHCTL, "--state-dir", str(cl.root / "none"), "--json", "trust",
                            "init", "--root-key", str(root_key), "--community", "Test Town"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        made = json.loads(r.stdout)
        assert root_key.stat().st_mode & 0o777 == 0o600
        fp = made["fingerprint"]
        root = load_root_key(root_key)[0].public_key().public_bytes_raw()
        assert made["root"] == root.hex()

        ports = {n: free_udp_port() for n in ("ann", "bob", "cy")}
        for name, peers in (("ann", []), ("bob", ["ann"]), ("cy", ["bob"])):
            args = ["--listen", f"127.0.0.1:{ports[name]}", "--no-web"]
            for p in peers:
                args += ["--peer", f"127.0.0.1:{ports[p]}"]
            cl.add(name, args)
        for d in cl:
            d.wait_ready()
        ann, bob, cy = cl["ann"], cl["bob"], cl["cy"]
        wait_until(lambda: "ann" in bob.neighbours() and "cy" in bob.neighbours(), 30,
                   what="ann -- bob -- cy linked")

        # ann joins by fingerprint and the root makes its key the city authority
        joined = _ok(ann, "trust", "join", fp)
        assert joined["pinned"] == "fingerprint" and joined["version"] == 0
        ann_key = joined["key"]
        added = _ok(ann, "trust", "authority", "add", ann_key, "--role", "city",
                    "--name", "City of Test", "--root-key", str(root_key))
        assert added["pinned"] == "root" and added["community"] == "Test Town"
        assert added["authority"] is True and added["version"] > 0
        assert added["authorities"] == [{"key": ann_key, "role": "city",
                                         "name": "City of Test"}]
        # cy joins with the enrolment file ann hands out
        enrol = cl.root / "keys" / "town.trust.toml"
        exported = _ok(ann, "trust", "export", str(enrol))
        assert exported["fingerprint"] == fp and exported["version"] == added["version"]
        assert _ok(cy, "trust", "join", str(enrol))["version"] == added["version"]
        assert (cy.state_dir / "trust.toml").exists()  # persisted in the state directory

        # ann's bulletin: shown at cy, not at bob, which carries it unverified
        pub = _ok(ann, "bulletin", "publish", "--title", "給水車", "--body", "Water at nine")
        _eventually(cy, lambda r: [b["op_id"] for b in r["bulletins"]] == [pub["op_id"]],
                    "bulletin", "list", what="cy shows ann's bulletin")
        assert _ok(cy, "bulletin", "list")["bulletins"][0]["authority"]["name"] == "City of Test"
        carried = _eventually(bob, lambda _: (c := _carried(bob)).get(pub["op_id"]) and c,
                              "status", what="bob carries the bulletin")
        assert carried[pub["op_id"]] == "bulletin.publish"
        assert "trust.update" in carried.values()  # bob carries the root's update too
        assert _ok(bob, "bulletin", "list")["bulletins"] == []
        assert _ok(bob, "trust", "show")["pinned"] == "none"

        # the root removes ann: the update travels ann -> bob (carried) -> cy
        removed = _ok(ann, "trust", "authority", "remove", ann_key, "--root-key",
                      str(root_key))
        # removed from its role, not revoked: its bulletins go, its node stays a citizen's
        assert removed["authorities"] == [] and removed["revoked"] == []
        assert removed["version"] > added["version"]
        _eventually(cy, lambda r: r["version"] == removed["version"], "trust", "show",
                    what="cy adopts the revocation")
        _eventually(cy, lambda r: r["bulletins"] == [], "bulletin", "list",
                    what="the bulletin disappears at cy")
        assert _ok(ann, "bulletin", "list")["bulletins"] == []
        assert pub["op_id"] not in _carried(cy)

        # mal offers a forged bulletin (valid envelope, body signed by a non-authority key)
        (cl.root / "mal").mkdir()
        Identity.load_or_create(cl.root / "mal")
        forged = asyncio.run(_forge_bulletin(cl.root / "mal" / DB_NAME, root))
        ports["mal"] = free_udp_port()  # picked when bound: one picked early was taken meanwhile
        mal = cl.add("mal", ["--listen", f"127.0.0.1:{ports['mal']}", "--no-web",
                             "--peer", f"127.0.0.1:{ports['ann']}"])
        mal.wait_ready()
        wait_until(lambda: (p := _ok(ann, "sync", "status")["peers"].get(mal.node_id))
                   and p["refused_in"] >= 1, 30, what="ann refuses mal's bulletin")
        assert _ok(ann, "sync", "status")["refused"].get("unauthorized", 0) >= 1
        assert forged.hex() not in _carried(ann) and forged.hex() not in _carried(bob)
        assert _ok(ann, "bulletin", "list")["bulletins"] == []

        # on disk: cy deleted the revoked bulletin, ann never stored the forgery
        assert cy.stop() == 0 and ann.stop() == 0
        assert not asyncio.run(_holds(cy.state_dir / DB_NAME, bytes.fromhex(pub["op_id"])))
        assert not asyncio.run(_holds(ann.state_dir / DB_NAME, forged))
        logs = "".join(d.log_path.read_text(errors="replace") for d in cl)
        assert "Traceback" not in logs and "authorizer-error" not in logs
