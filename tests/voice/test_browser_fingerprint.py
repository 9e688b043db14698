"""A browser's signed DTLS fingerprint, checked by the far node; altered in transit, refused.

Real ``VoiceService``s on the in-process mesh (line C–B–A), a real Ed25519 key
standing in for the browser's, no media: car C dials A for the browser
(``browser.dial``).  In the attack, car C itself swaps the fingerprint after
its own check and re-seals with its own, valid node key, which is exactly what
a car in the middle could do; A must refuse the offer (it never rings).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.errors import ControlError, DecodeError
from meshd.core.identity import node_id_of, verify_ed25519
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import open_sealed, seal
from tests.voice.fakemesh import FakeMesh
from voice.browser import check_node, check_person, fingerprint_message, fingerprints, node_message
from voice.service import VoiceService
from voice.signalling import Kind, SigMessage

FP = "sha-256 " + ":".join(["AB"] * 32)
EVIL = "sha-256 " + ":".join(["EE"] * 32)
SDP = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
       "a=ice-ufrag:brws\r\na=ice-pwd:browserpasswordbrowserpw\r\n"
       f"a=fingerprint:{FP}\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n")


def _key() -> tuple[Ed25519PrivateKey, bytes]:
    k = Ed25519PrivateKey.generate()
    return k, k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_fingerprint_message_is_the_browsers_text() -> None:
    cid = bytes(range(16))
    assert fingerprints(SDP) == [FP]
    assert fingerprint_message(cid, Kind.OFFER, SDP) == (
        f"carmesh-call-fingerprint/1\n{cid.hex()}\noffer\n{FP}").encode()


def test_check_person_refuses_a_swapped_fingerprint() -> None:
    k, pub = _key()
    cid = secrets.token_bytes(16)
    sig = k.sign(fingerprint_message(cid, Kind.OFFER, SDP))
    good = SigMessage(Kind.OFFER, cid, 1, sdp=SDP, flow_id=5, person_key=pub, person_sig=sig)
    assert check_person(SigMessage.decode(good.encode())) == pub
    bad = SigMessage(Kind.OFFER, cid, 1, sdp=SDP.replace(FP, EVIL), flow_id=5, person_key=pub,
                     person_sig=sig)
    with pytest.raises(DecodeError):
        check_person(SigMessage.decode(bad.encode()))
    # signed for another call, or as an answer: refused too
    other = SigMessage(Kind.ANSWER, cid, 1, sdp=SDP, person_key=pub, person_sig=sig)
    with pytest.raises(DecodeError):
        check_person(other)


def test_check_node_refuses_a_swapped_fingerprint() -> None:
    k, pub = _key()
    cid = secrets.token_bytes(16)
    sig = k.sign(node_message(cid, Kind.ANSWER, SDP))
    assert node_message(cid, Kind.ANSWER, SDP).startswith(b"carmesh-node-fingerprint/1\n")
    check_node(SigMessage.decode(SigMessage(Kind.ANSWER, cid, 1, sdp=SDP,
                                            node_sig=sig).encode()), pub)
    check_node(SigMessage(Kind.ANSWER, cid, 1, sdp=SDP), pub)  # none: the seal covers it
    for bad in (SigMessage(Kind.ANSWER, cid, 1, sdp=SDP.replace(FP, EVIL), node_sig=sig),
                SigMessage(Kind.OFFER, cid, 1, sdp=SDP, flow_id=5, node_sig=sig),
                SigMessage(Kind.ANSWER, bytes(16), 1, sdp=SDP, node_sig=sig)):
        with pytest.raises(DecodeError):
            check_node(bad, pub)
    # a browser's signature is not a node's: the domains differ
    person_sig = k.sign(fingerprint_message(cid, Kind.ANSWER, SDP))
    with pytest.raises(DecodeError):
        check_node(SigMessage(Kind.ANSWER, cid, 1, sdp=SDP, node_sig=person_sig), pub)


async def _dial(tmp: Path, swap: bool) -> tuple[VoiceService, VoiceService, dict[str, object]]:
    mesh = FakeMesh(tmp, ["C", "B", "A"])
    c, a = mesh.by_name["C"], mesh.by_name["A"]
    vc = VoiceService(c, auto_answer=False, answer_play=None, answer_record=None)
    va = VoiceService(a, auto_answer=False, answer_play=None, answer_record=None)
    if swap:
        def car_in_the_middle(pkt: MeshPacket) -> MeshPacket | None:
            if pkt.service != Service.SIG or pkt.source != c.node_id:
                return pkt
            # the test may read it (A's key); car C re-seals with its own valid key
            body = open_sealed(a.identity, pkt.payload, source=c.node_id, context=b"sig").body
            msg = SigMessage.decode(body)
            if msg.kind is not Kind.OFFER or msg.sdp is None:
                return pkt
            forged = SigMessage(msg.kind, msg.call_id, msg.number, msg.sdp.replace(FP, EVIL),
                                msg.generation, msg.flow_id, 0, msg.person_key, msg.person_sig)
            sealed = seal(c.identity, a.announcement.x25519_pub, a.node_id, forged.encode(),
                          context=b"sig", timestamp_ms=c.wall_ms())
            return MeshPacket(pkt.source, pkt.destination, pkt.hop_limit, pkt.service,
                              pkt.flow_id, sealed)
        mesh.tamper = car_in_the_middle
    k, pub = _key()
    cid = secrets.token_bytes(16)
    sig = k.sign(fingerprint_message(cid, Kind.OFFER, SDP))
    info = await vc.handlers()["browser.dial"]({
        "node": a.node_id.hex(), "call_id": cid.hex(), "sdp": SDP, "key": pub.hex(),
        "sig": sig.hex(), "host": "127.0.0.1"})
    assert info["browser"] is True
    if swap:
        await c.control.wait_for(lambda e, d: e == "call.ended", 10)
    else:
        await a.control.wait_for(lambda e, d: e == "call.incoming", 10)
    result = {"caller": vc.info(cid).to_json(), "callee": va.info(cid).to_json(),
              "rang": len(a.control.of("call.incoming")), "drops": dict(va.drops.counts),
              "person": pub.hex()}
    await vc.close()
    await va.close()
    return vc, va, result


def test_far_node_checks_the_browsers_signature(tmp_path: Path) -> None:
    _vc, _va, r = asyncio.run(_dial(tmp_path, swap=False))
    assert r["rang"] == 1
    assert r["callee"]["person"] == r["person"]  # type: ignore[index]


def test_fingerprint_altered_by_the_serving_car_is_refused(tmp_path: Path) -> None:
    _vc, _va, r = asyncio.run(_dial(tmp_path, swap=True))
    assert r["rang"] == 0
    callee, caller = r["callee"], r["caller"]
    assert callee["reason"] == "failed" and "altered" in callee["detail"], callee  # type: ignore[index]
    assert caller["state"] == "ended" and caller["reason"] == "failed", caller  # type: ignore[index]
    assert r["drops"]["sig-person"] >= 1, r["drops"]  # type: ignore[index]


async def _browser_to_browser(tmp: Path, swap: bool) -> dict[str, object]:
    """Browser on car C calls a browser on car A (signalling only); A may swap its answer's."""
    mesh = FakeMesh(tmp, ["C", "B", "A"])
    c, a = mesh.by_name["C"], mesh.by_name["A"]
    vc = VoiceService(c, auto_answer=False, answer_play=None, answer_record=None)
    va = VoiceService(a, auto_answer=False, answer_play=None, answer_record=None)
    if swap:
        def car_in_the_middle(pkt: MeshPacket) -> MeshPacket | None:
            if pkt.service != Service.SIG or pkt.source != a.node_id:
                return pkt
            body = open_sealed(c.identity, pkt.payload, source=a.node_id, context=b"sig").body
            msg = SigMessage.decode(body)
            if msg.kind is not Kind.ANSWER or msg.sdp is None:
                return pkt
            forged = SigMessage(msg.kind, msg.call_id, msg.number, msg.sdp.replace(FP, EVIL),
                                msg.generation, msg.flow_id, 0, msg.person_key, msg.person_sig)
            sealed = seal(a.identity, c.announcement.x25519_pub, c.node_id, forged.encode(),
                          context=b"sig", timestamp_ms=a.wall_ms())
            return MeshPacket(pkt.source, pkt.destination, pkt.hop_limit, pkt.service,
                              pkt.flow_id, sealed)
        mesh.tamper = car_in_the_middle
    k1, pub1 = _key()
    k2, pub2 = _key()
    cid = secrets.token_bytes(16)
    await vc.handlers()["browser.dial"]({
        "node": a.node_id.hex(), "call_id": cid.hex(), "sdp": SDP, "key": pub1.hex(),
        "sig": k1.sign(fingerprint_message(cid, Kind.OFFER, SDP)).hex(), "host": "127.0.0.1"})
    await a.control.wait_for(lambda e, d: e == "call.incoming", 10)
    offer = await va.handlers()["browser.offer"]({"call": cid.hex(), "host": "127.0.0.1"})
    assert "typ relay" in offer["sdp"] and "a=fingerprint:" + FP in offer["sdp"]
    answer = SDP.replace("brws", "ansr").replace("actpass", "active")
    await va.handlers()["browser.answer"]({
        "call_id": cid.hex(), "sdp": answer, "key": pub2.hex(),
        "sig": k2.sign(fingerprint_message(cid, Kind.ANSWER, answer)).hex()})
    if swap:
        await c.control.wait_for(lambda e, d: e == "call.ended", 10)
    else:
        await c.control.wait_for(lambda e, d: e == "call.browser", 10)
    # neither car ever builds a WebRTC endpoint for a browser's call: no DTLS keys there
    assert vc.endpoint(cid) is None and va.endpoint(cid) is None
    result: dict[str, object] = {
        "caller": vc.info(cid).to_json(), "callee": va.info(cid).to_json(),
        "to_browser": c.control.of("call.browser"), "keys": (pub1.hex(), pub2.hex()),
        "offer": offer, "ids": (c.node_id.hex(), a.node_id.hex())}
    await vc.close()
    await va.close()
    return result


