"""NODE resolution through real meshctl against real daemons on loopback (issue 11, item 2)."""

from __future__ import annotations

import subprocess

import pytest

from tests.daemons import MESHCTL, Cluster, Daemon, free_udp_port, wait_until

pytestmark = pytest.mark.slow


def text_meshctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """meshctl without --json: what a person sees."""
    return subprocess.run([*MESHCTL, "--state-dir", str(d.state_dir), *args],
                          capture_output=True, text=True, timeout=30, check=False)


def test_a_name_that_is_also_an_id_prefix_is_ambiguous_and_output_names_who_was_reached() -> None:
    """A node named after another node's id prefix: never a silent pick, either way."""
    with Cluster() as c:
        ann_addr, bob_addr, third_addr = (f"127.0.0.1:{free_udp_port()}" for _ in range(3))
        ann = c.add("ann", ["--listen", ann_addr, "--peer", bob_addr, "--peer", third_addr])
        bob = c.add("bob", ["--listen", bob_addr, "--peer", ann_addr])
        bob.wait_ready()
        prefix = bob.node_id[:4]
        # the third node is *named* the first 4 hex digits of bob's NodeId
        third = c.add(prefix, ["--listen", third_addr, "--peer", ann_addr])
        ann.wait_ready()
        third.wait_ready()
        wait_until(lambda: {"bob", prefix} <= set(ann.neighbours()), 20,
                   what="ann links bob and the node named like bob's prefix")

        rc, doc = ann.meshctl("ping", prefix, "--count", "1")
        assert rc == 2, doc
        assert doc["error"]["code"] == "ambiguous"
        assert sorted((x["node_id"], x["name"]) for x in doc["error"]["data"]["candidates"]) == \
            sorted([(bob.node_id, "bob"), (third.node_id, prefix)])
        r = text_meshctl(ann, "send", prefix, "meet at the shelter at 6")
        assert r.returncode == 2, r
        assert f"bob ({bob.node_id[:8]})" in r.stderr
        assert f"{prefix} ({third.node_id[:8]})" in r.stderr
        assert r.stdout == ""

        # a longer prefix and the full id still reach bob; one to three digits are no prefix
        rc, doc = ann.meshctl("ping", bob.node_id[:6], "--count", "1")
        assert rc == 0 and doc["node_id"] == bob.node_id and doc["name"] == "bob", doc
        assert doc["short_id"] == bob.node_id[:8]
        rc, doc = ann.meshctl("ping", bob.node_id[:3], "--count", "1")
        assert rc == 4 and doc["error"]["code"] == "not_found", doc
        assert "at least 4 hex digits" in doc["error"]["message"]

        # every command says who it reached: name and short id, in text and JSON
        r = text_meshctl(ann, "ping", "bob", "--count", "1")
        assert r.returncode == 0, r
        assert f"reply from bob ({bob.node_id[:8]}): seq=1" in r.stdout
        assert f"--- bob ({bob.node_id[:8]}) ping statistics ---" in r.stdout
        r = text_meshctl(ann, "send", "bob", "hello bob")
        assert r.returncode == 0, r
        assert r.stdout.startswith(f"delivered to bob ({bob.node_id[:8]}): message ")
        rc, doc = ann.meshctl("send", bob.node_id, "hello again")
        assert rc == 0 and (doc["node_id"], doc["name"], doc["short_id"]) == (
            bob.node_id, "bob", bob.node_id[:8]), doc
        r = text_meshctl(ann, "traceroute", bob.node_id[:8])
        assert r.returncode == 0, r
        assert r.stdout.startswith(f"traceroute to bob ({bob.node_id[:8]})")
        rc, doc = ann.meshctl("traceroute", "bob")
        assert rc == 0 and doc["short_id"] == bob.node_id[:8] and doc["name"] == "bob", doc
        rc, msgs = bob.meshctl("messages")
        assert [m["text"] for m in msgs["messages"]] == ["hello bob", "hello again"]
        rc, msgs = third.meshctl("messages")
        assert msgs["messages"] == []  # the look-alike got nothing
