"""The namespace dev network: links, loss, processes, and that nothing is left behind."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from carmesh.dev.devnet import DevNet, DevNetError, NetNode, cleanup_stale, list_namespaces
from tests.netns.conftest import require_netns

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def ping(net: DevNet, node: NetNode, addr: str, count: int = 1,
         interval: str = "0.2") -> subprocess.CompletedProcess[str]:
    # -W 3: the first IPv6 packet waits for neighbour discovery (about 1 s on a fresh link)
    return net.run(node, ["ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "3", addr],
                   check=False, timeout=60)


def received(proc: subprocess.CompletedProcess[str]) -> int:
    # "40 packets transmitted, 13 received, 67.5% packet loss"
    if "Network is unreachable" in proc.stderr:
        return 0  # no route at all (the link is down)
    for part in proc.stdout.split(","):
        if part.strip().endswith("received"):
            return int(part.split()[0])
    raise AssertionError(f"no ping summary in {proc.stdout!r} {proc.stderr!r}")


def test_line_of_three_ping_across_one_veth(devnet: DevNet, line3: list[NetNode]) -> None:
    a, b, c = line3
    assert set(devnet.namespaces) <= set(list_namespaces())
    assert all(ns.startswith(devnet.tag + "-") for ns in devnet.namespaces)
    assert devnet.interfaces(b) == ["to-a", "to-c"]
    assert devnet.ifname(a, b) == "to-b"
    out = ping(devnet, a, devnet.address(b, a))
    assert out.returncode == 0, out.stdout + out.stderr
    assert received(out) == 1
    out = ping(devnet, c, devnet.address(b, c))
    assert out.returncode == 0, out.stdout + out.stderr
    # a and c share no link and nothing forwards IP: only the mesh may carry a→c
    out = ping(devnet, a, devnet.address(c, b))
    assert out.returncode != 0
    # the interfaces are up with MULTICAST (zeroconf needs it)
    link = devnet.run(b, ["ip", "-o", "link", "show", "to-a"]).stdout
    assert "MULTICAST" in link
    assert ",UP" in link


def test_nothing_appears_in_the_host_namespace(devnet: DevNet, line3: list[NetNode]) -> None:
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                check=True).stdout
    assert "to-a" not in host_links
    assert "to-b" not in host_links


def test_loss_on_ingress(devnet: DevNet) -> None:
    a, b = devnet.line(2)
    addr_b = devnet.address(b, a)
    devnet.set_loss(a, b, 100)
    out = ping(devnet, a, addr_b, count=2)
    assert received(out) == 0
    assert devnet.dropped(b, devnet.ifname(b, a)) >= 2
    devnet.set_loss(a, b, 0)
    assert received(ping(devnet, a, addr_b)) == 1
    assert devnet.dropped(b, devnet.ifname(b, a)) == 0  # the rule is gone
    # 50 % each way: a round trip survives with p = 0.25; 40 tries all or none
    # succeeding has probability below 1e-4
    devnet.set_loss(a, b, 50)
    got = received(ping(devnet, a, addr_b, count=40, interval="0.01"))
    assert 0 < got < 40
    with pytest.raises(DevNetError):
        devnet.set_loss(a, b, 101)


def test_one_way_loss(devnet: DevNet) -> None:
    a, b = devnet.line(2)
    devnet.set_ingress_loss(b, devnet.ifname(b, a), 100)  # a→b lost, b→a fine
    assert received(ping(devnet, a, devnet.address(b, a))) == 0
    assert devnet.dropped(a, devnet.ifname(a, b)) == 0


def test_ipv6_links(devnet: DevNet) -> None:
    a, b, c = (devnet.add_node(n) for n in "abc")
    devnet.link(a, b, "fd99::/64")  # IPv6 only
    devnet.link(b, c, ipv6=True)  # dual stack
    assert devnet.address(a, b) == "fd99::1"
    assert devnet.address(b, a, family=6) == "fd99::2"
    with pytest.raises(DevNetError):
        devnet.address(a, b, family=4)
    assert devnet.address(c, b).startswith("10.77.")
    assert devnet.address(c, b, family=6).startswith("fd77:")
    assert received(ping(devnet, a, devnet.address(b, a))) == 1
    assert received(ping(devnet, c, devnet.address(b, c, family=6))) == 1
    assert received(ping(devnet, c, devnet.address(b, c, family=4))) == 1


def test_unlink_and_link_down(devnet: DevNet) -> None:
    a, b = devnet.diamond()[:2]
    assert {n.name for n in devnet.neighbours(a)} == {"b", "c"}
    addr_b = devnet.address(b, a)
    devnet.set_link_up(a, b, False)
    assert received(ping(devnet, a, addr_b)) == 0
    devnet.set_link_up(a, b, True)
    deadline = time.monotonic() + 10
    while received(ping(devnet, a, addr_b)) != 1:
        assert time.monotonic() < deadline, "link did not come back"
    devnet.unlink(a, b)
    assert "to-b" not in devnet.run(a, ["ip", "-o", "link"]).stdout
    assert devnet.interfaces(a) == ["to-c"]
    with pytest.raises(DevNetError):
        devnet.link_info(a, b)


def test_popen_runs_inside_and_is_killed_on_close() -> None:
    require_netns()
    with DevNet() as net:
        a = net.add_node("a")
        proc = net.popen(a, ["sleep", "60"])
        out = net.run(a, ["ip", "netns", "identify", str(proc.pid)])
        assert out.stdout.strip() == a.netns
    assert proc.poll() is not None
    assert a.netns not in list_namespaces()


def test_everything_removed_after_exit() -> None:
    require_netns()
    with DevNet() as net:
        nodes = net.line(3)
        net.set_loss(nodes[0], nodes[1], 10)
        made = net.namespaces
        assert len(made) == 3
        assert set(made) <= set(list_namespaces())
    assert not set(made) & set(list_namespaces())
    with pytest.raises(DevNetError):
        net.add_node("late")


def test_everything_removed_when_the_body_raises() -> None:
    require_netns()
    made: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), DevNet() as net:
        net.line(2)
        made = net.namespaces
        sleeper = net.popen(net.node("a"), ["sleep", "60"])
        raise RuntimeError("boom")
    assert made
    assert not set(made) & set(list_namespaces())
    assert sleeper.poll() is not None


def test_half_made_node_is_cleaned(devnet: DevNet) -> None:
    devnet.add_node("a")
    with pytest.raises(DevNetError):
        devnet.add_node("a")
    with pytest.raises(DevNetError):
        devnet.add_node("Bad-Name")


async def test_async_context_manager() -> None:
    require_netns()
    async with DevNet() as net:
        a, b = net.line(2)
        made = net.namespaces
        assert received(ping(net, a, net.address(b, a))) == 1
    assert not set(made) & set(list_namespaces())


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


CHILD = """
    import json, os, signal, sys, time
    from carmesh.dev.devnet import DevNet
    net = DevNet()
    a, b = net.line(2)
    net.popen(a, ["sleep", "60"])
    print(json.dumps(net.namespaces), flush=True)
    {action}
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cleans_up(sig: signal.Signals) -> None:
    require_netns()
    child = _child(CHILD.format(action="time.sleep(30)"))
    try:
        assert child.stdout is not None
        made = json.loads(child.stdout.readline())
        assert set(made) <= set(list_namespaces())
        child.send_signal(sig)
        child.wait(timeout=30)
        assert child.returncode != 0  # it died of the signal, after cleaning up
        assert not set(made) & set(list_namespaces())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        cleanup_stale()