def test_browser_to_browser_signalling_through_two_cars(tmp_path: Path) -> None:
    r = asyncio.run(_browser_to_browser(tmp_path, swap=False))
    caller, callee = r["caller"], r["callee"]
    assert isinstance(caller, dict) and isinstance(callee, dict)
    keys = r["keys"]
    assert isinstance(keys, tuple)
    pub1, pub2 = keys
    assert caller["state"] == "active" and caller["person"] == pub2
    assert callee["state"] == "active" and callee["person"] == pub1
    sent = r["to_browser"]
    assert isinstance(sent, list) and len(sent) == 1
    # the caller's browser gets the far answer with car C's socket as the only candidate
    assert "a=fingerprint:" + FP in sent[0]["sdp"] and sent[0]["sdp"].count("a=candidate:") == 1
    # each page gets the far node's signature over the fingerprints and the keys to check it
    # against the NodeId it called or that rang it (web/static/callcheck.js)
    ids = r["ids"]
    offer = r["offer"]
    assert isinstance(ids, tuple) and isinstance(offer, dict)
    cid = bytes.fromhex(caller["call_id"])
    for doc, kind, signer in ((sent[0], Kind.ANSWER, ids[1]), (offer, Kind.OFFER, ids[0])):
        ed, x = bytes.fromhex(doc["node_key"]), bytes.fromhex(doc["x"])
        assert node_id_of(ed, x).hex() == signer == doc["peer"]
        assert verify_ed25519(ed, bytes.fromhex(doc["node_sig"]), node_message(cid, kind, SDP))
        assert doc["key"] in (pub1, pub2) and doc["name"] in ("A", "C")


