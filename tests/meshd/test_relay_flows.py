"""The relay's per-flow counters (``meshd.routing.flows``), on literal times."""

from __future__ import annotations

from meshd.routing.flows import FlowKey, FlowTable

A, B, C = b"\xaa" * 16, b"\xbb" * 16, b"\xcc" * 16


def test_counts_packets_bytes_drops_and_rate_per_flow() -> None:
    t = FlowTable(window_s=1.0)
    ab = FlowKey(A, B, 4, 7)
    ba = FlowKey(B, A, 4, 7)
    for i in range(50):  # 50 packets a second for one second, then one dropped
        t.forwarded(ab, 100, True, 10.0 + i * 0.02)
    t.forwarded(ab, 100, False, 11.0)
    t.forwarded(ba, 60, True, 11.0)
    snap = dict(t.snapshot(11.5))
    st = snap[ab]
    assert (st.packets, st.bytes, st.dropped) == (50, 5000, 1)
    assert abs(st.loss - 1 / 51) < 1e-9
    assert st.rate_pps == 50.0
    assert snap[ba].packets == 1 and snap[ba].dropped == 0
    assert [k for k, _ in t.snapshot(11.5)] == [ba, ab]  # most recently seen first


def test_rate_falls_to_zero_when_a_flow_pauses_and_idle_flows_are_forgotten() -> None:
    t = FlowTable(window_s=1.0, idle_s=30.0)
    k = FlowKey(A, C, 4, 1)
    for i in range(10):
        t.forwarded(k, 10, True, 0.1 * i)
    assert dict(t.snapshot(1.0))[k].rate_pps == 10.0
    assert dict(t.snapshot(5.0))[k].rate_pps == 0.0
    assert t.snapshot(31.0) == [] and len(t) == 0


def test_bounded_least_recently_seen_goes_first() -> None:
    t = FlowTable(max_flows=3)
    keys = [FlowKey(A, B, 4, i) for i in range(1, 5)]
    for i, k in enumerate(keys):
        t.forwarded(k, 1, True, float(i))
    assert len(t) == 3 and {k for k, _ in t.snapshot(4.0)} == set(keys[1:])


def test_drop_counter_keeps_drops_per_reason_and_peer_bounded() -> None:
    import logging

    from meshd.core.codec import DropCounter

    d = DropCounter(logging.getLogger("test"), max_logged=2)
    for _ in range(3):
        d.drop("bad_hello", "327e5667")
    d.drop("oversize", "0badc0de")
    d.drop("oversize", "11111111")  # a third pair: counted by reason only
    assert d.by_peer == {("bad_hello", "327e5667"): 3, ("oversize", "0badc0de"): 1}
    assert d.counts == {"bad_hello": 3, "oversize": 2}
