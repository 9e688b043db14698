"""When to compact a library document into a snapshot: a pure planner (time passed in).

Theory of operation
-------------------
Every change to a library document is a signed op kept for ever, so a document
edited all year grows without bound, and a node that joins late fetches every
edit.  A *snapshot* (``library.snapshot``, see ``library_replica.documents``)
replaces a document's history by its state: the full Yjs state
(``encode_state_as_update``), its last-writer-wins fields with their order
keys, and the chain positions of the ops it supersedes.  Nodes holding it drop
those ops (``sync.store.OpStore.supersede``); a node that joins later fetches
the snapshot and what came after it.

``plan_compaction`` decides which documents to compact now, from per-document
figures (``DocStats``) and a ``CompactionPolicy``:

* a document whose ops since its last snapshot reach ``max_ops`` or whose op
  bodies reach ``max_bytes`` is compacted, once it has been quiet (no change)
  for ``quiet_ms``, so two members rarely compact one document at once (if they
  do, both snapshots merge: they are CRDT states);
* a deleted document whose deletion is older than the *tombstone horizon*
  (``horizon_ms``) is compacted into a *tombstone*: a snapshot without its text,
  which keeps the document's fields (``deleted`` among them) and the chain
  positions of every op it ever had.  Until the horizon an authority can still
  restore it with its text; after it, its text is gone everywhere the tombstone
  reached.  The tombstone itself is never purged (a few hundred bytes), so a
  node that was offline longer than the horizon resyncs from it: its old ops are
  refused as ``superseded`` and the document stays deleted (no resurrection, as
  with a TTL that drops tombstones).

At most ``max_per_round`` documents a round, the largest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["CompactionPolicy", "CompactionTask", "DocStats", "plan_compaction"]

DAY_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """Thresholds of ``plan_compaction`` (see the module docstring)."""

    #: ops since the last snapshot that make a document worth compacting
    max_ops: int = 200
    #: or bytes of their bodies
    max_bytes: int = 256 * 1024
    #: a document is compacted only after this long without a change
    quiet_ms: int = 10 * 60_000
    #: a deleted document's text is kept (restorable) this long, then only its tombstone
    horizon_ms: int = 30 * DAY_MS
    max_per_round: int = 16
    #: an owner snapshots its own situation record after this many updates
    #: (``SituationBoard.snapshot_due``): superseded values are purged
    situation_ops: int = 16


@dataclass(frozen=True, slots=True)
class DocStats:
    """What the planner needs to know of one document (``Library.compaction_stats``)."""

    doc_id: bytes
    #: applied ops since its last snapshot (the snapshot not counted), and their body bytes
    ops: int
    bytes: int
    #: wall ms of its last change
    changed_ms: int
    deleted: bool = False
    #: wall ms of the change that deleted it (when ``deleted``)
    deleted_ms: int = 0
    #: its text is already dropped (a tombstone)
    purged: bool = False


@dataclass(frozen=True, slots=True)
class CompactionTask:
    """Compact ``doc_id`` now; ``purge``: into a tombstone (its text dropped)."""

    doc_id: bytes
    purge: bool
    why: str


def plan_compaction(stats: Iterable[DocStats], *, now_ms: int,
                    policy: CompactionPolicy) -> list[CompactionTask]:
    """The documents to compact now, largest first, at most ``policy.max_per_round``."""
    picked: list[tuple[int, CompactionTask]] = []
    for d in stats:
        if d.deleted and not d.purged and now_ms - d.deleted_ms >= policy.horizon_ms:
            picked.append((d.bytes + 1, CompactionTask(d.doc_id, True, "tombstone")))
        elif d.purged and d.ops == 0:
            continue
        elif (d.ops >= policy.max_ops or d.bytes >= policy.max_bytes) \
                and now_ms - d.changed_ms >= policy.quiet_ms:
            why = "ops" if d.ops >= policy.max_ops else "bytes"
            picked.append((d.bytes, CompactionTask(d.doc_id, d.deleted and d.purged, why)))
    picked.sort(key=lambda p: (-p[0], p[1].doc_id))
    return [t for _, t in picked[: policy.max_per_round]]
