"""Fixtures local to the console tests: a star of real daemons on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmesh.dev.harness import Cluster, free_udp_port


@pytest.fixture
def star() -> Iterator[Cluster]:
    """alpha linked to bravo and charlie (static peers); bravo and charlie know only alpha."""
    addr = {n: f"127.0.0.1:{free_udp_port()}" for n in ("alpha", "bravo", "charlie")}
    with Cluster(log_level="info") as c:
        c.add("alpha", ["--listen", addr["alpha"], "--peer", addr["bravo"],
                        "--peer", addr["charlie"]])
        for n in ("bravo", "charlie"):
            c.add(n, ["--listen", addr[n], "--peer", addr["alpha"]])
        for d in c:
            d.wait_ready()
        yield c


