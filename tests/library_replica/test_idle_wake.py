"""The library service sleeps while idle: it wakes on a commit or at the next expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from library_replica.node_service import IDLE_WAKE_S, LibraryNodeService, idle_delay_s
from sync.store import OpStore
from tests.library_replica.test_disk_full import FakeNode, _until


def test_idle_delay_is_the_next_expiry_capped() -> None:
    assert idle_delay_s(None, 1_000, 60.0) == 60.0  # nothing expires: the idle wake
    assert idle_delay_s(1_500, 1_000, 60.0) == pytest.approx(0.501)  # just past the expiry
    assert idle_delay_s(900, 1_000, 60.0) == 0.0  # already due
    assert idle_delay_s(1_000 + 3_600_000, 1_000, 60.0) == 60.0
    assert IDLE_WAKE_S >= 30.0  # an idle phone is not woken every second


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[LibraryNodeService, list[float]]]:
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time)
    svc = LibraryNodeService(FakeNode(tmp_path), store, trust_path=None,  # type: ignore[arg-type]
                             purge_interval_s=0.01)
    purges: list[float] = []
    purge = svc._purge

    def counted() -> None:
        purges.append(time.monotonic())
        purge()

    svc._purge = counted  # type: ignore[method-assign]
    task = asyncio.create_task(svc.run())
    try:
        await svc._ready.wait()
        yield svc, purges
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
        await store.close()


async def test_idle_service_does_not_poll_and_a_commit_wakes_it(
        service: tuple[LibraryNodeService, list[float]]) -> None:
    svc, purges = service
    await asyncio.sleep(0.5)  # the old loop ran every purge_interval_s (50 passes here)
    idle = len(purges)
    assert idle <= 1
    before = (await svc.handlers()["library.version"]({}))["version"]
    await svc.handlers()["library.add"]({"collection": "work", "title": "t", "body": "b"})
    await _until(lambda: len(purges) > idle, 10.0, "a pass after the commit")
    await _until(lambda: not svc._version_dirty, 10.0, "the version refreshed")
    after = (await svc.handlers()["library.version"]({}))["version"]
    assert after != before
    n = len(purges)
    await asyncio.sleep(0.5)
    assert len(purges) <= n + 1  # asleep again
