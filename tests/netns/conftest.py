"""Fixtures for tests in Linux network namespaces (need root; skipped otherwise).

``devnet`` gives a fresh ``carmesh.dev.devnet.DevNet`` that is torn down after the
test whatever happens; ``line3`` is three nodes a–b–c in a line on top of it.
Leftovers of crashed earlier runs are removed once per session (only runs whose
owner process is dead; parallel runs are left alone).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from carmesh.dev.devnet import DevNet, NetNode, cleanup_stale, have_netns

NETNS_SKIP = have_netns()


def require_netns() -> None:
    """Skip the calling test with a clear reason when namespaces cannot be created here."""
    if NETNS_SKIP is not None:
        pytest.skip(f"network-namespace test: {NETNS_SKIP}")


@pytest.fixture(scope="session")
def netns_clean() -> None:
    """Remove namespaces left by crashed earlier runs (once per session)."""
    require_netns()
    cleanup_stale()


@pytest.fixture
def devnet(netns_clean: None) -> Iterator[DevNet]:
    """A fresh dev network; everything it made is deleted after the test."""
    require_netns()
    with DevNet() as net:
        yield net


@pytest.fixture
def line3(devnet: DevNet) -> list[NetNode]:
    """Nodes a–b–c in a line (a and c are not linked)."""
    return devnet.line(3)
