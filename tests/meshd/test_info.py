"""The info service codec and its rate limiter (pure)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import DropCounter, pack, unpack
from meshd.core.errors import ControlError, RemoteProtocolError
from meshd.core.identity import Identity, Role
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import seal
from meshd.services import info


def test_request_and_answer_roundtrip() -> None:
    assert info.decode(info.encode_request(7)) == 7
    ans = info.decode(info.encode_answer(9, "car-1", "car", [(b"a" * 16, 256), (b"b" * 16, 300)]))
    assert isinstance(ans, info.InfoAnswer)
    assert (ans.request_id, ans.name, ans.role) == (9, "car-1", "car")
    assert ans.neighbours == [(b"a" * 16, 256), (b"b" * 16, 300)]


def test_bad_answers_refused() -> None:
    from meshd.core.codec import pack
    for bad in ({"k": "rep", "id": 1, "name": "x", "role": "car", "nb": [[b"short", 1]]},
                {"k": "rep", "id": 1, "name": "x", "role": "car", "nb": [[b"a" * 16, -1]]},
                {"k": "zzz", "id": 1}):
        with pytest.raises(RemoteProtocolError):
            info.decode(pack(bad))


def test_rate_limiter_per_source_and_total() -> None:
    rl = info.RateLimiter(per_source=2.0, total=5.0)
    t = 100.0
    assert [rl.allow(b"x", t) for _ in range(6)] == [True] * 4 + [False] * 2  # burst 2x rate
    assert rl.allow(b"x", t + 0.5)  # refilled one token
    many = [rl.allow(bytes([i]), t + 0.5) for i in range(20)]
    assert sum(many) <= 10  # the total bucket caps everyone together


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_only_raises_remote_errors(data: bytes) -> None:
    try:
        info.decode(data)
    except RemoteProtocolError:
        pass


# ---------------------------------------------------------------- remote status (sealed)


class _FakeNode:
    """Two of these exchange info packets directly (no links): enough for the sealed path."""

    def __init__(self, name: str) -> None:
        self.identity = Identity.generate()
        self.name = name
        self.drops = DropCounter(logging.getLogger("test"))
        self.peers: dict[bytes, _FakeNode] = {}
        self.svc = info.InfoService(self, lambda: 0.0)
        self.svc.serve_remote({"status": self._status, "neighbours": self._nbs,
                               "routes": self._routes})
        self.sent: list[tuple[bytes, bytes]] = []

    role = "car"

    async def _status(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"node_id": self.identity.node_id.hex(), "name": self.name, "pid": 42,
                "state_dir": "/secret", "neighbours": 1}

    async def _nbs(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"neighbours": [{"node_id": "ab" * 16, "address": "10.0.0.1:7420", "cost": 256,
                                "rtt_ms": 1.5}]}

    async def _routes(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"routes": [{"destination": "cd" * 16, "metric": 300}]}

    def my_links(self) -> list[tuple[bytes, int]]:
        return []

    def destinations(self) -> list[bytes]:
        return []

    def name_of(self, node_id: bytes | None) -> str:
        p = self.peers.get(node_id or b"")
        return p.name if p else ""

    def announcement_of(self, node_id: bytes) -> Any:
        p = self.peers.get(node_id)
        return p.identity.announce(1, 1000.0, p.name, Role.CAR) if p else None

    def resolve(self, query: str) -> bytes:
        return next(n for n, p in self.peers.items() if p.name == query)

    def wall_ms(self) -> int:
        return int(time.time() * 1000)

    def send_message(self, destination: bytes, service: int, data: bytes) -> bool:
        self.sent.append((destination, data))
        peer = self.peers.get(destination)
        if peer is None:
            return False
        pkt = MeshPacket(self.identity.node_id, destination, 8, service, 0, data)
        asyncio.get_running_loop().call_soon(peer.svc.on_packet, pkt, 0.0)
        return True


def _pair() -> tuple[_FakeNode, _FakeNode]:
    a, b = _FakeNode("a"), _FakeNode("b")
    a.peers[b.identity.node_id] = b
    b.peers[a.identity.node_id] = a
    return a, b


def test_remote_status_public_and_admin_disclosure() -> None:
    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        a, b = _pair()
        pub = await a.svc._h_remote({"node": "b", "kind": "status"})
        nbs = await a.svc._h_remote({"node": "b", "kind": "neighbours"})
        b.svc.serve_remote({"status": b._status, "neighbours": b._nbs, "routes": b._routes},
                           admins=frozenset({a.identity.node_id}))
        full = await a.svc._h_remote({"node": "b", "kind": "status"})
        return pub, nbs, full

    pub, nbs, full = asyncio.run(main())
    assert pub["name"] == "b" and pub["neighbours"] == 1 and pub["disclosure"] == "public"
    assert pub["pid"] is None and pub["state_dir"] is None
    assert nbs["neighbours"][0]["address"] is None and nbs["neighbours"][0]["rtt_ms"] == 1.5
    assert full["pid"] == 42 and full["state_dir"] == "/secret" and full["disclosure"] == "full"


def test_remote_requests_forged_replayed_or_unsealed_get_no_answer() -> None:
    async def main() -> tuple[_FakeNode, _FakeNode, _FakeNode]:
        a, b = _pair()
        mallory = _FakeNode("m")
        me, target = a.identity.node_id, b.identity.node_id
        req = seal(a.identity, b.identity.x25519_pub, target, pack({"k": "status", "id": 1}),
                   context=b"info", timestamp_ms=a.wall_ms())
        wire = bytes([info.SEALED_MARK]) + req
        b.svc.on_packet(MeshPacket(me, target, 8, Service.INFO, 0, wire), 0.0)  # answered
        b.svc.on_packet(MeshPacket(me, target, 8, Service.INFO, 0, wire), 0.0)  # replay
        # mallory relays a's sealed request as her own: the sender keys do not match
        b.svc.on_packet(MeshPacket(mallory.identity.node_id, target, 8, Service.INFO, 0, wire),
                        0.0)
        b.svc.on_packet(MeshPacket(me, target, 8, Service.INFO, 0,
                                   bytes([info.SEALED_MARK]) + b"x" * 80), 0.0)
        await asyncio.sleep(0.05)
        return a, b, mallory

    a, b, _mallory = asyncio.run(main())
    assert [d for d, _ in b.sent] == [a.identity.node_id]  # one answer, to a
    assert b.drops.counts["replay"] == 1 and b.drops.counts["sender"] == 1
    assert b.drops.counts["decrypt"] == 1


def test_remote_timeout_and_unknown() -> None:
    async def main() -> list[str]:
        a, b = _pair()
        b.svc._answers = {}  # b stops answering remote queries: a times out
        codes = []
        try:
            await a.svc._h_remote({"node": "b", "kind": "routes", "timeout": 0.3})
        except ControlError as exc:
            codes.append(exc.code)
        a.send_message = lambda d, s, data: False  # type: ignore[method-assign]  # no route
        try:
            await a.svc._h_remote({"node": "b", "kind": "routes", "timeout": 0.3})
        except ControlError as exc:
            codes.append(exc.code)
        return codes

    assert asyncio.run(main()) == ["timeout", "unreachable"]


def test_long_answers_are_cut_to_fit() -> None:
    items = [{"destination": f"{i:032x}", "name": "n" * 40, "metric": i} for i in range(2000)]
    body = info._pack_answer(1, "routes", {"routes": items})
    assert len(body) <= info.MAX_REMOTE_ANSWER
    r = unpack(body, info.MAX_REMOTE_ANSWER, max_items=65536)["r"]
    assert r["truncated"] is True and 0 < len(r["routes"]) < 2000
    assert info._clean({"name": "evil\x1b[2Jname\n"}) == {"name": "evil[2Jname"}
