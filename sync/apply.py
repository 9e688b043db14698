"""Causal application of a peer's ops, as a pure planner (no I/O, no clock).

Theory of operation
-------------------
``plan_apply`` takes a batch of decoded ops (or their decoding errors) and a
read-only view of the store's chain state (``ChainView``: author heads and
counters, the ops applied, the pending pool), and returns an ``ApplyPlan``
saying what to do with each op; the store (``sync.store``, or an in-memory
one in the simulator) then only writes the plan in one transaction.  For each
op, in this order: duplicate check, expiry, clock skew, quarantine, the
namespace's authoriser, admission (below), the per-author quota, and its place
in the author's chain:

* the next op of the chain (``seq == head + 1`` and ``prev`` = head id, with a
  larger ``hlc``) is **applied**, and any parked successors after it (taken out
  of the pending pool: ``unpark``);
* an op further ahead is **parked** in the bounded pending pool until its
  predecessor arrives;
* a different op at a position already taken, or one whose ``prev`` is not the
  op at ``seq - 1``, is a fork: the author is **quarantined** (no new ops
  accepted, its ops no longer offered to peers) and the op kept as evidence;
* anything else is **refused**, with a reason token for the drop counter.

Admission (``Admission``, when the store gives one): ops of a *revoked* key are
refused (``revoked``) before anything else is checked.  Authors that are not
*members* (the application decides who is: see ``Admission.member``) share one
small pool per node, outside the namespaces ``Quotas.protected_namespaces``
(trust updates and bulletins, bounded by the application's carried pool):
at most ``unknown_max_ops`` stored ops and ``unknown_max_bytes`` bytes
(``unknown-pool-full``), ``unknown_max_pending`` parked ops, and a rate of
``unknown_rate_per_min`` ops a minute, as a token bucket
(``unknown-rate``).  When the store is at its total quota (``Admission.full``)
a non-member's op outside the protected namespaces is refused
(``store-full``); members' ops are admitted and the store evicts to make room.
So a flood of fresh keys fills the pool and no further: it never crowds out
members or fills the disk.

Snapshots (``ChainView.skips``, ``ChainView.superseded``): when the application
compacts a document into a snapshot op, the ops it supersedes are dropped and
their chain positions recorded as *skip ranges* per author, ``(first seq, last
seq, op id at last)``.  An op whose position lies in a skip range, or a
superseded unchained op, is refused (``superseded``) before anything else but
the duplicate and revocation checks, so an old op from a node that was offline
is neither applied again nor taken for a fork; and an author's head jumps over
a skip range (to its last seq and id) so that the ops after it apply without
the history they build on.

Ephemeral ops (``seq`` 0) are outside any chain: applied if authorised and
within quota.  Chained ops of one author are taken in ``seq`` order, so a
batch in any order applies at once.  Ops applied and parked are what the
caller may acknowledge after the commit, with the duplicates.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from meshd.core.errors import RemoteProtocolError
from sync.envelope import Authorizer, Op, hlc_wall_ms
from sync.errors import Unauthorized

__all__ = ["Admission", "ApplyPlan", "AuthorState", "ChainView", "Quotas", "Refusal",
           "SkipRange", "UnknownPool", "covered", "merge_ranges", "plan_apply", "skip_head"]

#: chain positions a snapshot superseded: (first seq, last seq, op id at the last seq)
SkipRange = tuple[int, int, bytes]


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-author limits, the size of the pending pool, the unknown authors' pool, the total."""

    max_ops_per_author: int = 500_000
    max_bytes_per_author: int = 256 * 1024 * 1024
    max_pending: int = 20_000
    max_pending_per_author: int = 12_000
    #: the pool all non-members share (stored ops, bytes, parked ops, ops per minute)
    unknown_max_ops: int = 2_000
    unknown_max_bytes: int = 8 * 1024 * 1024
    unknown_max_pending: int = 500
    unknown_rate_per_min: int = 600
    #: the op store's total size (bytes of ops); the store evicts to stay under it
    store_quota_bytes: int = 1024 * 1024 * 1024
    #: namespaces outside the unknown pool and never evicted (the application's trust and
    #: bulletins; the composition root names them)
    protected_namespaces: frozenset[str] = frozenset()


