"""The console acts on real ``meshd`` daemons: it places a call, answers it, shows it on the
relay, hangs it up, and sends a message.

Three daemons in a line a - b - c, each in its own network namespace (``DevNet``; the
real ``meshd``, which plugs voice in through ``carmesh.app``), so that WebRTC sees only
the namespaces' veth addresses.  Each console talks to its daemon's control socket, a
file on the host; they run one after the other (the calls live in the daemons).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from carmesh.dev.devnet import DevNet, NetNode, cleanup_stale, have_netns
from meshd.paths import default_socket_path
from tests.daemons import Cluster, Daemon, wait_until
from tests.tui.helpers import screen_text, wait_for_text
from tui.app import MeshConsole

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture
def net() -> Iterator[DevNet]:
    why = have_netns()
    if why is not None:
        pytest.skip(f"network-namespace test: {why}")
    cleanup_stale()
    with DevNet() as dn:
        yield dn


def _start(net: DevNet, cl: Cluster, node: NetNode, dial: list[NetNode]) -> Daemon:
    args: list[str] = []
    for other in net.neighbours(node):
        args += ["--listen", f"{net.address(node, other)}:7420"]
    for other in dial:
        args += ["--peer", f"{net.address(other, node)}:7420"]
    return cl.add(node.name, args, prefix=["ip", "netns", "exec", node.netns])


def _console(d: Daemon) -> MeshConsole:
    return MeshConsole(default_socket_path(d.state_dir), interval_s=0.5)


def _reachable(d: Daemon, target: Daemon) -> Any:
    rc, _out = d.meshctl("ping", target.node_id, "--count", "1", "--timeout", "1", timeout=10)
    return rc == 0


async def _connected(pilot: Any) -> None:
    await wait_for_text(pilot, lambda t: "● connected" in t, 15, "the console connected")


async def test_console_calls_answers_relays_hangs_up_and_sends(net: DevNet) -> None:
    a, b, c = net.line(3)
    with Cluster(log_level="info") as cl:
        da = _start(net, cl, a, [])
        db = _start(net, cl, b, [a])
        dc = _start(net, cl, c, [b])
        for d in cl:
            d.wait_ready()
        wait_until(lambda: _reachable(da, dc) and _reachable(dc, da), 40, 0.5,
                   "a and c reach each other")

        # a places a call to c: p, the node, Enter, (no audio source) Enter
        app = _console(da)
        async with app.run_test(size=(120, 40)) as pilot:
            await _connected(pilot)
            await pilot.press("c", "p", *dc.node_id, "enter", "enter")
            await wait_for_text(pilot, lambda t: "calling c" in t, 20, "the call confirmed")
            await wait_for_text(pilot, lambda t: any(" c " in ln and "ringing" in ln
                                                     for ln in t.splitlines()), 20,
                                "the call ringing on the caller")

        # c answers it with a
        app = _console(dc)
        async with app.run_test(size=(120, 40)) as pilot:
            await _connected(pilot)
            await pilot.press("c")
            await wait_for_text(pilot, lambda t: "ringing" in t and "callee" in t, 20,
                                "the incoming call")
            await pilot.press("a")
            await wait_for_text(pilot, lambda t: "answered a" in t, 20, "the answer confirmed")
            await wait_for_text(pilot, lambda t: any("active" in ln and "callee" in ln
                                                     for ln in t.splitlines()), 30,
                                "the call active on the callee")

        # b relays it: its Calls view shows both directions of the media flow, not "no calls"
        app = _console(db)
        async with app.run_test(size=(160, 45)) as pilot:
            await _connected(pilot)
            await pilot.press("c")
            text = await wait_for_text(
                pilot, lambda t: "Relayed for others: 1 calls, 2 flows" in t
                and "a → c" in t and "c → a" in t, 30, "the relayed call on b")
            assert "no calls" not in text
            assert all(f.packets > 0 and f.service == "media" for f in app.model.relay_flows)

        # a hangs up (h, then y), then writes to c (w, node, Enter, text, Enter)
        app = _console(da)
        async with app.run_test(size=(120, 40)) as pilot:
            await _connected(pilot)
            await pilot.press("c")
            await wait_for_text(pilot, lambda t: "active" in t and "caller" in t, 20,
                                "the active call on the caller")
            await pilot.press("h")
            await wait_for_text(pilot, lambda t: "Hang up the call with c?" in t, 5,
                                "the question")
            await pilot.press("y")
            await wait_for_text(pilot, lambda t: "ended (hung up)" in t, 20, "the call ended")
            await pilot.press("m", "w", *dc.node_id, "enter", *"water at the gym", "enter")
            await wait_for_text(pilot, lambda t: "message delivered to" in t, 20,
                                "the delivery confirmed")

        app = _console(dc)
        async with app.run_test(size=(120, 40)) as pilot:
            await _connected(pilot)
            await pilot.press("m")
            text = await wait_for_text(pilot, lambda t: "water at the gym" in t, 20,
                                       "the message on c")
            assert da.node_id[:8] in screen_text(app)
            assert text
