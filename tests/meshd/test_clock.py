"""Mesh time and the bounded HLC (tier 1: pure, literal times) — issue 11, item 3."""

from __future__ import annotations

import random

from meshd.core.clock import MeshClock, describe_offset
from meshd.routing.neighbours import NeighbourTable, decode_hello
from sync.envelope import HLC_COUNTER_BITS, HybridClock

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
T0 = 1_800_000_000.0
TWO_DAYS = 172_800.0


def test_a_clock_ahead_of_its_one_neighbour_follows_the_neighbour() -> None:
    clock = MeshClock()
    assert clock.update(T0, 10.0) is False and clock.offset_s == 0.0
    clock.sample(A, -TWO_DAYS, 10.0)  # the neighbour's clock is two days behind ours
    assert clock.update(T0, 10.5) is True
    assert clock.offset_s == -TWO_DAYS
    assert clock.time(T0 + 0.5) == T0 + 0.5 - TWO_DAYS
    view = clock.view(10.5)
    assert view.warning is not None and "2d 0h ahead of its neighbours'" in view.warning
    assert "timedatectl set-time" in view.warning
    # the neighbour two days *ahead* of us (one vote each): we keep ours, and say so
    sane = MeshClock()
    sane.sample(B, TWO_DAYS, 10.0)
    assert sane.update(T0, 10.0) is False and sane.offset_s == 0.0
    warning = sane.view(10.0).warning
    assert warning is not None and "1 of 1 neighbours' clocks disagree" in warning


def test_the_majority_wins_and_small_offsets_are_left_alone() -> None:
    clock = MeshClock()
    clock.sample(A, 3600.0, 1.0)
    clock.sample(B, 3601.0, 1.0)
    clock.update(T0, 1.0)
    assert clock.offset_s == 3600.0  # both neighbours are an hour ahead of us: 2 votes to 1
    clock.sample(C, 0.5, 1.0)
    clock.update(T0, 1.0)
    assert clock.offset_s == 0.0  # a tie (us and C against A and B): the earlier time wins
    small = MeshClock()
    small.sample(A, -20.0, 1.0)
    assert small.update(T0, 1.0) is False and small.offset_s == 0.0
    assert small.view(1.0).warning is None


def test_the_offset_sticks_when_alone_and_goes_when_the_clock_is_set() -> None:
    clock = MeshClock()
    clock.sample(A, -TWO_DAYS, 0.0)
    clock.update(T0, 0.0)
    clock.forget(A)
    assert clock.update(T0 + 100, 100.0) is False
    assert clock.offset_s == -TWO_DAYS  # alone: keeps stamping in the mesh's time
    # samples expire too, and the offset still sticks
    clock.sample(A, -TWO_DAYS, 100.0)
    assert clock.update(T0 + 200, 200.0) is False and clock.view(200.0).samples == {}
    # the user sets the system clock two days back: the raw clock jumps against monotonic
    assert clock.update(T0 + 201 - TWO_DAYS, 201.0) is True
    assert clock.offset_s == 0.0 and clock.view(201.0).warning is None


def test_describe_offset() -> None:
    assert describe_offset(-TWO_DAYS) == "2d 0h"
    assert describe_offset(-TWO_DAYS + 0.3) == "2d 0h"  # as measured over a link
    assert describe_offset(3725) == "1h 2m"
    assert describe_offset(61) == "1m 1s"
    assert describe_offset(0.25) == "0.2s"


def test_hellos_carry_the_wall_clock_and_give_the_offset() -> None:
    a = NeighbourTable(rng=random.Random(1))
    b = NeighbourTable(rng=random.Random(2))
    a.link_up(B, 0.0)
    b.link_up(A, 0.0)
    [(_, hello)] = a.datagrams_to_send(0.0, wall=T0 + TWO_DAYS)
    assert decode_hello(hello).wall_ms == 1_800_172_800_000
    b.receive(A, hello, 0.01, wall=T0)
    offset = b.clock_offset(A)
    assert offset is not None and abs(offset - TWO_DAYS) < 1e-6
    # without a wall clock (an older peer) there is no sample
    [(_, plain)] = b.datagrams_to_send(0.02)
    a.receive(B, plain, 0.03, wall=T0)
    assert a.clock_offset(B) is None


def test_the_hlc_does_not_stay_in_the_future_after_the_clock_is_corrected() -> None:
    """The persisted HLC of a node that ran two days ahead kept stamping two days ahead."""
    wall_ms = 1_800_000_000_000
    ahead = (wall_ms + 172_800_000) << HLC_COUNTER_BITS
    clock = HybridClock(ahead)  # as the store loads it: the highest stamp it holds
    stamp = clock.now(wall_ms)
    assert stamp == wall_ms << HLC_COUNTER_BITS
    assert clock.now(wall_ms) == stamp + 1  # monotone again from there
    # within the tolerated skew the clock stays monotone as before
    near = HybridClock((wall_ms + 60_000) << HLC_COUNTER_BITS)
    assert near.now(wall_ms) == ((wall_ms + 60_000) << HLC_COUNTER_BITS) + 1
