"""Routing on a small town (issue 16): cars route, phones are stubs; deterministic by seed.

Fails if routing breaks: calls between pairs with a path must connect, phones next to a
car must hold a default route through it, and routers' tables must carry the phones
attached to them but no phone's view of the mesh."""

from __future__ import annotations

import logging

import pytest

from tests.sim.town import TownMap
from tests.sim.town_routing import TownRouting

#: a 1.2 x 0.9 km corner of the town: dense enough for paths of several cars
SMALL = TownMap(width_m=1200.0, height_m=900.0, cols=7, rows=5,
                shelters=((1, 1), (5, 3)), dealer=(3, 2))


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="meshd")


def small_run(seed: int) -> tuple[TownRouting, dict[str, object]]:
    sim = TownRouting(150, "town", seed, town=SMALL, calls_per_sample=200)
    return sim, sim.run(120.0, warmup=30.0).figures()


def test_calls_connect_and_stubs_route_through_their_car() -> None:
    sim, f = small_run(3)
    calls = f["calls"]
    assert isinstance(calls, dict)
    assert calls["with_path"] >= 60, calls
    assert f["call_connect"] is not None and f["call_connect"] >= 0.85, calls  # type: ignore[operator]
    assert f["stubs_near_a_car_with_default"] >= 0.9  # type: ignore[operator]
    rb = f["routing_bytes_per_link_s"]
    assert isinstance(rb, dict) and rb["links"] > 20 and 0 < rb["mean"] < 5_000
    phones = set(sim.ids[sim.n_cars:])
    cars = sim.cores[:sim.n_cars]
    # routers carry the phones attached to them; a phone holds routes to its cars only
    assert any(phones & set(c.destinations()) for c in cars)
    for core in sim.cores[sim.n_cars:]:
        assert core.stub
        assert not set(core.destinations()) & phones
        d = core.default_route()
        assert d is None or sim.index[d] < sim.n_cars


def test_deterministic_by_seed() -> None:
    _, a = small_run(5)
    _, b = small_run(5)
    _, c = small_run(6)
    keys = ("routing_bytes_total", "routing_datagrams", "contacts", "calls", "call_connect")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert [a[k] for k in keys] != [c[k] for k in keys]
