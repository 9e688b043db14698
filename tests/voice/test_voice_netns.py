"""Tier 4: calls between real ``meshd`` daemons in Linux network namespaces (root).

The real ``meshd`` (which plugs voice in through ``carmesh.app``) and the real
``meshctl``.  Audio is checked by frequency analysis of what the far side recorded.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode, cleanup_stale, have_netns
from tests.daemons import MESHCTL, Cluster, Daemon, wait_until
from tests.voice.audio import dominant_hz, longest_gap_s, read_wav, tone_windows

pytestmark = [pytest.mark.netns, pytest.mark.slow]



@pytest.fixture
def net() -> Iterator[DevNet]:
    why = have_netns()
    if why is not None:
        pytest.skip(f"network-namespace test: {why}")
    cleanup_stale()
    with DevNet() as dn:
        yield dn


def _ns(node: NetNode) -> list[str]:
    return ["ip", "netns", "exec", node.netns]


def _start(net: DevNet, cl: Cluster, node: NetNode, dial: list[NetNode], extra: list[str]) -> Daemon:
    """A daemon listening on each of its link addresses, dialling ``dial`` by static peer."""
    args: list[str] = []
    for other in net.neighbours(node):
        args += ["--listen", f"{net.address(node, other)}:7420"]
    for other in dial:
        args += ["--peer", f"{net.address(other, node)}:7420"]
    return cl.add(node.name, args + extra, prefix=_ns(node))


def _reachable(d: Daemon, target: Daemon) -> Any:
    # by NodeId: names like "a".."f" are also hex prefixes, and an id prefix wins over a name
    rc, out = d.meshctl("ping", target.node_id, "--count", "1", "--timeout", "1", timeout=10)
    return rc == 0 or (False, d.name, target.name, rc, out)


def _wait_reach(cl: Cluster, da: Daemon, dd: Daemon) -> None:
    last: list[Any] = []

    def both() -> bool:
        last[:] = [_reachable(da, dd), _reachable(dd, da)]
        return last[0] is True and last[1] is True

    try:
        wait_until(both, 40, 0.5, "a and d reach each other")
    except AssertionError:
        raise AssertionError(f"a and d do not reach each other: {last}\n{cl.logs()}") from None


def _assert_tone(path: Path, freq: float, fraction: float = 0.9) -> None:
    samples, rate = read_wav(path)
    assert len(samples) / rate > 2.0
    assert abs(dominant_hz(samples, rate) - freq) < 5
    w = tone_windows(samples, rate, freq)
    assert sum(w) / len(w) >= fraction, w


def _line4(net: DevNet, cl: Cluster, loss_bc: int = 0) -> tuple[Daemon, Daemon, Path]:
    a, b, c, d = net.line(4)
    if loss_bc:
        net.set_loss(b, c, loss_bc)
    root = cl.root
    answer = ["--auto-answer", "--answer-play", "tone:660", "--answer-record", str(root / "d.wav")]
    da = _start(net, cl, a, [], ["--auto-answer", "--answer-play", "tone:440",
                                 "--answer-record", str(root / "a-in.wav")])
    _start(net, cl, b, [a], [])
    _start(net, cl, c, [b], [])
    dd = _start(net, cl, d, [c], answer)
    for x in cl:
        x.wait_ready()
    _wait_reach(cl, da, dd)
    return da, dd, root


def test_line_call_both_ways_without_ip_path(net: DevNet) -> None:
    with Cluster(log_level="info") as cl:
        da, dd, root = _line4(net, cl)
        rc, doc = da.meshctl("call", dd.node_id, "--play", "tone:440", "--record", str(root / "a.wav"),
                             "--duration", "4", timeout=60)
        assert rc == 0, (doc, cl.logs())
        assert doc["reason"] == "hung up" and doc["setup_ms"] is not None
        _assert_tone(root / "d.wav", 440)
        _assert_tone(root / "a.wav", 660)
        rc, doc = dd.meshctl("call", da.node_id, "--play", "tone:550", "--duration", "4", timeout=60)
        assert rc == 0, (doc, cl.logs())
        _assert_tone(root / "a-in.wav", 550)
        rc, calls = dd.meshctl("calls")
        assert rc == 0 and {c["role"] for c in calls["calls"]} == {"caller", "callee"}


def test_five_percent_loss_connects_and_tone_arrives(net: DevNet) -> None:
    with Cluster(log_level="info") as cl:
        da, _dd, root = _line4(net, cl, loss_bc=5)
        rc, doc = da.meshctl("call", _dd.node_id, "--play", "tone:440", "--duration", "6", timeout=60)
        assert rc == 0, (doc, cl.logs())
        _assert_tone(root / "d.wav", 440, fraction=0.6)


def test_diamond_relay_kill9_mid_call(net: DevNet) -> None:
    a, b, c, d = net.diamond()
    with Cluster(log_level="info") as cl:
        root = cl.root
        da = _start(net, cl, a, [], [])
        _start(net, cl, b, [a], [])
        _start(net, cl, c, [a], [])
        dd = _start(net, cl, d, [b, c], ["--auto-answer", "--answer-record", str(root / "d.wav")])
        for x in cl:
            x.wait_ready()
        _wait_reach(cl, da, dd)
        call = subprocess.Popen(
            [*_ns(a), *MESHCTL, "--state-dir", str(da.state_dir), "--json", "call", dd.node_id,
             "--play", "tone:440", "--duration", "14"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(5)
            rc, routes = da.meshctl("routes")
            assert rc == 0
            via = next(r["next_hop_name"] for r in routes["routes"]
                       if r.get("destination") == dd.node_id)
            assert via in ("b", "c")
            cl[via].kill9()
            out, _ = call.communicate(timeout=60)
        finally:
            if call.poll() is None:
                call.kill()
        doc: dict[str, Any] = json.loads(out)
        assert call.returncode == 0 and doc["reason"] == "hung up", (doc, cl.logs())
        assert doc["duration_s"] >= 13.5
        samples, rate = read_wav(root / "d.wav")
        # 14 s of call with one gap of about 2 s while routing moves to the other relay,
        # written as silence: the recording keeps the call's time
        assert len(samples) / rate >= 12.0
        assert longest_gap_s(samples, rate, 440) <= 3.0
        tail = tone_windows(samples[-3 * rate:], rate, 440)
        assert sum(tail) / len(tail) >= 0.9
