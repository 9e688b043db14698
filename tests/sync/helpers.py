"""Shared helpers for the sync tests: op-id sets, signed op chains, a reconciliation driver."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.envelope import Op
from sync.reconcile import RangeSet, Reconciler


def make_items(rng: random.Random, n: int, *, tag: bytes, hlc_span: int) -> list[tuple[int, bytes]]:
    """``n`` distinct (hlc, op_id) items; hlcs drawn from ``hlc_span`` values so ties happen."""
    return [(rng.randrange(hlc_span), hashlib.sha256(tag + i.to_bytes(4, "big")).digest())
            for i in range(n)]


@dataclass
class Outcome:
    a: Reconciler
    b: Reconciler
    round_trips: int
    bytes_a_to_b: int
    bytes_b_to_a: int


def run_session(items_a: list[tuple[int, bytes]], items_b: list[tuple[int, bytes]],
                ns: str = "library", max_messages: int = 64, **kw: int) -> Outcome:
    """Run a full reconciliation between two in-memory sets; A initiates."""
    a = Reconciler({ns: RangeSet(items_a)}, **kw)
    b = Reconciler({ns: RangeSet(items_b)}, **kw)
    msg: bytes | None = a.initiate()
    sizes = [0, 0]
    round_trips = 0
    sender, receiver = a, b
    for i in range(max_messages):
        assert msg is not None
        sizes[i % 2] += len(msg)
        if sender is a:
            round_trips += 1
        msg = receiver.receive(msg)
        if msg is None:
            break
        sender, receiver = receiver, sender
    else:
        raise AssertionError("reconciliation did not finish")
    return Outcome(a, b, round_trips, sizes[0], sizes[1])


def all_ids(r: Reconciler, attr: str) -> list[bytes]:
    """Every id in ``r.have`` or ``r.need`` across namespaces."""
    d: dict[str, list[bytes]] = getattr(r, attr)
    return [i for ids in d.values() for i in ids]


def chain(key: Ed25519PrivateKey, n: int, *, start_hlc: int, kind: str = "library.edit",
          body: bytes = b"\x80", doc_id: bytes = b"D" * 16, first_seq: int = 1,
          prev: bytes | None = None) -> list[Op]:
    """``n`` consecutive signed ops of one author's chain."""
    from sync.envelope import create_op

    out = []
    for i in range(n):
        op = create_op(key, kind=kind, doc_id=doc_id, body=body, seq=first_seq + i, prev=prev,
                       hlc=start_hlc + i)
        prev = op.op_id
        out.append(op)
    return out
