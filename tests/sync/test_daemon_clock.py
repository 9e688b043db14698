"""Tier 3: a node with a wrong clock, two real daemons on loopback (issue 11, item 3).

bob starts with its system clock two days ahead (the test-only
``CARMESH_TEST_CLOCK_OFFSET_S`` of ``carmesh.app``).  Before: ann refused bob's
announcement in the link handshake (``future``) and bob refused ann's
(``stale``), and whatever bob wrote was stamped two days ahead and refused as
``future``.  Now the two link, bob's clock is bounded by ann's view of time,
``status`` says what is wrong and how to fix it, and bob's writes reach ann —
also after bob's clock was corrected (its persisted HLC does not keep it in the
future).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from carmesh.app import CLOCK_OFFSET_ENV
from tests.daemons import MESHCTL, Cluster, Daemon, free_udp_port, meshctl_ok, wait_until

pytestmark = pytest.mark.slow

TWO_DAYS = 172_800


_ok = meshctl_ok


def _bob_record(ann: Daemon) -> dict[str, Any] | None:
    rc, res = ann.meshctl("situation", "show", "bob")
    if rc != 0 or not res["records"]:
        return None
    fields: dict[str, Any] = res["records"][0]["fields"]
    return fields


def test_a_node_with_a_clock_two_days_ahead_links_is_told_and_is_heard() -> None:
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("ann", "bob")}
    with Cluster(log_level="info") as c:
        ann = c.add("ann", ["--listen", addr["ann"], "--peer", addr["bob"]])
        bob = c.add("bob", ["--listen", addr["bob"], "--peer", addr["ann"]],
                    env={CLOCK_OFFSET_ENV: str(TWO_DAYS)})
        ann.wait_ready()
        bob.wait_ready()
        wait_until(lambda: "bob" in ann.neighbours() and "ann" in bob.neighbours(), 20,
                   what="ann and bob link although bob's clock is two days ahead")

        def bounded() -> dict[str, Any] | None:
            clock: dict[str, Any] = _ok(bob, "status")["clock"]
            return clock if abs(clock["offset_s"] + TWO_DAYS) < 60 else None

        clock = wait_until(bounded, 10, what="bob's clock bounded by ann's")
        assert "2d 0h ahead" in clock["warning"] and "timedatectl" in clock["warning"]
        assert abs(clock["neighbours"][ann.node_id[:8]] + TWO_DAYS) < 60
        # the human status says it too
        text = subprocess.run([*MESHCTL, "--state-dir", str(bob.state_dir), "status"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
        assert "warning: this node's system clock is 2d 0h ahead" in text
        assert "clock" in text and "-172800" in text
        ann_clock = _ok(ann, "status")["clock"]
        assert ann_clock["offset_s"] == 0 and "disagree" in ann_clock["warning"]

        # what bob writes now is stamped in ann's time: ann takes it
        _ok(bob, "situation", "set", "person", "--field", "status=trapped",
            "--field", "needs=help")
        fields = wait_until(lambda: _bob_record(ann), 20, what="ann sees bob's record")
        assert fields["status"] == "trapped"
        refused = _ok(ann, "sync", "status")["refused"]
        assert refused.get("future", 0) == 0, refused

        # bob's clock is corrected: restart without the skew; it links and is heard again
        assert bob.stop() == 0
        bob.env = {}
        bob.start()
        bob.wait_ready()
        wait_until(lambda: "ann" in bob.neighbours(), 20, what="bob relinks")
        assert _ok(bob, "status")["clock"]["warning"] is None
        _ok(bob, "situation", "set", "person", "--field", "status=safe")
        wait_until(lambda: (_bob_record(ann) or {}).get("status") == "safe", 20,
                   what="ann sees bob's update after the correction")
        assert _ok(ann, "sync", "status")["refused"].get("future", 0) == 0


def test_what_a_node_wrote_alone_with_its_clock_ahead_is_reissued_once_the_clock_is_fixed() -> None:
    """Before: bob, alone with its clock two days ahead, set its record to trapped; the op was
    stamped two days ahead and ann refused it (``future``) for two days, after bob's clock
    was fixed too.  Now bob holds it back while ann's time says it is in the future, and
    signs it again at the right time when it starts with its clock fixed: ann takes it."""
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("ann", "bob")}
    with Cluster(log_level="info") as c:
        bob = c.add("bob", ["--listen", addr["bob"], "--peer", addr["ann"]],
                    env={CLOCK_OFFSET_ENV: str(TWO_DAYS)})
        bob.wait_ready()
        # alone, with nobody to tell it the time
        _ok(bob, "situation", "set", "person", "--field", "status=trapped",
            "--field", "needs=help")
        ann = c.add("ann", ["--listen", addr["ann"], "--peer", addr["bob"]])
        ann.wait_ready()
        wait_until(lambda: "bob" in ann.neighbours() and "ann" in bob.neighbours(), 20,
                   what="ann and bob link")
        wait_until(lambda: "holds back" in bob.log(), 30,
                   what="bob holds back its op stamped two days ahead")
        assert _bob_record(ann) is None  # not sent: ann would refuse it
        assert _ok(ann, "sync", "status")["refused"].get("future", 0) == 0
        # bob's clock is fixed: at its next start the op is signed again, stamped now
        assert bob.stop() == 0
        bob.env = {}
        bob.start()
        bob.wait_ready()
        assert "signed again at the current time" in bob.log()
        fields = wait_until(lambda: _bob_record(ann), 30, what="ann takes bob's record")
        assert fields["status"] == "trapped" and fields["needs"] == ["help"]
        # the chain goes on from there, and nothing was a fork
        _ok(bob, "situation", "set", "person", "--field", "status=safe")
        wait_until(lambda: (_bob_record(ann) or {}).get("status") == "safe", 20,
                   what="ann sees bob's next update")
        st = _ok(ann, "sync", "status")
        assert st["quarantined"] == [] and st["refused"].get("future", 0) == 0
