"""Custody forwarding for addressed ops (mail): binary spray-and-wait, as a pure core.

Theory of operation
-------------------
Bulletins, the trust, safety and library namespaces are for everyone: sync
floods them (every session sends what the peer lacks).  Sealed mail
(``mail.sealed``, doc id = the recipient's NodeId, ephemeral: ``seq`` 0, in no
author chain) is for one node; flooding
it to every car costs the whole town's bandwidth for each message.  Mail ops
are forwarded instead under a *copy budget* each node keeps for each op it
holds (Spyropoulos, Psounis and Raghavendra's binary spray-and-wait, 2005):

* the node that writes a mail op starts with ``copies`` (``DEFAULT_COPIES``);
* a node holding ``c > 1`` copies hands ``c // 2`` of them to a neighbour that
  lacks the op (the *spray* phase) and keeps the rest;
* with one copy left it *waits*: the op goes only to its recipient;
* any holder hands the op to the recipient itself when they meet (the
  recipient takes no copies: it forwards nothing).

A signed op cannot carry a changing count, so the count travels beside it:
the session sends a ``COPIES`` frame before the batch (``sync.session``), the
receiver clamps it to ``[1, MAX_COPIES]`` (a peer that lies can make us spray
at most ``MAX_COPIES`` copies of one op; an op received with no count waits).
Budgets are local state, lost on restart (the op then waits: the safe side).

``MailCustody`` is per node; ``for_peer`` gives a session its view
(``CustodyView``: what may go to that neighbour, and how many copies; a copy
is spent only when the neighbour acknowledges the op).  ``wants(peer)``
tells the scheduler whether a contact with that neighbour has anything to
forward at all, ``token(peer)`` names what we would forward to it (a
reconciliation already done for the same token need not be repeated).
Time is not needed: budgets change on acknowledgements only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = [
    "CUSTODY_KINDS",
    "CUSTODY_NAMESPACES",
    "DEFAULT_COPIES",
    "MAX_COPIES",
    "CustodyView",
    "MailCustody",
]

#: op kinds forwarded under custody (doc id = the recipient's NodeId)
CUSTODY_KINDS = frozenset({"mail.sealed"})
#: namespaces holding custody kinds: left out of the digest notes (``set_digest``)
CUSTODY_NAMESPACES = frozenset({"mail"})
#: copies a node starts with for a mail op it writes
DEFAULT_COPIES = 8
#: most copies a peer may hand us for one op
MAX_COPIES = 64
_NODE_ID_LEN = 16


@dataclass(slots=True)
class _Held:
    recipient: bytes
    copies: int
    #: neighbours that acknowledged it (they hold it: never offered again)
    holders: set[bytes] = field(default_factory=set)


class MailCustody:
    """Copy budgets of the custody ops one node holds (see the module docstring)."""

    def __init__(self, me: bytes, *, copies: int = DEFAULT_COPIES) -> None:
        if not 1 <= copies <= MAX_COPIES:
            raise ValueError("copies out of range")
        self.me = me
        self.copies = copies
        self._held: dict[bytes, _Held] = {}
        #: counters: copies handed, ops delivered to their recipient
        self.handed_copies = 0
        self.delivered = 0

    def __len__(self) -> int:
        return len(self._held)

    @staticmethod
    def is_custody(kind: str, seq: int) -> bool:
        """Whether an op is forwarded under custody: a custody kind, ephemeral (``seq`` 0,
        outside any author chain: withholding a chained op would park its successors)."""
        return kind in CUSTODY_KINDS and seq == 0

    def originated(self, op_id: bytes, recipient: bytes) -> None:
        """We wrote this op: the full budget (none if addressed to ourselves)."""
        self._add(op_id, recipient, 0 if recipient == self.me else self.copies)

    def received(self, op_id: bytes, recipient: bytes, copies: int | None) -> None:
        """A peer handed us this op with ``copies`` (None: it sent no count: we wait)."""
        c = 1 if copies is None else max(1, min(MAX_COPIES, copies))
        self._add(op_id, recipient, 0 if recipient == self.me else c)

    def _add(self, op_id: bytes, recipient: bytes, copies: int) -> None:
        if op_id in self._held or len(recipient) != _NODE_ID_LEN:
            return  # (a second arrival adds no copies: the first budget stands)
        self._held[op_id] = _Held(recipient, copies)

    def forget(self, op_ids: Iterable[bytes]) -> None:
        """These ops left the store (expired, purged)."""
        for op_id in op_ids:
            self._held.pop(op_id, None)

    def prune(self, held: Callable[[bytes], bool]) -> int:
        """Forget the ops ``held`` says left the store (expired, purged); how many."""
        gone = [i for i in self._held if not held(i)]
        self.forget(gone)
        return len(gone)

    def give(self, op_id: bytes, peer: bytes) -> int | None:
        """Copies to hand ``peer`` with this op: None if not a custody op (flood it), 0 if
        it must not go to ``peer`` now, else the count (1 to the recipient itself)."""
        h = self._held.get(op_id)
        if h is None:
            return None
        if peer in h.holders:
            return 0
        if peer == h.recipient:
            return 1
        return h.copies // 2 if h.copies > 1 else 0

    def handed(self, op_id: bytes, peer: bytes, copies: int) -> None:
        """``peer`` acknowledged the op we sent with ``copies``: spend them."""
        h = self._held.get(op_id)
        if h is None:
            return
        h.holders.add(peer)
        if peer == h.recipient:
            h.copies = 0  # delivered: nothing left to do
            self.delivered += 1
        else:
            h.copies = max(0, h.copies - copies) if h.copies > 1 else h.copies
            self.handed_copies += copies

    def holds_for(self, peer: bytes, op_ids: Iterable[bytes]) -> None:
        """``peer`` holds these ops (it sent them, or a reconciliation showed it)."""
        for op_id in op_ids:
            h = self._held.get(op_id)
            if h is not None:
                h.holders.add(peer)

    def offerable(self, peer: bytes) -> list[bytes]:
        """Op ids we would hand ``peer`` now, sorted."""
        return sorted(i for i in self._held if self.give(i, peer))

    def wants(self, peer: bytes) -> bool:
        """Whether a contact with ``peer`` has anything to forward."""
        return any(self.give(i, peer) for i in self._held)

    def token(self, peer: bytes) -> bytes:
        """8 bytes naming what we would hand ``peer`` (``offerable``)."""
        h = hashlib.sha256(b"carmesh/custody/1")
        for op_id in self.offerable(peer):
            h.update(op_id)
        return h.digest()[:8]

    def for_peer(self, peer: bytes) -> CustodyView:
        return CustodyView(self, peer)


@dataclass(frozen=True, slots=True)
class CustodyView:
    """One session's view of ``MailCustody``: what may go to its neighbour."""

    custody: MailCustody
    peer: bytes

    def give(self, op_id: bytes) -> int | None:
        return self.custody.give(op_id, self.peer)

    def handed(self, op_id: bytes, copies: int) -> None:
        self.custody.handed(op_id, self.peer, copies)
