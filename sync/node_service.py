"""Sync as a node service: the op store and the gossip service plugged into a meshd node.

The composition root (``carmesh.app``) opens the store in the node's state
directory, registers the application's authorisers on it (library_replica does),
and adds this service to the node: neighbour events start and stop
reconciliation, the link stream service ``sync`` carries sessions, and the
control method ``sync.status`` reports per-peer progress.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, NodeApi, StreamHandler
from sync.service import SyncService
from sync.store import OpStore, default_verify_workers, refuse_empty_file

__all__ = ["SyncNodeService", "open_store"]

DB_NAME = "ops.sqlite"


async def open_store(state_dir: Path, *,
                     wall_clock: Callable[[], float] = time.time) -> OpStore:
    """Open (or create) the node's durable op store (SQLite, WAL) in ``state_dir``.

    Large received batches (a catch-up) are verified in worker processes when the
    machine has two CPUs or more; they start with the first such batch.
    """
    refuse_empty_file(Path(state_dir) / DB_NAME)
    return await OpStore.open(Path(state_dir) / DB_NAME, wall_clock=wall_clock,
                              verify_workers=default_verify_workers())


class SyncNodeService:
    """``NodeService`` adapter for ``SyncService``."""

    def __init__(self, node: NodeApi, store: OpStore, *, interval_s: float = 30.0) -> None:
        self.node = node
        self.store = store
        self.service = SyncService(store, open_stream=node.open_stream, wall_clock=time.time,
                                   rng=random.Random(), interval_s=interval_s)

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"sync.status": self._h_status}

    def stream_services(self) -> Mapping[str, StreamHandler]:
        return {"sync": self.service.handle_stream}

    def neighbour_up(self, peer: NodeId) -> None:
        self.service.neighbour_up(peer)

    def neighbour_lost(self, peer: NodeId) -> None:
        self.service.neighbour_down(peer)

    async def run(self) -> None:
        await self.service.run()

    async def close(self) -> None:
        await self.store.close()

    async def _h_status(self, params: dict[str, Any]) -> dict[str, Any]:
        st = self.service.status()
        for node_id, peer in st["peers"].items():
            ann = self.node.announcement_of(bytes.fromhex(node_id))
            peer["name"] = ann.name if ann else ""
        return st
