"""Which of this node's own ops, stamped in the future, may be re-issued at the right time (pure).

Why.  A node whose clock ran ahead while it was alone stamped its ops (its
situation record, a library edit) days in the future; peers refuse them as
``future`` for the whole skew, and every later op of its chain must be stamped
higher still (``sync.apply``: a chain's ``hlc`` only grows), so the node stays
muted until real time catches up.

The fix is to withdraw the future-stamped tail of the node's own chain and sign
the same contents again at the same ``seq`` positions, stamped now.  That is a
second op at a taken position — a fork, for which peers quarantine the author —
*if any other node holds one of the withdrawn ops*.  So it is done only when
none can:

* the withdrawn ops are the tail of the chain (contiguous up to the head), all
  stamped beyond ``now + max_skew`` (every peer that agrees with this time
  refuses them, so none stored them on its own clock);
* and none of them was ever handed to a peer: ``shared_hlc`` is the highest
  ``hlc`` of an own op the sync service has sent (``sync.service`` never sends
  an op stamped beyond its time's tolerance, which keeps a future tail unshared,
  and records what it sends).  A tail that reaches down to ``shared_hlc`` is
  left alone (``"shared"``): peers take it when real time catches up.

``now_ms`` is the time the node signs with: after its system clock was
corrected, the corrected clock.  The store (``OpStore.reissue_future_own``)
does the rewrite at start, before the application replays its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from sync.envelope import hlc_wall_ms

__all__ = ["ChainOp", "ReissuePlan", "plan_reissue"]


@dataclass(frozen=True, slots=True)
class ChainOp:
    """One op of the node's own chain: position, id and stamp."""

    seq: int
    op_id: bytes
    hlc: int


@dataclass(frozen=True, slots=True)
class ReissuePlan:
    """Withdraw these ops (in ``seq`` order, from ``first_seq`` to the head) and sign their
    contents again at the same positions."""

    first_seq: int
    withdraw: tuple[bytes, ...]


def plan_reissue(future: Sequence[ChainOp], *, head_seq: int, now_ms: int, max_skew_ms: int,
                 shared_hlc: int) -> ReissuePlan | str | None:
    """The plan for the own ops in ``future`` (those stamped beyond ``now_ms + max_skew_ms``).

    None: nothing to do.  A string: why it is not safe (``"shared"``: one was handed to a
    peer; ``"not-tail"``: they are not the contiguous tail of the chain; ``"not-future"``:
    one is not beyond the tolerance after all).
    """
    if not future:
        return None
    ops = sorted(future, key=lambda o: o.seq)
    if ops[-1].seq != head_seq or any(b.seq != a.seq + 1 for a, b in pairwise(ops)):
        return "not-tail"
    if any(hlc_wall_ms(o.hlc) <= now_ms + max_skew_ms for o in ops):
        return "not-future"
    if any(o.hlc <= shared_hlc for o in ops):
        return "shared"
    return ReissuePlan(ops[0].seq, tuple(o.op_id for o in ops))
