"""Sync benchmark: reconciliation cost at N ops, a dealer visit's catch-up, verified apply rate.

Run: ``.venv/bin/python bench/sync.py [--n 100000] [--visit 10000] [--verify-workers N] [--json]``

1. Reconciliation alone (pure core, ``sync.reconcile``) between two sets of N
   ops: no difference, then 1, 100 and 1,000 recent differences (the newest
   ops, missing on one side or the other).  Bytes and round trips; the
   overhead per difference is the marginal cost, (bytes with k differences -
   bytes with none) / k: what the differences add on top of the check that
   every session pays anyway.
2. A dealer visit through the real stack (``SyncService`` over in-memory
   streams, ``OpStore`` on SQLite in a temporary directory): the dealer holds
   N signed ops, the car lacks the newest ``--visit`` of them.  Bytes on the
   wire against the raw bytes of the missing ops (the baseline measured in the
   same run), round trips, time, and ops verified+applied per second.  The
   stores verify as the daemon's does (``default_verify_workers()``: worker
   processes for batches of 64 ops or more on 2+ CPUs, started by the first
   such batch, threads until they are up); ``--verify-workers 0`` measures
   threads only.  Baseline: bare Ed25519 verifications on one core, now.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import NAMESPACE_PRIORITY, Op, create_op
from sync.reconcile import RangeSet, Reconciler
from sync.service import SyncService
from sync.store import OpStore, default_verify_workers
from tests.sync.memnet import MemNet

WALL_S = 1_800_000_000.0
TARGETS = {"nodiff_bytes": 512, "nodiff_rt": 1, "rt_1000": 3, "per_diff": 64,
           "catchup_ratio": 1.1, "apply_rate": 5000}


def _recon(items_a: list[tuple[int, bytes]], items_b: list[tuple[int, bytes]]) -> dict[str, Any]:
    a = Reconciler({"library": RangeSet(items_a)})
    b = Reconciler({"library": RangeSet(items_b)})
    msg: bytes | None = a.initiate()
    total, rts, turn = 0, 0, 0
    t0 = time.perf_counter()
    while msg is not None:
        total += len(msg)
        if turn % 2 == 0:
            rts += 1
        msg = (b if turn % 2 == 0 else a).receive(msg)
        turn += 1
    dt = time.perf_counter() - t0
    found = a.outgoing() + b.outgoing()
    return {"bytes": total, "round_trips": rts, "found": found, "seconds": dt}


def bench_reconcile(n: int, rng: random.Random) -> list[dict[str, Any]]:
    hlc0 = int(WALL_S * 1000) << 16
    items = [(hlc0 + (i << 4) + rng.randrange(16), hashlib.sha256(i.to_bytes(8, "big")).digest())
             for i in range(n)]
    rows = []
    for k in (0, 1, 100, 1000):
        newest = items[n - 2 * k:] if k else []
        pick = rng.sample(range(len(newest)), k) if k else []
        missing_at_b = {newest[j][1] for j in pick[: (k + 1) // 2]}
        missing_at_a = {newest[j][1] for j in pick[(k + 1) // 2:]}
        a = [it for it in items if it[1] not in missing_at_a]
        b = [it for it in items if it[1] not in missing_at_b]
        r = _recon(a, b)
        assert r["found"] == k, (r, k)
        r["differences"] = k
        rows.append(r)
    base = rows[0]["bytes"]
    for r in rows:
        k = r["differences"]
        r["marginal_per_difference"] = (r["bytes"] - base) / k if k else None
    return rows


# how often each namespace is written (by name: NAMESPACE_PRIORITY grows, e.g. "trust")
_WEIGHTS = {"bulletin": 1, "safety": 1, "situation": 10, "mail": 5, "library": 40}


def _make_ops(n: int) -> list[Op]:
    """N signed ops from 50 authors over the namespaces, bodies of 60-400 bytes."""
    rng = random.Random(7)
    keys = [Ed25519PrivateKey.generate() for _ in range(50)]
    heads: dict[int, tuple[int, bytes | None]] = {}
    hlc0 = int((WALL_S - 86400) * 1000) << 16
    ops = []
    for i in range(n):
        a = rng.randrange(len(keys))
        seq, prev = heads.get(a, (0, None))
        ns = rng.choices(NAMESPACE_PRIORITY, weights=[_WEIGHTS.get(n, 0) for n in NAMESPACE_PRIORITY])[0]
        op = create_op(keys[a], kind=f"{ns}.edit", doc_id=rng.randbytes(16),
                       body=rng.randbytes(rng.randrange(60, 400)), seq=seq + 1, prev=prev,
                       hlc=hlc0 + (i << 8))
        heads[a] = (seq + 1, op.op_id)
        ops.append(op)
    return ops


def verify_baseline(ops: list[Op], seconds: float = 1.0) -> dict[str, float]:
    """Bare Ed25519 verifications per second on one core, now: libsodium (what the store
    uses, the ceiling for apply on one core) and OpenSSL through cryptography (reference)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from nacl.bindings import crypto_sign_open

    from meshd.core.codec import pack
    from sync.envelope import _SIG_DOMAIN

    prepared = []
    for op in ops[:500]:
        signed = _SIG_DOMAIN + pack([1, op.kind, op.doc_id, op.author, op.seq, op.prev, op.hlc,
                                     op.expiry_ms, op.body])
        prepared.append((op.author, op.sig, signed))
    out: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for author, sig, signed in prepared:
            crypto_sign_open(sig + signed, author)
        count += len(prepared)
    out["libsodium"] = count / (time.perf_counter() - t0)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for author, sig, signed in prepared:
            Ed25519PublicKey.from_public_bytes(author).verify(sig, signed)
        count += len(prepared)
    out["openssl"] = count / (time.perf_counter() - t0)
    return out