@dataclass(slots=True)
class AuthorState:
    """One author's chain head and counters (``quarantined``: why, once it forked)."""

    head_seq: int = 0
    head_id: bytes | None = None
    head_hlc: int = -1
    n_ops: int = 0
    n_bytes: int = 0
    quarantined: str | None = None

    def copy(self) -> AuthorState:
        return AuthorState(self.head_seq, self.head_id, self.head_hlc, self.n_ops, self.n_bytes,
                           self.quarantined)


@dataclass(frozen=True, slots=True)
class ChainView:
    """The store's committed chain state, read-only: what ``plan_apply`` decides against."""

    authors: Mapping[bytes, AuthorState]
    #: ids of the applied ops
    applied: Collection[bytes]
    #: the pending pool by (author, seq), and its ids
    pending: Mapping[tuple[bytes, int], Op]
    pending_ids: Collection[bytes]
    #: ids of ops evicted for the total quota: taken as duplicates, never stored again
    evicted: Collection[bytes] = frozenset()
    #: per author, the chain positions snapshots superseded (sorted, disjoint; ``merge_ranges``)
    skips: Mapping[bytes, Sequence[SkipRange]] | None = None
    #: ids of unchained ops (earlier snapshots) a snapshot superseded
    superseded: Collection[bytes] = frozenset()


def covered(ranges: Sequence[SkipRange], seq: int) -> bool:
    """True when ``seq`` lies in one of ``ranges`` (sorted by first seq, disjoint)."""
    i = bisect_right(ranges, seq, key=lambda r: r[0]) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


def skip_head(a: AuthorState, ranges: Sequence[SkipRange]) -> bool:
    """Move ``a``'s head over the skip range its next seq falls in; True if it moved."""
    moved = False
    while ranges:
        i = bisect_right(ranges, a.head_seq + 1, key=lambda r: r[0]) - 1
        if i < 0 or not ranges[i][0] <= a.head_seq + 1 <= ranges[i][1]:
            return moved
        a.head_seq, a.head_id = ranges[i][1], ranges[i][2]
        moved = True
    return moved


def merge_ranges(old: Sequence[SkipRange], new: Sequence[SkipRange]) -> list[SkipRange]:
    """The union of two sets of skip ranges, sorted, adjacent or overlapping ones joined.

    A joined range ends at the larger last seq, with that range's op id.
    """
    out: list[SkipRange] = []
    for first, last, last_id in sorted([*old, *new]):
        if out and first <= out[-1][1] + 1:
            p = out[-1]
            if last > p[1]:
                out[-1] = (p[0], last, last_id)
            continue
        out.append((first, last, last_id))
    return out


@dataclass(frozen=True, slots=True)
class UnknownPool:
    """What the non-members hold: stored ops and bytes (outside protected namespaces), and
    the rate bucket's tokens (ops they may still send now)."""

    ops: int = 0
    bytes: int = 0
    tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class Admission:
    """Who may write how much here (see the module docstring); None in a plan: no limits."""

    #: True for a member's key (enrolled, an authority, the root, this node's own keys)
    member: Callable[[bytes], bool]
    #: True for a key the community revoked (a lost or stolen device)
    revoked: Callable[[bytes], bool]
    pool: UnknownPool
    #: the store is at its total quota
    full: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """One op refused: ``reason`` is the drop counter's token; ``error`` an authoriser's crash."""

    reason: str
    detail: str
    op: Op | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class ApplyPlan:
    """What to write for one batch, in one transaction; nothing of it is done yet."""

    #: ops to store, in chain order per author
    apply: tuple[Op, ...] = ()
    #: ops to add to the pending pool
    park: tuple[Op, ...] = ()
    #: ops to take out of the pending pool (parked by an earlier batch; applied, or refused now)
    unpark: tuple[Op, ...] = ()
    #: new state of every author the batch touched
    authors: Mapping[bytes, AuthorState] | None = None
    #: (author, raw op, why) for each fork found: the author is quarantined
    evidence: tuple[tuple[bytes, bytes, str], ...] = ()
    refusals: tuple[Refusal, ...] = ()
    #: ids of ops already held (applied, parked, or twice in this batch)
    duplicates: tuple[bytes, ...] = ()
    #: the unknown pool after the batch (None without admission)
    pool: UnknownPool | None = None

    @property
    def acked(self) -> tuple[bytes, ...]:
        """Ids the caller may acknowledge once the plan is committed."""
        return (self.duplicates + tuple(o.op_id for o in self.apply)
                + tuple(o.op_id for o in self.park))


