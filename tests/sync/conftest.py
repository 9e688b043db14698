"""Fixtures local to tests/sync."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sync.envelope import NAMESPACE_PRIORITY, Op
from sync.store import OpStore

WALL_S = 1_800_000_000.0


def allow_all(op: Op, wall_ms: int) -> None:
    """An authoriser that accepts every op (sync's tests do not test library rules)."""


@pytest.fixture
def wall() -> list[float]:
    """A settable wall clock: ``wall[0]`` is unix seconds."""
    return [WALL_S]


@pytest.fixture
def open_store(tmp_path: Path, wall: list[float]) -> Callable[..., object]:
    """Factory opening a store in tmp_path with every namespace allowed."""
    opened: list[OpStore] = []

    async def _open(name: str = "ops.db") -> OpStore:
        s = await OpStore.open(tmp_path / name, wall_clock=lambda: wall[0],
                               authorizers={ns: allow_all for ns in NAMESPACE_PRIORITY})
        opened.append(s)
        return s

    return _open


@pytest.fixture
async def store(open_store: Callable[..., object]) -> AsyncIterator[OpStore]:
    s = await open_store()  # type: ignore[misc]
    yield s
    await s.close()
