"""The safety registry as a node service: register people, add notes, search by name.

Theory of operation
-------------------
``SafetyNodeService`` owns the materialised registry (``safety.SafetyRegistry``)
and its name index (``safety_index.SafetyIndex``, ``safety-index.sqlite`` in the
state directory).  It registers the ``safety`` namespace's authoriser on sync's
``OpStore`` and subscribes to committed ops, so a registration or a note, local
or from a peer, reaches the registry through that one path; sync carries the
ops to every node like the situation files.

The index is touched only under ``_lock`` in a worker thread.  ``run`` replays
the stored ``safety`` ops, then offers every person to the (persistent) index,
which skips the unchanged; control methods wait for that.

Control methods (documented with the commands in docs/cli.md):

* ``safety.add`` {name, reading?, status?, place?, note?, contact?} -> a person
* ``safety.note`` {id, status?, place?, note?} -> the person
* ``safety.correct`` {id, name?, reading?, status?, place?, note?, contact?} -> the person:
  a new ``safety.person`` for the record, by its registrant or by a successor of the
  registrant's key (a lost device's new one, ``KeyRegistry.continues``: the ``succeeds``
  the service is built with); what is not given keeps its value (the current status and
  place are restated: the correction is the newest entry)
* ``safety.search`` {query, limit?} -> {query, count, people}
* ``safety.show`` {id} -> a person
* ``safety.publish`` {op: hex} -> {op_id, result, person}: a ``safety.person`` or
  ``safety.note`` op signed by someone else's key (a browser's: ``web/``), verified
  and stored as if a peer had sent it, so its author -- not this node -- is the
  registrant.  A bad signature, another namespace, or an op the authoriser or the
  store refuses is ``bad_request``; ``result`` is ``applied``, ``duplicate`` (the
  op was stored already: a replay changes nothing) or ``pending`` (earlier ops of
  that key's chain have not reached this node yet).

Event: ``safety.changed`` {ids (at most 256), count}.  An unknown id, a bad
status, an over-long name or a reading that is not kana is ``bad_request``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from library_replica.ops import LibraryError, OpLike, Refused, sync_authorizers
from library_replica.safety import (
    KIND_NOTE,
    KIND_PERSON,
    NONCE_LEN,
    PersonView,
    SafetyRegistry,
    authorize_safety,
    prepare_note,
    prepare_person,
)
from library_replica.safety_index import MAX_LIMIT, SafetyIndex
from library_replica.submitted import decode_submitted_op
from meshd.core.errors import ControlError, LocalProtocolError
from meshd.core.identity import NodeId
from meshd.services.api import ControlHandler, NodeApi, StreamHandler
from sync.errors import SyncLocalError, Unauthorized
from sync.store import OpStore

__all__ = ["SAFETY_INDEX_NAME", "SafetyNodeService", "person_json"]

log = logging.getLogger(__name__)

SAFETY_INDEX_NAME = "safety-index.sqlite"
MAX_EVENT_IDS = 256
_CHUNK = 2000


def _bad(msg: str) -> ControlError:
    return ControlError("bad_request", msg)


def _text(params: dict[str, Any], key: str, *, required: bool = False,
          max_len: int = 20_000) -> str:
    v = params.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str) or len(v) > max_len:
        raise _bad(f"{key} must be a string of at most {max_len} characters")
    return v


def person_json(p: PersonView) -> dict[str, Any]:
    """The ``--json`` shape of a person (docs/cli.md)."""
    reg = p.registered
    authors: list[str] = []
    for e in p.entries:
        label = e.author_name or e.author.hex()[:8]
        if label not in authors:
            authors.append(label)
    return {
        "id": p.person_id.hex(), "name": p.name, "reading": p.reading, "status": p.status,
        "place": p.place, "contact": p.contact,
        "registered_by": {"key": reg.author.hex(), "name": reg.author_name},
        "registered_ms": reg.time_ms, "updated_ms": p.updated_hlc >> 16, "authors": authors,
        "notes": [{"op_id": e.op_id.hex(), "kind": e.kind, "author": e.author.hex(),
                   "author_name": e.author_name, "time_ms": e.time_ms, "status": e.status,
                   "place": e.place, "note": e.note} for e in p.entries],
    }


class SafetyNodeService:
    """``NodeService`` for the safety registry (see the module docstring)."""

    def __init__(self, node: NodeApi, store: OpStore, *,
                 wall_clock: Callable[[], float] = time.time,
                 succeeds: Callable[[bytes, bytes], bool] | None = None) -> None:
        self.node = node
        self.store = store
        self._wall = wall_clock
        self._ident = node.identity
        self._author = node.identity.ed25519_pub
        self._succeeds = succeeds
        self.registry = SafetyRegistry(succeeds)
        self._tasks: set[asyncio.Task[None]] = set()
        self.index = SafetyIndex(Path(node.state_dir) / SAFETY_INDEX_NAME)
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._replaying = True
        for ns, fn in sync_authorizers({"safety": authorize_safety}).items():
            store.register_authorizer(ns, fn)
        self._unsubscribe = store.subscribe(self._on_commit)

    # -- NodeService ------------------------------------------------------------------------

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {"safety.add": self._h_add, "safety.note": self._h_note,
                "safety.correct": self._h_correct,
                "safety.search": self._h_search, "safety.show": self._h_show,
                "safety.publish": self._h_publish}

    def stream_services(self) -> Mapping[str, StreamHandler]:
        return {}

    def neighbour_up(self, peer: NodeId) -> None:
        pass

    def neighbour_lost(self, peer: NodeId) -> None:
        pass

    async def run(self) -> None:
        try:
            await self._replay()
        finally:
            self._ready.set()

    async def close(self) -> None:
        self._unsubscribe()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        async with self._lock:
            await asyncio.to_thread(self.index.close)

    # -- state ------------------------------------------------------------------------------

    async def _replay(self) -> None:
        started = time.monotonic()
        n = 0
        async for op in self.store.iter_namespace("safety"):
            self.registry.apply(op)
            n += 1
            if n % _CHUNK == 0:
                await asyncio.sleep(0)  # let status and links answer
        self.registry.drain_changed()
        # views are built here, on the loop: the registry is not touched from threads
        views = list(self.registry.people())
        async with self._lock:
            indexed = await asyncio.to_thread(self._full_refresh, views)
        self._replaying = False
        log.info("safety registry replayed %d ops in %.2f s (%d people, %d re-indexed)", n,
                 time.monotonic() - started, len(self.registry), indexed)
        await self._index_changed()  # what peers committed while the index was rebuilt

    def _full_refresh(self, views: list[PersonView]) -> int:
        live = {v.person_id for v in views}
        stale = self.index.person_ids() - live
        self.index.remove_many(stale)
        return self.index.upsert_many(views) + len(stale)

    def successors_changed(self) -> None:
        """Who continues whom changed (the library service's trust moved): records a
        successor corrected are read, and indexed, again."""
        if not self.registry.successors_changed() or self._replaying:
            return  # (the replay's refresh, then its _index_changed, see them)
        task = asyncio.get_running_loop().create_task(self._index_changed())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _index_changed(self) -> None:
        changed = self.registry.drain_changed()
        found = {pid: self.registry.get(pid) for pid in changed}
        views = [v for v in found.values() if v is not None]
        gone = {pid for pid, v in found.items() if v is None}  # a correction no longer counts
        if views or gone:
            async with self._lock:
                if gone:
                    await asyncio.to_thread(self.index.remove_many, gone)
                await asyncio.to_thread(self.index.upsert_many, views)
        if changed:
            ids = sorted(pid.hex() for pid in changed)
            self.node.publish("safety.changed", {"ids": ids[:MAX_EVENT_IDS],
                                                 "count": len(ids)})

    async def _on_commit(self, ops: Sequence[Any]) -> None:
        mine: list[OpLike] = [op for op in ops if op.namespace == "safety"]
        if not mine:
            return
        for op in mine:
            self.registry.apply(op)
        if not self._replaying:  # else the replay's full refresh indexes them
            await self._index_changed()

    # -- control ----------------------------------------------------------------------------

    async def _submit(self, kind: str, doc_id: bytes, body: bytes) -> None:
        try:
            await self.store.add_local(self._ident.signing_key, kind=kind, doc_id=doc_id,
                                       body=body)
        except Unauthorized as exc:
            raise ControlError("failed", f"refused: {exc}") from None
        except SyncLocalError as exc:
            raise ControlError("failed", str(exc)) from None

    def _resolve(self, params: dict[str, Any]) -> bytes:
        q = _text(params, "id", required=True, max_len=64).strip().lower()
        if len(q) < 4 or any(c not in "0123456789abcdef" for c in q):
            raise _bad("ID is 32 hex characters or a unique prefix of at least 4")
        if len(q) == 32:
            pid = bytes.fromhex(q)
            if self.registry.get(pid) is None:
                raise _bad(f"no person {q} in the registry here")
            return pid
        found = [pid for pid in self.registry.ids() if pid.hex().startswith(q)]
        if not found:
            raise _bad(f"no person matches {q} in the registry here")
        if len(found) > 1:
            raise _bad(f"{q} matches {len(found)} people; give more of the id")
        return found[0]

    def _view(self, pid: bytes) -> dict[str, Any]:
        view = self.registry.get(pid)
        if view is None:  # committed ops reach the registry before add_local returns
            raise ControlError("failed", "the record was stored but is not in the registry")
        return person_json(view)

    async def _h_add(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        status = _text(params, "status", max_len=32) or "unknown"
        try:
            pid, body = prepare_person(
                self._author, os.urandom(NONCE_LEN), by=self.node.name,
                name=_text(params, "name", required=True), reading=_text(params, "reading"),
                status=status, place=_text(params, "place"), note=_text(params, "note"),
                contact=_text(params, "contact"))
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        await self._submit(KIND_PERSON, pid, body)
        return self._view(pid)

    async def _h_note(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        pid = self._resolve(params)
        status = _text(params, "status", max_len=32) or None
        try:
            body = prepare_note(by=self.node.name, status=status, place=_text(params, "place"),
                                note=_text(params, "note"))
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        await self._submit(KIND_NOTE, pid, body)
        return self._view(pid)

    async def _h_correct(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        pid = self._resolve(params)
        view = self.registry.get(pid)
        assert view is not None  # _resolve found it
        registrant: bytes | None = None
        if view.registrant != self._author:
            if self._succeeds is None or not self._succeeds(self._author, view.registrant):
                raise _bad("only its registrant corrects a registration (or the registrant's "
                           "successor, once a statement names this node's key): add a note "
                           "(safety note) instead")
            registrant = view.registrant
        given = {k: _text(params, k) for k in ("name", "reading", "status", "place", "note",
                                              "contact") if params.get(k) not in (None, "")}
        if not given:
            raise _bad("nothing to correct: give a name, reading, status, place, note or "
                       "contact")
        try:
            _, body = prepare_person(
                self._author, view.nonce, by=self.node.name,
                name=given.get("name", view.name), reading=given.get("reading", view.reading),
                # the correction is the newest entry: it restates the current status and
                # place unless new ones are given
                status=given.get("status", view.status), place=given.get("place", view.place),
                note=given.get("note", ""), contact=given.get("contact", view.contact),
                registrant=registrant)
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        await self._submit(KIND_PERSON, pid, body)
        return self._view(pid)

    async def _h_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        op = decode_submitted_op(params.get("op"))
        if op.kind not in (KIND_PERSON, KIND_NOTE):
            raise _bad(f"only {KIND_PERSON} and {KIND_NOTE} ops are published this way, "
                       f"not {op.kind}")
        try:
            authorize_safety(op, 0)  # the authoriser's own words, before the store's count
        except Refused as exc:
            raise _bad(f"refused: {exc.reason} ({exc.detail})") from None
        if op.op_id in self.store:
            result = "duplicate"
        else:
            res = await self.store.apply_remote([op.raw], peer="publish")
            if res.refused:
                why = ", ".join(sorted(res.refused))
                raise _bad(f"refused by the store ({why})")
            result = "applied" if res.applied else "pending" if res.pending else "duplicate"
        view = self.registry.get(op.doc_id)
        return {"op_id": op.op_id.hex(), "result": result,
                "person": person_json(view) if view is not None else None}

    async def _h_show(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        return self._view(self._resolve(params))

    async def _h_search(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ready.wait()
        query = _text(params, "query", required=True, max_len=200)
        limit = params.get("limit", 20)
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"limit is an integer from 1 to {MAX_LIMIT}")
        async with self._lock:
            try:
                pids = await asyncio.to_thread(self.index.search, query, limit=limit)
            except LibraryError as exc:
                raise _bad(str(exc)) from None
        people = [person_json(v) for v in (self.registry.get(p) for p in pids) if v is not None]
        return {"query": query, "count": len(people), "people": people}
