"""The page's check of the far side's fingerprints (``web/static/callcheck.js``), run in Node.

Signatures are made here, in Python, with the construction the nodes use
(``voice.browser.node_message`` / ``fingerprint_message``), so this also checks
that the page and the nodes sign and read the same bytes.  Each case is what a
car serving the page could hand it: a valid answer or offer, a swapped
fingerprint, signatures stripped, its own key and signature in place of the
node's, a browser's signature that does not cover the fingerprints.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.identity import node_id_of
from voice.browser import fingerprint_message, node_message
from voice.signalling import Kind

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")

STATIC = Path(__file__).resolve().parents[2] / "web" / "static"
FP = "sha-256 " + ":".join(["AB"] * 32)
EVIL = "sha-256 " + ":".join(["EE"] * 32)
SDP = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
       f"a=fingerprint:{FP}\r\na=setup:actpass\r\n")
CALL = bytes(range(16))

# identity.js looks for its form in the page when it loads: Node has no page
RUNNER = """
globalThis.document = { getElementById: () => null };
const { checkFar, fingerprintMessage, NODE_FP_DOMAIN } = await import("%s");
const cases = JSON.parse(process.argv[1]);
const out = [];
for (const c of cases) {
  if (c.message) {
    out.push(Buffer.from(fingerprintMessage(c.callId, c.kind, c.sdp,
      c.node ? NODE_FP_DOMAIN : undefined)).toString("hex"));
  } else {
    out.push(await checkFar(c.callId, c.kind, c.m, c.expect));
  }
}
console.log(JSON.stringify(out));
"""


def _key() -> tuple[Ed25519PrivateKey, str]:
    k = Ed25519PrivateKey.generate()
    return k, k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _run(cases: list[dict[str, Any]]) -> list[Any]:
    assert NODE is not None
    script = RUNNER % (STATIC / "callcheck.js").as_uri()
    proc = subprocess.run([NODE, "--no-warnings", "--input-type=module", "-e", script,
                           json.dumps(cases)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    result: list[Any] = json.loads(proc.stdout)
    return result


def test_the_page_reads_the_same_bytes_the_nodes_sign() -> None:
    got = _run([{"message": True, "callId": CALL.hex(), "kind": "answer", "sdp": SDP,
                 "node": True},
                {"message": True, "callId": CALL.hex(), "kind": "offer", "sdp": SDP,
                 "node": False}])
    assert bytes.fromhex(got[0]) == node_message(CALL, Kind.ANSWER, SDP)
    assert bytes.fromhex(got[1]) == fingerprint_message(CALL, Kind.OFFER, SDP)


def test_check_far_refuses_what_a_car_in_the_middle_could_do() -> None:
    node, ed = _key()
    x = bytes(range(32, 64))
    nid = node_id_of(bytes.fromhex(ed), x).hex()
    car, car_ed = _key()
    car_x = bytes(range(64, 96))
    person, pk = _key()

    def signed(kind: Kind, sdp: str = SDP, by: Ed25519PrivateKey = node, key: str = ed,
               xx: bytes = x) -> dict[str, Any]:
        return {"sdp": sdp, "node_sig": by.sign(node_message(CALL, kind, sdp)).hex(),
                "node_key": key, "x": xx.hex()}

    good = signed(Kind.ANSWER)
    browser = {**signed(Kind.ANSWER), "key": pk,
               "sig": person.sign(fingerprint_message(CALL, Kind.ANSWER, SDP)).hex()}
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("ok node", "answer", good, nid),
        ("ok prefix", "answer", good, nid[:8]),
        ("ok name", "answer", good, "a"),
        ("ok browser", "answer", browser, nid),
        ("ok offer", "offer", signed(Kind.OFFER), nid),
        ("swapped", "answer", {**good, "sdp": SDP.replace(FP, EVIL)}, nid),
        ("stripped", "answer", {"sdp": SDP, "x": x.hex(), "node_key": ed}, nid),
        ("as offer", "offer", good, nid),
        ("car's own", "answer", signed(Kind.ANSWER, SDP.replace(FP, EVIL), car, car_ed, car_x),
         nid),
        ("person domain", "answer",
         {**good, "node_sig": node.sign(fingerprint_message(CALL, Kind.ANSWER, SDP)).hex()}, nid),
        ("browser swapped", "answer",
         {**signed(Kind.ANSWER, SDP.replace(FP, EVIL)), "key": pk, "sig": browser["sig"]}, nid),
        ("browser key swapped", "answer", {**browser, "key": car_ed}, nid),
        ("no fingerprint", "answer", {**good, "sdp": "v=0\r\n" + FP}, nid),
    ]
    got = _run([{"callId": CALL.hex(), "kind": kind, "m": m, "expect": expect}
                for _n, kind, m, expect in cases])
    by = {name: r for (name, *_), r in zip(cases, got, strict=True)}
    assert by["ok node"] == {"ok": True, "node": nid, "who": "node", "bound": True, "why": None}
    assert by["ok prefix"]["ok"] and by["ok prefix"]["bound"]
    assert by["ok name"]["ok"] and not by["ok name"]["bound"] and by["ok name"]["node"] == nid
    assert by["ok browser"]["ok"] and by["ok browser"]["who"] == "key"
    assert by["ok offer"]["ok"]
    assert by["swapped"]["why"] == "node signature"
    assert by["stripped"]["why"] == "unsigned"
    assert by["as offer"]["why"] == "node signature"
    assert by["car's own"]["why"] == "another node"
    assert by["person domain"]["why"] == "node signature"
    assert by["browser swapped"]["why"] == "browser signature"
    assert by["browser key swapped"]["why"] == "browser signature"
    assert by["no fingerprint"]["why"] == "fingerprints"
    for name, r in by.items():
        assert r["ok"] is name.startswith("ok"), (name, r)
