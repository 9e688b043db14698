"""A lost phone, with real daemons on loopback: members enrolled by the root, the phone's key
revoked with `meshctl trust revoke`; its links and new ops are refused where the revocation
reached, while a relay that was never enrolled still passes its ops on.

Line: pho -- bob -- car, and ann -- car, ann -- pho.  ann, car and pho are enrolled
(members); bob never was.
"""

from __future__ import annotations

import json
import subprocess

import pytest

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


def _docs(d: Daemon) -> set[str]:
    return {x["doc_id"] for x in _ok(d, "library", "list")["documents"]}


def test_a_revoked_phone_loses_its_links_and_its_new_ops_are_refused() -> None:
    with Cluster(log_level="info") as cl:
        (cl.root / "keys").mkdir()
        root_key = cl.root / "keys" / "root.key"
        r = subprocess.run([*MESHCTL, "--state-dir", str(cl.root / "none"), "--json", "trust",
                            "init", "--root-key", str(root_key), "--community", "Test Town"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        fp = json.loads(r.stdout)["fingerprint"]
        ports = {n: free_udp_port() for n in ("ann", "bob", "car", "pho")}
        for name, peers in (("ann", []), ("bob", []), ("car", ["ann", "bob"]),
                            ("pho", ["bob", "ann"])):
            args = ["--listen", f"127.0.0.1:{ports[name]}", "--no-web"]
            for p in peers:
                args += ["--peer", f"127.0.0.1:{ports[p]}"]
            cl.add(name, args)
        for d in cl:
            d.wait_ready()
        ann, bob, car, pho = cl["ann"], cl["bob"], cl["car"], cl["pho"]
        wait_until(lambda: {"car", "pho"} <= set(ann.neighbours())
                   and {"car", "pho"} <= set(bob.neighbours()), 30, what="all linked")

        # the root enrols ann, car and pho as members (ann's desk holds the root key)
        keys = {d.name: _ok(d, "trust", "show")["key"] for d in (ann, car, pho)}
        _ok(ann, "trust", "join", fp)
        for name in ("ann", "car", "pho"):
            shown = _ok(ann, "trust", "member", "add", keys[name], "--root-key", str(root_key))
        assert sorted(shown["members"]) == sorted(keys.values()) and shown["member"] is True
        enrol = cl.root / "keys" / "town.trust.toml"
        _ok(ann, "trust", "export", str(enrol))
        for d in (car, pho):
            assert _ok(d, "trust", "join", str(enrol))["member"] is True
        assert _ok(bob, "trust", "show")["pinned"] == "none"

        # before: pho's document reaches car
        before = _ok(pho, "library", "add", "--collection", "notes", "--title", "I am safe",
                     "--body", "at the school")["doc_id"]
        _eventually(car, lambda r: before in {x["doc_id"] for x in r["documents"]},
                    "library", "list", what="car holds pho's document")

        # the phone is lost: the root revokes its key from ann
        revoked = _ok(ann, "trust", "revoke", keys["pho"], "--root-key", str(root_key))
        assert keys["pho"] in revoked["revoked"] and keys["pho"] not in revoked["members"]
        _eventually(car, lambda r: r["version"] == revoked["version"], "trust", "show",
                    what="car adopts the revocation")
        # ann closes its link to the phone and refuses it again; bob (not enrolled) keeps it
        wait_until(lambda: "pho" not in ann.neighbours(), 30, what="ann drops pho's link")
        assert "pho" in bob.neighbours()
        # the phone's new op travels pho -> bob -> car, and car refuses it
        after = _ok(pho, "library", "add", "--collection", "notes", "--title", "stolen",
                    "--body", "written after the revocation")["doc_id"]
        _eventually(car, lambda r: r["refused"].get("revoked", 0) >= 1, "sync", "status",
                    what="car refuses the revoked key's op")
        _eventually(bob, lambda r: after in {x["doc_id"] for x in r["documents"]},
                    "library", "list", what="bob holds it (it cannot know)")
        assert after not in _docs(car) and before in _docs(car)  # what it had stays
        assert "pho" not in ann.neighbours() and "pho" not in car.neighbours()
        store = _ok(car, "sync", "status")["store"]
        assert store["quota_bytes"] == 1024**3 and store["unknown_ops"] >= 0
        logs = "".join(d.log_path.read_text(errors="replace") for d in cl)
        assert "Traceback" not in logs
        assert "its key was revoked" in ann.log_path.read_text(errors="replace")
