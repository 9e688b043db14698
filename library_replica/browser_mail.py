"""Mail authored by a key this node does not hold (a browser leaf's), and mail held for one.

Theory of operation
-------------------
A browser attached to a car is a leaf of the mesh with its own keys
(``web/static/leaf.js``).  When its message finds no route (or the user picks mail), the
browser makes the ``mail.sealed`` op itself: the text sealed to the recipient's
X25519 key exactly as ``library_replica.mail.prepare_mail`` does (context ``b"mail"``,
body ``{k: "text", text, n}``), wrapped as an ephemeral op (``seq`` 0, an expiry at
most 7 days ahead) signed by the browser's Ed25519 key.  ``mail.publish`` verifies it
and stores it as if a peer had sent it (``OpStore.apply_remote`` runs the ``mail``
authoriser: shape, lifetime, per-author quota); sync then carries it car to car like
any node's mail, and the recipient opens it with the browser's NodeId as sender.

The reverse: mail addressed to a browser's NodeId (``meshctl send`` to a leaf that is
out of reach) is held by every car like any mail.  ``mail.inbox`` answers the sealed
ops addressed to the attached leaf; the browser opens them and answers with a
``mail.receipt`` op it signs (``mail.publish`` again), so every car stops offering it
and the sender sees it delivered.

Control methods (params -> result):

* ``mail.publish`` {op: hex, author?: Ed25519 hex the op must be signed by} -> {op_id, message_id, to, kind, expires_ms, result}: one
  ``mail.sealed`` or ``mail.receipt`` op signed by another key (forged, malformed or
  refused ops are ``bad_request``; ``result`` is applied / duplicate)
* ``mail.inbox`` {recipient: NodeId hex, author?: Ed25519 hex} -> {mail: [{op_id, from,
  author, sealed, queued_ms, expires_ms}], delivered: {op_id: ms}}: at most 50 sealed
  mails for ``recipient`` it has not acknowledged, and (with ``author``) which mail that
  key sent has been acknowledged by its recipient
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from library_replica.mail import KIND_RECEIPT, KIND_SEALED
from library_replica.ops import Refused
from library_replica.submitted import bad_request as _bad
from library_replica.submitted import decode_submitted_op, hex_param
from meshd.services.api import ControlHandler

if TYPE_CHECKING:
    from library_replica.node_service import LibraryNodeService

__all__ = ["BrowserMailOps"]

_ID_LEN = 16
_KEY_LEN = 32




class BrowserMailOps:
    """The control methods above, over a ``LibraryNodeService``'s mail box and store."""

    def __init__(self, svc: LibraryNodeService) -> None:
        self._svc = svc

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"mail.publish": self._h_publish, "mail.inbox": self._h_inbox}

    async def _h_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        svc = self._svc
        await svc._ensure_ready()
        op = decode_submitted_op(params.get("op"))
        if op.kind not in (KIND_SEALED, KIND_RECEIPT):
            raise _bad(f"only {KIND_SEALED} and {KIND_RECEIPT} ops are published this way, "
                       f"not {op.kind}")
        if op.author == svc._ident.ed25519_pub:
            raise _bad("this is the node's own key: use send")
        author = hex_param(params, "author", _KEY_LEN, optional=True)
        if author is not None and op.author != author:
            raise _bad("refused: the op is signed by another key than this browser's")
        try:
            svc.mail.authorize(op, svc._wall_ms())
        except Refused as exc:
            raise _bad(f"refused: {exc.reason} ({exc.detail})") from None
        if op.op_id in svc.store:
            result = "duplicate"
        else:
            res = await svc.store.apply_remote([op.raw], peer="publish")
            if res.refused:
                raise _bad(f"refused by the store ({', '.join(sorted(res.refused))})")
            result = "applied" if res.applied else "duplicate"
        return {"op_id": op.op_id.hex(), "message_id": op.op_id.hex()[:24],
                "to": op.doc_id.hex(), "kind": op.kind, "expires_ms": op.expiry_ms,
                "result": result}

    async def _h_inbox(self, params: dict[str, Any]) -> dict[str, Any]:
        svc = self._svc
        await svc._ensure_ready()
        recipient = hex_param(params, "recipient", _ID_LEN)
        author = hex_param(params, "author", _KEY_LEN, optional=True)
        assert recipient is not None
        mail = [{"op_id": m.op_id.hex(), "from": m.sender.hex(), "author": m.author.hex(),
                 "sealed": m.sealed.hex(), "queued_ms": m.queued_ms, "expires_ms": m.expiry_ms}
                for m in svc.mail.unopened_for(recipient)]
        delivered = {} if author is None else \
            {k.hex(): v for k, v in svc.mail.delivered_by(author).items()}
        return {"mail": mail, "delivered": delivered}
