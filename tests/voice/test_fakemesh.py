"""The voice tests' mesh on tests.sim's network: paths, cuts, relays' view, tamper, loss."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from meshd.core.packet import MeshPacket
from tests.voice.fakemesh import MAX_PAYLOAD, FakeMesh

SERVICE = 9


def _inbox(mesh: FakeMesh, name: str) -> tuple[list[MeshPacket], asyncio.Event]:
    got: list[MeshPacket] = []
    arrived = asyncio.Event()

    def handler(pkt: MeshPacket, now: float) -> None:
        got.append(pkt)
        arrived.set()

    mesh.by_name[name].register_service(SERVICE, handler)
    return got, arrived


async def test_a_packet_crosses_the_line_and_each_relay_sees_it(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path, ["A", "B", "C", "D"])
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    got, arrived = _inbox(mesh, "D")
    assert mesh.path("A", "D") == ["A", "B", "C", "D"]
    assert a.next_hop(d.node_id) == mesh.by_name["B"].node_id
    assert a.send_packet(d.node_id, SERVICE, b"sealed", flow_id=7)
    await asyncio.wait_for(arrived.wait(), 10)
    assert [(p.source, p.payload, p.flow_id) for p in got] == [(a.node_id, b"sealed", 7)]
    assert mesh.seen_by == {"B": [b"sealed"], "C": [b"sealed"]}
    assert mesh.forwarded == {"B": 1, "C": 1}


async def test_cut_kill_and_link_change_the_paths(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path, ["A", "B", "C", "D"], line=False)
    for x, y in (("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")):
        mesh.link(x, y)
    mesh.link("A", "B")  # linking twice is a no-op
    route = mesh.path("A", "D")
    assert route is not None and len(route) == 3
    relay, other = route[1], ({"B", "C"} - {route[1]}).pop()
    mesh.kill(relay)
    assert mesh.path("A", "D") == ["A", other, "D"]
    mesh.cut(other, "D")
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    assert mesh.path("A", "D") is None
    assert not a.send_packet(d.node_id, SERVICE, b"x")  # no route: not sent
    mesh.link(other, "D")
    assert mesh.path("A", "D") == ["A", other, "D"]


async def test_tamper_rewrites_or_drops_what_is_sent(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path, ["A", "B", "D"])
    a, d = mesh.by_name["A"], mesh.by_name["D"]
    got, arrived = _inbox(mesh, "D")
    mesh.tamper = lambda p: None if p.payload == b"drop" else dataclasses.replace(p, payload=b"X")
    assert a.send_packet(d.node_id, SERVICE, b"drop")  # sent, dropped on the way
    assert a.send_packet(d.node_id, SERVICE, b"keep")
    await asyncio.wait_for(arrived.wait(), 10)
    assert [p.payload for p in got] == [b"X"] and mesh.seen_by["B"] == [b"X"]


async def test_loss_applies_to_every_link_and_counts_fragments(tmp_path: Path) -> None:
    mesh = FakeMesh(tmp_path, ["A", "B"], seed=4)
    a, b = mesh.by_name["A"], mesh.by_name["B"]
    mesh.loss = 0.25  # set after the links exist
    assert mesh.net.net.links[(a.node_id, b.node_id)].params.loss == 0.25
    for _ in range(200):
        a.send_packet(b.node_id, SERVICE, b"p")
    single_lost = mesh.net.stats.lost
    for _ in range(200):
        a.send_message(b.node_id, SERVICE, bytes(3 * MAX_PAYLOAD))  # three fragments
    message_lost = mesh.net.stats.lost - single_lost
    # a packet is lost 25 % of the time (about 50), a 3-fragment message 58 % (about 116)
    assert 30 < single_lost < 75 and 90 < message_lost < 145
