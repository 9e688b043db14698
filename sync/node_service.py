"""Sync as a node service: the op store and the gossip service plugged into a meshd node.

The composition root (``carmesh.app``) opens the store in the node's state
directory, registers the application's authorisers on it (library_replica does),
and adds this service to the node: neighbour events start and stop
reconciliation, the link stream service ``sync`` carries sessions, and the
control method ``sync.status`` reports per-peer progress.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, Metric, NodeApi, StreamHandler
from sync.custody import MailCustody
from sync.service import SyncService
from sync.store import OpStore, Quotas, default_verify_workers, refuse_empty_file

__all__ = ["DB_NAME", "OWN_SENT_NAME", "RESYNC_MARKER", "SyncNodeService", "open_store",
           "read_own_sent"]

log = logging.getLogger(__name__)

DB_NAME = "ops.sqlite"
#: written by ``meshd --recover-store``: this node's own chain is not back yet
RESYNC_MARKER = "ops.sqlite.resyncing"
#: the highest stamp of an own op ever sent to a peer (``sync.reissue``), a decimal integer
OWN_SENT_NAME = "own-sent.hlc"


def read_own_sent(state_dir: Path) -> int:
    """The highest stamp of an own op ever sent; a missing file is 0, a damaged one is taken
    as "everything was sent" (nothing is ever re-issued then: the safe side)."""
    try:
        return int((Path(state_dir) / OWN_SENT_NAME).read_text().strip())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):
        log.warning("%s is unreadable: own ops stamped ahead will not be re-issued",
                    Path(state_dir) / OWN_SENT_NAME)
        return 1 << 63


def _write_own_sent(state_dir: Path, hlc: int) -> None:
    path = Path(state_dir) / OWN_SENT_NAME
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, f"{hlc}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

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

    def __init__(self, node: NodeApi, store: OpStore, *, interval_s: float = 30.0,
                 mail_copies: int = 0) -> None:
        self.node = node
        self.store = store
        # sealed mail by custody (sync.custody: spray-and-wait) when the node is configured
        # with copies; flooded otherwise (the default: every car holds it, which is what
        # lets a browser leaf's mail wait at whichever car it attaches to next)
        custody = (MailCustody(node.identity.node_id, copies=mail_copies)
                   if mail_copies > 0 else None)
        self.service = SyncService(store, open_stream=node.open_stream, wall_clock=time.time,
                                   rng=random.Random(), interval_s=interval_s,
                                   custody=custody)
        # own ops that left the node are never re-issued (sync.reissue): remember them
        state_dir = Path(node.state_dir)
        self.service.own_sent_hlc = read_own_sent(state_dir)
        self.service.on_own_sent = lambda hlc: _write_own_sent(state_dir, hlc)
        # after --recover-store: hold chained local writes until the own chain is back
        self._marker = Path(node.state_dir) / RESYNC_MARKER
        self._synced_since_recovery: set[bytes] = set()
        if self._marker.exists():
            store.local_writes_held = HELD_MESSAGE.format(marker=self._marker)
            self.service.on_reconciled = self._reconciled
            log.warning("the op store was recovered: this node's own writes are held until it"
                        " has synced with its neighbours (its own ops come back from them)")

    async def reissue_future_own(self) -> None:
        """At start, before the application replays: re-issue this node's own ops stamped
        beyond its (now corrected) clock's tolerance, when none of them ever left the node."""
        ident = self.node.identity
        status, new = await self.store.reissue_future_own(
            ident.signing_key, shared_hlc=self.service.own_sent_hlc)
        if status == "reissued":
            log.warning("%d of this node's own changes were stamped in the future (its clock"
                        " ran ahead when it wrote them); signed again at the current time so"
                        " that peers take them", len(new))
        elif status != "none":
            log.warning("this node's own changes stamped in the future are not re-issued"
                        " (%s): peers take them when real time reaches their stamps", status)

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
        n = await self.service.load_custody()
        if n:
            log.info("%d sealed mail op(s) held: they wait for their recipients", n)
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
