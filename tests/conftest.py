"""Settings for the whole test session."""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`make test &`, CI wrappers) with SIGINT ignored, and an
    # ignored signal stays ignored in every child: the tests that press Ctrl-C on a real
    # `meshctl ping` or a DevNet owner would then wait in vain. Children of a process with a
    # handler get the default disposition, so install Python's own.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# --- the order the two xdist workers take files in ----------------------------------------------
# `make test` runs `-n 2 --dist loadfile`: each worker takes whole files from one queue.  By
# default xdist orders that queue by the number of tests in a file (`--loadscope-reorder`), which puts the long
# one-test daemon scenarios (one to two minutes each) last: one worker ended minutes after
# the other.  Heaviest first instead (longest-processing-time first), so the tail is made of
# small files and both workers finish together.  Seconds measured one file at a time on a
# loaded 2-core machine (load 5-15, December 2026); only the ranking matters.  A slow file not listed
# here (any test marked slow or netns) still goes before the fast ones.
FILE_SECONDS: dict[str, float] = {
    "tests/web/test_browser_call.py": 150,
    "tests/netns/test_routing_netns.py": 88,
    "tests/voice/test_voice_netns.py": 76,
    "tests/library_replica/test_daemon_owner_revocation.py": 63,
    "tests/library_replica/test_daemon_library.py": 61,
    "tests/web/test_browser.py": 56,
    "tests/library_replica/test_daemon_revocation.py": 55,
    "tests/library_replica/test_daemon_dealer.py": 49,
    "tests/web/test_messages_browser.py": 46,
    "tests/netns/test_trust_netns.py": 45,
    "tests/netns/test_meshd_netns.py": 45,
    "tests/netns/test_discovery_netns.py": 45,
    "tests/carmesh/test_remote_status.py": 40,
    "tests/library_replica/test_daemon_compaction.py": 38,
    "tests/meshd/test_config.py": 38,
    "tests/library_replica/test_daemon_trust.py": 37,
    "tests/carmesh/test_daemon_refusal_backoff.py": 32,
    "tests/carmesh/test_watch.py": 30,
    "tests/library_replica/test_daemon_safety.py": 24,
}
_SLOW_UNLISTED_S = 20.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest files first (a stable sort: the order inside a file is kept); xdist keeps
    this order with ``--no-loadscope-reorder`` (the Makefile passes it)."""
    weight: dict[str, float] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        slow = item.get_closest_marker("slow") or item.get_closest_marker("netns")
        weight[path] = max(weight.get(path, 0.0),
                           FILE_SECONDS.get(path, _SLOW_UNLISTED_S if slow else 0.0))
    items.sort(key=lambda item: -weight[item.nodeid.split("::", 1)[0]])