def plan_apply(decoded: Sequence[Op | RemoteProtocolError], view: ChainView, *, wall_ms: int,
               max_skew_ms: int, quotas: Quotas,
               authorize: Callable[[Op, int], None] | Authorizer,
               admission: Admission | None = None) -> ApplyPlan:
    """Decide, for each op of a batch, apply / park / quarantine / refuse (see module docstring).

    ``authorize(op, wall_ms)`` raises ``Unauthorized`` to refuse an op; any other exception
    it raises is a refusal too (``authorizer-error``, the exception in ``Refusal.error``).
    """
    refusals: list[Refusal] = []
    duplicates: list[bytes] = []
    # a working copy of the author state this batch touches
    authors: dict[bytes, AuthorState] = {}
    apply: list[Op] = []
    park: list[Op] = []
    n_parked = 0
    unparked_now: set[bytes] = set()  # parked earlier in this batch, taken out again
    unpark: list[Op] = []  # parked in earlier batches (durably), applied now
    unpark_ids: set[bytes] = set()
    evidence: list[tuple[bytes, bytes, str]] = []
    batch_ids: set[bytes] = set()
    parked_now: dict[tuple[bytes, int], Op] = {}
    pending_per_author: dict[bytes, int] = {}
    for k in view.pending:
        pending_per_author[k[0]] = pending_per_author.get(k[0], 0) + 1
    adm = admission
    pool_ops = adm.pool.ops if adm else 0
    pool_bytes = adm.pool.bytes if adm else 0
    tokens = adm.pool.tokens if adm else 0.0
    pool_pending = (sum(n for k, n in pending_per_author.items() if not adm.member(k))
                    if adm else 0)

    def pooled(op: Op) -> bool:
        """True when ``op`` counts against the unknown authors' pool."""
        return (adm is not None and op.namespace not in quotas.protected_namespaces
                and not adm.member(op.author))

    def pool_refusal(op: Op, *, parking: bool) -> str | None:
        """Why the unknown pool refuses ``op`` now, or None."""
        assert adm is not None
        if adm.full:
            return "store-full"
        if parking:
            if pool_pending >= quotas.unknown_max_pending:
                return "unknown-pool-full"
        elif (pool_ops + 1 > quotas.unknown_max_ops
              or pool_bytes + len(op.raw) > quotas.unknown_max_bytes):
            return "unknown-pool-full"
        if tokens < 1.0:
            return "unknown-rate"
        return None

    skips = view.skips or {}

    def author(key: bytes) -> AuthorState:
        a = authors.get(key)
        if a is None:
            old = view.authors.get(key)
            a = authors[key] = old.copy() if old else AuthorState()
            skip_head(a, skips.get(key, ()))
        return a

    def quarantine(a: AuthorState, op: Op, why: str) -> None:
        a.quarantined = why
        evidence.append((op.author, op.raw, why))
        refusals.append(Refusal("fork", why, op))

    def try_apply(op: Op, a: AuthorState) -> bool:
        """Authorise and take ``op`` into ``apply``; False if refused."""
        nonlocal pool_ops, pool_bytes, tokens
        try:
            authorize(op, wall_ms)
        except Unauthorized as exc:
            refusals.append(Refusal("unauthorized", exc.detail, op))
            return False
        except Exception as exc:  # the application's authoriser is not ours to trust
            refusals.append(Refusal("authorizer-error", type(exc).__name__, op, exc))
            return False
        if (a.n_ops + 1 > quotas.max_ops_per_author
                or a.n_bytes + len(op.raw) > quotas.max_bytes_per_author):
            refusals.append(Refusal("quota", "author over quota", op))
            return False
        if pooled(op):
            why = pool_refusal(op, parking=False)
            if why is not None:
                refusals.append(Refusal(why, "author is no member", op))
                return False
            pool_ops += 1
            pool_bytes += len(op.raw)
            tokens -= 1.0
        a.n_ops += 1
        a.n_bytes += len(op.raw)
        if op.seq:
            a.head_seq, a.head_id, a.head_hlc = op.seq, op.op_id, op.hlc
        apply.append(op)
        batch_ids.add(op.op_id)
        return True

    ops = [d for d in decoded if isinstance(d, Op)]
    for d in decoded:
        if isinstance(d, RemoteProtocolError):
            refusals.append(Refusal(d.reason, d.detail))
    # chained ops of one author in seq order so a batch in any order applies at once
    ops.sort(key=lambda o: (o.seq == 0, o.author, o.seq))
    for op in ops:
        if (op.op_id in view.applied or op.op_id in batch_ids or op.op_id in view.pending_ids
                or op.op_id in view.evicted):
            duplicates.append(op.op_id)
            continue
        if adm is not None and adm.revoked(op.author):
            refusals.append(Refusal("revoked", "the community revoked this key", op))
            continue
        if op.op_id in view.superseded or (op.seq and covered(skips.get(op.author, ()),
                                                              op.seq)):
            refusals.append(Refusal("superseded", "covered by a snapshot", op))
            continue
        if op.expiry_ms is not None and op.expiry_ms <= wall_ms:
            refusals.append(Refusal("expired", "", op))
            continue
        if hlc_wall_ms(op.hlc) > wall_ms + max_skew_ms:
            refusals.append(Refusal("future", "hlc beyond tolerated skew", op))
            continue
        a = author(op.author)
        if a.quarantined is not None:
            refusals.append(Refusal("quarantined", "", op))
            continue
        if op.seq == 0:
            try_apply(op, a)
            continue
        if op.seq <= a.head_seq or (op.seq == a.head_seq + 1 and op.prev != a.head_id):
            quarantine(a, op, f"second op at seq {op.seq}")
            continue
        if op.seq == a.head_seq + 1:
            if op.hlc <= a.head_hlc:
                refusals.append(Refusal("hlc-order", "hlc not above predecessor's", op))
                continue
            if not try_apply(op, a):
                continue
            # successors parked earlier (durably) or in this batch
            while True:
                skip_head(a, skips.get(op.author, ()))
                key = (op.author, a.head_seq + 1)
                nxt = parked_now.pop(key, None) or view.pending.get(key)
                if nxt is None or nxt.op_id in unpark_ids:
                    break
                if nxt.op_id in view.pending_ids:
                    unpark.append(nxt)
                    unpark_ids.add(nxt.op_id)
                else:
                    unparked_now.add(nxt.op_id)
                    n_parked -= 1
                if nxt.prev != a.head_id:
                    quarantine(a, nxt, f"prev mismatch at seq {nxt.seq}")
                    break
                if nxt.hlc <= a.head_hlc:
                    refusals.append(Refusal("hlc-order", "hlc not above predecessor's", nxt))
                    break
                if not try_apply(nxt, a):
                    break
                op = nxt
            continue
        key = (op.author, op.seq)
        other = parked_now.get(key) or view.pending.get(key)
        if other is not None and other.op_id != op.op_id:
            quarantine(a, op, f"second pending op at seq {op.seq}")
            continue
        n_author = pending_per_author.get(op.author, 0)
        if (len(view.pending) + n_parked >= quotas.max_pending
                or n_author >= quotas.max_pending_per_author):
            refusals.append(Refusal("pending-full", "", op))
            continue
        if pooled(op):
            why = pool_refusal(op, parking=True)
            if why is not None:
                refusals.append(Refusal(why, "author is no member", op))
                continue
            pool_pending += 1
            tokens -= 1.0
        park.append(op)
        n_parked += 1
        parked_now[key] = op
        batch_ids.add(op.op_id)
        pending_per_author[op.author] = n_author + 1
    if unparked_now:
        park = [o for o in park if o.op_id not in unparked_now]
    return ApplyPlan(tuple(apply), tuple(park), tuple(unpark), authors, tuple(evidence),
                     tuple(refusals), tuple(duplicates),
                     UnknownPool(pool_ops, pool_bytes, tokens) if adm else None)
