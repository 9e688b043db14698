"""Tier 3: a damaged op store, real daemons on loopback (issue 11, item 9).

Before: a corrupt ``ops.sqlite`` stopped the node with a 40-line traceback and
no hint.  Now the start fails with one line saying what happened and the
command that recovers, and ``meshd --recover-store`` moves the store aside and
starts with an empty one that resyncs from the neighbour.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.daemons import Cluster, Daemon, free_udp_port, meshctl_ok, wait_until

pytestmark = pytest.mark.slow


_ok = meshctl_ok


def _record(d: Daemon, node: str) -> dict[str, Any] | None:
    rc, res = d.meshctl("situation", "show", node)
    if rc != 0 or not res["records"]:
        return None
    fields: dict[str, Any] = res["records"][0]["fields"]
    return fields


def test_a_corrupt_op_store_says_how_to_recover_and_recover_store_resyncs() -> None:
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("ann", "bob")}
    with Cluster(log_level="info") as c:
        ann = c.add("ann", ["--listen", addr["ann"], "--peer", addr["bob"]])
        bob = c.add("bob", ["--listen", addr["bob"], "--peer", addr["ann"]])
        ann.wait_ready()
        bob.wait_ready()
        _ok(bob, "situation", "set", "person", "--field", "status=safe")
        wait_until(lambda: _record(ann, "bob"), 30, what="ann holds bob's record")
        assert bob.stop() == 0
        db = bob.state_dir / "ops.sqlite"
        data = bytearray(db.read_bytes())
        data[0:16] = b"not a database!!"
        db.write_bytes(bytes(data))
        bob.log_path.write_bytes(b"")
        bob.start()
        assert bob.proc is not None
        assert bob.proc.wait(30) == 1
        log = bob.log_path.read_text()
        assert "--recover-store" in log and "Traceback" not in log, log
        # the recovery command: the damaged file is kept aside, the node resyncs
        bob.args.append("--recover-store")
        bob.start()
        bob.wait_ready()
        bob.args.remove("--recover-store")
        aside = [p.name for p in bob.state_dir.iterdir() if ".damaged-" in p.name]
        assert any(n.startswith("ops.sqlite.damaged-") for n in aside), aside
        fields = wait_until(lambda: _record(bob, "bob"), 30, what="bob's record back from ann")
        assert fields["status"] == "safe"
        # and a running node refuses to have its store moved under it
        bob.args.append("--recover-store")
        second = Daemon("bob2", bob.state_dir, [*bob.args, "--listen", "127.0.0.1:1"],
                        log_dir=c.root)
        second.start()
        assert second.proc is not None and second.proc.wait(30) == 1
        assert "stop it before --recover-store" in second.log_path.read_text()
        assert _record(bob, "bob") is not None


def test_after_recover_store_writes_wait_for_the_own_chain_instead_of_forking_it() -> None:
    """Before: a write right after --recover-store was seq 1 again, a fork of bob's own chain
    (ann quarantines bob).  Now it is refused with the reason until bob has synced with its
    neighbours, and then continues the chain they gave back."""
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("ann", "bob")}
    with Cluster(log_level="info") as c:
        ann = c.add("ann", ["--listen", addr["ann"], "--peer", addr["bob"]])
        bob = c.add("bob", ["--listen", addr["bob"], "--peer", addr["ann"]])
        ann.wait_ready()
        bob.wait_ready()
        _ok(bob, "situation", "set", "person", "--field", "status=safe")
        wait_until(lambda: _record(ann, "bob"), 30, what="ann holds bob's record")
        assert ann.stop() == 0 and bob.stop() == 0
        # bob's store is moved aside while ann is away: nobody can give its chain back yet
        bob.args.append("--recover-store")
        bob.start()
        bob.wait_ready()
        bob.args.remove("--recover-store")
        rc, res = bob.meshctl("situation", "set", "person", "--field", "status=trapped")
        assert rc == 1, (rc, res)
        assert "fork" in str(res) and "--recover-store" in str(res)
        held = _ok(bob, "sync", "status")["local_writes_held"]
        assert held is not None and "ops.sqlite.resyncing" in held
        assert (bob.state_dir / "ops.sqlite.resyncing").exists()
        # ann is back: bob's chain comes home and the hold ends by itself
        ann.start()
        ann.wait_ready()
        wait_until(lambda: _ok(bob, "sync", "status")["local_writes_held"] is None, 60,
                   what="bob's hold released after syncing with ann")
        assert not (bob.state_dir / "ops.sqlite.resyncing").exists()
        _ok(bob, "situation", "set", "person", "--field", "status=trapped")
        fields = wait_until(lambda: (_record(ann, "bob") or {}).get("status") == "trapped"
                            and _record(ann, "bob"), 30, what="ann takes bob's new record")
        assert fields["status"] == "trapped"
        assert _ok(ann, "sync", "status")["quarantined"] == []
