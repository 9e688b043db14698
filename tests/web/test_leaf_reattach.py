"""Tier 5: a leaf re-attaches through another car; the mail held for it follows (real daemons).

Three daemons on loopback, a -- b -- c, b and c serving the web app.  A Python leaf
(tests/web/leafclient.py, what leaf.js does) attaches to c over HTTP; a message from a is
held at c while the leaf does not fetch.  The leaf then attaches to b (a newer seqno,
signed by the leaf): c hears of it from the routing (``LeafMoved``), stops serving the
leaf and passes the held ciphertext on; b holds it, the leaf fetches it there and opens
it.  ``meshctl leaves`` and ``meshctl routes`` show the move.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from meshd.core.codec import Fields, unpack
from meshd.core.identity import Identity
from meshd.core.seal import open_sealed
from tests.daemons import Cluster, free_udp_port, meshctl_ok, meshctl_until, wait_until
from tests.web.leafclient import Leaf

pytestmark = pytest.mark.slow


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Car:
    """One car's web app as the leaf's browser sees it (its own cookie jar)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json",
                                              "Origin": self.url}, method="POST")
        try:
            with self.opener.open(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def attach(self, leaf: Leaf) -> Any:
        st, ch = self.post("/messages/challenge", {})
        assert st == 200, ch
        st, res = self.post("/messages/attach", leaf.attachment(ch))
        assert st == 200, res
        return res


@pytest.fixture(scope="module")
def line() -> Iterator[tuple[Cluster, Car, Car]]:
    with Cluster(log_level="info") as cl:
        pa, pb, pc = free_udp_port(), free_udp_port(), free_udp_port()
        wb, wc = _free_tcp_port(), _free_tcp_port()
        cl.add("a", ["--listen", f"127.0.0.1:{pa}", "--no-web"])
        cl.add("b", ["--listen", f"127.0.0.1:{pb}", "--peer", f"127.0.0.1:{pa}",
                     "--web-local", f"127.0.0.1:{wb}"])
        cl.add("c", ["--listen", f"127.0.0.1:{pc}", "--peer", f"127.0.0.1:{pb}",
                     "--web-local", f"127.0.0.1:{wc}"])
        for d in cl:
            d.wait_ready(60)
        meshctl_until(cl["a"], lambda r: any(x["name"] == "c" and x["reachable"]
                                             for x in r["routes"]), "routes", timeout=60)
        yield cl, Car(f"http://127.0.0.1:{wb}"), Car(f"http://127.0.0.1:{wc}")


def _people(car: Car) -> str:
    req = urllib.request.Request(car.url + "/people", headers={"Accept-Language": "en"})
    with car.opener.open(req, timeout=30) as r:
        return str(r.read().decode())


def _browsers(car: Car) -> dict[str, tuple[str, str]]:
    """key -> (name, the car it is attached through) of each browser on ``car``'s /people."""
    return {m["key"]: (m["name"], m["car"]) for m in re.finditer(
        r'<li class="browser" data-kind="browser" data-key="(?P<key>[0-9a-f]{64})" '
        r'data-name="(?P<name>[^"]*)">.*?through car: (?P<car>[^<]*?)</span></li>',
        _people(car), re.S)}


def _route(cl: Cluster, at: str, leaf: Leaf) -> Any:
    rc, res = cl[at].meshctl("routes")
    return next((r for r in res["routes"] if r["destination"] == leaf.id.hex()
                 and r["reachable"]), None) if rc == 0 else None


def test_reattaching_through_b_moves_the_route_and_the_held_mail(
        line: tuple[Cluster, Car, Car]) -> None:
    cl, car_b, car_c = line
    leaf = Leaf("kenji-phone")
    car_c.attach(leaf)
    wait_until(lambda: (_route(cl, "a", leaf) or {}).get("next_hop_name") == "b", 60, 0.3,
               "a routes to the leaf")
    wait_until(lambda: (_route(cl, "b", leaf) or {}).get("next_hop_name") == "c", 60, 0.3,
               "b routes to the leaf through c")
    rc, res = cl["a"].meshctl("send", "kenji-phone", "駅前で待っています", "--timeout", "2")
    assert rc != 0 and res["error"]["code"] == "timeout"  # the leaf is not fetching
    wait_until(lambda: meshctl_ok(cl["c"], "leaves")["leaves"][0]["held"] >= 1, 30, 0.3,
               "c holds it")

    # the same browser, now near b: a newer attachment, signed by the leaf
    res = car_b.attach(leaf)
    assert res["gateway"] == meshctl_ok(cl["b"], "status")["node_id"]
    wait_until(lambda: meshctl_ok(cl["c"], "leaves")["leaves"] == [], 60, 0.3,
               "c stops serving the leaf")
    wait_until(lambda: (_route(cl, "c", leaf) or {}).get("next_hop_name") == "b", 60, 0.3,
               "c routes to the leaf through b")
    assert (_route(cl, "a", leaf) or {}).get("next_hop_name") == "b"
    # the held message followed the leaf to b, where it fetches and opens it
    held = wait_until(lambda: car_b.post("/messages/held", {})[1]["messages"] or None, 30, 0.3,
                      "b holds what c held")
    a_id = bytes.fromhex(meshctl_ok(cl["a"], "status")["node_id"])
    texts = {Fields(unpack(open_sealed(leaf.ident, bytes.fromhex(h["data"]), source=a_id,
                                       context=b"msg").body, 4096)).str("text") for h in held}
    assert texts == {"駅前で待っています"}
    # /people: the browser is listed as a browser at b ("this car") and at c (through b),
    # with its key for pinning, and not a second time as a plain device
    key = leaf.ident.ed25519_pub.hex()
    at_b = wait_until(lambda: _browsers(car_b).get(key), 30, 0.3, "b lists the browser")
    assert at_b == ("kenji-phone", "this car")
    at_c = wait_until(lambda: _browsers(car_c).get(key), 30, 0.3, "c lists the browser")
    assert at_c == ("kenji-phone", "b")
    assert _people(car_c).count('data-name="kenji-phone"') == 1
    # c serves the leaf no more: a send through its old session is refused there
    a_x = Identity.load_or_create(cl["a"].state_dir).x25519_pub
    st, err = car_c.post("/messages/send", leaf.sealed(a_x, a_id, {"k": "text", "text": "x"}, 0))
    assert st == 404 and "not attached here" in err["error"]
