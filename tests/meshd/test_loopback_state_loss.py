"""Tier 3: real daemons on loopback recover from lost state files (issue 11, item 10)."""

from __future__ import annotations

import pytest

from tests.daemons import Cluster, free_udp_port, wait_until

pytestmark = pytest.mark.slow


def test_a_node_whose_seqno_file_was_deleted_is_accepted_again() -> None:
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("ann", "bob")}
    with Cluster() as c:
        c.add("ann", ["--listen", addr["ann"], "--peer", addr["bob"]])
        c.add("bob", ["--listen", addr["bob"], "--peer", addr["ann"]])
        for d in c:
            d.wait_ready()
        wait_until(lambda: "ann" in c["bob"].neighbours(), 15, what="bob sees ann")
        # two restarts: bob has seen ann's announcements with ever higher seqnos
        seqnos = []
        for _ in range(2):
            assert c["ann"].stop() == 0
            c["ann"].start()
            seqnos.append(c["ann"].wait_ready()["seqno"])
            wait_until(lambda: "ann" in c["bob"].neighbours(), 15, what="bob relinks ann")
        assert seqnos[1] > seqnos[0]
        assert c["ann"].stop() == 0
        (c["ann"].state_dir / "announce.seqno").unlink()
        c["ann"].start()
        status = c["ann"].wait_ready()
        assert status["seqno"] > seqnos[1]
        # bob takes it again at once (before: "replay: seq 1 < 3 seen" at every attempt)
        wait_until(lambda: "ann" in c["bob"].neighbours(), 15, what="bob accepts ann again")
        rc, res = c["bob"].meshctl("ping", "ann", "--count", "1")
        assert rc == 0, res
        assert "missing though the node has an identity" in c["ann"].log_path.read_text()
