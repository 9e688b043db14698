"""Stopping a helper task without swallowing the caller's own cancellation.

The usual ``task.cancel(); with suppress(CancelledError): await task`` has a
trap: if the *caller* is cancelled while it waits, its CancelledError is
suppressed too, and a loop that was meant to stop carries on forever. This
helper re-raises when the caller itself is being cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any] | None,
                          *suppress: type[BaseException]) -> None:
    """Cancel ``task`` (if any) and wait until it has ended.

    The task's own CancelledError is absorbed, and so are the exception types
    in ``suppress`` if it ended with one of them; any other error it ended with
    propagates. A cancellation of the calling task always propagates.
    """
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except suppress:
        pass
