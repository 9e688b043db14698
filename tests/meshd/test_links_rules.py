"""The link layer's pure rules with literal ids and times: duplicates and redial backoff."""

from __future__ import annotations

import random

import pytest

from meshd.links.rules import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    REFUSED_BACKOFF_MAX_S,
    REFUSED_BACKOFF_MIN_S,
    STABLE_LINK_S,
    Backoff,
    Duplicate,
    initiated_by_smaller,
    resolve_duplicate,
)

SMALL = bytes.fromhex("00" * 15 + "01")
LARGE = bytes.fromhex("ff" * 16)


class FixedRandom(random.Random):
    """random() returns the scripted values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_initiated_by_smaller_from_both_ends() -> None:
    # SMALL dialled LARGE: preferred, seen from either end
    assert initiated_by_smaller(SMALL, LARGE, we_initiated=True)
    assert initiated_by_smaller(LARGE, SMALL, we_initiated=False)
    # LARGE dialled SMALL: not preferred, seen from either end
    assert not initiated_by_smaller(LARGE, SMALL, we_initiated=True)
    assert not initiated_by_smaller(SMALL, LARGE, we_initiated=False)


def kept(decision: Duplicate, current: str, new: str, current_alive: bool = True) -> str:
    """Which connection carries the link after the rule (and the liveness ping) ran."""
    if decision is Duplicate.TAKE_NEW or not current_alive:
        return new
    return current


@pytest.mark.parametrize(("first_at_small", "first_at_large"), [
    ("by-small", "by-small"), ("by-small", "by-large"),
    ("by-large", "by-small"), ("by-large", "by-large"),
])
def test_simultaneous_dial_both_ends_keep_the_connection_small_initiated(
        first_at_small: str, first_at_large: str) -> None:
    """Whatever order the two connections complete in at each end, both keep the same one."""
    other = {"by-small": "by-large", "by-large": "by-small"}
    # at SMALL, "by-small" is a connection SMALL initiated; at LARGE, "by-large" is
    d_small = resolve_duplicate(SMALL, LARGE, current_we_initiated=first_at_small == "by-small",
                                new_we_initiated=other[first_at_small] == "by-small")
    d_large = resolve_duplicate(LARGE, SMALL, current_we_initiated=first_at_large == "by-large",
                                new_we_initiated=other[first_at_large] == "by-large")
    assert kept(d_small, first_at_small, other[first_at_small]) == "by-small"
    assert kept(d_large, first_at_large, other[first_at_large]) == "by-small"


def test_resolve_duplicate_literal_cases() -> None:
    # SMALL holds LARGE's connection; its own completes: take it
    assert resolve_duplicate(SMALL, LARGE, current_we_initiated=False,
                             new_we_initiated=True) is Duplicate.TAKE_NEW
    # SMALL holds its own; LARGE's completes: keep the own one if it still answers
    assert resolve_duplicate(SMALL, LARGE, current_we_initiated=True,
                             new_we_initiated=False) is Duplicate.KEEP_CURRENT_IF_ALIVE
    assert kept(Duplicate.KEEP_CURRENT_IF_ALIVE, "old", "new", current_alive=False) == "new"
    # LARGE holds SMALL's connection; its own completes: keep SMALL's if it answers
    assert resolve_duplicate(LARGE, SMALL, current_we_initiated=False,
                             new_we_initiated=True) is Duplicate.KEEP_CURRENT_IF_ALIVE
    # the same direction twice (the initiator restarted and dialled again): the newer wins
    for we in (True, False):
        assert resolve_duplicate(SMALL, LARGE, current_we_initiated=we,
                                 new_we_initiated=we) is Duplicate.TAKE_NEW
        assert resolve_duplicate(LARGE, SMALL, current_we_initiated=we,
                                 new_we_initiated=we) is Duplicate.TAKE_NEW


def test_backoff_doubles_with_upper_half_jitter_up_to_max() -> None:
    b = Backoff(FixedRandom(0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), min_s=0.25, max_s=2.0)
    assert b.failed(100.0) == 100.125    # 0.25 * 0.5
    assert b.failed(101.0) == 101.5      # 0.5 * 1.0
    assert b.failed(102.0) == 102.75     # 1.0 * 0.75
    assert b.failed(103.0) == 104.0      # 2.0 * 0.5
    assert b.failed(110.0) == 111.0      # capped: 2.0 * 0.5
    assert b.failures == 5 and b.delay == 2.0


def test_backoff_starts_over_after_a_link() -> None:
    b = Backoff(FixedRandom(*[1.0] * 5), min_s=1.0, max_s=8.0)
    assert [b.failed(0.0), b.failed(10.0), b.failed(20.0)] == [1.0, 12.0, 24.0]
    b.succeeded(30.0)
    assert b.failures == 0
    assert b.failed(50.0) == 51.0
    b.succeeded(60.0)
    assert b.link_lost(100.0) == 100.0   # up 40 s: redial at once
    assert b.failed(110.0) == 111.0


def test_backoff_defaults_and_bounds() -> None:
    b = Backoff(FixedRandom(*[1.0] * 10))
    times = [b.failed(0.0) for _ in range(8)]
    assert times == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert (BACKOFF_MIN_S, BACKOFF_MAX_S) == (0.25, 10.0)
    with pytest.raises(ValueError):
        Backoff(random.Random(), min_s=0.0)
    with pytest.raises(ValueError):
        Backoff(random.Random(), min_s=2.0, max_s=1.0)


def test_backoff_jitter_spreads_peers_that_failed_together() -> None:
    """Cars that lost the same relay redial at different times (seeded, deterministic)."""
    rng = random.Random(7)
    firsts = {Backoff(rng, min_s=4.0, max_s=4.0).failed(0.0) for _ in range(20)}
    assert len(firsts) == 20
    assert all(2.0 <= t <= 4.0 for t in firsts)


def test_refusals_back_off_from_1_s_to_60_s() -> None:
    """A peer that refuses us (revoked there, busy, another version) is redialled ever more
    slowly: 1 s doubling to a 60 s cap, on its own schedule beside the unreachable one."""
    b = Backoff(FixedRandom(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.5))
    assert (REFUSED_BACKOFF_MIN_S, REFUSED_BACKOFF_MAX_S, STABLE_LINK_S) == (1.0, 60.0, 30.0)
    times = [b.refused(0.0) for _ in range(8)]
    assert times == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert b.refusals == 8 and b.failures == 8
    assert b.refused(1000.0) == 1030.0   # capped, jitter 0: half of 60 s
    assert b.failed(2000.0) == 2000.1875  # no answer: the unreachable schedule, 0.25 s * 0.75
    assert b.refusals == 9


def test_a_link_closed_at_once_counts_as_a_refusal() -> None:
    """The far side accepts the handshake and closes the link at once (a revoked key): each
    such link backs off like a refusal; only a link that stayed up 30 s starts over."""
    b = Backoff(FixedRandom(*[1.0] * 10))
    ups = []
    now = 0.0
    for _ in range(5):
        b.succeeded(now)                  # the handshake completes ...
        now = b.link_lost(now + 0.5)      # ... and the far side closes it at once
        ups.append(now)
    assert ups == [1.5, 4.0, 8.5, 17.0, 33.5]
    assert b.refusals == 5 and b.failures == 1   # each link that came up reset failures
    b.succeeded(100.0)
    assert b.failures == 0 and b.refusals == 5   # not yet: the link must stay up
    assert b.link_lost(129.9) == 129.9 + 32.0    # 29.9 s is not stable: the next refusal
    b.succeeded(200.0)
    assert b.link_lost(230.0) == 230.0           # up 30 s: redial at once, start over
    assert b.refusals == 0
    b.succeeded(240.0)
    assert b.link_lost(241.0) == 242.0           # from 1 s again
    assert b.link_lost(250.0) == 252.0           # lost without a link up: a refusal too


def test_refusal_backoff_bounds_checked() -> None:
    with pytest.raises(ValueError):
        Backoff(random.Random(), refused_min_s=0.0)
    with pytest.raises(ValueError):
        Backoff(random.Random(), refused_min_s=2.0, refused_max_s=1.0)
