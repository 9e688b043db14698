"""cancel_and_wait: stops the helper, but never swallows the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from meshd.core.tasks import cancel_and_wait


async def test_cancels_and_waits_for_the_task() -> None:
    ended = asyncio.Event()

    async def helper() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.set()

    task = asyncio.create_task(helper())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and ended.is_set()
    await cancel_and_wait(None)  # nothing to stop


async def test_suppresses_only_the_named_errors() -> None:
    async def fails() -> None:
        raise KeyError("x")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await cancel_and_wait(task, KeyError)  # absorbed
    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(KeyError):
        await cancel_and_wait(task, ValueError)


async def test_a_cancelled_caller_stays_cancelled() -> None:
    """The caller is cancelled while it waits for a slow-to-stop helper: it must stop."""
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await release.wait()  # takes its time to clean up

    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:  # a reconnect loop of the kind that used to run forever
            rounds += 1
            helper = asyncio.create_task(slow_to_stop())
            await asyncio.sleep(0)
            await cancel_and_wait(helper)

    outer = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    outer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 5)
    assert rounds == 1
