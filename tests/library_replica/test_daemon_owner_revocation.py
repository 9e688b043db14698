"""A lost phone, revoked by its owner, with real daemons on loopback driven by real meshctl.

The root adds a dealer authority once (`trust key new` at the desk, `trust authority add
--role dealer` with the root key); from then on the dealer desk (ann) enrols the car and
the phone with its own key (`trust member add --authority-key`).  The phone's owner signs
in advance, on the phone, a statement revoking it and naming a spare identity as its
successor (`trust statement --spare DIR`), kept offline.  The phone is lost: the owner
publishes the statement from the car (`trust publish`).  Every node closes the phone's
links; a thief writing with the phone's key from another device (mal) is refused
(`revoked`); the owner's new device, started on the spare identity, carries on the
phone's person record at the car, and corrects the safety registration the phone made
(a correction from the car, which is not the phone's successor, is refused).  Then the
dealer retires: the root removes it from its role (`authority remove`, no `--revoke`), and
its members move to the root's list.

Links: ann -- car, pho -- car, pho -- ann; later mal -- car and new -- car.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from library_replica.situation import KIND_SET, RecordKind, prepare_set
from meshd.core.identity import KEY_FILE, Identity
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

# one scenario whose own bounded waits add up to more than the suite's 120 s per test
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_ok = meshctl_ok
_eventually = meshctl_until


def _people(d: Daemon) -> list[dict[str, Any]]:
    return list(_ok(d, "situation", "list", "--kind", "person")["records"])


async def _thief_writes(db: Path, stolen: Identity) -> bytes:
    """In a stopped node's database, a record written with the stolen phone's key (the
    thief copied the key to another device).  The daemon will offer it to its neighbours."""
    store = await OpStore.open(db, wall_clock=time.time)
    store.register_authorizer("situation", lambda op, now: None)
    doc_id, body = prepare_set(stolen.ed25519_pub, RecordKind.PERSON, {"safety": "missing"})
    op = await store.add_local(stolen.signing_key, kind=KIND_SET, doc_id=doc_id, body=body)
    await store.close()
    return op.op_id


def test_an_owner_revokes_a_lost_phone_and_its_successor_carries_on() -> None:
    with Cluster(log_level="info") as cl:
        keys = cl.root / "keys"
        keys.mkdir()
        root_key, dealer_key = keys / "root.key", keys / "dealer.key"
        r = subprocess.run([*MESHCTL, "--state-dir", str(cl.root / "none"), "--json", "trust",
                            "init", "--root-key", str(root_key), "--community", "Test Town"],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        fp = json.loads(r.stdout)["fingerprint"]
        r = subprocess.run([*MESHCTL, "--state-dir", str(cl.root / "none"), "--json", "trust",
                            "key", "new", str(dealer_key)],
                           capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, r.stderr
        dealer = json.loads(r.stdout)["key"]
        assert dealer_key.stat().st_mode & 0o777 == 0o600

        ports: dict[str, int] = {}

        def start(name: str, peers: list[str]) -> Daemon:
            # each port picked just before its daemon binds it: a port picked minutes ahead
            # was taken meanwhile by another test's process (CI: "Address already in use")
            port = ports.setdefault(name, free_udp_port())
            args = ["--listen", f"127.0.0.1:{port}", "--no-web"]
            for p in peers:
                args += ["--peer", f"127.0.0.1:{ports[p]}"]
            return cl.add(name, args)

        for name, peers in (("ann", []), ("car", ["ann"]), ("pho", ["car", "ann"])):
            start(name, peers)
        for d in cl:
            d.wait_ready()
        ann, car, pho = cl["ann"], cl["car"], cl["pho"]
        wait_until(lambda: {"car", "pho"} <= set(ann.neighbours())
                   and "pho" in car.neighbours(), 30, what="all linked")

        # the root, once: the desk's key becomes the dealer authority
        _ok(ann, "trust", "join", fp)
        _ok(ann, "trust", "authority", "add", dealer, "--role", "dealer", "--name",
            "Test Motors", "--root-key", str(root_key))
        enrol = keys / "town.trust.toml"
        _ok(ann, "trust", "export", str(enrol))
        for d in (car, pho):
            _ok(d, "trust", "join", str(enrol))
        # the dealer desk enrols the car and the phone with its own key (no root key here)
        k = {d.name: _ok(d, "trust", "show")["key"] for d in (car, pho)}
        for name in ("car", "pho"):
            _ok(ann, "trust", "member", "add", k[name], "--authority-key", str(dealer_key))
        _eventually(pho, lambda r: r["member"] is True, "trust", "show",
                    what="the phone holds its certificate")
        shown = _eventually(car, lambda r: r["member"] and len(r["certified"]) == 2 and r,
                            "trust", "show", what="the car holds both certificates")
        assert {c["dealer"] for c in shown["certified"]} == {dealer} and \
            all(c["valid"] for c in shown["certified"]) and shown["members"] == []

        # made in advance on the phone, kept offline: its revocation and a spare successor
        stmt, spare = keys / "phone.statement", keys / "spare"
        made = _ok(pho, "trust", "statement", str(stmt), "--spare", str(spare))
        assert stmt.stat().st_mode & 0o777 == 0o600 and (spare / KEY_FILE).exists()
        successor = Identity.load_or_create(spare).ed25519_pub.hex()
        assert made["key"] == k["pho"] and made["successor"] == successor
        assert _ok(car, "trust", "show")["revocations"] == []  # nothing published yet

        _ok(pho, "situation", "set", "person", "--field", "safety=needs_help",
            "--field", "name=Aiko")
        _eventually(car, lambda r: any(x["owner"] == k["pho"] for x in r["records"]),
                    "situation", "list", "--kind", "person", what="the car has Aiko's record")
        # the phone also registered her grandmother in the safety registry
        grandma = _ok(pho, "safety", "add", "Sato Hana", "--status", "needs_help")["id"]
        _eventually(car, lambda r: r["name"] == "Sato Hana", "safety", "show", grandma,
                    what="the car has the registration")
        rc, res = car.meshctl("safety", "correct", grandma, "--name", "Sato Hanako")
        assert rc == 2 and "registrant" in res["error"]["message"]  # the car is not its owner

        # the phone is lost: the owner publishes the statement from the car
        pub = _ok(car, "trust", "publish", str(stmt))
        assert pub["revocations"][0]["key"] == k["pho"] and \
            pub["revocations"][0]["rank"] == "self"
        _eventually(ann, lambda r: r["revocations"] and r["revocations"][0]["successor"]
                    == successor, "trust", "show", what="the desk holds the revocation")
        wait_until(lambda: "pho" not in ann.neighbours() and "pho" not in car.neighbours(), 30,
                   what="ann and the car close the phone's links")
        pho.stop()

        # the thief writes with the phone's key from another device: refused where it arrives
        (cl.root / "mal").mkdir()
        Identity.load_or_create(cl.root / "mal")
        stolen = Identity.load_or_create(pho.state_dir)
        forged = asyncio.run(_thief_writes(cl.root / "mal" / DB_NAME, stolen))
        before = _ok(car, "sync", "status")["refused"].get("revoked", 0)
        start("mal", ["car"]).wait_ready()
        _eventually(car, lambda r: r["refused"].get("revoked", 0) > before, "sync", "status",
                    what="the car refuses the stolen key's op")
        assert "mal" in car.neighbours()  # the thief's own device is not revoked
        assert all(x["fields"].get("safety") != "missing" for x in _people(car))

        # the owner's new device starts on the spare identity and carries on the record
        (cl.root / "new").mkdir(mode=0o700)
        shutil.copy2(spare / KEY_FILE, cl.root / "new" / KEY_FILE)
        new = start("new", ["car"])
        new.wait_ready()
        assert _ok(new, "trust", "show")["key"] == successor
        _ok(new, "trust", "join", str(enrol))
        _eventually(new, lambda r: r["member"] is True and r["person"] == k["pho"],
                    "trust", "show", what="the new device is a member, of Aiko's record")
        _ok(new, "situation", "set", "person", "--field", "safety=safe")
        recs = _eventually(car, lambda r: any(x["owner"] == successor for x in r["records"])
                           and r["records"], "situation", "list", "--kind", "person",
                           what="the car has the new device's write")
        aiko = [x for x in recs if x["person"] == k["pho"]]
        assert len(aiko) == 1 and aiko[0]["owner"] == successor
        assert aiko[0]["fields"] == {"safety": "safe", "name": "Aiko"}  # the name carried on
        assert "new" in car.neighbours()
        assert forged.hex() not in {x.get("op_id") for x in recs}
        # and corrects the safety registration the lost phone made
        _eventually(new, lambda r: r["name"] == "Sato Hana", "safety", "show", grandma,
                    what="the new device has the registration")
        fixed = _ok(new, "safety", "correct", grandma, "--name", "Sato Hanako", "--status",
                    "safe")
        assert fixed["registered_by"]["key"] == k["pho"] and fixed["status"] == "safe"
        seen = _eventually(car, lambda r: r["name"] == "Sato Hanako" and r, "safety", "show",
                           grandma, what="the car shows the correction")
        assert [(n["kind"], n["author"]) for n in seen["notes"]] == [
            ("registered", k["pho"]), ("corrected", successor)]
        assert _ok(car, "safety", "search", "Hanako")["count"] == 1

        # the dealer retires: the root removes it from its role (not revoked); its members,
        # and the lost phone's successor, move to the root's list; the phone stays revoked
        retired = _ok(ann, "trust", "authority", "remove", dealer, "--root-key",
                      str(root_key))
        assert retired["authorities"] == [] and dealer not in retired["revoked"]
        assert sorted(retired["members"]) == sorted([k["car"], successor])
        assert retired["revoked"] == [k["pho"]]  # folded in from the owner's statement
        assert not any(c["valid"] for c in retired["certified"])
        _eventually(car, lambda r: r["version"] == retired["version"] and r["member"],
                    "trust", "show", what="the car is still a member")
        _eventually(new, lambda r: r["version"] == retired["version"] and r["member"],
                    "trust", "show", what="so is the new phone")
        logs = "".join(d.log_path.read_text(errors="replace") for d in cl)
        assert "Traceback" not in logs
        assert "its key was revoked" in car.log_path.read_text(errors="replace")
