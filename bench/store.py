"""Store benchmark: a year of a town's library and situation board in the op store, with and
without compaction, against the default quota.

Run: ``.venv/bin/python bench/store.py [--days 7] [--quick] [--json]``

The town (issue 12): 2,000 library documents edited 20 times each over the
year, by 200 member authors, a tenth of them deleted; and 10,000 situation
updates a day (``situation.set`` of 2,000 owners' records).  Every op is real:
signed with Ed25519, Yjs edits made by ``Library.prepare_edit``, committed
through ``OpStore.apply_remote`` into a real SQLite store, and the figures are
the store's bytes of ops (``bytes_stored``) and its file size.

The library part runs whole (42,000 ops).  The situation part runs for
``--days`` days (``--quick``: 1) and is extrapolated linearly to 365 days:
every day's updates are the same kind and size of op, so the store grows by
the same bytes each day (the per-day figure is measured, the year is that
times 365; the table says which figures are extrapolated).

Compaction: every document is compacted the way a member node does it
(``plan_compaction`` with ``max_ops`` 20, then ``prepare_snapshot`` signed
and ``OpStore.supersede``), the deleted ones into tombstones (the year is
past their horizon).  Situation records are snapshotted by their owners
(``SituationBoard.prepare_snapshot``, every ``situation_ops`` = 16 updates):
the store holds, per record, one snapshot and at most 15 updates after it.
The run snapshots every record at its end and measures the snapshots; the
year's situation figure with compaction is that plus 15 updates per record
(the most it can hold: a bound, not an extrapolation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.library import _cpu
from library_replica.compaction import DAY_MS, CompactionPolicy, plan_compaction
from library_replica.documents import (
    KIND_SNAPSHOT,
    SNAPSHOT_EXPIRY_MS,
    Library,
)
from library_replica.situation import KIND_SNAPSHOT as SIT_SNAPSHOT
from library_replica.situation import SituationBoard, prepare_set, record_id
from meshd.config import DEFAULT_STORE_QUOTA
from sync.envelope import Op, create_op
from sync.store import OpStore

DOCS = 2_000
EDITS = 20
AUTHORS = 200
OWNERS = 2_000
UPDATES_PER_DAY = 10_000
WORDS = ("water", "shelter", "road", "bridge", "generator", "school", "clinic", "bus",
         "fuel", "radio", "blanket", "rice", "battery", "volunteer", "ward", "river")


class Writer:
    """A member key numbering its own chain."""

    def __init__(self, seed: int) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
        self.pub = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.seq = 0
        self.prev: bytes | None = None

    def op(self, kind: str, doc_id: bytes, body: bytes, hlc: int) -> Op:
        self.seq += 1
        op = create_op(self.key, kind=kind, doc_id=doc_id, body=body, seq=self.seq,
                       prev=self.prev, hlc=hlc)
        self.prev = op.op_id
        return op


def _allow(op: Op, wall_ms: int) -> None:
    """Every op here is made by this benchmark: the store takes them all."""


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(6, 16))) + ". "


def library_year(rng: random.Random, t0_ms: int) -> tuple[Library, list[Op], list[bytes]]:
    """The year's library ops (creates, edits, deletes) in time order, and the deleted ids."""
    lib = Library()
    writers = [Writer(i + 1) for i in range(AUTHORS)]
    year = 365 * DAY_MS
    # every change gets a time in the year; a document's changes in order
    plan: list[tuple[int, int, int]] = []  # (time, doc, step)
    for d in range(DOCS):
        times = sorted(rng.randrange(year - 60 * DAY_MS) for _ in range(EDITS + 1))
        plan += [(t, d, i) for i, t in enumerate(times)]
    plan.sort()
    doc_ids = [d.to_bytes(16, "big") for d in range(DOCS)]
    deleted = {doc_ids[d] for d in rng.sample(range(DOCS), DOCS // 10)}
    ops: list[Op] = []
    for t, d, step in plan:
        w = writers[rng.randrange(AUTHORS)]
        doc = doc_ids[d]
        if step == 0:
            prepared = lib.prepare_create(w.pub, collection="know-how", title=f"doc {d}",
                                          body=_sentence(rng) * 3)
        else:
            body = lib.get(doc).body  # type: ignore[union-attr]
            if rng.random() < 0.3 and len(body) > 200:
                cut = rng.randrange(len(body) - 100)
                body = body[:cut] + body[cut + rng.randrange(10, 60):]
            else:
                pos = rng.randrange(len(body) + 1)
                body = body[:pos] + _sentence(rng) + body[pos:]
            prepared = lib.prepare_edit(doc, w.pub, body=body)
        for j, p in enumerate(prepared):
            op = w.op(p.kind, doc, p.body, ((t0_ms + t) << 16) | j)
            lib.apply(op)
            ops.append(op)
    for i, doc in enumerate(sorted(deleted)):  # deleted 50 days before the year's end
        w = writers[i % AUTHORS]
        op = w.op("library.delete", doc, lib.prepare_delete().body,
                  (t0_ms + year - 50 * DAY_MS + i) << 16)
        lib.apply(op)
        ops.append(op)
    return lib, ops, sorted(deleted)


def situation_day(rng: random.Random, owners: list[Writer], day_ms: int) -> list[Op]:
    """One day's 10,000 situation updates by 2,000 owners."""
    out: list[Op] = []
    for i in range(UPDATES_PER_DAY):
        w = owners[rng.randrange(OWNERS)]
        fields = {"safety": rng.choice(["safe", "needs_help"]), "people": rng.randrange(1, 6),
                  "note": _sentence(rng)[: rng.randrange(10, 80)]}
        doc_id, body = prepare_set(w.pub, "household", fields)
        out.append(w.op("situation.set", doc_id, body, (day_ms + i * 8_000) << 16))
    return out


async def _feed(store: OpStore, ops: list[Op]) -> None:
    for i in range(0, len(ops), 2_000):
        res = await store.apply_remote([o.raw for o in ops[i : i + 2_000]])
        assert not res.refused, res.refused


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def run(days: int, tmp: Path) -> dict[str, Any]:
    rng = random.Random(12)
    now_ms = int(time.time() * 1000)
    t0_ms = now_ms - 365 * DAY_MS
    path = tmp / "town.db"
    store = await OpStore.open(path, wall_clock=lambda: now_ms / 1000,
                               authorizers={"library": _allow, "situation": _allow})
    out: dict[str, Any] = {"days_run": days}
    t = time.perf_counter()
    lib, lib_ops, _ = library_year(rng, t0_ms)
    _progress(f"library: {len(lib_ops):,} ops made ({time.perf_counter() - t:.0f} s)")
    await _feed(store, lib_ops)
    out["library_ops"] = len(lib_ops)
    out["library_bytes"] = store.bytes_stored
    owners = [Writer(10_000 + i) for i in range(OWNERS)]
    board = SituationBoard()
    sit = 0
    for day in range(days):
        ops = situation_day(rng, owners, t0_ms + day * DAY_MS)
        await _feed(store, ops)
        for op in ops:
            board.apply(op)
        sit += len(ops)
        _progress(f"situation: day {day + 1} of {days}")
    out["situation_ops_run"] = sit
    out["situation_bytes_per_day"] = (store.bytes_stored - int(out["library_bytes"])) // days
    out["bytes_before"] = store.bytes_stored
    out["file_before"] = _file_bytes(path)
    out["build_s"] = round(time.perf_counter() - t, 1)
    # compaction, as a member node does it
    t = time.perf_counter()
    member = Writer(99_999)
    policy = CompactionPolicy(max_ops=EDITS, quiet_ms=0, horizon_ms=30 * DAY_MS,
                              max_per_round=DOCS)
    tasks = plan_compaction(lib.compaction_stats(), now_ms=now_ms, policy=policy)
    superseded = skipped = 0
    for task in tasks:
        prepared = lib.prepare_snapshot(task.doc_id, purge=task.purge)
        if prepared is None:
            skipped += 1
            continue
        snap = create_op(member.key, kind=KIND_SNAPSHOT, doc_id=task.doc_id,
                         body=prepared[0].body, seq=0, prev=None,
                         hlc=store.clock.now(now_ms), expiry_ms=SNAPSHOT_EXPIRY_MS)
        await _feed(store, [snap])
        lib.apply(snap)
        for snap_id, doc_id, ranges, prior in lib.take_superseded():
            superseded += await store.supersede(snap_id, doc_id, ranges, prior)
    out["compacted_docs"] = len(tasks) - skipped
    out["tombstones"] = sum(1 for t_ in tasks if t_.purge)
    out["not_compacted"] = skipped
    out["superseded_ops"] = superseded
    out["compact_s"] = round(time.perf_counter() - t, 1)
    out["library_bytes_after"] = store.bytes_stored - (
        int(out["bytes_before"]) - int(out["library_bytes"]))
    _progress(f"library compacted ({out['compact_s']} s)")
    # every owner snapshots its record (what each does after 16 updates)
    before = store.bytes_stored
    snaps = 0
    for w in owners:
        body = board.prepare_snapshot(w.pub, "household")
        if body is None:
            continue
        snap = create_op(w.key, kind=SIT_SNAPSHOT, doc_id=record_id(w.pub, "household"),
                         body=body, seq=0, prev=None, hlc=store.clock.now(now_ms),
                         expiry_ms=SNAPSHOT_EXPIRY_MS)
        await _feed(store, [snap])
        board.apply(snap)
        snaps += len(snap.raw)
        for snap_id, doc_id, ranges, prior in board.take_superseded():
            await store.supersede(snap_id, doc_id, ranges, prior)
    out["situation_snapshot_bytes"] = snaps
    out["situation_dropped_bytes"] = before - store.bytes_stored + snaps
    out["bytes_after"] = store.bytes_stored
    await store.close()
    out["file_after"] = _file_bytes(path)
    out["quota"] = DEFAULT_STORE_QUOTA
    per_day = int(out["situation_bytes_per_day"])
    out["year_without"] = int(out["library_bytes"]) + 365 * per_day
    op_size = per_day // UPDATES_PER_DAY
    out["situation_year_compacted"] = snaps + OWNERS * 15 * op_size
    out["year_with"] = int(out["library_bytes_after"]) + int(out["situation_year_compacted"])
    out["year_library_only"] = int(out["library_bytes_after"]) + 365 * per_day
    out["situation_year"] = 365 * per_day
    return out


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--days", type=int, default=7,
                    help="days of situation updates run (extrapolated to 365)")
    ap.add_argument("--quick", action="store_true", help="one day of situation updates")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    days = 1 if args.quick else max(1, args.days)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmbench") as tmp:
        r = asyncio.run(run(days, Path(tmp)))
    r["machine"] = f"{_cpu()}, {os.cpu_count()} cores"
    r["total_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    mib = 1024 * 1024

    def m(n: Any) -> str:
        return f"{int(n) / mib:,.1f} MiB"

    q = int(r["quota"])
    print(f"machine: {r['machine']}; situation run {r['days_run']} day(s), "
          f"extrapolated to 365; total {r['total_s']} s\n")
    print("| part | ops | bytes of ops |")
    print("|---|---:|---:|")
    print(f"| library, year, no compaction (measured) | {r['library_ops']:,} | "
          f"{m(r['library_bytes'])} |")
    print(f"| library, year, compacted (measured) | {r['compacted_docs']:,} snapshots "
          f"({r['tombstones']} tombstones), {r['superseded_ops']:,} ops superseded | "
          f"{m(r['library_bytes_after'])} |")
    print(f"| situation, one day (measured over {r['days_run']}) | {UPDATES_PER_DAY:,} | "
          f"{m(r['situation_bytes_per_day'])} |")
    print(f"| situation, year (extrapolated) | {365 * UPDATES_PER_DAY:,} | "
          f"{m(r['situation_year'])} |")
    print(f"| situation, owners' snapshots (measured) | {OWNERS:,} | "
          f"{m(r['situation_snapshot_bytes'])} |")
    print(f"| situation, year, snapshotted every 16 updates (bound: snapshots + 15 updates "
          f"per record) | | {m(r['situation_year_compacted'])} |")
    print(f"| **store, year, no compaction** (extrapolated) | | {m(r['year_without'])} "
          f"({100 * int(r['year_without']) / q:.0f} % of the {m(q)} quota) |")
    print(f"| store, year, library compacted only (extrapolated) | | "
          f"{m(r['year_library_only'])} "
          f"({100 * int(r['year_library_only']) / q:.0f} % of the quota) |")
    print(f"| **store, year, compacted** (library and situation) | | {m(r['year_with'])} "
          f"({100 * int(r['year_with']) / q:.1f} % of the quota) |")
    print(f"\nops held at the end of the run: {m(r['bytes_before'])} before compaction, "
          f"{m(r['bytes_after'])} after; SQLite file {m(r['file_before'])} before, "
          f"{m(r['file_after'])} after (freed pages are reused, the file does not shrink)")
    print(f"\nfile size after the run (before compaction): {m(r['file_before'])}; "
          f"build {r['build_s']} s, compaction of {r['compacted_docs']:,} documents "
          f"{r['compact_s']} s; documents not compacted: {r['not_compacted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
