"""Zeroconf discovery between real processes in three namespaces a–b–c (a line).

Each node runs ``tests.netns.discovery_probe`` (``meshd.discovery.Discovery`` on
its veth interfaces) and prints what it sees as JSON lines.  b must see a and c
at their addresses on its links, a and c must see only b (multicast does not
cross b), and a node that stops sends goodbyes and disappears from b's list.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode
from tests.netns.procs import JsonLines

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LIFETIME_S = 45  # every probe exits on its own after this, whatever the test does
SEEN_TIMEOUT_S = 20.0
#: how long a negative check watches: zeroconf's probes and announcements all go out within it
CROSS_WINDOW_S = 3.0


def start_probe(net: DevNet, node: NetNode, *extra: str) -> JsonLines:
    argv = [sys.executable, "-m", "tests.netns.discovery_probe", "--name", node.name,
            "--lifetime", str(LIFETIME_S), *extra]
    for ifname in net.interfaces(node):
        argv += ["--iface", ifname]
    proc = net.popen(node, argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     text=True)
    return JsonLines(proc, node.name)


def seen_ids(events: list[dict[str, Any]]) -> set[str]:
    """NodeIds currently seen, replaying seen/gone events in order."""
    ids: set[str] = set()
    for e in events:
        if e.get("event") == "seen":
            ids.add(e["id"])
        elif e.get("event") == "gone":
            ids.discard(e["id"])
    return ids


def stays_false(probe: JsonLines, violated: Callable[[list[dict[str, Any]]], bool],
                window_s: float) -> bool:
    """A negative check over a bounded observation window: True when ``violated(events)``
    never held during ``window_s`` seconds; returns False as soon as it does."""
    return not probe.wait_for(violated, window_s)


def last_seen(events: list[dict[str, Any]], node_id: str) -> dict[str, Any]:
    return [e for e in events if e.get("event") == "seen" and e["id"] == node_id][-1]


@pytest.fixture(params=["asyncio", "uvloop"])
def probes(request: pytest.FixtureRequest, devnet: DevNet,
           line3: list[NetNode]) -> Iterator[dict[str, JsonLines]]:
    extra = ("--uvloop",) if request.param == "uvloop" else ()
    out = {n.name: start_probe(devnet, n, *extra) for n in line3}
    yield out
    for p in out.values():  # devnet kills them anyway; stop them first to collect output
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    for p in out.values():
        try:
            p.join(timeout=15)
        except subprocess.TimeoutExpired:
            p.proc.kill()


def test_line_discovery_and_goodbye(devnet: DevNet, line3: list[NetNode],
                                    probes: dict[str, JsonLines]) -> None:
    a, b, c = line3
    t0 = time.monotonic()
    ids: dict[str, str] = {}
    for name, p in probes.items():
        ready = p.wait_event("ready", SEEN_TIMEOUT_S)
        assert ready is not None, f"{name} did not start: {p.snapshot()} {p.other}"
        ids[name] = ready["id"]

    def b_sees_both(evs: list[dict[str, Any]]) -> bool:
        return seen_ids(evs) == {ids["a"], ids["c"]}

    assert probes["b"].wait_for(b_sees_both, SEEN_TIMEOUT_S), probes["b"].snapshot()
    assert probes["a"].wait_for(lambda evs: ids["b"] in seen_ids(evs), SEEN_TIMEOUT_S)
    assert probes["c"].wait_for(lambda evs: ids["b"] in seen_ids(evs), SEEN_TIMEOUT_S)
    discovery_s = time.monotonic() - t0

    # each sees the other at the address on their shared link, although b
    # advertises the addresses of both of its links
    evs_b = probes["b"].snapshot()
    assert last_seen(evs_b, ids["a"])["host"] == devnet.address(a, b)
    assert last_seen(evs_b, ids["c"])["host"] == devnet.address(c, b)
    assert last_seen(evs_b, ids["a"])["name"] == "a"
    assert last_seen(evs_b, ids["a"])["port"] == 7420
    assert last_seen(probes["a"].snapshot(), ids["b"])["host"] == devnet.address(b, a)
    assert last_seen(probes["c"].snapshot(), ids["b"])["host"] == devnet.address(b, c)

    # multicast does not cross b: a and c never see each other.  Negative check, bounded:
    # zeroconf sends its probes (3, 250 ms apart) and announcements (1 s, then 2 s apart)
    # in the first ~3 s; b already saw both, so they went out; a and c are watched together
    assert stays_false(probes["a"], lambda evs: seen_ids(evs) != {ids["b"]}, CROSS_WINDOW_S), \
        probes["a"].snapshot()
    assert seen_ids(probes["c"].snapshot()) == {ids["b"]}
    assert not any(e.get("id") == ids["c"] for e in probes["a"].snapshot())

    # c stops: it sends goodbyes, and b forgets it well before the record TTL (20 s)
    t1 = time.monotonic()
    probes["c"].proc.send_signal(signal.SIGTERM)
    assert probes["c"].wait_event("closed", 15) is not None, probes["c"].snapshot()
    assert probes["b"].wait_for(lambda evs: seen_ids(evs) == {ids["a"]}, 10), \
        probes["b"].snapshot()
    gone_s = time.monotonic() - t1
    assert any(e.get("event") == "gone" and e["id"] == ids["c"] for e in probes["b"].snapshot())
    # a is unaffected
    assert seen_ids(probes["a"].snapshot()) == {ids["b"]}

    # b's own list (peers()) agrees with its events
    probes["b"].proc.send_signal(signal.SIGTERM)
    final = probes["b"].wait_event("peers", 15)
    assert final is not None
    assert final["peers"] == [ids["a"]]
    print(f"discovery (from process start) in {discovery_s:.2f} s; "
          f"goodbye observed in {gone_s:.2f} s")


def test_silent_death_expires_after_the_ttl(devnet: DevNet) -> None:
    """A node killed without goodbyes is forgotten once its short-TTL records expire."""
    a, b = devnet.line(2)
    ttl = ("--ttl", "4")
    pa, pb = start_probe(devnet, a, *ttl), start_probe(devnet, b, *ttl)
    ready_a = pa.wait_event("ready", SEEN_TIMEOUT_S)
    assert ready_a is not None
    assert pb.wait_for(lambda evs: ready_a["id"] in seen_ids(evs), SEEN_TIMEOUT_S)
    # b keeps seeing a across two TTLs and more while a answers the refresh queries (negative
    # check, bounded: without the refreshes a's records would expire within the window)
    assert stays_false(pb, lambda evs: any(e.get("event") == "gone" for e in evs)
                       or seen_ids(evs) != {ready_a["id"]}, 2 * 4 + 1), pb.snapshot()
    t0 = time.monotonic()
    pa.proc.kill()  # no goodbye
    pa.join(timeout=10)
    # its SRV record expires after the TTL and the next liveness check (every TTL/4)
    # notices; without that check zeroconf would keep the peer for its 1125 s PTR floor.
    # The bound is generous for a loaded machine.
    assert pb.wait_for(lambda evs: not seen_ids(evs), 4 + 10 + 6), pb.snapshot()
    print(f"silent death noticed after {time.monotonic() - t0:.1f} s (TTL 4 s)")
    pb.proc.send_signal(signal.SIGTERM)
    pb.join(timeout=15)


def test_only_the_named_interfaces_are_used(devnet: DevNet) -> None:
    """b runs discovery on its link to a only: c, on b's other link, neither sees nor is seen."""
    a, b, c = devnet.line(3)
    pa = start_probe(devnet, a)
    pb = JsonLines(devnet.popen(
        b, [sys.executable, "-m", "tests.netns.discovery_probe", "--name", "b",
            "--lifetime", str(LIFETIME_S), "--iface", devnet.ifname(b, a)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True), "b")
    pc = start_probe(devnet, c)
    ids = {}
    for name, p in (("a", pa), ("b", pb), ("c", pc)):
        ready = p.wait_event("ready", SEEN_TIMEOUT_S)
        assert ready is not None, f"{name}: {p.snapshot()}"
        ids[name] = ready["id"]
    assert pb.wait_for(lambda evs: ids["a"] in seen_ids(evs), SEEN_TIMEOUT_S)
    assert pa.wait_for(lambda evs: ids["b"] in seen_ids(evs), SEEN_TIMEOUT_S)
    # negative check, bounded: c's probes, announcements and first queries all go out in its
    # first ~3 s (c is ready, so they started); b and c are watched over the same window
    assert stays_false(pb, lambda evs: seen_ids(evs) != {ids["a"]}, CROSS_WINDOW_S + 1), \
        pb.snapshot()
    assert seen_ids(pc.snapshot()) == set()
    for p in (pa, pb, pc):
        p.proc.send_signal(signal.SIGTERM)
    for p in (pa, pb, pc):
        p.join(timeout=15)


def test_discovery_survives_a_lossy_link(devnet: DevNet) -> None:
    """30 % loss each way: mDNS repeats its announcements and queries, so both still meet."""
    a, b = devnet.line(2)
    devnet.set_loss(a, b, 30)
    pa, pb = start_probe(devnet, a), start_probe(devnet, b)
    ready_a, ready_b = pa.wait_event("ready", SEEN_TIMEOUT_S), pb.wait_event("ready", SEEN_TIMEOUT_S)
    assert ready_a is not None
    assert ready_b is not None
    assert pa.wait_for(lambda evs: ready_b["id"] in seen_ids(evs), 30), pa.snapshot()
    assert pb.wait_for(lambda evs: ready_a["id"] in seen_ids(evs), 30), pb.snapshot()
    assert devnet.dropped(b, devnet.ifname(b, a)) + devnet.dropped(a, devnet.ifname(a, b)) > 0
    for p in (pa, pb):
        p.proc.send_signal(signal.SIGTERM)
    for p in (pa, pb):
        p.join(timeout=15)


def test_restart_with_the_same_id_is_seen_again(devnet: DevNet) -> None:
    """A daemon restart: goodbye, then the same NodeId and instance name announce again."""
    a, b = devnet.line(2)
    node_id = "ab" * 16
    pa = start_probe(devnet, a, "--id", node_id)
    pb = start_probe(devnet, b)
    assert pb.wait_for(lambda evs: node_id in seen_ids(evs), SEEN_TIMEOUT_S), pb.snapshot()
    pa.proc.send_signal(signal.SIGTERM)
    assert pa.wait_event("closed", 15) is not None
    pa.join(timeout=15)
    pa2 = start_probe(devnet, a, "--id", node_id)

    def back(evs: list[dict[str, Any]]) -> bool:
        kinds = [e["event"] for e in evs if e.get("event") in ("seen", "gone")]
        return kinds[-2:] == ["gone", "seen"]

    assert pb.wait_for(back, SEEN_TIMEOUT_S), pb.snapshot()
    assert seen_ids(pb.snapshot()) == {node_id}
    for p in (pa2, pb):
        p.proc.send_signal(signal.SIGTERM)
    for p in (pa2, pb):
        p.join(timeout=15)


def test_ipv6_only_and_dual_stack_links(devnet: DevNet) -> None:
    """a–b is IPv6-only, b–c dual-stack: b meets a over IPv6 and c over IPv4."""
    a, b, c = (devnet.add_node(n) for n in "abc")
    devnet.link(a, b, "fd99::/64")
    devnet.link(b, c, ipv6=True)
    probes = {n.name: start_probe(devnet, n) for n in (a, b, c)}
    ids = {}
    for name, p in probes.items():
        ready = p.wait_event("ready", SEEN_TIMEOUT_S)
        assert ready is not None, f"{name}: {p.snapshot()}"
        ids[name] = ready["id"]
    assert probes["b"].wait_for(lambda evs: seen_ids(evs) == {ids["a"], ids["c"]},
                                SEEN_TIMEOUT_S), probes["b"].snapshot()
    assert probes["a"].wait_for(lambda evs: ids["b"] in seen_ids(evs), SEEN_TIMEOUT_S)
    evs_b = probes["b"].snapshot()
    assert last_seen(evs_b, ids["a"])["host"] == devnet.address(a, b)  # fd99::1
    assert last_seen(evs_b, ids["c"])["host"] == devnet.address(c, b, family=4)
    assert last_seen(probes["a"].snapshot(), ids["b"])["host"] == devnet.address(b, a)
    assert ":" in devnet.address(a, b)
    for p in probes.values():
        p.proc.send_signal(signal.SIGTERM)
    for p in probes.values():
        p.join(timeout=15)


def test_announcements_repeat_for_a_link_that_passed_nothing_at_first(devnet: DevNet) -> None:
    """zeroconf announces three times within half a second of registration; a neighbour
    that missed them all (a fresh interface whose IPv6 routes the kernel has not made usable
    yet, loss) may not ask for a long time: its startup queries can be suppressed as
    duplicates of ours (RFC 6762 §7.3).  Discovery announces three more times, 1, 2 and 4 s
    apart (RFC 6762 §8.3 allows eight, each gap at least double the one before)."""
    a, b = devnet.line(2)
    listener = JsonLines(devnet.popen(
        b, [sys.executable, "-m", "tests.netns.mdns_listen", "--addr", devnet.address(b, a),
            "--for", "10"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True), "listener")
    assert listener.wait_event("listening", SEEN_TIMEOUT_S) is not None, listener.other
    pa = start_probe(devnet, a)
    assert pa.wait_event("ready", SEEN_TIMEOUT_S) is not None, pa.snapshot()
    done = listener.wait_event("done", 10 + SEEN_TIMEOUT_S)
    pa.proc.send_signal(signal.SIGTERM)
    pa.join(timeout=15)
    assert done is not None, listener.other
    times = list(done["announcements"].values())
    assert len(times) == 1, done  # a's one instance
    # three at registration, three later (the listener started before a: all are in its
    # window; b runs no discovery, so nobody asks and every response is an announcement);
    # the last one at least 1 + 2 + 4 s after the first
    assert len(times[0]) == 6, done
    assert times[0][-1] - times[0][0] >= 7.0, times
