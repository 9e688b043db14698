"""Shared helpers for the console tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.pilot import Pilot

__all__ = ["screen_text", "wait_for_text"]


def screen_text(app: App[Any]) -> str:
    """What the terminal shows now, as plain text (one line per row).

    Reads the compositor's strips, a Textual internal: if Textual renames it,
    every console test fails here first, which is the point.
    """
    strips = app.screen._compositor.render_strips()
    return "\n".join(s.text for s in strips)


async def wait_for_text(pilot: Pilot[Any], pred: Callable[[str], bool], timeout: float,
                        what: str) -> str:
    """Pause the pilot until ``pred(screen text)`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        await pilot.pause()
        text = screen_text(pilot.app)
        if pred(text):
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; screen:\n{text}")
