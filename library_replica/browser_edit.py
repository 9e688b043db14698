"""Library changes authored by a key this node does not hold (a browser's), and trust marks.

Theory of operation
-------------------
A browser has no Yjs.  To correct a document it sends the new text; the node
composes the change against the document as it holds it, exactly as
``library.edit`` does for its own key but with the *browser's* key as the
author (``Library.prepare_edit(doc_id, author=browser key)``: the Yjs items are
the browser key's client, ``yjs_client_id(key)``), and answers the unsigned op
bodies.  The browser signs them as ops of its own chain and they come back
through ``library.publish``, verified and stored as if a peer had sent them.

Yjs clocks.  One key must author from one replica's view of its own items:
if a car that has not yet received the browser's earlier edits composed a new
one, the browser's Yjs client would reuse clocks.  So ``library.prepare``
takes the browser's chain head (``seq``, ``prev``) and refuses (``failed``,
"not here yet") unless the store's head for that key is the same, and
``Library.prepare_edit`` refuses while an earlier edit of that key waits.

Control methods (params -> result):

* ``library.prepare`` {id, author (hex Ed25519 key), seq, prev (hex|null), body? ,
  title?} -> {doc_id, ops: [{kind, body (hex)}], inserted, deleted}
* ``library.publish`` {op: hex} -> {op_id, doc_id, result}: a ``library.edit`` op
  signed by another key, checked like ``safety.publish`` (forged, malformed or
  refused ops are ``bad_request``; ``result`` is applied / duplicate / pending)
* ``trust.marks`` {} -> {community, enrolling, keys: {hex key: {member, authority,
  role}}, nodes: {node id hex: hex key}}: who is enrolled, for the web's verified
  marks (read-only; every known node and this node)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from library_replica.documents import KIND_EDIT
from library_replica.ops import Refused
from library_replica.submitted import bad_request as _bad
from library_replica.submitted import decode_submitted_op, hex_param
from library_replica.text import diff_edits
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.services.api import ControlHandler

if TYPE_CHECKING:
    from library_replica.node_service import LibraryNodeService

__all__ = ["BrowserLibraryOps"]

AUTHOR_KEY_LEN = 32
#: keys listed by ``trust.marks`` at most
MAX_MARKS = 4096




class BrowserLibraryOps:
    """The control methods above, over a ``LibraryNodeService``'s state and locks."""

    def __init__(self, svc: LibraryNodeService) -> None:
        self._svc = svc

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"library.prepare": self._h_prepare, "library.publish": self._h_publish,
                "trust.marks": self._h_marks}

    async def _h_prepare(self, params: dict[str, Any]) -> dict[str, Any]:
        svc = self._svc
        await svc._ensure_ready()
        author = hex_param(params, "author", AUTHOR_KEY_LEN)
        assert author is not None
        seq = params.get("seq")
        if type(seq) is not int or not 0 <= seq < 1 << 63:
            raise _bad("seq is the browser's newest op number (0 for none)")
        prev = hex_param(params, "prev", AUTHOR_KEY_LEN, optional=True)
        body = params.get("body")
        title = params.get("title")
        if body is not None and not isinstance(body, str):
            raise _bad("body must be a string")
        if title is not None and (not isinstance(title, str) or len(title) > 200):
            raise _bad("title must be a string of at most 200 characters")
        if body is None and title is None:
            raise _bad("a change needs body or title")
        if author == svc._author:
            raise _bad("this is the node's own key: use library.edit")
        head = svc.store.author_head(author)
        if (head or (0, None)) != (seq, prev):
            raise ControlError("failed", "your earlier changes have not reached this car yet "
                               "(or this car holds newer ones); try again in a moment",
                               {"held_seq": head[0] if head else 0, "seq": seq})
        async with svc._write_lock, svc._lock:
            doc_id = svc._resolve_doc(params)
            current = svc.library.get(doc_id)
            assert current is not None
            if current.deleted:
                raise ControlError("failed", "this document was deleted")
            if (body is None or body == current.body) and \
                        (title is None or title == current.title):
                return {"doc_id": doc_id.hex(), "inserted": 0, "deleted": 0, "ops": []}
            try:
                prepared = svc.library.prepare_edit(
                    doc_id, author, body=body,
                    title=title if title is not None and title != current.title else None)
            except LocalProtocolError as exc:
                raise ControlError("failed", str(exc)) from None
        edits = diff_edits(current.body, body) if body is not None else []
        inserted, deleted = sum(len(e.insert) for e in edits), sum(e.delete for e in edits)
        return {"doc_id": doc_id.hex(), "inserted": inserted, "deleted": deleted,
                "ops": [{"kind": p.kind, "body": p.body.hex()} for p in prepared]}

    async def _h_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        svc = self._svc
        await svc._ensure_ready()
        op = decode_submitted_op(params.get("op"))
        if op.kind != KIND_EDIT:
            raise _bad(f"only {KIND_EDIT} ops are published this way, not {op.kind}")
        try:
            svc.library.authorize(op, 0)
        except Refused as exc:
            raise _bad(f"refused: {exc.reason} ({exc.detail})") from None
        if op.op_id in svc.store:
            result = "duplicate"
        else:
            res = await svc.store.apply_remote([op.raw], peer="publish")
            if res.refused:
                raise _bad(f"refused by the store ({', '.join(sorted(res.refused))})")
            result = "applied" if res.applied else "pending" if res.pending else "duplicate"
        return {"op_id": op.op_id.hex(), "doc_id": op.doc_id.hex(), "result": result}

    async def _h_marks(self, params: dict[str, Any]) -> dict[str, Any]:
        svc = self._svc
        await svc._ensure_ready()
        c = svc.trust.config
        nodes = {node: key.hex() for key, node in svc._node_of_key().items()}
        keys: dict[str, dict[str, Any]] = {}
        for key_hex in list(nodes.values())[:MAX_MARKS]:
            key = bytes.fromhex(key_hex)
            a = svc.trust.authority(key)
            keys[key_hex] = {"member": svc.trust.member(key),
                             "authority": a.name if a is not None else None,
                             "role": str(a.role) if a is not None else None}
        return {"community": c.community if c else "", "enrolling": bool(c and c.members),
                "keys": keys, "nodes": nodes}