def _children_cpu_s() -> float:
    """CPU seconds of the worker processes that have exited (they exit when a store closes)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _allow(op: Op, wall_ms: int) -> None:
    return None


async def _open(path: Path, verify_workers: int = 0) -> OpStore:
    return await OpStore.open(path, wall_clock=lambda: WALL_S,
                              authorizers={ns: _allow for ns in NAMESPACE_PRIORITY},
                              verify_workers=verify_workers)


async def bench_visit(n: int, visit: int, workdir: Path, workers: int = 0) -> dict[str, Any]:
    t0 = time.perf_counter()
    ops = _make_ops(n)
    t_sign = time.perf_counter() - t0
    old, new = ops[: n - visit], ops[n - visit:]
    car = await _open(workdir / "car.db", workers)
    t0 = time.perf_counter()
    for i in range(0, len(old), 256):
        await car.apply_remote([o.raw for o in old[i : i + 256]])
    t_fill = time.perf_counter() - t0
    await car.close()
    for suffix in ("", "-wal", "-shm"):
        if (workdir / f"car.db{suffix}").exists():
            shutil.copy(workdir / f"car.db{suffix}", workdir / f"dealer.db{suffix}")
    dealer = await _open(workdir / "dealer.db", workers)
    for i in range(0, len(new), 256):
        await dealer.apply_remote([o.raw for o in new[i : i + 256]])
    await dealer.close()  # reopened below: the visit starts from two freshly opened stores
    car = await _open(workdir / "car.db", workers)
    dealer = await _open(workdir / "dealer.db", workers)
    net = MemNet()
    c, d = b"C" * 16, b"D" * 16
    net.links.add(frozenset((c, d)))
    svc_c = SyncService(car, open_stream=net.opener(c), wall_clock=lambda: WALL_S,
                        rng=random.Random(1))
    svc_d = SyncService(dealer, open_stream=net.opener(d), wall_clock=lambda: WALL_S,
                        rng=random.Random(2))
    net.handlers = {c: svc_c.handle_stream, d: svc_d.handle_stream}
    children0 = _children_cpu_s()
    t0, cpu0 = time.perf_counter(), time.process_time()
    assert await svc_c.sync_now(d)
    await asyncio.gather(*net.tasks)
    t_visit = time.perf_counter() - t0
    cpu_visit = time.process_time() - cpu0
    session = svc_c.last_session
    assert session is not None
    assert len(car) == len(dealer) == n, (len(car), len(dealer))
    raw = sum(len(o.raw) for o in new)
    wire = net.bytes_total()
    result = {
        "n": n, "missing": visit, "raw_bytes_missing": raw, "wire_bytes": wire,
        "ratio": wire / raw, "reconcile_bytes": session.recon_bytes,
        "round_trips": session.recon_round_trips, "seconds": t_visit,
        "visit_ops_per_s": visit / t_visit, "fill_ops_per_s": len(old) / t_fill,
        "sign_ops_per_s": n / t_sign, "integrity": await car.integrity_check(),
        "verify_workers": workers,
        # both ends run in this process: the dealer's reads and sends count too
        "cpu_us_per_op_process": cpu_visit / visit * 1e6,
    }
    await car.close()
    await dealer.close()
    # the visit's workers (both stores') exit on close; the dealer's did nothing but start
    result["cpu_us_per_op_workers"] = (_children_cpu_s() - children0) / visit * 1e6
    result["verify_baseline_per_s"] = verify_baseline(new)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--visit", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--skip-visit", action="store_true")
    ap.add_argument("--verify-workers", type=int, default=None,
                    help="worker processes for large batches, as OpStore.open takes it "
                         "(default: what the daemon uses, default_verify_workers(); "
                         "0: verification threads only)")
    args = ap.parse_args()
    rng = random.Random(42)
    recon = bench_reconcile(args.n, rng)
    visit: dict[str, Any] | None = None
    if not args.skip_visit:
        with tempfile.TemporaryDirectory(prefix="cm-sync-bench-") as tmp:
            workers = (default_verify_workers() if args.verify_workers is None
                       else args.verify_workers)
            visit = asyncio.run(bench_visit(args.n, args.visit, Path(tmp), workers))
    machine = f"{platform.machine()} {os.cpu_count()} cpu, {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "reconcile": recon, "visit": visit}, indent=2))
        return
    print(f"sync benchmark, N = {args.n:,} ops ({machine})")
    print(f"{'case':<28}{'bytes':>10}{'round trips':>13}{'B/diff':>9}{'time ms':>10}  target")
    for r in recon:
        k = r["differences"]
        name = ("no difference" if k == 0 else "1 recent difference" if k == 1
                else f"{k:,} recent differences")
        tgt = (f"1 RT, <= {TARGETS['nodiff_bytes']} B" if k == 0
               else f"<= 3 RT, <= {TARGETS['per_diff']} B/diff")
        per = f"{r['marginal_per_difference']:.1f}" if k else "-"
        print(f"{name:<28}{r['bytes']:>10,}{r['round_trips']:>13}{per:>9}"
              f"{r['seconds'] * 1000:>10.1f}  {tgt}")
    print("B/diff: marginal overhead, (bytes - bytes with no difference) / differences")
    if visit:
        print(f"\ndealer visit: car lacks the newest {visit['missing']:,} of {visit['n']:,} ops")
        print(f"  raw bytes of the missing ops (baseline) {visit['raw_bytes_missing']:>12,}")
        print(f"  bytes on the wire, both ways             {visit['wire_bytes']:>12,}"
              f"   ratio {visit['ratio']:.3f} (target <= 1.1)")
        print(f"  of which reconciliation                  {visit['reconcile_bytes']:>12,}")
        print(f"  reconciliation round trips               {visit['round_trips']:>12}")
        print(f"  time                                     {visit['seconds']:>12.2f} s")
        print(f"  catch-up verified+applied ops/s          {visit['visit_ops_per_s']:>12,.0f}"
              f"   (target >= 5,000; verify workers: {visit['verify_workers'] or 'threads only'})")
        print(f"  bulk fill verified+applied ops/s         {visit['fill_ops_per_s']:>12,.0f}")
        print(f"  CPU per catch-up op: this process        {visit['cpu_us_per_op_process']:>12.0f} us"
              "   (both ends)")
        print(f"                       worker processes    {visit['cpu_us_per_op_workers']:>12.0f} us")
        base = visit["verify_baseline_per_s"]
        print(f"  baseline: bare Ed25519 verifies/s, now   {base['libsodium']:>12,.0f}"
              f"   (one core, libsodium; OpenSSL {base['openssl']:,.0f})")
        print(f"  signing ops/s                            {visit['sign_ops_per_s']:>12,.0f}")
        print(f"  integrity_check                          {visit['integrity']:>12}")


if __name__ == "__main__":
    main()
