"""Mail: sealed messages for nodes out of reach, carried car to car as sync ops.

Theory of operation
-------------------
When ``meshctl send`` finds no route to a node whose announcement (keys) we
hold, the daemon seals the text to the recipient exactly as the ``msg``
service does (``meshd.core.seal``, context ``b"mail"``) and stores it as an op of
the ``mail`` namespace.  Sync carries it to every node it meets; nobody but the
recipient can open it.  The recipient opens it, puts it in its inbox and
answers with a receipt op, which sync carries back the same way.

==================  ==========================================================
``mail.sealed``     doc id = recipient NodeId; body ``x`` the sender's X25519
                    key (so sender NodeId = ``node_id_of(author, x)``), ``s``
                    the sealed message
``mail.receipt``    doc id = the original sender's NodeId; body ``x`` the
                    recipient's X25519 key, ``r`` the op id of the mail opened
==================  ==========================================================

Both are ephemeral ops (an ``expiry_ms``, at most ``MAIL_LIFETIME_MS`` = 7
days ahead), so sync purges them everywhere once they expire.  The authoriser
checks shape and sizes, the lifetime and a per-author quota of live ops
(``MAX_MAIL_PER_AUTHOR``, ``MAX_RECEIPTS_PER_AUTHOR``) so one key cannot fill
every car's store (counted over the ops held; one sync batch can overshoot by
its own size, and the next batch is refused).  A receipt counts only when the
mail's recipient wrote it; others are kept apart, so a forged receipt can
neither mark a mail delivered nor stop the recipient from opening it.  The seal's own signature, checked by the recipient, binds
the message to the sender's keys; ``MailBox.open_for`` also requires the seal's
Ed25519 key to be the op's author, so nobody can re-wrap another's mail.

The sender's outbox is the set of its own ``mail.sealed`` ops; a message is
*delivered* once a receipt naming it, authored by the recipient's key, is held.
Receipts authored by us double as the durable record of what we opened, so a
restart does not put a message into the inbox twice.

``MailBox`` is a pure core: wall time is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from library_replica.ops import OpLike, Refused, body_fields, encode_body
from meshd.core.codec import DropCounter, Fields, pack, unpack
from meshd.core.errors import DecodeError, RemoteProtocolError
from meshd.core.identity import Identity, NodeId, node_id_of
from meshd.core.seal import MAX_SEALED, Opened, open_sealed, seal

__all__ = [
    "KIND_RECEIPT",
    "KIND_SEALED",
    "MAIL_LIFETIME_MS",
    "MAX_MAIL_PER_AUTHOR",
    "MAX_RECEIPTS_PER_AUTHOR",
    "MailBox",
    "MailItem",
    "MailReceipt",
    "OpenedMail",
    "prepare_mail",
    "prepare_receipt",
]

log = logging.getLogger(__name__)

KIND_SEALED = "mail.sealed"
KIND_RECEIPT = "mail.receipt"
#: mail lives at most 7 days
MAIL_LIFETIME_MS = 7 * 24 * 3600 * 1000
#: tolerated clock skew on the expiry bound
_SKEW_MS = 5 * 60 * 1000
#: live sealed mail ops one author may have in a store
MAX_MAIL_PER_AUTHOR = 200
#: live receipts one author may have in a store
MAX_RECEIPTS_PER_AUTHOR = 2000
#: a sealed mail body (the 32 KiB text limit of ``msg`` plus the seal's overhead)
MAX_MAIL_SEALED = min(MAX_SEALED, 40 * 1024)
_CONTEXT = b"mail"
_NODE_ID_LEN = 16
_TEXT_MAX = 32 * 1024


@dataclass(frozen=True, slots=True)
class MailItem:
    """A held ``mail.sealed`` op: who to whom, until when."""

    op_id: bytes
    sender: NodeId
    recipient: NodeId
    author: bytes
    queued_ms: int
    expiry_ms: int
    sealed: bytes


@dataclass(frozen=True, slots=True)
class OpenedMail:
    """A mail addressed to us that decrypted and verified."""

    op_id: bytes
    sender: NodeId
    text: str
    sent_ms: int
    sender_name: str


def prepare_mail(identity: Identity, recipient: NodeId, recipient_x25519: bytes, text: str,
                 wall_ms: int, sender_name: str = "") -> tuple[bytes, bytes, int]:
    """(doc_id, body, expiry_ms) of a ``mail.sealed`` op carrying ``text`` to ``recipient``.

    ``sender_name`` travels sealed too: the recipient may hold no announcement of us.
    """
    sealed = seal(identity, recipient_x25519, recipient,
                  pack({"k": "text", "text": text, "n": sender_name[:64]}),
                  context=_CONTEXT, timestamp_ms=wall_ms)
    return recipient, encode_body({"x": identity.x25519_pub, "s": sealed}), \
        wall_ms + MAIL_LIFETIME_MS


def prepare_receipt(identity: Identity, mail: MailItem, wall_ms: int) -> tuple[bytes, bytes, int]:
    """(doc_id, body, expiry_ms) of the ``mail.receipt`` op acknowledging ``mail``."""
    return mail.sender, encode_body({"x": identity.x25519_pub, "r": mail.op_id}), \
        wall_ms + MAIL_LIFETIME_MS


@dataclass(frozen=True, slots=True)
class MailReceipt:
    """A held ``mail.receipt`` op: ``recipient`` says it opened mail ``ref``."""

    op_id: bytes
    ref: bytes
    recipient: NodeId  # who opened the mail (the receipt's author's node)
    author: bytes
    at_ms: int
    expiry_ms: int


def _hlc_ms(op: OpLike) -> int:
    return op.hlc >> 16


def _parse(op: OpLike, wall_now_ms: int) -> MailItem | MailReceipt:
    if op.kind not in (KIND_SEALED, KIND_RECEIPT):
        raise Refused("kind", op.kind)
    if op.expiry_ms is None or op.expiry_ms > wall_now_ms + MAIL_LIFETIME_MS + _SKEW_MS:
        raise Refused("expiry", "mail expires within 7 days")
    f: Fields = body_fields(op, MAX_MAIL_SEALED + 256)
    try:
        x = f.bytes("x", size=32)
        if op.kind == KIND_SEALED:
            sealed = f.bytes("s", max_len=MAX_MAIL_SEALED)
            if len(sealed) < 48:
                raise Refused("body", "sealed too short")
            return MailItem(op.op_id, node_id_of(op.author, x), op.doc_id, op.author,
                            _hlc_ms(op), op.expiry_ms, sealed)
        ref = f.bytes("r", size=32)
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None
    return MailReceipt(op.op_id, ref, node_id_of(op.author, x), op.author, _hlc_ms(op),
                    op.expiry_ms)


class MailBox:
    """Every live mail and receipt op this node holds, indexed for the outbox and inbox."""

    def __init__(self, identity: Identity) -> None:
        self._me = identity
        self._mail: dict[bytes, MailItem] = {}
        self._receipts: dict[bytes, MailReceipt] = {}
        #: mail op id -> receipts naming it, by the node that wrote them (only the
        #: mail's recipient counts; others are kept so a forged one cannot shadow it)
        self._receipt_of: dict[bytes, dict[NodeId, MailReceipt]] = {}
        self._per_author: dict[tuple[bytes, str], int] = {}
        self.drops = DropCounter(log)

    # -- feeding ops ------------------------------------------------------

    def authorize(self, op: OpLike, wall_now_ms: int) -> None:
        """Authoriser for the ``mail`` namespace: shape, lifetime, per-author quota."""
        item = _parse(op, wall_now_ms)
        if op.op_id in self._mail or op.op_id in self._receipts:
            return
        kind = KIND_SEALED if isinstance(item, MailItem) else KIND_RECEIPT
        limit = MAX_MAIL_PER_AUTHOR if kind == KIND_SEALED else MAX_RECEIPTS_PER_AUTHOR
        if self._per_author.get((op.author, kind), 0) >= limit:
            raise Refused("quota", f"author holds {limit} live {kind} ops")

    def apply(self, op: OpLike, wall_now_ms: int) -> MailItem | MailReceipt | None:
        """Index one committed op; returns what it was (None: duplicate or refused)."""
        if op.op_id in self._mail or op.op_id in self._receipts:
            return None
        try:
            item = _parse(op, wall_now_ms + MAIL_LIFETIME_MS)  # stored ops: no lifetime check
        except Refused as exc:
            self.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return None
        key = (op.author, op.kind)
        self._per_author[key] = self._per_author.get(key, 0) + 1
        if isinstance(item, MailItem):
            self._mail[op.op_id] = item
            return item
        self._receipts[op.op_id] = item
        self._receipt_of.setdefault(item.ref, {}).setdefault(item.recipient, item)
        return item

    def next_expiry_ms(self) -> int | None:
        """When ``purge`` next has something to forget (None: nothing held)."""
        return min((v.expiry_ms for table in (self._mail, self._receipts)
                    for v in table.values()), default=None)

    def purge(self, wall_now_ms: int) -> int:
        """Forget expired ops (sync purges them from the store); returns how many."""
        gone = 0
        for table in (self._mail, self._receipts):
            for op_id in [k for k, v in table.items() if v.expiry_ms <= wall_now_ms]:
                v = table.pop(op_id)
                kind = KIND_SEALED if isinstance(v, MailItem) else KIND_RECEIPT
                self._per_author[(v.author, kind)] -= 1
                gone += 1
        for ref, by_node in list(self._receipt_of.items()):
            for node, r in list(by_node.items()):
                if r.op_id not in self._receipts:
                    del by_node[node]
            if not by_node:
                del self._receipt_of[ref]
        return gone

    # -- reading ------------------------------------------------------------

    def delivered(self, mail_op_id: bytes) -> int | None:
        """When (wall ms of its receipt) a held mail's recipient acknowledged it, or None."""
        mail = self._mail.get(mail_op_id)
        if mail is None:
            return None
        r = self._receipt_of.get(mail_op_id, {}).get(mail.recipient)
        return r.at_ms if r is not None else None

    def outbox(self) -> Iterator[MailItem]:
        """Mail we sent that is still live, oldest first."""
        mine = [m for m in self._mail.values() if m.author == self._me.ed25519_pub]
        yield from sorted(mine, key=lambda m: (m.queued_ms, m.op_id))

    def unopened_for_me(self) -> list[MailItem]:
        """Mail addressed to us that we have not acknowledged yet, oldest first."""
        me = self._me.node_id
        out = [m for m in self._mail.values() if m.recipient == me
               and me not in self._receipt_of.get(m.op_id, {})]
        return sorted(out, key=lambda m: (m.queued_ms, m.op_id))

    def unopened_for(self, recipient: NodeId, limit: int = 50) -> list[MailItem]:
        """Mail addressed to ``recipient`` (a browser leaf) not acknowledged by it, oldest first.

        The car cannot open it; the leaf fetches the sealed ops and opens them itself.
        """
        out = [m for m in self._mail.values() if m.recipient == recipient
               and recipient not in self._receipt_of.get(m.op_id, {})]
        return sorted(out, key=lambda m: (m.queued_ms, m.op_id))[:limit]

    def delivered_by(self, author: bytes, limit: int = 200) -> dict[bytes, int]:
        """Mail authored by ``author`` whose recipient acknowledged it: op id -> wall ms."""
        out: dict[bytes, int] = {}
        for m in self._mail.values():
            if m.author == author and len(out) < limit:
                at = self.delivered(m.op_id)
                if at is not None:
                    out[m.op_id] = at
        return out

    def carried(self) -> int:
        """Live mail ops held for others (what this node carries)."""
        me = self._me.node_id
        return sum(1 for m in self._mail.values()
                   if m.recipient != me and m.author != self._me.ed25519_pub)

    def open_for(self, mail: MailItem) -> OpenedMail | None:
        """Open a mail addressed to us; None (counted, logged once) if it does not verify."""
        try:
            opened: Opened = open_sealed(self._me, mail.sealed, source=mail.sender,
                                         context=_CONTEXT)
            if opened.sender_ed25519 != mail.author:
                raise Refused("sender", "sealed by another key than the op's author")
            f = Fields(unpack(opened.body, _TEXT_MAX + 256))
            if f.str("k", max_len=8) != "text":
                raise Refused("kind", "not a text mail")
            text = f.str("text", max_len=_TEXT_MAX)
            name = f.opt_str("n", max_len=64) or ""
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, mail.author.hex()[:8], str(exc))
            return None
        return OpenedMail(mail.op_id, mail.sender, text, opened.timestamp_ms, name)
