"""The link layer's pure rules with literal ids and times: duplicates and redial backoff."""

from __future__ import annotations

import random

import pytest

from meshd.links.rules import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
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
    b.succeeded()
    assert b.failures == 0
    assert b.failed(50.0) == 51.0
    b.link_lost()
    assert b.failed(60.0) == 61.0


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