def test_answer_fingerprint_altered_by_the_far_car_is_refused(tmp_path: Path) -> None:
    r = asyncio.run(_browser_to_browser(tmp_path, swap=True))
    caller = r["caller"]
    assert isinstance(caller, dict)
    assert caller["reason"] == "failed" and "answer refused" in caller["detail"], caller
    assert r["to_browser"] == []


async def _refused_by_the_browser(tmp: Path) -> dict[str, object]:
    """A browser on car A is offered C's browser's call and finds its fingerprints unsigned."""
    mesh = FakeMesh(tmp, ["C", "B", "A"])
    c, a = mesh.by_name["C"], mesh.by_name["A"]
    vc = VoiceService(c, auto_answer=False, answer_play=None, answer_record=None)
    va = VoiceService(a, auto_answer=False, answer_play=None, answer_record=None)
    k, pub = _key()
    cid = secrets.token_bytes(16)
    await vc.handlers()["browser.dial"]({
        "node": a.node_id.hex(), "call_id": cid.hex(), "sdp": SDP, "key": pub.hex(),
        "sig": k.sign(fingerprint_message(cid, Kind.OFFER, SDP)).hex(), "host": "127.0.0.1"})
    await a.control.wait_for(lambda e, d: e == "call.incoming", 10)
    refuse = va.handlers()["browser.refuse"]
    errors = []
    for why in ("", "x" * 65, "two\nlines", 7):
        try:
            await refuse({"call": cid.hex(), "why": why})
        except ControlError as exc:
            errors.append(exc.code)
    try:  # only a call offered to a browser: this one has no browser relay yet
        await refuse({"call": cid.hex(), "why": "node signature"})
    except ControlError as exc:
        errors.append(exc.code)
    await va.handlers()["browser.offer"]({"call": cid.hex(), "host": "127.0.0.1"})
    await refuse({"call": cid.hex(), "why": "node signature"})
    await c.control.wait_for(lambda e, d: e == "call.ended", 10)
    result: dict[str, object] = {"errors": errors, "callee": va.info(cid).to_json(),
                                 "caller": vc.info(cid).to_json(),
                                 "drops": dict(va.drops.counts)}
    await vc.close()
    await va.close()
    return result


def test_a_browser_refusing_the_far_fingerprints_fails_the_call_at_both_ends(
        tmp_path: Path) -> None:
    r = asyncio.run(_refused_by_the_browser(tmp_path))
    assert r["errors"] == ["bad_request"] * 4 + ["failed"], r
    callee, caller = r["callee"], r["caller"]
    assert isinstance(callee, dict) and isinstance(caller, dict)
    assert callee["reason"] == "failed" and callee["detail"] == \
        "the browser refused the far fingerprints: node signature", callee
    assert caller["state"] == "ended" and caller["reason"] == "failed", caller
    assert r["drops"]["browser-refused"] == 1  # type: ignore[index]
