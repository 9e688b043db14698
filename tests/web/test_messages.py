"""``/messages`` over a real node: a leaf attaches, sends sealed mail, gets it held, is refused
when it forges.  The leaf is Python (tests/web/leafclient.py, the construction leaf.js
follows); tests/web/test_messages_browser.py drives the real page in Chromium.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from meshd.core.codec import Fields, unpack
from meshd.core.errors import ControlError
from meshd.core.seal import open_sealed
from tests.web.conftest import Running
from tests.web.leafclient import Leaf
from tests.web.test_pages import _read_events

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _post(c: Any, path: str, payload: Any, *, origin: str | None = "self") -> Any:
    headers = {"Content-Type": "application/json"}
    if origin == "self":
        headers["Origin"] = f"http://{c.host}:{c.port}"
    elif origin is not None:
        headers["Origin"] = origin
    return await c.post(path, data=json.dumps(payload), headers=headers)


async def _attach(c: Any, leaf: Leaf) -> dict[str, Any]:
    r = await _post(c, "/messages/challenge", {})
    assert r.status == 200, await r.text()
    r = await _post(c, "/messages/attach", leaf.attachment(await r.json()))
    assert r.status == 200, await r.text()
    assert "leaf" in r.cookies and r.cookies["leaf"]["httponly"]
    res: dict[str, Any] = await r.json()
    return res


async def test_attach_needs_a_fresh_challenge_and_a_proof(running: Running) -> None:
    c = await running.client()
    try:
        leaf = Leaf("hanako")
        r = await _post(c, "/messages/challenge", {})
        ch = await r.json()
        bad = await _post(c, "/messages/attach", leaf.attachment(ch, forge_proof=True))
        assert bad.status == 400 and "proof" in (await bad.json())["error"]
        again = await _post(c, "/messages/attach", leaf.attachment(ch))  # challenge spent
        assert again.status == 400 and "challenge" in (await again.json())["error"]
        cross = await _post(c, "/messages/challenge", {}, origin="http://evil.example")
        assert cross.status == 403
        res = await _attach(c, leaf)
        assert res["leaf"] == leaf.id.hex() and res["name"] == "hanako"
        listed = await running.call("leaf.list", {})
        assert leaf.id.hex() in [x["leaf"] for x in listed["leaves"]]
        # what /people may show of it: its name, key and car, nothing of what the car holds
        mine = [b for b in (await running.call("leaf.directory", {}))["browsers"]
                if b["node_id"] == leaf.id.hex()]
        assert mine == [{"node_id": leaf.id.hex(), "name": "hanako",
                         "key": leaf.ident.ed25519_pub.hex(),
                         "car": running.node.identity.node_id.hex(),
                         "car_name": running.node.name_of(running.node.identity.node_id)}]
        page = await (await c.get("/people")).text()
        assert f'data-key="{leaf.ident.ed25519_pub.hex()}" data-name="hanako"' in page
        # the car knows the leaf's keys and name as any node's
        assert running.node.resolve("hanako") == leaf.id
    finally:
        await c.close()


async def test_sealed_message_to_the_car_is_read_there_and_the_ack_is_held_sealed(
        running: Running) -> None:
    c = await running.client()
    node = running.node
    try:
        leaf = Leaf("taro")
        await _attach(c, leaf)
        r = await _post(c, "/messages/key", {"node": node.name})
        key = await r.json()
        assert key["node_id"] == node.identity.node_id.hex() and not key["leaf"]
        wire = leaf.sealed(bytes.fromhex(key["x25519"]), node.identity.node_id,
                           {"k": "text", "text": "車の中の人へ <b>こんにちは</b>"}, node.wall_ms())
        r = await _post(c, "/messages/send", wire)
        assert r.status == 200, await r.text()
        assert (await r.json())["status"] == "sent"

        async def inbox() -> list[dict[str, Any]]:
            return [m for m in (await running.call("messages", {}))["messages"]
                    if m["from"] == leaf.id.hex()]

        for _ in range(100):
            if await inbox():
                break
            await asyncio.sleep(0.05)
        [m] = await inbox()
        assert m["text"] == "車の中の人へ <b>こんにちは</b>" and m["from_name"] == "taro"
        # the car's acknowledgement, sealed to the leaf, is held for it: ciphertext only
        for _ in range(100):
            held = (await (await _post(c, "/messages/held", {})).json())["messages"]
            if held:
                break
            await asyncio.sleep(0.05)
        [h] = held
        assert h["from"] == node.identity.node_id.hex()
        opened = open_sealed(leaf.ident, bytes.fromhex(h["data"]), source=node.identity.node_id,
                             context=b"msg")
        f = Fields(unpack(opened.body, 1024))
        assert f.str("k") == "ack" and f.bytes("ref") == bytes.fromhex(wire["sealed"])[:32]
        r = await _post(c, "/messages/release", {"ids": [h["id"]]})
        assert (await r.json())["released"] == 1
        assert (await (await _post(c, "/messages/held", {})).json())["messages"] == []
    finally:
        await c.close()


async def test_forged_send_is_refused_with_a_clear_error(running: Running) -> None:
    c = await running.client()
    node = running.node
    try:
        leaf = Leaf("jiro")
        await _attach(c, leaf)
        wire = leaf.sealed(node.identity.x25519_pub, node.identity.node_id,
                           {"k": "text", "text": "forged"}, node.wall_ms(), forge=True)
        r = await _post(c, "/messages/send", wire)
        assert r.status == 400
        err = (await r.json())["error"]
        assert "signature" in err and leaf.id.hex()[:8] in err and "does not verify" in err
        # another browser's session cannot send as this leaf, nor read its mail
        c2 = await running.client()
        try:
            r = await _post(c2, "/messages/send", leaf.sealed(
                node.identity.x25519_pub, node.identity.node_id, {"k": "text", "text": "x"},
                node.wall_ms()))
            assert r.status == 401 and "not attached" in (await r.json())["error"]
            assert (await _post(c2, "/messages/held", {})).status == 401
        finally:
            await c2.close()
    finally:
        await c.close()


async def test_new_mail_is_announced_on_the_live_channel_of_that_leaf_only(
        running: Running) -> None:
    c = await running.client()
    other = await running.client()
    node = running.node
    try:
        leaf = Leaf("saburo")
        await _attach(c, leaf)
        await _attach(other, Leaf("shiro"))
        streams = []
        for client in (c, other):
            resp = await client.get("/events")
            while (await asyncio.wait_for(_read_events(resp, 1), 30))[-1][0] != "ready":
                pass
            streams.append(resp)
        # the car's own send waits for the leaf's acknowledgement: nobody opens it here
        with pytest.raises(ControlError) as exc:
            await running.call("send", {"node": "saburo", "text": "お元気ですか", "timeout": 1.0})
        assert exc.value.code == "timeout"
        [(event, data)] = await asyncio.wait_for(_read_events(streams[0], 1), 30)
        assert event == "mail" and data["from_name"] == node.name
        held = (await (await _post(c, "/messages/held", {})).json())["messages"]
        assert len(held) == 1 and "お元気" not in json.dumps(held)
        opened = open_sealed(leaf.ident, bytes.fromhex(held[0]["data"]),
                             source=node.identity.node_id, context=b"msg")
        assert Fields(unpack(opened.body, 1024)).str("text") == "お元気ですか"
        # the other leaf's stream got nothing (its next event is a heartbeat, not mail)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_read_events(streams[1], 1), 1.0)
        for stream in streams:
            stream.close()
    finally:
        await c.close()
        await other.close()
