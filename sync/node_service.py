"""Sync as a node service: the op store and the gossip service plugged into a meshd node.

The composition root (``carmesh.app``) opens the store in the node's state
directory, registers the application's authorisers on it (library_replica does),
and adds this service to the node: neighbour events start and stop
reconciliation, the link stream service ``sync`` carries sessions, and the
control method ``sync.status`` reports per-peer progress.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, Metric, NodeApi, StreamHandler
from sync.service import SyncService
from sync.store import OpStore, Quotas, default_verify_workers, refuse_empty_file

__all__ = ["DB_NAME", "RESYNC_MARKER", "SyncNodeService", "open_store"]

log = logging.getLogger(__name__)

DB_NAME = "ops.sqlite"
#: written by ``meshd --recover-store``: this node's own chain is not back yet
RESYNC_MARKER = "ops.sqlite.resyncing"

HELD_MESSAGE = (
    "this node's op store was recovered (meshd --recover-store) and its own changes are not"
    " back from its neighbours yet: a change written now would fork its chain and peers would"
    " quarantine this node. Wait until it has synced with its neighbours (`meshctl sync"
    " status`); if this node never wrote anything before, stop meshd, delete {marker} and"
    " start it again")


async def open_store(state_dir: Path, *, wall_clock: Callable[[], float] = time.time,
                     quotas: Quotas | None = None) -> OpStore:
    """Open (or create) the node's durable op store (SQLite, WAL) in ``state_dir``.

    Large received batches (a catch-up) are verified in worker processes when the
    machine has two CPUs or more; they start with the first such batch.
    """
    refuse_empty_file(Path(state_dir) / DB_NAME)
    return await OpStore.open(Path(state_dir) / DB_NAME, wall_clock=wall_clock, quotas=quotas,
                              verify_workers=default_verify_workers())


class SyncNodeService:
    """``NodeService`` adapter for ``SyncService``."""

    def __init__(self, node: NodeApi, store: OpStore, *, interval_s: float = 30.0) -> None:
        self.node = node
        self.store = store
        self.service = SyncService(store, open_stream=node.open_stream, wall_clock=time.time,
                                   rng=random.Random(), interval_s=interval_s)
        # after --recover-store: hold chained local writes until the own chain is back
        self._marker = Path(node.state_dir) / RESYNC_MARKER
        self._synced_since_recovery: set[bytes] = set()
        if self._marker.exists():
            store.local_writes_held = HELD_MESSAGE.format(marker=self._marker)
            self.service.on_reconciled = self._reconciled
            log.warning("the op store was recovered: this node's own writes are held until it"
                        " has synced with its neighbours (its own ops come back from them)")

    def _reconciled(self, peer: bytes) -> None:
        """A reconciliation with ``peer`` completed: release the hold once every neighbour up
        has completed one since the recovery (each gave back whatever it held of our chain)."""
        self._synced_since_recovery.add(peer)
        up = self.service.neighbours_up()
        if not up <= self._synced_since_recovery or self.store.local_writes_held is None:
            return
        self.store.local_writes_held = None
        self.service.on_reconciled = None
        self._marker.unlink(missing_ok=True)
        head = self.store.author_head(self.node.identity.ed25519_pub)
        log.info("own changes back from %d neighbour(s)%s: local writes allowed again",
                 len(up), f" (own chain at seq {head[0]})" if head else "")

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

    def metrics(self) -> list[Metric]:
        """``MetricsSource``: ops held, per-neighbour backlog, bytes stored, transfers, drops."""
        st = self.service.status()
        backlog = []
        for node_id, peer in st["peers"].items():
            if not peer["up"]:
                continue
            cu = peer["catch_up"] or {}
            left = (max(0, cu.get("in_expected", 0) - cu.get("in_done", 0))
                    + max(0, cu.get("out_expected", 0) - cu.get("out_done", 0)))
            backlog.append(((node_id,), float(left)))
        drops: dict[str, int] = dict(self.store.drops.counts)
        for reason, n in dict(self.service.drops.counts).items():
            drops[reason] = drops.get(reason, 0) + n
        totals = st["totals"]
        return [
            Metric("carmesh_sync_ops", "gauge", "Operations held in the op store.",
                   samples=(((), float(st["ops"])),)),
            Metric("carmesh_sync_pending_ops", "gauge",
                   "Received operations waiting for their predecessor.",
                   samples=(((), float(st["pending"])),)),
            Metric("carmesh_sync_backlog_ops", "gauge",
                   "Operations a running session with a neighbour still has to move "
                   "(both ways; 0 when in step).", ("peer",), tuple(backlog)),
            Metric("carmesh_sync_transferred_ops_total", "counter",
                   "Operations moved to and from neighbours.", ("direction",),
                   ((("in",), float(totals["ops_in"])), (("out",), float(totals["ops_out"])))),
            Metric("carmesh_store_bytes", "gauge", "Bytes of operations in the op store.",
                   samples=(((), float(self.store.bytes_stored)),)),
            Metric("carmesh_drops_total", "counter", "Refused or malformed input, by reason.",
                   ("reason",), tuple(((r,), float(n)) for r, n in sorted(drops.items()))),
        ]

    async def _h_status(self, params: dict[str, Any]) -> dict[str, Any]:
        st = self.service.status()
        st["local_writes_held"] = self.store.local_writes_held
        st["store"] = self.store.admission_status()
        for node_id, peer in st["peers"].items():
            ann = self.node.announcement_of(bytes.fromhex(node_id))
            peer["name"] = ann.name if ann else ""
        return st