def test_cleanup_stale_removes_a_crashed_run_only() -> None:
    require_netns()
    # a run that dies without any chance to clean up
    child = _child(CHILD.format(action="os.kill(os.getpid(), signal.SIGKILL)"))
    assert child.stdout is not None
    crashed = json.loads(child.stdout.readline())
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert set(crashed) <= set(list_namespaces())
    # a namespace with the prefix that no DevNet made (someone's hand-made one)
    unmarked = f"cmu{secrets.token_hex(2)}-x"
    subprocess.run(["ip", "netns", "add", unmarked], check=True, timeout=20)
    try:
        with DevNet() as live:
            live.add_node("a")
            removed = cleanup_stale()
            assert set(crashed) <= set(removed)
            assert not set(crashed) & set(list_namespaces())
            # a live run and an unmarked namespace are left alone
            assert set(live.namespaces) <= set(list_namespaces())
            assert unmarked in list_namespaces()
        assert unmarked in cleanup_stale(prefix=unmarked[:5], include_unmarked=True)
        assert unmarked not in list_namespaces()
    finally:
        if unmarked in list_namespaces():
            subprocess.run(["ip", "netns", "del", unmarked], check=False, timeout=20)


def test_markers_of_closed_runs_are_removed() -> None:
    require_netns()
    with DevNet() as net:
        marker = Path("/run/carmesh-devnet") / net.tag
        assert json.loads(marker.read_text())["pid"] == os.getpid()
    assert not marker.exists()


def test_command_line_lists_and_cleans(devnet: DevNet) -> None:
    devnet.add_node("a")
    out = subprocess.run([sys.executable, "-m", "carmesh.dev.devnet", "list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"{devnet.tag}-a\tlive run" in out
    out = subprocess.run([sys.executable, "-m", "carmesh.dev.devnet", "cleanup"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert "removed" in out
    assert f"{devnet.tag}-a" in list_namespaces()  # a live run is never cleaned up


def test_a_run_token_in_use_is_refused() -> None:
    require_netns()
    token = secrets.token_hex(3)
    with DevNet(token=token) as first:
        first.add_node("a")
        with pytest.raises(DevNetError, match="in use"):
            DevNet(token=token)
        # the refused run did not touch the live one
        assert f"cm{token}-a" in list_namespaces()
    assert f"cm{token}-a" not in list_namespaces()
