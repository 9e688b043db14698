"""Durable op store: SQLite through aiosqlite (WAL), causal application per author.

Theory of operation
-------------------
``apply_remote`` takes raw ops from a peer and, for each, in this order:
size limit and strict decoding with signature check (off the loop, so it keeps
serving calls: in verification threads, or for a large batch in worker processes
when configured; see "Verification" below), duplicate check, expiry, clock skew, quarantine,
authoriser of the op's namespace, per-author quota, and finally its place in
the author's chain: applied, parked until its predecessor arrives, or a fork
that quarantines the author (and admission: revoked keys, the pool non-members
share, the total quota).  Those decisions are the pure planner
``sync.apply.plan_apply`` (its docstring has the rules); this adapter gives it a
read-only view of the committed chain state and writes the plan it returns.

Everything a batch changes is written in one transaction; only after the
commit are in-memory indexes updated, subscribers told and ``ApplyResult``
returned, whose ``acked`` ids are what the caller may acknowledge to the peer.
Refused ops are counted per reason with a ``DropCounter`` and never stored, so
they are never relayed.  On open the indexes are rebuilt from the database, so
a restart resumes where it was.

Quota.  The store holds at most ``Quotas.store_quota_bytes`` of ops.  When a
commit takes it over, ops are evicted, oldest first, down to
``EVICT_TO`` of the quota: first those of authors that are no members, then
members' ops; never an op of a protected namespace (trust, bulletins) nor one
of this node's own keys.  An evicted op's id is remembered (with its namespace
and hlc; at most ``MAX_EVICTED`` of them, the oldest forgotten first) so that a
peer offering it again meets a duplicate, not a fork, and it stays in the set
this node offers in reconciliation: a neighbour that holds it finds nothing to
send (without that, every neighbour re-sent every evicted op at every sync, to
have it refused as a duplicate).  A neighbour that lacks it asks, and is sent
nothing: this node has it no more.  Who is a member and
who is revoked the application says (``set_admission``); without it every
author is a member and nothing is revoked.

Snapshots.  The application may compact a document's history into one op
(the library's ``library.snapshot``) and then call ``supersede``: the ops it
names are deleted and no longer offered, their chain positions are kept as
skip ranges and the unchained ones' ids remembered (tables ``superseded`` and
``superseded_ids``), so the same ops offered again are refused as
``superseded`` and the ops after them apply without them (see ``sync.apply``).

Verification.  Ed25519 through libsodium releases the GIL, so threads verify on
every core; but decoding around it holds the GIL, contending with the event loop
and the SQLite thread.  With ``verify_workers`` (the daemon's default on two CPUs
or more) batches of at least ``WORKER_MIN_BATCH`` ops are decoded and verified
in worker processes instead.  They start with the first such batch (threads
carry the batches until they are up), stop on ``close``, and exit by themselves
if the daemon is killed; if one dies, verification goes back to threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import itertools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiosqlite
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.codec import DropCounter
from meshd.core.errors import DiskFull, RemoteProtocolError, is_disk_full
from sync.apply import (
    Admission,
    AuthorState,
    ChainView,
    Quotas,
    SkipRange,
    UnknownPool,
    covered,
    merge_ranges,
    plan_apply,
    skip_head,
)
from sync.envelope import (
    MAX_OP_SIZE,
    Authorizer,
    HybridClock,
    Op,
    decode_op,
)
from sync.errors import StoreCorrupt, SyncLocalError, Unauthorized
from sync.reconcile import RangeSet

if TYPE_CHECKING:  # the worker processes' machinery (multiprocessing, pickle) loads with them
    from concurrent.futures import ProcessPoolExecutor

__all__ = [
    "EVICT_TO",
    "MAX_EVICTED",
    "WORKER_MIN_BATCH",
    "ApplyResult",
    "OpStore",
    "Quotas",
    "Subscriber",
    "default_verify_threads",
    "default_verify_workers",
    "refuse_empty_file",
]

log = logging.getLogger(__name__)

#: called after a commit with the ops it applied, in causal order per author
Subscriber = Callable[[Sequence[Op]], Awaitable[None] | None]

#: ``PRAGMA user_version`` of the layout below; older layouts are migrated on open
#: (0: ops WITHOUT ROWID keyed by op_id; 1: a rowid table with op_id UNIQUE and a doc index;
#: both kept pending keyed by op_id)
SCHEMA_VERSION = 2
#: ops is a rowid table, its rows (with the raw op) appended in arrival order, and its one
#: key is (ns, hlc, op_id): new ops land at the end of their namespace, so a commit dirties
#: a few pages instead of about one page per op (as any index on the random op id or
#: doc id does).  The op id alone is unique too, since it fixes ns and hlc (it hashes
#: them); lookups by op id go through the in-memory ``_known`` map to (ns, hlc).
_OPS_TABLE = """
CREATE TABLE IF NOT EXISTS ops (
    op_id BLOB NOT NULL, ns TEXT NOT NULL, kind TEXT NOT NULL, doc_id BLOB NOT NULL,
    author BLOB NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL, expiry_ms INTEGER,
    raw BLOB NOT NULL
)"""
_OPS_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS ops_key ON ops(ns, hlc, op_id)",
    "CREATE INDEX IF NOT EXISTS ops_expiry ON ops(expiry_ms) WHERE expiry_ms IS NOT NULL",
)
#: pending is keyed by (author, seq): an author's parked ops sit together, parked at the end
#: of its range and taken from the front, instead of one random page per op
_PENDING_TABLE = """
CREATE TABLE IF NOT EXISTS pending (
    author BLOB NOT NULL, seq INTEGER NOT NULL, op_id BLOB NOT NULL, raw BLOB NOT NULL,
    PRIMARY KEY (author, seq)
) WITHOUT ROWID"""
#: indexes of older layouts, dropped by the migration
_OLD_INDEXES = ("ops_ns_hlc", "ops_doc", "ops_author", "ops_expiry")
_OPS_COLUMNS = "op_id, ns, kind, doc_id, author, seq, hlc, expiry_ms, raw"
_SCHEMA = _OPS_TABLE + ";\n" + ";\n".join(_OPS_INDEXES) + """;
CREATE TABLE IF NOT EXISTS authors (
    author BLOB PRIMARY KEY, head_seq INTEGER NOT NULL, head_id BLOB, head_hlc INTEGER NOT NULL,
    n_ops INTEGER NOT NULL, n_bytes INTEGER NOT NULL, quarantined TEXT
) WITHOUT ROWID;
""" + _PENDING_TABLE + """;
CREATE TABLE IF NOT EXISTS evidence (
    author BLOB NOT NULL, raw BLOB NOT NULL, reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evicted (op_id BLOB PRIMARY KEY, ns TEXT, hlc INTEGER) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS superseded (
    author BLOB NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, last_id BLOB NOT NULL,
    PRIMARY KEY (author, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS superseded_ids (op_id BLOB PRIMARY KEY) WITHOUT ROWID;
"""
#: eviction for the total quota goes down to this fraction of it (room for a few batches)
EVICT_TO = 0.9
#: evicted op ids remembered (and offered in reconciliation); beyond it the oldest are forgotten
MAX_EVICTED = 200_000


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one ``apply_remote`` batch did; ``acked`` ids are committed and may be acknowledged."""

    applied: tuple[Op, ...] = ()
    pending: int = 0
    duplicates: int = 0
    refused: Mapping[str, int] = field(default_factory=dict)
    acked: tuple[bytes, ...] = ()


#: a batch is split across verification threads in parts of at least this many ops
_MIN_SPLIT = 32
#: batches of fewer ops are verified in threads even when worker processes are configured
#: (a push of a few new ops is not worth two process hops)
WORKER_MIN_BATCH = 64


def default_verify_threads() -> int:
    """Verification threads by default: one per CPU, at most 4 (libsodium releases the GIL)."""
    return max(1, min(os.cpu_count() or 1, 4))


def default_verify_workers() -> int:
    """Worker processes the daemon verifies large batches in: one per CPU but one, at most 4.

    Decoding around the signature check holds the GIL; in worker processes it does not
    contend with the event loop, which keeps a core of its own (with the SQLite thread,
    it needs about as much CPU per op as the verification does).  None on one CPU.
    """
    return max(0, min((os.cpu_count() or 1) - 1, 4))


def _decode_batch(raws: Sequence[bytes]) -> list[Op | RemoteProtocolError]:
    out: list[Op | RemoteProtocolError] = []
    for raw in raws:
        try:
            if type(raw) is not bytes or len(raw) > MAX_OP_SIZE:
                raise RemoteProtocolError("oversize", "op too large or not bytes")
            out.append(decode_op(raw))
        except RemoteProtocolError as exc:
            out.append(exc)
    return out


#: what a worker process returns per op: the fields of ``Op`` but ``raw`` (the caller has
#: it), or (reason, detail) of the refusal; plain tuples pickle in C, a frozen dataclass not
_Portable = tuple[bytes, str, bytes, bytes, int, bytes | None, int, int | None, bytes, bytes]


def _decode_portable(raws: Sequence[bytes]) -> list[_Portable | tuple[str, str]]:
    """``_decode_batch`` for a worker process."""
    return [(d.op_id, d.kind, d.doc_id, d.author, d.seq, d.prev, d.hlc, d.expiry_ms, d.body,
             d.sig) if isinstance(d, Op) else (d.reason, d.detail) for d in _decode_batch(raws)]


def _worker_init(parent_pid: int) -> None:
    """In each worker process: exit when the parent is gone (kill -9 leaves no orphans).

    A worker blocks on its task queue, whose write end it holds too, so it would
    otherwise wait for ever once the daemon is killed.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_ready() -> None:
    """Run once per worker process when the pool starts (the imports are the work)."""


async def _migrate(db: aiosqlite.Connection) -> None:
    """Move the ops table of an older layout (see ``SCHEMA_VERSION``) to the current one.

    One transaction: a crash part-way leaves the old table as it was.
    """
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    async with db.execute("SELECT name FROM sqlite_master WHERE type = 'table'") as cur:
        tables = {r[0] async for r in cur}
    if "ops" not in tables or (row is not None and row[0] >= SCHEMA_VERSION):
        return
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("ALTER TABLE ops RENAME TO ops_v0")
        for name in _OLD_INDEXES:
            await db.execute(f"DROP INDEX IF EXISTS {name}")
        await db.execute(_OPS_TABLE)
        await db.execute(f"INSERT INTO ops ({_OPS_COLUMNS}) "
                         f"SELECT {_OPS_COLUMNS} FROM ops_v0 ORDER BY hlc, op_id")
        await db.execute("DROP TABLE ops_v0")
        for sql in _OPS_INDEXES:
            await db.execute(sql)
        if "pending" in tables:
            await db.execute("ALTER TABLE pending RENAME TO pending_v0")
            await db.execute(_PENDING_TABLE)
            await db.execute("INSERT OR IGNORE INTO pending (author, seq, op_id, raw) "
                             "SELECT author, seq, op_id, raw FROM pending_v0")
            await db.execute("DROP TABLE pending_v0")
        await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            await asyncio.shield(db.execute("ROLLBACK"))
        raise
    log.info("op store migrated to schema version %d", SCHEMA_VERSION)


def refuse_empty_file(path: Path) -> None:
    """Raise ``StoreCorrupt`` if ``path`` is an empty file (with no WAL beside it).

    SQLite takes an empty file for a new, empty database, so the ops of a store truncated
    by a crash or a full disk, or emptied by hand, would be lost silently and the node would
    fork its own chain.  The daemon calls this for a store it has opened before; a store
    killed within its very first open can be empty too, and ``--recover-store`` clears that.
    """
    if (path.exists() and path.stat().st_size == 0
            and not path.with_name(path.name + "-wal").exists()):
        raise StoreCorrupt(_corrupt_message(path, "the file is empty (0 bytes)"))


def _corrupt_message(path: Path, detail: str) -> str:
    return (f"the op store {path} is damaged ({detail}). Its ops can be fetched again from"
            f" the neighbours: stop the node and run `meshd --state-dir {path.parent}"
            f" --recover-store`, which moves it aside (kept for inspection) and starts with"
            f" an empty store that resyncs")


class OpStore:
    """The durable, verified op set of one node (one SQLite file, WAL); open with ``OpStore.open``."""

    def __init__(self, db: aiosqlite.Connection, *, wall_clock: Callable[[], float],
                 authorizers: Mapping[str, Authorizer] | None, quotas: Quotas) -> None:
        self._db = db
        self._wall_clock = wall_clock
        self._authorizers: dict[str, Authorizer] = dict(authorizers or {})
        self.quotas = quotas
        self.clock = HybridClock()
        self.drops = DropCounter(log)
        self._lock = asyncio.Lock()
        self._subscribers: list[Subscriber] = []
        self._authors: dict[bytes, AuthorState] = {}
        self._known: dict[bytes, tuple[str, int, bytes]] = {}  # op_id -> (ns, hlc, author)
        #: one bytes object per author for the index entries above (``_author``): each row
        #: read from SQLite, and each decoded op, brings its own copy (issue 18, memory)
        self._author_ids: dict[bytes, bytes] = {}
        self._keys: dict[str, dict[bytes, int]] = {}  # ns -> op_id -> hlc (offered to peers)
        self._snapshots: dict[str, RangeSet] = {}
        self._pending: dict[tuple[bytes, int], Op] = {}
        self._pending_ids: set[bytes] = set()
        self._withheld: set[bytes] = set()  # authors whose ops we keep but do not offer
        self.bytes_stored = 0
        self._workers = 0
        self._pool: ProcessPoolExecutor | None = None  # started on the first large batch
        self._pool_ready: asyncio.Future[list[None]] | None = None
        self._threads = 1
        self._thread_pool: ThreadPoolExecutor | None = None
        self._purge_blocked = False  # the last purge found the disk full (logged once)
        #: why new chained local ops are refused for now (None: allowed); set while this
        #: node's own chain is not back from its neighbours after ``--recover-store``
        self.local_writes_held: str | None = None
        # admission (see "Quota" above): without set_admission everyone is a member
        self._member: Callable[[bytes], bool] | None = None
        self._revoked: Callable[[bytes], bool] = lambda key: False
        self._own: set[bytes] = set()  # this node's keys: never evicted, always members
        self._free: dict[bytes, list[int]] = {}  # author -> [ops, bytes] outside protected ns
        self._unknown = UnknownPool(tokens=float(quotas.unknown_rate_per_min))
        self._tokens_ms: int | None = None
        self._evicted: dict[bytes, tuple[str, int]] = {}  # op_id -> (ns, hlc), oldest first
        self.evicted_total = 0
        # snapshots (see "Snapshots" above): per author, the chain positions superseded
        self._skips: dict[bytes, list[SkipRange]] = {}
        self._superseded: set[bytes] = set()
        self.superseded_total = 0

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path | str, *, wall_clock: Callable[[], float],
                   authorizers: Mapping[str, Authorizer] | None = None,
                   quotas: Quotas | None = None, verify_workers: int = 0,
                   verify_threads: int | None = None) -> OpStore:
        """Open (or create) the store at ``path`` and rebuild its indexes; ``wall_clock`` is unix s.

        Received ops are decoded and verified in ``verify_threads`` threads (default: one per
        CPU up to 4).  ``verify_workers`` > 0 sends batches of at least ``WORKER_MIN_BATCH``
        ops to that many worker processes instead (``default_verify_workers()`` is what
        the daemon uses); they start on the first such batch and stop on ``close``.
        """
        path = Path(path)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            try:
                async with db.execute("PRAGMA quick_check") as cur:
                    rows = [str(r[0]) async for r in cur]
            except sqlite3.DatabaseError as exc:
                raise StoreCorrupt(_corrupt_message(path, str(exc))) from None
            if rows != ["ok"]:
                raise StoreCorrupt(_corrupt_message(path, "; ".join(rows[:3])))
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await _migrate(db)
            # an existing store of this layout is opened without a write (CREATE IF NOT
            # EXISTS writes nothing): a node starts, read-only in effect, on a full disk
            await db.executescript(_SCHEMA)
            async with db.execute("PRAGMA table_info(evicted)") as cur:
                columns = {str(r[1]) async for r in cur}
            if "hlc" not in columns:  # evicted ids of an older layout: no namespace, no hlc
                await db.execute("ALTER TABLE evicted ADD COLUMN ns TEXT")
                await db.execute("ALTER TABLE evicted ADD COLUMN hlc INTEGER")
            async with db.execute("PRAGMA user_version") as cur:
                version = await cur.fetchone()
            if version is None or version[0] != SCHEMA_VERSION:
                await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            store = cls(db, wall_clock=wall_clock, authorizers=authorizers,
                        quotas=quotas or Quotas())
            store._threads = (default_verify_threads() if verify_threads is None
                              else max(1, verify_threads))
            store._workers = max(0, verify_workers)
            await store._load()
        except BaseException as exc:
            await db.close()
            if is_disk_full(exc):
                raise DiskFull(f"cannot set up the op store {path}") from exc
            raise
        return store

    async def _load(self) -> None:
        async with self._db.execute(
                "SELECT author, head_seq, head_id, head_hlc, n_ops, n_bytes, quarantined "
                "FROM authors") as cur:
            async for a, hs, hid, hh, no, nb, q in cur:
                self._authors[a] = AuthorState(hs, hid, hh, no, nb, q)
        max_hlc = 0
        protected = self.quotas.protected_namespaces
        async with self._db.execute("SELECT op_id, ns, hlc, author, length(raw) FROM ops") as cur:
            async for op_id, ns, hlc, author, size in cur:
                ns, author = sys.intern(ns), self._author(author)
                self._known[op_id] = (ns, hlc, author)
                self.bytes_stored += size
                if ns not in protected:
                    f = self._free.setdefault(author, [0, 0])
                    f[0] += 1
                    f[1] += size
                max_hlc = max(max_hlc, hlc)
                a = self._authors.get(author)
                if a is None or a.quarantined is None:
                    self._keys.setdefault(ns, {})[op_id] = hlc
        async with self._db.execute("SELECT raw FROM pending") as cur:
            async for (raw,) in cur:
                op = decode_op(raw, verify=False)
                self._pending[(op.author, op.seq)] = op
                self._pending_ids.add(op.op_id)
        async with self._db.execute("SELECT op_id, ns, hlc FROM evicted ORDER BY hlc") as cur:
            async for op_id, ns, hlc in cur:
                self._evicted[op_id] = (ns or "", hlc or 0)
                if ns is not None and hlc is not None:
                    self._keys.setdefault(ns, {})[op_id] = hlc
        async with self._db.execute(
                "SELECT author, first, last, last_id FROM superseded ORDER BY author, first") as cur:
            async for author, first, last, last_id in cur:
                self._skips.setdefault(author, []).append((first, last, last_id))
        async with self._db.execute("SELECT op_id FROM superseded_ids") as cur:
            self._superseded = {r[0] async for r in cur}
        self.clock = HybridClock(max_hlc)

    def _author(self, key: bytes) -> bytes:
        """The one copy of ``key`` the in-memory indexes hold (about 80 bytes saved per op)."""
        return self._author_ids.setdefault(key, key)

    async def close(self) -> None:
        """Close the database and stop the verification workers (all acknowledged is committed)."""
        await self._db.close()
        pool, self._pool, self._pool_ready = self._pool, None, None
        if pool is not None:
            # wait for the processes to exit, off the loop: none outlives the store
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
            self._thread_pool = None

    async def _decode(self, raws: list[bytes]) -> list[Op | RemoteProtocolError]:
        """Decode and verify off the event loop: in threads, or worker processes when started."""
        if self._workers and len(raws) >= WORKER_MIN_BATCH and self._workers_ready():
            try:
                return await self._decode_in_workers(raws)
            except BrokenExecutor:  # the process pool's BrokenProcessPool
                log.warning("a verification worker died; verifying in threads from now on")
                self._workers = 0
                pool, self._pool, self._pool_ready = self._pool, None, None
                if pool is not None:
                    pool.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        if self._thread_pool is None:
            self._thread_pool = ThreadPoolExecutor(self._threads, thread_name_prefix="sync-verify")
        n = max(1, min(self._threads, len(raws) // _MIN_SPLIT))
        step = -(-len(raws) // n)
        parts = await asyncio.gather(*(
            loop.run_in_executor(self._thread_pool, _decode_batch, raws[i : i + step])
            for i in range(0, len(raws), step)))
        return [d for part in parts for d in part]

    def _workers_ready(self) -> bool:
        """Start the worker processes on first use; True once they are up (threads till then)."""
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the loop's and SQLite's threads must not be copied mid-flight
            pool = ProcessPoolExecutor(self._workers,
                                       mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_worker_init, initargs=(os.getpid(),))
            loop = asyncio.get_running_loop()
            try:
                ready = [loop.run_in_executor(pool, _worker_ready) for _ in range(self._workers)]
            except (OSError, RuntimeError) as exc:  # e.g. a __main__ that spawn cannot import
                log.warning("cannot start verification workers (%s); verifying in threads", exc)
                self._workers = 0
                pool.shutdown(wait=False, cancel_futures=True)
                return False
            self._pool = pool
            self._pool_ready = asyncio.gather(*ready)
            # a pool that fails to start shows up as BrokenProcessPool on the next batch
            self._pool_ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._pool_ready is not None and self._pool_ready.done()

    async def _decode_in_workers(self, raws: list[bytes]) -> list[Op | RemoteProtocolError]:
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        step = -(-len(raws) // self._workers)
        parts = await asyncio.gather(*(
            loop.run_in_executor(self._pool, _decode_portable, raws[i : i + step])
            for i in range(0, len(raws), step)))
        out: list[Op | RemoteProtocolError] = []
        for raw, d in zip(raws, (d for part in parts for d in part), strict=True):
            if len(d) == 2:
                reason, detail = d
                out.append(RemoteProtocolError(reason, detail))
            else:
                out.append(Op(*d, raw))
        return out

    # -- configuration -----------------------------------------------------------------------

    def register_authorizer(self, namespace: str, authorizer: Authorizer) -> None:
        """Install the application's authoriser for ``namespace`` (ops of unknown ones are refused)."""
        self._authorizers[namespace] = authorizer

    def set_admission(self, *, member: Callable[[bytes], bool],
                      revoked: Callable[[bytes], bool], own: Iterable[bytes] = ()) -> None:
        """Say who is a member and who is revoked (see "Quota"); ``own``: this node's keys.

        Call ``membership_changed`` whenever the answers change (a trust update adopted).
        """
        self._member = member
        self._revoked = revoked
        self._own.update(own)
        self.membership_changed()

    def membership_changed(self) -> None:
        """Recount the unknown pool after the membership changed."""
        ops = size = 0
        for author, (n, b) in self._free.items():
            if not self._is_member(author):
                ops += n
                size += b
        self._unknown = UnknownPool(ops, size, self._unknown.tokens)

    def _is_member(self, author: bytes) -> bool:
        return self._member is None or author in self._own or self._member(author)

    def admission_status(self) -> dict[str, int]:
        """The unknown pool, the total quota and what eviction did, for ``sync status``."""
        q = self.quotas
        return {"bytes": self.bytes_stored, "quota_bytes": q.store_quota_bytes,
                "unknown_ops": self._unknown.ops, "unknown_bytes": self._unknown.bytes,
                "unknown_max_ops": q.unknown_max_ops, "unknown_max_bytes": q.unknown_max_bytes,
                "unknown_rate_per_min": q.unknown_rate_per_min, "evicted": self.evicted_total,
                "superseded": self.superseded_total,
                "skip_ranges": sum(len(r) for r in self._skips.values())}

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn`` with the ops of each commit, after it; returns an unsubscribe function."""
        self._subscribers.append(fn)
        return lambda: self._subscribers.remove(fn) if fn in self._subscribers else None

    # -- queries -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._known

    def author_head(self, author: bytes) -> tuple[int, bytes] | None:
        """``(seq, op_id)`` of the author's newest applied chained op, or None.

        A snapshot's skip range right after the head counts as applied (its last seq and id).
        """
        a = (self._authors.get(author) or AuthorState()).copy()
        skip_head(a, self._skips.get(author, ()))
        if a.head_id is None:
            return None
        return (a.head_seq, a.head_id)

    def quarantined(self) -> dict[bytes, str]:
        """Quarantined authors and why."""
        return {k: a.quarantined for k, a in self._authors.items() if a.quarantined is not None}

    def pending_count(self) -> int:
        """Ops parked until their predecessor arrives."""
        return len(self._pending)

    def set_withheld_authors(self, authors: Iterable[bytes]) -> None:
        """Keep these authors' ops but stop offering them to peers (the library's block list).

        Replaces the previous set; not persisted: the application sets it again on start.
        """
        new = set(authors)
        changed = new ^ self._withheld
        self._withheld = new
        if not changed:
            return
        for op_id, (ns, hlc, author) in self._known.items():
            if author not in changed:
                continue
            a = self._authors.get(author)
            offer = author not in new and (a is None or a.quarantined is None)
            keys = self._keys.setdefault(ns, {})
            if offer:
                keys[op_id] = hlc
            else:
                keys.pop(op_id, None)
            self._snapshots.pop(ns, None)

    def range_sets(self) -> dict[str, RangeSet]:
        """Immutable per-namespace snapshots of the ops we offer to peers (cached until changed)."""
        out: dict[str, RangeSet] = {}
        for ns, keys in self._keys.items():
            snap = self._snapshots.get(ns)
            if snap is None:
                snap = self._snapshots[ns] = RangeSet(zip(keys.values(), keys, strict=True))
            out[ns] = snap
        return out

    def namespace_of(self, op_id: bytes) -> str | None:
        """The namespace of a stored op, or None."""
        k = self._known.get(op_id)
        return k[0] if k else None

    def future_limit_hlc(self) -> int:
        """The lowest stamp peers refuse as ``future`` when they agree with this node's time."""
        from sync.envelope import HLC_COUNTER_BITS

        wall_ms = int(self._wall_clock() * 1000)
        return (wall_ms + self.clock.max_skew_ms + 1) << HLC_COUNTER_BITS

    def is_own(self, op_id: bytes) -> bool:
        """Whether a stored op was signed by one of this node's keys."""
        k = self._known.get(op_id)
        return k is not None and k[2] in self._own

    def hlc_of(self, op_id: bytes) -> int | None:
        """The hlc of a stored op, or None."""
        k = self._known.get(op_id)
        return k[1] if k else None

    async def get(self, op_id: bytes) -> Op | None:
        """The stored op with this id, or None."""
        k = self._known.get(op_id)
        if k is None:
            return None
        async with self._db.execute("SELECT raw FROM ops WHERE ns = ? AND hlc = ? AND op_id = ?",
                                    (k[0], k[1], op_id)) as cur:
            row = await cur.fetchone()
        return None if row is None else decode_op(row[0], verify=False)

    async def get_raw_many(self, op_ids: Sequence[bytes]) -> list[bytes]:
        """Raw forms of the stored ops among ``op_ids``, in the given order (missing ones skipped)."""
        return [raw for _, raw in await self.get_raw_pairs(op_ids)]

    async def get_raw_pairs(self, op_ids: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """``(op_id, raw)`` of the stored ops among ``op_ids``, in the given order."""
        keys = [(k[0], k[1], i) for i in op_ids if (k := self._known.get(i)) is not None]
        found: dict[bytes, bytes] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            # CROSS JOIN keeps SQLite's join order: the wanted keys outside, the index inside
            q = ("WITH want(ns, hlc, op_id) AS (VALUES " + ",".join(["(?, ?, ?)"] * len(chunk))
                 + ") SELECT ops.op_id, ops.raw FROM want CROSS JOIN ops ON ops.ns = want.ns "
                 "AND ops.hlc = want.hlc AND ops.op_id = want.op_id")
            # one round trip (iterating the cursor fetches 64 rows per trip)
            rows = await self._db.execute_fetchall(q, [v for key in chunk for v in key])
            found.update((op_id, raw) for op_id, raw in rows)
        return [(i, found[i]) for i in op_ids if i in found]

    async def ops_for_doc(self, doc_id: bytes) -> list[Op]:
        """Every stored op of a document in ``(hlc, op_id)`` order (causal per author).

        Scans the table: there is no index by document (it cost as much per insert as the
        rest of the table); for tools and tests, not for a hot path.
        """
        async with self._db.execute(
                "SELECT raw FROM ops WHERE doc_id = ? ORDER BY hlc, op_id", (doc_id,)) as cur:
            return [decode_op(r[0], verify=False) async for r in cur]

    async def iter_namespace(self, ns: str) -> AsyncIterator[Op]:
        """Every stored op of a namespace in ``(hlc, op_id)`` order."""
        async with self._db.execute(
                "SELECT raw FROM ops WHERE ns = ? ORDER BY hlc, op_id", (ns,)) as cur:
            async for (raw,) in cur:
                yield decode_op(raw, verify=False)

    async def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer ('ok' when sound)."""
        async with self._db.execute("PRAGMA integrity_check") as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else "no answer"

    # -- writing -----------------------------------------------------------------------------

    async def add_local(self, signing_key: Ed25519PrivateKey, *, kind: str, doc_id: bytes,
                        body: bytes, expiry_ms: int | None = None) -> Op:
        """Create, sign, authorise and commit a new op of ours; raises ``Unauthorized``.

        Chained ops get the next ``seq`` and ``prev`` of the key's chain; ops with an
        expiry are ephemeral (``seq`` 0).  Subscribers are told after the commit.
        """
        from sync.envelope import create_op  # local: keeps the import list short

        author = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._own.add(author)
        async with self._lock:
            wall_ms = int(self._wall_clock() * 1000)
            a = self._authors.get(author) or AuthorState()
            if a.quarantined is not None:
                raise SyncLocalError("this key is quarantined (it forked its own chain)")
            if expiry_ms is None and self.local_writes_held is not None:
                raise SyncLocalError(self.local_writes_held)
            hlc = self.clock.now(wall_ms)
            if expiry_ms is None:
                op = create_op(signing_key, kind=kind, doc_id=doc_id, body=body,
                               seq=a.head_seq + 1, prev=a.head_id, hlc=max(hlc, a.head_hlc + 1))
            else:
                op = create_op(signing_key, kind=kind, doc_id=doc_id, body=body, seq=0,
                               prev=None, hlc=hlc, expiry_ms=expiry_ms)
            self._authorize(op, wall_ms)
            result = await self._commit([op], [], [], {})
        await self._notify(result)
        return op

    async def reissue_future_own(self, signing_key: Ed25519PrivateKey, *,
                                 shared_hlc: int) -> tuple[str, list[Op]]:
        """Re-sign the future-stamped tail of this key's chain at the same positions, now.

        See ``sync.reissue`` for why and when it is safe (``shared_hlc``: the highest stamp
        of an own op ever sent to a peer).  One transaction: the tail is withdrawn and its
        contents committed again, or nothing changes.  Call it at start, before the
        application replays its state from the store (subscribers are not told).  Returns
        ``("reissued", new ops)``, ``("none", [])`` or ``(reason, [])`` when it is not safe.
        """
        from sync.envelope import HLC_COUNTER_BITS, create_op, hlc_wall_ms
        from sync.reissue import ChainOp, ReissuePlan, plan_reissue

        author = signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        async with self._lock:
            a = self._authors.get(author)
            if a is None or a.head_seq == 0 or a.quarantined is not None:
                return "none", []
            wall_ms = int(self._wall_clock() * 1000)
            skew = self.clock.max_skew_ms
            beyond = (wall_ms + skew + 1) << HLC_COUNTER_BITS
            async with self._db.execute(
                    "SELECT raw FROM ops WHERE author = ? AND seq > 0 AND hlc >= ? ORDER BY seq",
                    (author, beyond)) as cur:
                old = [decode_op(r[0], verify=False) async for r in cur]
            plan = plan_reissue([ChainOp(o.seq, o.op_id, o.hlc) for o in old],
                                head_seq=a.head_seq, now_ms=wall_ms, max_skew_ms=skew,
                                shared_hlc=shared_hlc)
            if not isinstance(plan, ReissuePlan):
                return plan or "none", []
            prev, prev_hlc = None, -1
            if plan.first_seq > 1:
                async with self._db.execute(
                        "SELECT op_id, hlc FROM ops WHERE author = ? AND seq = ?",
                        (author, plan.first_seq - 1)) as cur:
                    row = await cur.fetchone()
                if row is None:
                    return "no-predecessor", []
                prev, prev_hlc = bytes(row[0]), int(row[1])
            new: list[Op] = []
            hlc = self.clock.now(wall_ms)  # follows the corrected clock (see HybridClock.now)
            for o in old:
                hlc = max(hlc, prev_hlc + 1)
                op = create_op(signing_key, kind=o.kind, doc_id=o.doc_id, body=o.body,
                               seq=o.seq, prev=prev, hlc=hlc)
                try:
                    self._authorize(op, wall_ms)
                except Unauthorized as exc:
                    return f"unauthorized: {exc.detail}", []
                new.append(op)
                prev, prev_hlc, hlc = op.op_id, op.hlc, op.hlc + 1
            n_bytes = a.n_bytes - sum(len(o.raw) for o in old) + sum(len(o.raw) for o in new)
            head = new[-1]
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                await self._db.executemany(
                    "DELETE FROM ops WHERE ns = ? AND hlc = ? AND op_id = ?",
                    [(o.namespace, o.hlc, o.op_id) for o in old])
                await self._db.executemany(
                    f"INSERT INTO ops ({_OPS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(o.op_id, o.namespace, o.kind, o.doc_id, o.author, o.seq, o.hlc,
                      o.expiry_ms, o.raw) for o in new])
                await self._db.execute(
                    "UPDATE authors SET head_seq = ?, head_id = ?, head_hlc = ?, n_bytes = ? "
                    "WHERE author = ?", (head.seq, head.op_id, head.hlc, n_bytes, author))
                await self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                if is_disk_full(exc):
                    raise DiskFull("future-stamped ops not re-issued") from None
                raise
            self._authors[author] = AuthorState(head.seq, head.op_id, head.hlc, a.n_ops, n_bytes,
                                                a.quarantined)
            for o in old:
                self._known.pop(o.op_id, None)
                self._keys.get(o.namespace, {}).pop(o.op_id, None)
                self._snapshots.pop(o.namespace, None)
                self.bytes_stored -= len(o.raw)
                self._count(author, o.namespace, len(o.raw), -1)
            for o in new:
                self._known[o.op_id] = (sys.intern(o.namespace), o.hlc, self._author(o.author))
                self._keys.setdefault(o.namespace, {})[o.op_id] = o.hlc
                self._snapshots.pop(o.namespace, None)
                self.bytes_stored += len(o.raw)
                self._count(author, o.namespace, len(o.raw), +1)
            # the clock forgets the withdrawn stamps: it continues from the new head
            self.clock = HybridClock(max(self.clock.last if hlc_wall_ms(self.clock.last)
                                         <= wall_ms + skew else 0, head.hlc),
                                     self.clock.max_skew_ms)
            return "reissued", new

    def _authorize(self, op: Op, wall_ms: int) -> None:
        fn = self._authorizers.get(op.namespace)
        if fn is None:
            raise Unauthorized(f"no authoriser for namespace {op.namespace!r}")
        fn(op, wall_ms)

    async def apply_remote(self, raw_ops: Sequence[bytes], peer: str = "") -> ApplyResult:
        """Verify and apply a peer's ops; returns what was committed (never raises for bad ops)."""
        # ops we already hold are acknowledged without paying for a signature check again
        fresh: list[bytes] = []
        known: list[bytes] = []
        for raw in raw_ops:
            op_id = hashlib.sha256(raw).digest() if type(raw) is bytes else b""
            if op_id in self._known or op_id in self._pending_ids:
                known.append(op_id)
            else:
                fresh.append(raw)
        decoded = await self._decode(fresh) if fresh else []
        async with self._lock:
            result = await self._apply_locked(decoded, peer)
        await self._notify(result)
        if known:
            result = ApplyResult(result.applied, result.pending, result.duplicates + len(known),
                                 result.refused, result.acked + tuple(known))
        return result

    async def _notify(self, result: ApplyResult) -> None:
        if not result.applied:
            return
        for fn in list(self._subscribers):
            try:
                res = fn(result.applied)
                if inspect.isawaitable(res):
                    await res
            except Exception:
                log.exception("sync subscriber %r failed", fn)

    def _refuse(self, refused: dict[str, int], reason: str, peer: str, detail: str) -> None:
        refused[reason] = refused.get(reason, 0) + 1
        self.drops.drop(reason, peer, detail)

    async def _apply_locked(self, decoded: list[Op | RemoteProtocolError],
                            peer: str) -> ApplyResult:
        view = ChainView(self._authors, self._known, self._pending, self._pending_ids,
                         self._evicted, self._skips, self._superseded)
        wall_ms = int(self._wall_clock() * 1000)
        admission = None
        if self._member is not None:
            q = self.quotas
            rate = float(q.unknown_rate_per_min)
            tokens = self._unknown.tokens
            if self._tokens_ms is not None:
                tokens += max(0, wall_ms - self._tokens_ms) * rate / 60_000
            self._tokens_ms = wall_ms
            self._unknown = UnknownPool(self._unknown.ops, self._unknown.bytes, min(rate, tokens))
            admission = Admission(self._is_member, self._revoked, self._unknown,
                                  full=self.bytes_stored >= q.store_quota_bytes)
        plan = plan_apply(decoded, view, wall_ms=wall_ms,
                          max_skew_ms=self.clock.max_skew_ms, quotas=self.quotas,
                          authorize=self._authorize, admission=admission)
        refused: dict[str, int] = {}
        for r in plan.refusals:
            if r.error is not None and r.op is not None:
                log.error("authoriser for %s failed", r.op.namespace, exc_info=r.error)
            self._refuse(refused, r.reason, peer, r.detail)
        result = await self._commit(list(plan.apply), list(plan.park), list(plan.unpark),
                                    dict(plan.authors or {}), list(plan.evidence))
        if plan.pool is not None:  # committed: the bucket's tokens (the counts _commit keeps)
            self._unknown = UnknownPool(self._unknown.ops, self._unknown.bytes, plan.pool.tokens)
        if self.bytes_stored > self.quotas.store_quota_bytes:
            await self._evict()
        return ApplyResult(result.applied, len(plan.park), len(plan.duplicates), refused,
                           plan.acked)

    async def _commit(self, apply: list[Op], park: list[Op], unpark: list[Op],
                      authors: dict[bytes, AuthorState],
                      evidence: list[tuple[bytes, bytes, str]] | None = None) -> ApplyResult:
        if not authors:
            # add_local: derive the author's new state from the op itself
            for op in apply:
                old = self._authors.get(op.author) or AuthorState()
                a = AuthorState(old.head_seq, old.head_id, old.head_hlc, old.n_ops + 1,
                            old.n_bytes + len(op.raw), old.quarantined)
                if op.seq:
                    a.head_seq, a.head_id, a.head_hlc = op.seq, op.op_id, op.hlc
                authors[op.author] = a
        if not (apply or park or unpark or authors or evidence):
            return ApplyResult()
        newly_quarantined = [k for k, a in authors.items() if a.quarantined is not None
                             and (k not in self._authors or self._authors[k].quarantined is None)]
        writes: list[tuple[str, list[tuple[object, ...]]]] = [
            (f"INSERT INTO ops ({_OPS_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
             [(o.op_id, o.namespace, o.kind, o.doc_id, o.author, o.seq, o.hlc, o.expiry_ms,
               o.raw) for o in apply]),
            ("INSERT INTO pending (author, seq, op_id, raw) VALUES (?, ?, ?, ?)",
             [(o.author, o.seq, o.op_id, o.raw) for o in park]),
            ("DELETE FROM pending WHERE author = ? AND seq = ?",
             [(o.author, o.seq) for o in unpark]),
            ("INSERT OR REPLACE INTO authors (author, head_seq, head_id, head_hlc, n_ops, "
             "n_bytes, quarantined) VALUES (?, ?, ?, ?, ?, ?, ?)",
             [(k, a.head_seq, a.head_id, a.head_hlc, a.n_ops, a.n_bytes, a.quarantined)
              for k, a in authors.items()]),
            ("INSERT INTO evidence (author, raw, reason) VALUES (?, ?, ?)",
             list(evidence or [])),
        ]
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            for sql, rows in writes:
                if rows:  # each statement is a round trip to the database thread
                    await self._db.executemany(sql, rows)
            await self._db.execute("COMMIT")
        except BaseException as exc:
            # a failed or cancelled commit leaves nothing behind and nothing acknowledged
            # (SQLite may have rolled back already, on a full disk: then ROLLBACK fails)
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(self._db.execute("ROLLBACK"))
            if is_disk_full(exc):
                raise DiskFull(f"{len(apply) + len(park)} op(s) not stored") from None
            raise
        # committed: publish to the in-memory indexes
        self._authors.update(authors)
        for op in apply:
            self._known[op.op_id] = (sys.intern(op.namespace), op.hlc, self._author(op.author))
            self.bytes_stored += len(op.raw)
            self._count(op.author, op.namespace, len(op.raw), +1)
            if op.author not in self._withheld:
                self._keys.setdefault(op.namespace, {})[op.op_id] = op.hlc
            self._snapshots.pop(op.namespace, None)
            self.clock.observe_trusted(op.hlc)
        for op in park:
            self._pending[(op.author, op.seq)] = op
            self._pending_ids.add(op.op_id)
        for op in unpark:
            self._pending_ids.discard(op.op_id)
            self._pending.pop((op.author, op.seq), None)
        if newly_quarantined:
            await self._hide_authors(newly_quarantined)
        return ApplyResult(applied=tuple(apply))

    def _count(self, author: bytes, ns: str, size: int, sign: int) -> None:
        """Keep the per-author counts outside protected namespaces, and the pool, in step."""
        if ns in self.quotas.protected_namespaces:
            return
        f = self._free.setdefault(author, [0, 0])
        f[0] += sign
        f[1] += sign * size
        if not self._is_member(author):
            p = self._unknown
            self._unknown = UnknownPool(p.ops + sign, p.bytes + sign * size, p.tokens)

    async def _evict(self) -> None:
        """Delete the oldest evictable ops down to ``EVICT_TO`` of the quota (see "Quota")."""
        target = int(self.quotas.store_quota_bytes * EVICT_TO)
        need = self.bytes_stored - target
        protected = self.quotas.protected_namespaces
        unknown: list[tuple[bytes, str, int, bytes, int]] = []
        members: list[tuple[bytes, str, int, bytes, int]] = []
        # oldest first: rowid is arrival order
        async with self._db.execute(
                "SELECT op_id, ns, hlc, author, length(raw) FROM ops ORDER BY rowid") as cur:
            async for op_id, ns, hlc, author, size in cur:
                if ns in protected or author in self._own:
                    continue
                row = (op_id, ns, hlc, author, size)
                (members if self._is_member(author) else unknown).append(row)
        victims: list[tuple[bytes, str, int, bytes, int]] = []
        freed = 0
        for row in unknown + members:
            if freed >= need:
                break
            victims.append(row)
            freed += row[4]
        if not victims:
            return
        try:
            await self._db.execute("BEGIN IMMEDIATE")
            await self._db.executemany("DELETE FROM ops WHERE ns = ? AND hlc = ? AND op_id = ?",
                                       [(ns, hlc, op_id) for op_id, ns, hlc, _, _ in victims])
            await self._db.executemany(
                "INSERT OR IGNORE INTO evicted (op_id, ns, hlc) VALUES (?, ?, ?)",
                [(op_id, ns, hlc) for op_id, ns, hlc, _, _ in victims])
            forget = self._evicted_overflow(len(victims))
            if forget:
                await self._db.executemany("DELETE FROM evicted WHERE op_id = ?",
                                           [(i,) for i in forget])
            await self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(self._db.execute("ROLLBACK"))
            raise
        for op_id in forget:
            ns, _ = self._evicted.pop(op_id)
            if self._keys.get(ns, {}).pop(op_id, None) is not None:
                self._snapshots.pop(ns, None)
        for op_id, ns, hlc, author, size in victims:
            del self._known[op_id]
            # still offered: a neighbour that holds it has nothing to send us (see "Quota")
            self._evicted[op_id] = (ns, hlc)
            self.bytes_stored -= size
            self._count(author, ns, size, -1)
        self.evicted_total += len(victims)
        log.info("op store over its quota (%d bytes): evicted %d op(s), %d bytes, oldest first",
                 self.quotas.store_quota_bytes, len(victims), freed)

    def _evicted_overflow(self, adding: int) -> list[bytes]:
        """The oldest remembered evicted ids to forget so that ``adding`` more fit the bound."""
        over = len(self._evicted) + adding - MAX_EVICTED
        if over <= 0:
            return []
        # insertion order is eviction order (loaded by hlc): the first ones are the oldest
        return list(itertools.islice(self._evicted, over))

    async def _hide_authors(self, authors: Iterable[bytes]) -> None:
        """Stop offering a quarantined author's ops to peers (they stay stored as evidence)."""
        hide = set(authors)
        for op_id, (ns, _, author) in self._known.items():
            if author in hide and op_id in self._keys.get(ns, {}):
                del self._keys[ns][op_id]
                self._snapshots.pop(ns, None)
        for key in [k for k in self._pending if k[0] in hide]:
            self._pending_ids.discard(self._pending.pop(key).op_id)
        marks = ",".join("?" * len(hide))
        await self._db.execute(f"DELETE FROM pending WHERE author IN ({marks})", list(hide))

    async def supersede(self, by: bytes, doc_id: bytes, ranges: Sequence[tuple[bytes, SkipRange]],
                        op_ids: Sequence[bytes] = ()) -> int:
        """Drop the ops snapshot ``by`` (a stored op of ``doc_id``) supersedes; returns how many.

        ``ranges`` are ``(author, (first seq, last seq, op id at last))`` chain positions;
        ``op_ids`` the stored ops it supersedes (those in the ranges the application saw,
        and earlier snapshots, unchained).  They are deleted, no longer offered and,
        offered again, refused as ``superseded``; the ranges are remembered so that the ops
        after them apply (and parked ones do now).  Each op named must be of ``by``'s
        namespace and ``doc_id`` and, when chained, lie in the ranges: else the whole call
        is refused (``SyncLocalError``), as it is when ``by`` is not stored here.  (Looked
        up by id: no scan of the store.  The application sees every stored op of its
        namespace, so it names them all; members are trusted not to name ranges over
        other documents' ops, which are not looked for.)
        """
        async with self._lock:
            k = self._known.get(by)
            if k is None:
                raise SyncLocalError("the snapshot is not stored here")
            ns = k[0]
            new: dict[bytes, list[SkipRange]] = {}
            for author, rng in ranges:
                first, last, last_id = rng
                if not 1 <= first <= last or len(last_id) != 32 or len(author) != 32:
                    raise SyncLocalError("malformed skip range")
                new.setdefault(author, []).append(rng)
            new = {a: merge_ranges((), r) for a, r in new.items()}
            victims: list[tuple[bytes, str, int, bytes, int]] = []
            old_ids: list[bytes] = []
            keys: list[tuple[str, int, bytes]] = []
            for op_id in dict.fromkeys(op_ids):
                held = self._known.get(op_id)
                if op_id == by:
                    continue
                if held is None:  # an earlier snapshot never seen here: refused if it comes
                    old_ids.append(op_id)
                    continue
                if held[0] != ns:
                    raise SyncLocalError("the snapshot supersedes an op of another namespace")
                keys.append((held[0], held[1], op_id))
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = await self._db.execute_fetchall(
                    "WITH want(ns, hlc, op_id) AS (VALUES " + ",".join(["(?, ?, ?)"] * len(chunk))
                    + ") SELECT ops.op_id, ops.hlc, ops.author, ops.seq, ops.doc_id, "
                    "length(ops.raw) FROM want CROSS JOIN ops ON ops.ns = want.ns AND "
                    "ops.hlc = want.hlc AND ops.op_id = want.op_id",
                    [v for key in chunk for v in key])
                for op_id, hlc, author, seq, o_doc, size in rows:
                    if o_doc != doc_id or (seq and not covered(new.get(author, ()), seq)):
                        raise SyncLocalError("the snapshot supersedes an op of another"
                                             " document or outside its ranges")
                    if not seq:
                        old_ids.append(op_id)
                    victims.append((op_id, ns, hlc, author, int(size)))
            old_ids = [i for i in old_ids if i not in self._superseded]
            parked = [op for (author, seq), op in self._pending.items()
                      if author in new and covered(new[author], seq)]
            merged = {a: merge_ranges(self._skips.get(a, ()), r) for a, r in new.items()}
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                await self._db.executemany(
                    "DELETE FROM ops WHERE ns = ? AND hlc = ? AND op_id = ?",
                    [(o_ns, hlc, op_id) for op_id, o_ns, hlc, _, _ in victims])
                await self._db.executemany("DELETE FROM pending WHERE author = ? AND seq = ?",
                                           [(o.author, o.seq) for o in parked])
                await self._db.executemany("DELETE FROM superseded WHERE author = ?",
                                           [(a,) for a in merged])
                await self._db.executemany(
                    "INSERT INTO superseded (author, first, last, last_id) VALUES (?, ?, ?, ?)",
                    [(a, *r) for a, rs in merged.items() for r in rs])
                await self._db.executemany(
                    "INSERT OR IGNORE INTO superseded_ids (op_id) VALUES (?)",
                    [(i,) for i in old_ids])
                await self._db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await asyncio.shield(self._db.execute("ROLLBACK"))
                if is_disk_full(exc):
                    raise DiskFull("snapshot not applied to the store") from None
                raise
            for op_id, o_ns, _, author, size in victims:
                del self._known[op_id]
                self.bytes_stored -= size
                self._count(author, o_ns, size, -1)
                if self._keys.get(o_ns, {}).pop(op_id, None) is not None:
                    self._snapshots.pop(o_ns, None)
            for o in parked:
                self._pending.pop((o.author, o.seq), None)
                self._pending_ids.discard(o.op_id)
            self._skips.update(merged)
            self._superseded.update(old_ids)
            self.superseded_total += len(victims)
            result = await self._replan_pending(list(new))
        await self._notify(result)
        return len(victims)

    async def _replan_pending(self, authors: Sequence[bytes]) -> ApplyResult:
        """Apply the parked ops that follow a skip range (their predecessors were superseded)."""
        take: list[Op] = []
        for key in authors:
            a = (self._authors.get(key) or AuthorState()).copy()
            skip_head(a, self._skips.get(key, ()))
            op = self._pending.get((key, a.head_seq + 1))
            if op is not None:
                take.append(op)
        if not take:
            return ApplyResult()
        ids = {o.op_id for o in take}
        view = ChainView(self._authors, self._known,
                         {k: o for k, o in self._pending.items() if o.op_id not in ids},
                         self._pending_ids - ids, self._evicted, self._skips, self._superseded)
        plan = plan_apply(list(take), view, wall_ms=int(self._wall_clock() * 1000),
                          max_skew_ms=self.clock.max_skew_ms, quotas=self.quotas,
                          authorize=self._authorize)
        refused: dict[str, int] = {}
        for r in plan.refusals:
            self._refuse(refused, r.reason, "", r.detail)
        # the ops taken out of the pending pool leave it whatever the plan did with them
        return await self._commit(list(plan.apply), list(plan.park),
                                  list(plan.unpark) + take, dict(plan.authors or {}),
                                  list(plan.evidence))

    async def forget(self, op_ids: Iterable[bytes]) -> list[bytes]:
        """Delete stored ephemeral ops (``seq`` 0) the application withdrew; returns their ids.

        For ops refused after they were stored (a revoked authority's bulletins): they are
        no longer offered to peers, and a peer offering one again meets the authoriser.
        Chained ops are never forgotten (a re-delivery would look like a fork).
        """
        async with self._lock:
            gone: list[bytes] = []
            for op_id in dict.fromkeys(op_ids):
                k = self._known.get(op_id)
                if k is None:
                    continue
                cur = await self._db.execute(
                    "DELETE FROM ops WHERE ns = ? AND hlc = ? AND op_id = ? AND seq = 0 "
                    "RETURNING length(raw)", (k[0], k[1], op_id))
                rows = list(await cur.fetchall())
                await cur.close()
                if not rows:
                    continue
                self.bytes_stored -= int(rows[0][0])
                self._count(k[2], k[0], int(rows[0][0]), -1)
                del self._known[op_id]
                if self._keys.get(k[0], {}).pop(op_id, None) is not None:
                    self._snapshots.pop(k[0], None)
                gone.append(op_id)
            return gone

    async def purge_expired(self) -> int:
        """Delete ops whose expiry has passed; returns how many."""
        wall_ms = int(self._wall_clock() * 1000)
        async with self._lock:
            async with self._db.execute(
                    "SELECT op_id, length(raw) FROM ops WHERE expiry_ms IS NOT NULL "
                    "AND expiry_ms <= ?", (wall_ms,)) as cur:
                rows = [(r[0], int(r[1])) async for r in cur]
            gone = [r[0] for r in rows]
            if not gone:
                return 0
            try:
                await self._db.execute(
                    "DELETE FROM ops WHERE expiry_ms IS NOT NULL AND expiry_ms <= ?", (wall_ms,))
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                # a delete needs room in the WAL too: the expired ops stay until a later
                # purge finds some, and the node runs on
                if not self._purge_blocked:
                    log.warning("disk full: %d expired op(s) stay stored until there is room",
                                len(gone))
                self._purge_blocked = True
                return 0
            self._purge_blocked = False
            for op_id, size in rows:
                ns, _, author = self._known.pop(op_id)
                self.bytes_stored -= size
                self._count(author, ns, size, -1)
                if self._keys.get(ns, {}).pop(op_id, None) is not None:
                    self._snapshots.pop(ns, None)
            return len(gone)
