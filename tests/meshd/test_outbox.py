"""The pure retransmission core shared by call signalling and text messages: literal times."""

from __future__ import annotations

from meshd.services.outbox import Dedup, Outbox, RetryPolicy


def test_signalling_schedule_resends_with_backoff_then_gives_up() -> None:
    box = Outbox()  # 0.25 s, doubling, at most 2 s apart, 7 sends
    n = box.next_number()
    assert n == 1 and box.next_number() == 2
    box.add(n, b"m", 0.0)
    assert box.get_timer() == 0.25
    assert box.due(0.24) == ([], [])
    times = []
    while (t := box.get_timer()) is not None:
        resend, failed = box.due(t)
        if failed:
            assert failed == [n] and resend == []
            times.append(("gave up", t))
        else:
            assert resend == [(n, b"m")]
            times.append(("resent", t))
    assert times == [("resent", 0.25), ("resent", 0.75), ("resent", 1.75), ("resent", 3.75),
                     ("resent", 5.75), ("resent", 7.75), ("gave up", 9.75)]
    assert box.pending == 0


def test_ack_stops_retransmission() -> None:
    box = Outbox()
    box.add(1, b"a", 0.0)
    box.add(2, b"b", 0.1)
    assert box.ack(1) and not box.ack(1)
    assert box.due(1.0) == ([(2, b"b")], [])


def test_message_schedule_runs_until_its_deadline() -> None:
    box = Outbox(RetryPolicy(first=0.5, max_interval=4.0, max_tries=None))
    box.add(1, b"m", 100.0, deadline=110.0)
    times = []
    while (t := box.get_timer()) is not None:
        resend, failed = box.due(t)
        times.append((t, "resent" if resend else "gave up" if failed else "?"))
    assert times == [(100.5, "resent"), (101.5, "resent"), (103.5, "resent"), (107.5, "resent"),
                     (110.0, "gave up")]


def test_dedup_is_bounded() -> None:
    d: Dedup[tuple[bytes, int]] = Dedup(max_entries=2)
    assert d.first_time((b"c", 1)) and not d.first_time((b"c", 1))
    assert d.first_time((b"c", 2)) and d.first_time((b"c", 3))
    assert d.first_time((b"c", 1))  # evicted: bounded memory
