"""The console's model, with literal data and literal times (no terminal, no daemon)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tui.fixtures import BRAVO, CHARLIE, DELTA, ME, NOW, filled_model
from tui.model import POLLED, MeshModel, sparkline


def test_sparkline_scales_to_max_or_top_and_keeps_gaps() -> None:
    assert sparkline([0.0, 1.0, 2.0, 4.0], 4) == "▁▃▅█"
    assert sparkline([0.0, 0.5, 1.0], 3, top=1.0) == "▁▅█"
    assert sparkline([None, 2.0], 2) == " █"
    assert sparkline([1.0, 2.0, 3.0], 2) == "▆█"  # last `width` values only
    assert sparkline([5.0], 4) == "   █"  # right-aligned
    assert sparkline([], 3) == "   "
    assert sparkline([0.0, 0.0], 2) == "▁▁"


def test_neighbours_keep_history_and_forget_the_gone() -> None:
    m = MeshModel(history=3)
    for i, rtt in enumerate([1.0, 2.0, None, 4.0]):
        m.apply("neighbours", {"neighbours": [
            {"node_id": BRAVO, "name": "bravo", "rtt_ms": rtt, "loss": 0.1 * i}]}, NOW + i)
    assert list(m.rtt_history[BRAVO]) == [2.0, None, 4.0]
    assert m.loss_history[BRAVO][-1] == pytest.approx(0.3)
    m.apply("neighbours", {"neighbours": []}, NOW + 5)
    assert m.neighbours == {} and BRAVO not in m.rtt_history


def test_malformed_rows_are_dropped_and_counted_not_raised() -> None:
    m = MeshModel()
    m.apply("neighbours", {"neighbours": [{"name": "no id"}, 7, {"node_id": BRAVO,
                                                                "rtt_ms": "fast"}]}, NOW)
    assert list(m.neighbours) == [BRAVO] and m.neighbours[BRAVO].rtt_ms is None
    assert m.malformed == 2
    before = dict(m.neighbours)
    m.apply("neighbours", {"neighbours": "nope"}, NOW)
    m.apply("routes", ["not", "an", "object"], NOW)
    assert m.neighbours == before
    assert "neighbours" in m.errors and "routes" in m.errors
    assert m.malformed == 4
    m.apply("neighbours", {"neighbours": []}, NOW)
    assert "neighbours" not in m.errors  # a good result clears the error


def test_events_add_and_remove_neighbours_and_are_logged() -> None:
    m = MeshModel()
    m.set_connected(True, "s", NOW)
    m.apply_event("neighbour.up", {"node_id": BRAVO, "name": "bravo", "rtt_ms": 1.5}, NOW, NOW)
    assert m.neighbours[BRAVO].name == "bravo"
    m.apply_event("neighbour.lost", {"node_id": BRAVO, "reason": "hello timeout"}, NOW + 2,
                  NOW + 2)
    assert BRAVO not in m.neighbours
    assert [ln.kind for ln in m.log] == ["console", "neighbour.up", "neighbour.lost"]
    assert m.log[-1].text.startswith("bravo ")  # name remembered from before it was lost
    assert "node_id=b2b2b2b2 " in m.log[-1].text  # NodeIds shortened
    assert m.log_total == 3
    assert "lost neighbour bravo 8s ago (hello timeout)" in [a.text for a in m.alerts(NOW + 10)]
    assert not any("lost" in a.text for a in m.alerts(NOW + 1000))


def test_alerts_when_disconnected_isolated_lossy_or_dropping() -> None:
    m = MeshModel()
    assert [a.text for a in m.alerts(NOW)] == ["no daemon: connecting…"]
    m.set_connected(True, "/tmp/x.sock", NOW)
    m.apply("status", {"node_id": ME, "ready": False, "drops": {"a": 2, "b": 1}}, NOW)
    assert [a.text for a in m.alerts(NOW)] == [
        "daemon is not ready", "no neighbours: this node is isolated",
        "3 packets refused: 2 a, 1 b"]
    m.apply("neighbours", {"neighbours": [{"node_id": BRAVO, "name": "bravo", "loss": 0.5}]},
            NOW)
    assert "high loss to bravo: 50%" in [a.text for a in m.alerts(NOW)]


def test_reconnect_clears_unavailable_methods() -> None:
    m = MeshModel()
    m.set_connected(True, "s", NOW)
    m.set_unavailable("routes")
    m.set_connected(False, "gone", NOW + 1)
    assert "routes" in m.unavailable
    m.set_connected(True, "s", NOW + 2)
    assert m.unavailable == set()
    assert [ln.text for ln in m.log] == ["connected to s", "disconnected: gone", "connected to s"]


def test_topology_dedupes_links_keeping_the_worse_cost() -> None:
    m = MeshModel()
    m.apply("topology", {"nodes": [{"node_id": ME, "name": "alpha", "role": "car"}],
                         "links": [{"a": ME, "b": BRAVO, "cost": 96},
                                   {"a": BRAVO, "b": ME, "cost": 120},
                                   {"a": ME, "b": ME, "cost": 1},
                                   {"a": 5, "b": ME}]}, NOW)
    topo = m.topology
    assert topo is not None and topo.complete
    assert [(ln.a, ln.b, ln.cost) for ln in topo.links] == [(ME, BRAVO, 120)]
    assert {n.node_id for n in topo.nodes} == {ME, BRAVO}  # endpoints become nodes
    assert topo.name_of(BRAVO) == BRAVO[:8]


def test_effective_topology_falls_back_to_own_links() -> None:
    m = MeshModel()
    assert m.effective_topology() is None
    m.apply("status", {"node_id": ME, "name": "alpha", "role": "car"}, NOW)
    m.apply("neighbours", {"neighbours": [{"node_id": BRAVO, "name": "bravo", "cost": 96},
                                          {"node_id": CHARLIE, "name": "charlie"}]}, NOW)
    topo = m.effective_topology()
    assert topo is not None and not topo.complete
    assert {(ln.a, ln.b, ln.cost) for ln in topo.links} == {(ME, BRAVO, 96), (ME, CHARLIE, None)}


def test_sync_progress_from_catch_up_counts() -> None:
    m = filled_model()
    by = {p.node_id: p for p in m.sync_peers}
    assert by[BRAVO].progress == pytest.approx(0.25) and by[BRAVO].expected == 400
    assert by[CHARLIE].progress is None
    assert m.sync_totals["ops"] == 1520


def test_uptime_moves_with_the_injected_clock() -> None:
    m = MeshModel()
    assert m.uptime_s(NOW) is None
    m.apply("status", {"node_id": ME, "uptime_s": 10.0}, NOW)
    assert m.uptime_s(NOW + 5) == 15.0


def test_fixture_model_is_consistent() -> None:
    m = filled_model()
    assert m.name_of(DELTA) == "delta"  # from the topology
    assert len(m.call_rtt["9f8e7d6c5b4a39281706"]) == 20
    assert [c.state for c in m.calls] == ["active", "ended"]  # live first
    assert m.calls[0].direction == "caller" and m.calls[1].reason == "hung up by peer"
    assert m.library_doc is not None and m.library_query == "避難"


def test_retracted_routes_are_marked_unreachable() -> None:
    m = MeshModel()
    m.apply("routes", {"routes": [
        {"destination": BRAVO, "next_hop": BRAVO, "metric": 96},
        {"destination": CHARLIE, "next_hop": BRAVO, "metric": 0xFFFF},
        {"destination": DELTA, "next_hop": BRAVO, "metric": 300, "reachable": False}]}, NOW)
    assert [r.reachable for r in m.routes] == [True, False, False]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["node_id", "neighbours", "routes", "nodes", "links", "calls", "peers",
                         "quality", "catch_up", "a", "b", "cost", "rtt_ms", "destination",
                         "call_id", "results", "doc_id", "records", "bulletins", "x"]),
        kids, max_size=5),
    max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(method=st.sampled_from([*POLLED, "library.search", "library.show", "neighbour.up",
                               "neighbour.lost", "call.state"]), data=_json)
def test_any_daemon_json_is_applied_or_counted_never_raised(method: str, data: object) -> None:
    m = filled_model()
    if method == "library.search":
        m.apply_search("q", data)
    elif method == "library.show":
        m.apply_document(data)
    elif "." in method and method not in POLLED:
        m.apply_event(method, data if isinstance(data, dict) else {"v": data}, None, NOW)
    else:
        m.apply(method, data, NOW)
    m.alerts(NOW)
    m.effective_topology()
    m.uptime_s(NOW)


def test_every_alert_says_which_peer_and_which_reason() -> None:
    """``6 malformed or refused packets dropped`` said nothing: now the reasons in words, the
    peers they came from (``status.drop_sources``), and where Enter leads."""
    m = MeshModel()
    m.set_connected(True, "/tmp/x.sock", NOW)
    m.apply("neighbours", {"neighbours": [{"node_id": BRAVO, "name": "bravo", "loss": 0.5,
                                           "address": "10.88.23.145:7420", "rtt_ms": 4.0,
                                           "cost": 900}]}, NOW)
    m.apply("status", {"node_id": ME, "drops": {"bad_hello": 4, "oversize": 2},
                       "drop_sources": [{"reason": "bad_hello", "peer": BRAVO[:8], "count": 4},
                                        {"reason": "oversize", "peer": "0badc0de", "count": 2}]},
            NOW)
    loss, drops = m.alerts(NOW)
    assert (loss.view, loss.select) == ("neighbours", BRAVO)
    assert "10.88.23.145:7420" in loss.detail and "50%" in loss.detail
    assert drops.text == "6 packets refused: 4 hellos that did not parse, 2 packets over " \
                         "the size limit"
    assert drops.detail.splitlines() == [
        "4 × bad_hello: hellos that did not parse — from bravo (b2b2b2b2) ×4",
        "2 × oversize: packets over the size limit — from 0badc0de ×2"]
    m.apply_event("neighbour.lost", {"node_id": BRAVO, "reason": "hello timeout"}, NOW, NOW)
    lost = next(a for a in m.alerts(NOW + 5) if a.text.startswith("lost"))
    assert (lost.view, lost.select) == ("log", BRAVO[:8]) and "hello timeout" in lost.detail


def test_repeated_events_share_one_log_line_for_ten_seconds() -> None:
    m = MeshModel()
    for i in range(724):
        m.apply_event("library.changed", {"count": 1}, NOW + i * 0.01, NOW)
    m.apply_event("neighbour.lost", {"node_id": BRAVO, "reason": "x"}, NOW + 8, NOW)
    m.apply_event("library.changed", {"count": 2}, NOW + 9, NOW)  # joins the open line
    m.apply_event("library.changed", {"count": 3}, NOW + 11, NOW)  # a new window
    lines = list(m.log)
    assert [(ln.kind, ln.count) for ln in lines] == [
        ("library.changed", 725), ("neighbour.lost", 1), ("library.changed", 1)]
    assert lines[0].span_s == 9.0 and lines[0].text == "count=2"
    # different subjects are not joined
    m.apply_event("neighbour.up", {"node_id": BRAVO, "name": "bravo"}, NOW + 12, NOW)
    m.apply_event("neighbour.up", {"node_id": CHARLIE, "name": "charlie"}, NOW + 12, NOW)
    assert [ln.count for ln in m.log][-2:] == [1, 1]
