"""Real daemons on loopback: a node whose key is revoked is refused by its neighbour, and
both keep dialling each other only with backoff (1 s doubling to 60 s), not once per link.

ann and cy are each other's static peers.  cy's owner revokes cy's key by the statement
signed in advance (no trust configuration needed); published at ann, ann closes cy's link
and refuses it from then on.  Counted, not timed: cy's `carmesh_link_dials_total` against
its `carmesh_link_refused_total{reason="revoked"}`, and the waits each side announces in its
log (before the fix cy made 17 links in 10 s, each closed as it came up).
"""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemons import Cluster, Daemon, free_udp_port, meshctl_ok, meshctl_until, wait_until

pytestmark = pytest.mark.slow

_WAIT = re.compile(r"refused by static peer \w+ 127\.0\.0\.1:(\d+): revoked — will retry in "
                   r"([0-9.]+) s")
_OWN_WAIT = re.compile(r"static peer \w+ 127\.0\.0\.1:(\d+): revoked: .*\(retrying in ([0-9.]+) s\)")


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _counters(port: int) -> dict[tuple[str, str], float]:
    """(metric, label value) -> value of the link dial and refusal counters."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "carmesh_link_dials_total":
                out[("dials", s.labels["kind"])] = s.value
            elif s.name == "carmesh_link_refused_total":
                out[("refused", s.labels["reason"])] = s.value
    return out


def _waits(d: Daemon, pattern: re.Pattern[str], port: int) -> list[float]:
    return [float(w) for p, w in pattern.findall(d.log_path.read_text(errors="replace"))
            if int(p) == port]


def _assert_backs_off(waits: list[float], n: int) -> None:
    """The first ``n`` announced waits are at least those of 1 s doubling, jittered on the
    upper half (a run may start further along: a link that closed at once counted first), so
    ``n`` dials take at least 0.5 + 1 + 2 + ... s whatever the machine's speed."""
    assert len(waits) >= n, waits
    for i, w in enumerate(waits[:n]):
        assert 0.5 * 2**i - 0.05 <= w <= 60.05, (i, waits)


def test_a_revoked_node_and_its_neighbour_redial_each_other_with_backoff(
        tmp_path: Path) -> None:
    ports = {n: free_udp_port() for n in ("ann", "cy")}
    mport = _free_tcp_port()
    with Cluster(log_level="debug") as cl:
        cl.add("ann", ["--listen", f"127.0.0.1:{ports['ann']}", "--no-web",
                       "--peer", f"127.0.0.1:{ports['cy']}"])
        cl.add("cy", ["--listen", f"127.0.0.1:{ports['cy']}", "--no-web",
                      "--peer", f"127.0.0.1:{ports['ann']}", "--metrics", f"127.0.0.1:{mport}"])
        for d in cl:
            d.wait_ready()
        ann, cy = cl["ann"], cl["cy"]
        wait_until(lambda: "cy" in ann.neighbours() and "ann" in cy.neighbours(), 30,
                   what="ann and cy linked")
        stmt = tmp_path / "cy.statement"
        cy_key = meshctl_ok(cy, "trust", "statement", str(stmt))["key"]
        meshctl_ok(ann, "trust", "publish", str(stmt))
        meshctl_until(ann, lambda r: any(x["key"] == cy_key for x in r["revocations"]),
                      "trust", "show", what="ann holds cy's revocation")
        start = _counters(mport)
        # five refusals in a row: with backoff that is 1+2+4+8 s of announced waits at least
        # half taken (7.5 s); before, cy redialled each link as it was closed
        wait_until(lambda: _counters(mport).get(("refused", "revoked"), 0) >= 5, 90,
                   interval=0.5, what="cy refused 5 times")
        got = _counters(mport)
        dials = got[("dials", "static")] - start.get(("dials", "static"), 0)
        refused = got[("refused", "revoked")] - start.get(("refused", "revoked"), 0)
        # every dial of cy since the revocation was refused and counted, one may be in flight
        assert refused <= dials <= refused + 1, (start, got)
        assert set(k for k in got if k[0] == "refused") == {("refused", "revoked")}
        # cy says why once at WARNING, then announces ever longer waits (DEBUG)
        cy_log = cy.log_path.read_text(errors="replace")
        assert len(re.findall(r"WARNING.*refused by static peer", cy_log)) == 1, cy_log[-3000:]
        _assert_backs_off(_waits(cy, _WAIT, ports["ann"]), 4)
        # ann refuses cy's key when it dials cy, too, and backs off the same way
        wait_until(lambda: len(_waits(ann, _OWN_WAIT, ports["cy"])) >= 4, 60,
                   what="ann's own dials of cy refused 4 times")
        _assert_backs_off(_waits(ann, _OWN_WAIT, ports["cy"]), 4)
        assert "cy" not in ann.neighbours()
        assert "Traceback" not in cl.logs()
