"""Pilot drives the console against real meshd daemons on loopback (static peers).

A star: alpha links to bravo and charlie, which know only alpha.  The console
runs on alpha's control socket and must show what the daemons do: neighbours
appearing and disappearing, routes (or that the daemon has none to offer),
the topology, and its own reconnect when alpha restarts.
"""

from __future__ import annotations

import pytest

from carmesh.dev.harness import Cluster, free_udp_port
from meshd.paths import default_socket_path
from tests.tui.helpers import screen_text, wait_for_text
from tui.app import MeshConsole

pytestmark = pytest.mark.slow


def _table_section(text: str) -> str:
    """The screen without its log-free chrome: just the lines under the two header lines."""
    return "\n".join(text.splitlines()[2:])


async def test_console_follows_a_real_mesh(star: Cluster) -> None:
    app = MeshConsole(default_socket_path(star["alpha"].state_dir), interval_s=0.5)
    async with app.run_test(size=(120, 40)) as pilot:
        # overview: who we are
        await wait_for_text(pilot, lambda t: "alpha" in t and "● connected" in t, 15,
                            "overview of alpha")
        assert star["alpha"].node_id in screen_text(app)

        # neighbours appear, with an RTT
        await pilot.press("n")
        text = await wait_for_text(
            pilot, lambda t: "bravo" in t and "charlie" in t and "RTT to" in t, 15,
            "bravo and charlie as neighbours")
        row = next(ln for ln in text.splitlines() if "bravo" in ln and " up " in ln)
        assert star["bravo"].node_id[:8] in row

        # topology: both links of the star, drawn from alpha (two lanes, two corners each)
        await pilot.press("t")
        text = await wait_for_text(
            pilot, lambda t: "nodes, 2 links" in t and "─ bravo" in t and "─ charlie" in t,
            15, "both links in the topology")
        assert "─ alpha" in text and "this node" in text

        # routes: real ones if the daemon serves them, else it says it has none to offer
        await pilot.press("r")
        await pilot.pause()
        routes_served = "routes" not in app.model.unavailable
        if routes_served:
            await wait_for_text(pilot, lambda t: "bravo" in _table_section(t)
                                and "charlie" in _table_section(t), 15, "routes to both")
        else:
            await wait_for_text(pilot, lambda t: "routes: not available on this daemon" in t,
                                5, "routes unavailable notice")

        # calls: a call with its quality needs the daemon's calls method
        await pilot.press("c")
        if "calls" in app.model.unavailable:
            await wait_for_text(pilot, lambda t: "calls: not available on this daemon" in t,
                                5, "calls unavailable notice")
        else:
            await wait_for_text(pilot, lambda t: "no calls" in t, 5, "empty call list")

        # library search with /: the query goes to the daemon (or it says it has no library)
        await pilot.press("l", "slash")
        await pilot.press(*"避難", "enter")
        await wait_for_text(pilot, lambda t: "library.search: not available on this daemon" in t
                            or ("library.search:" not in t and app.model.library_query == "避難"),
                            10, "the search answered")

        # a neighbour dies: it disappears from the neighbours view, the overview alerts
        star["charlie"].kill9()
        await pilot.press("n")
        await wait_for_text(pilot, lambda t: "charlie" not in t and "bravo" in t, 15,
                            "charlie gone from the neighbours")
        if routes_served:
            await pilot.press("r")
            await wait_for_text(pilot, lambda t: "charlie" not in _table_section(t), 15,
                                "route to charlie withdrawn")
        await pilot.press("o")
        await wait_for_text(pilot, lambda t: "lost neighbour charlie" in t, 5,
                            "lost-neighbour alert")
        await pilot.press("g")
        await wait_for_text(pilot, lambda t: "neighbour.lost" in t, 5, "the event in the log")

        # alpha restarts: the console notices, then reconnects by itself
        assert star["alpha"].stop() == 0
        await pilot.press("o")
        await wait_for_text(pilot, lambda t: "no daemon" in t, 10, "disconnect shown")
        star["alpha"].start()
        await pilot.press("n")
        await wait_for_text(pilot, lambda t: "● connected" in t and "bravo" in t, 20,
                            "reconnected with bravo back")
        assert app.poller is not None and app.poller.connections == 2


async def test_route_changes_after_the_relay_fails() -> None:
    """A diamond alpha-{bravo,delta}-charlie: kill the relay alpha uses, the route moves."""
    names = ("alpha", "bravo", "charlie", "delta")
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in names}
    edges = {"alpha": ("bravo", "delta"), "bravo": ("alpha", "charlie"),
             "charlie": ("bravo", "delta"), "delta": ("alpha", "charlie")}
    with Cluster(log_level="info") as c:
        for n in names:
            c.add(n, ["--listen", addr[n], *[x for p in edges[n] for x in ("--peer", addr[p])]])
        for d in c:
            d.wait_ready()
        app = MeshConsole(default_socket_path(c["alpha"].state_dir), interval_s=0.5)
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.press("r")
            if "routes" in app.model.unavailable:
                pytest.skip("this meshd serves no routes method")

            def charlie_row(text: str) -> str | None:
                return next((ln for ln in text.splitlines() if ln.strip().startswith("charlie")
                             and "retracted" not in ln), None)

            text = await wait_for_text(
                pilot, lambda t: (row := charlie_row(t)) is not None
                and ("bravo" in row or "delta" in row), 20, "a route to charlie")
            row = charlie_row(text)
            assert row is not None
            relay, other = ("bravo", "delta") if "bravo" in row else ("delta", "bravo")
            c[relay].kill9()
            await wait_for_text(pilot, lambda t: (row := charlie_row(t)) is not None
                                and other in row and relay not in row, 20,
                                f"the route to charlie moved from {relay} to {other}")
