"""library_replica as a node service: the library, situation files, bulletins and mail in meshd.

Theory of operation
-------------------
``LibraryNodeService`` owns the materialised state (``Library``,
``SituationBoard``, ``TrustStore`` + ``BulletinBoard``, ``MailBox``) and the
search index (SQLite, ``library-index.sqlite`` in the state directory).  It
registers an authoriser per namespace on sync's ``OpStore`` (library,
situation, bulletin, trust, mail) and subscribes to committed ops: every op,
local or from a peer, reaches the state through that one path.

Threads.  The library (pycrdt) and the index are touched only under
``_lock`` and, for batches, in a worker thread (``asyncio.to_thread``), so the
loop keeps answering.  Local writes take ``_write_lock`` as well, around
prepare + submit: one key must never prepare two Yjs edits from the same state.
The subscriber never takes ``_write_lock`` and a writer never holds ``_lock``
while submitting, so the store's post-commit notification cannot deadlock.

Start.  ``run`` replays the stored ops of every namespace (trust first, then
bulletins, situation, mail, library) in a thread, refreshes the persistent
index (unchanged documents are skipped), then opens mail addressed to us;
control methods wait for that (``_ready``) while ``status`` answers at once.
Then expired bulletins and mail are forgotten at the next expiry (``idle_delay_s``);
a commit wakes the service, which gathers the burst for ``purge_interval_s`` and then
refreshes the version, writes notice receipts and catches the index up.  An idle node
wakes only at an expiry or every ``IDLE_WAKE_S`` (a phone's CPU sleeps in between).
When this node's key is a member of the community, library documents the compaction
planner picks are compacted into snapshots (``library_replica.compaction``) on those
passes; a snapshot applied here, ours or a peer's, drops the ops it supersedes from the
op store (``OpStore.supersede``).

Trust.  The pinned root and the newest configuration adopted are kept in the
state directory (``trust.toml``, or ``trust.pin`` for a root fingerprint
alone); ``--trust FILE`` names a file too, and the newer of the two wins.
Bulletin and trust ops this node cannot check are carried (``CarriedPool``);
whenever the configuration changes (an adopted update, ``trust.join``) the
carried ops are checked again (newly verifiable bulletins appear, updates of
the root are adopted) and bulletins that lost their authority are withdrawn:
hidden, and deleted from the store so they are no longer forwarded.

Control methods (params -> result; documented with the commands in docs/cli.md):

* ``library.add`` {collection, title, body, tags?, lang?} -> {doc_id, ops}
* ``library.edit`` {id, body? | title?} -> {doc_id, ops}
* ``library.show`` {id} -> a document; ``library.history`` {id} -> {doc_id, history}
* ``library.search`` {query, collection?, limit?} -> {query, results}
* ``library.import`` / ``library.export`` {path (absolute)} -> a summary; progress
  as ``library.progress`` events {op, phase, done, total, path}
* ``situation.set`` {kind, fields}, ``situation.show`` {node}, ``situation.list`` {kind?}
* ``situation.summary`` {stale_s?}: shelters, town totals, power offers (``summary.py``)
* ``library.delete`` / ``library.restore`` {id}, ``library.list`` {collection?, deleted?},
  ``library.version``, ``library.repair`` {dry_run?}, ``sync.reach`` {timeout_s?}
  (the library version is published as the ``lib`` fact of meshd's info answers)
* ``bulletin.publish`` {title, body, expires_s}, ``bulletin.list``,
  ``bulletin.update`` {id, title?, body?, expires_s?}, ``bulletin.retract`` {id};
  receipts (``bulletin.seen``) for shown notices are written by ``run``
* ``trust.show``, ``trust.export``, ``trust.join`` {config | fingerprint},
  ``trust.publish`` {op: a root-signed ``trust.update``, hex}
* ``mail.list``: the outbox (queued / delivered) and what this node carries
* ``mail.publish`` / ``mail.inbox`` (mail a browser leaf seals and opens itself):
  ``browser_mail.py``
* ``library.prepare`` / ``library.publish`` (changes a browser signs) and ``trust.marks``:
  ``browser_edit.py``

Events: ``library.changed`` {doc_ids}, ``library.progress``, ``situation.changed``
{owner, kind}, ``bulletin.published`` {bulletin}, ``bulletin.expired`` {op_ids},
``bulletin.revoked`` {op_ids}, ``trust.changed`` {community, version, authorities},
``mail.queued``, ``mail.delivered`` {message_id, to}, ``mail.arrived`` {to, message_id}
(mail for another node or a browser leaf committed here), and ``message.received``
(through the inbox) for mail opened here.

An id (``ID``) is 32 hex characters or a unique prefix of at least 4.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from library_replica.browser_edit import BrowserLibraryOps
from library_replica.browser_mail import BrowserMailOps
from library_replica.bulletins import (
    KIND_PUBLISH,
    KIND_TRUST_UPDATE,
    Bulletin,
    BulletinBoard,
    TrustConfig,
    TrustStore,
    TrustVerdict,
    format_fingerprint,
    parse_fingerprint,
    prepare_bulletin,
)
from library_replica.carried import CarriedPool
from library_replica.compaction import CompactionPolicy, plan_compaction
from library_replica.documents import KIND_SNAPSHOT, SNAPSHOT_EXPIRY_MS, DocumentView, Library
from library_replica.keycerts import (
    KIND_MEMBER,
    KIND_REVOKE,
    STATEMENT_LIFETIME_MS,
    member_doc_id,
    parse_key_statement,
    prepare_key_statement,
    statement_doc_id,
)
from library_replica.mail import (
    KIND_RECEIPT,
    KIND_SEALED,
    MailBox,
    MailItem,
    MailReceipt,
    prepare_mail,
    prepare_receipt,
)
from library_replica.markdown_io import default_source, export_folder, plan_import
from library_replica.notices import (
    KIND_RETRACT,
    KIND_SEEN,
    KIND_UPDATE,
    NOTICE_KINDS,
    Notice,
    NoticeBoard,
    prepare_retract,
    prepare_seen,
    prepare_update,
)
from library_replica.ops import LibraryError, OpLike, Refused, new_doc_id, sync_authorizers
from library_replica.search import MAX_LIMIT, SearchIndex, refresh_index
from library_replica.situation import (
    KIND_SET,
    RecordKind,
    SituationBoard,
    SituationRecord,
    authorize_situation,
    prepare_set,
    record_id,
)
from library_replica.situation import KIND_SNAPSHOT as KIND_SIT_SNAPSHOT
from library_replica.summary import DEFAULT_STALE_S, town_summary
from meshd.core.codec import Fields, unpack
from meshd.core.errors import (
    ControlError,
    DecodeError,
    DiskFull,
    LocalProtocolError,
    RemoteProtocolError,
)
from meshd.core.identity import NodeId, short_id
from meshd.services.api import ControlHandler, Metric, NodeApi, StreamHandler
from sync.envelope import MAX_OP_SIZE, Op, decode_op
from sync.errors import SyncLocalError, Unauthorized
from sync.store import OpStore

__all__ = ["INDEX_NAME", "LibraryNodeService", "MailInbox"]

log = logging.getLogger(__name__)

#: the search index file in the state directory
INDEX_NAME = "library-index.sqlite"
#: the node's own trust configuration in the state directory (written by ``trust join`` and
#: whenever a newer update is adopted; read when ``--trust`` is not given, or is older)
TRUST_NAME = "trust.toml"
#: a root pinned by fingerprint alone, until an update from that root arrives
PIN_NAME = "trust.pin"
DEFAULT_BULLETIN_S = 24 * 3600
_REPLAY_ORDER = ("trust", "bulletin", "situation", "mail", "library")
_REPLAY_CHUNK = 2000
#: with nothing to do and nothing expiring sooner, the service wakes this often (carried
#: ops the store no longer holds are forgotten then)
IDLE_WAKE_S = 60.0


def idle_delay_s(next_expiry_ms: int | None, wall_now_ms: int, cap_s: float) -> float:
    """Seconds to sleep until the next expiry (just past it: purges forget ``<= now``)."""
    if next_expiry_ms is None:
        return cap_s
    return min(cap_s, max(0.0, (next_expiry_ms - wall_now_ms + 1) / 1000))

#: a ``library.changed`` event lists at most this many ids (``count`` has them all)
MAX_EVENT_IDS = 256
#: certificates and key statements listed by ``trust.show`` at most
MAX_SHOWN_KEYS = 1000
#: carried ops listed by ``trust.show`` at most
MAX_SHOWN_CARRIED = 256


class MailInbox(Protocol):
    """Where opened mail goes (``meshd.services.messaging.Messenger.deliver``)."""

    async def deliver(self, sender: NodeId, message_id: str, text: str, sent_ms: int, *,
                      via: str, sender_name: str = "") -> bool:
        """Returns once the message is durable; raises ``OSError`` if it could not be stored."""
        ...


class _KnownNodes(Protocol):
    def known_nodes(self) -> list[tuple[str, str]]: ...


def _bad(msg: str) -> ControlError:
    return ControlError("bad_request", msg)


def _str_param(params: dict[str, Any], key: str, *, required: bool = True,
               max_len: int = 1_000_000) -> str | None:
    v = params.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or len(v) > max_len:
        raise _bad(f"{key} must be a string")
    return v


class _Probe:
    """An ``OpLike`` for checking a statement body before this node wraps it in an op."""

    def __init__(self, kind: str, body: bytes, author: bytes) -> None:
        self.kind = kind
        self.body = body
        self.author = author
        self.doc_id = b""
        self.op_id = b""
        self.seq = 0
        self.hlc = 0
        self.expiry_ms: int | None = None


def _body_key(body: bytes, name: str) -> bytes:
    """The 32-byte key field ``name`` of a statement body; raises ``Refused``."""
    try:
        return Fields(unpack(body, 4096)).bytes(name, size=32)
    except DecodeError as exc:
        raise Refused("body", str(exc)) from None


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (a crash leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LibraryNodeService:
    """``NodeService`` for library_replica (see the module docstring)."""

    def __init__(self, node: NodeApi, store: OpStore, *, trust_path: Path | None,
                 inbox: MailInbox | None = None, wall_clock: Callable[[], float] = time.time,
                 purge_interval_s: float = 1.0,
                 compaction: CompactionPolicy | None = None) -> None:
        self.node = node
        self.store = store
        self._wall = wall_clock
        self._purge_interval_s = purge_interval_s
        self._wake = asyncio.Event()  # set on a commit: something for ``run`` to do
        self._inbox = inbox
        self._ident = node.identity
        self._author = node.identity.ed25519_pub
        state_dir = Path(node.state_dir)
        self._state_trust = state_dir / TRUST_NAME
        self._pin_path = state_dir / PIN_NAME
        self.trust_path = trust_path
        self.trust = self._load_trust(trust_path)
        self._saved_version = self.trust.version
        self.carried = CarriedPool()
        self._trust_lock = asyncio.Lock()
        self._trust_listeners: list[Callable[[], None]] = []
        self.library = Library(may_restore=lambda key: self.trust.authority(key) is not None,
                               may_compact=self.trust.member)
        self.compaction = compaction or CompactionPolicy()
        self._compact_due = 0.0
        self.situation = SituationBoard(person=self.trust.keys.person)
        self.bulletins = BulletinBoard(self.trust)
        self.notices = NoticeBoard(self.trust)
        #: notices shown here that still need our receipt (written by ``run``)
        self._to_acknowledge: set[bytes] = set()
        self.mail = MailBox(node.identity)
        self.index = SearchIndex.open_checked(state_dir / INDEX_NAME)
        self._lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._ready = asyncio.Event()
        self._replaying = True
        self._deferred_index = False
        self._index_full_logged = False
        self._bulk_changed: set[bytes] = set()
        for ns, fn in sync_authorizers({
                "library": self.library.authorize, "situation": authorize_situation,
                "bulletin": self._authorize_bulletin, "trust": self._authorize_trust,
                "mail": self.mail.authorize}).items():
            store.register_authorizer(ns, fn)
        self._unsubscribe = store.subscribe(self._on_commit)
        # the op store's admission: members write freely, the rest share a small pool
        store.set_admission(member=self._is_member, revoked=self.trust.revoked,
                            own=[self._author])
        self._version: dict[str, Any] = {"version": "", "collections": {}}
        self._version_dirty = True
        info = getattr(node, "info", None)  # meshd's InfoService: gossip our library version
        if info is not None and hasattr(info, "add_fact"):
            info.add_fact("lib", lambda: str(self._version["version"]))

    # -- NodeService ------------------------------------------------------------------------

    def handlers(self) -> Mapping[str, ControlHandler]:
        return {
            "library.add": self._h_add, "library.edit": self._h_edit,
            "library.show": self._h_show, "library.search": self._h_search,
            "library.history": self._h_history, "library.import": self._h_import,
            "library.export": self._h_export, "library.delete": self._h_delete,
            "library.restore": self._h_restore, "library.list": self._h_list,
            "library.version": self._h_version, "library.repair": self._h_repair,
            "sync.reach": self._h_reach,
            "situation.set": self._h_situation_set, "situation.show": self._h_situation_show,
            "situation.list": self._h_situation_list,
            "situation.summary": self._h_situation_summary,
            "bulletin.publish": self._h_bulletin_publish, "bulletin.list": self._h_bulletin_list,
            "trust.show": self._h_trust_show, "trust.export": self._h_trust_export,
            "trust.join": self._h_trust_join, "trust.publish": self._h_trust_publish,
            "trust.submit": self._h_trust_submit, "trust.statement": self._h_trust_statement,
            "bulletin.update": self._h_bulletin_update,
            "bulletin.retract": self._h_bulletin_retract,
            "mail.list": self._h_mail_list,
            **BrowserLibraryOps(self).handlers(),  # library.prepare / publish, trust.marks
            **BrowserMailOps(self).handlers(),  # mail.publish / mail.inbox (browser leaves)
        }

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
        wall = self._wall_ms()
        self._to_acknowledge |= {n.bulletin.doc_id for n in
                                 self.notices.show(self.bulletins.active(wall), wall)}
        while True:
            await self._refresh_version()
            await self._acknowledge_notices()
            await self._wait_for_work()
            self._purge()
            if time.monotonic() >= self._compact_due:
                # once a minute, or twice per quiet time when that is shorter
                self._compact_due = time.monotonic() + min(
                    60.0, max(1.0, self.compaction.quiet_ms / 2000))
                await self._compact()
            if self.index.behind:
                await self._catch_up_index()

    async def _wait_for_work(self) -> None:
        """Sleep until a commit (then gather its burst) or the next expiry."""
        self._wake.clear()
        if not (self.index.behind or self._version_dirty or self._to_acknowledge):
            wall = self._wall_ms()
            expiries = [t for t in (self.bulletins.next_expiry_ms(), self.mail.next_expiry_ms(),
                                    self.notices.next_expiry_ms(),
                                    self.carried.next_expiry_ms()) if t is not None]
            delay = idle_delay_s(min(expiries, default=None), wall, IDLE_WAKE_S)
            if self.trust.member(self._author):  # a member compacts on its own schedule too
                delay = min(delay, max(0.05, self._compact_due - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                return  # an expiry (or the idle wake): purge
        await asyncio.sleep(self._purge_interval_s)  # gather a burst of commits into one pass

    async def _acknowledge_notices(self) -> None:
        """Write our receipt (``bulletin.seen``) for each notice this node has shown."""
        wall = self._wall_ms()
        live = {n.bulletin.doc_id: n.bulletin for n in
                self.notices.show(self.bulletins.active(wall), wall)}
        todo, self._to_acknowledge = self._to_acknowledge, set()
        for doc_id in sorted(todo):
            b = live.get(doc_id)
            if b is None or self.notices.seen_by(doc_id, self._author):
                continue
            try:
                await self.store.add_local(self._ident.signing_key, kind=KIND_SEEN,
                                           doc_id=doc_id, body=prepare_seen(),
                                           expiry_ms=b.expires_ms)
            except (Unauthorized, SyncLocalError) as exc:
                log.warning("receipt for bulletin %s refused: %s", doc_id.hex()[:8], exc)

    async def _refresh_version(self) -> None:
        if not self._version_dirty:
            return
        self._version_dirty = False
        async with self._lock:
            self._version = await asyncio.to_thread(self._compute_version)

    def metrics(self) -> list[Metric]:
        """``MetricsSource``: live bulletins, mail carried for others, refused ops by reason."""
        drops: dict[str, int] = {}
        for counter in (self.library.drops, self.situation.drops, self.bulletins.drops,
                        self.notices.drops, self.mail.drops):
            for reason, n in dict(counter.counts).items():  # dict(): one atomic copy
                drops[reason] = drops.get(reason, 0) + n
        return [
            Metric("carmesh_bulletins", "gauge", "Live (unexpired, trusted) bulletins.",
                   samples=(((), float(len(self.bulletins.active(self._wall_ms())))),)),
            Metric("carmesh_trust_carried_ops", "gauge",
                   "Bulletin and trust ops carried for others without a verifiable authority.",
                   samples=(((), float(len(self.carried))),)),
            Metric("carmesh_mail_carried", "gauge",
                   "Mail this node carries for other nodes (store and forward).",
                   samples=(((), float(self.mail.carried())),)),
            Metric("carmesh_drops_total", "counter", "Refused or malformed input, by reason.",
                   ("reason",), tuple(((r,), float(n)) for r, n in sorted(drops.items()))),
        ]

    async def close(self) -> None:
        self._unsubscribe()
        async with self._lock:
            await asyncio.to_thread(self.index.close)

    # -- time ---------------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return int(self._wall() * 1000)

    # -- start ----------------------------------------------------------------------------------

    async def _replay(self) -> None:
        started = time.monotonic()
        total = 0
        for ns in _REPLAY_ORDER:
            batch: list[Any] = []
            async for op in self.store.iter_namespace(ns):
                batch.append(op)
                if len(batch) >= _REPLAY_CHUNK:
                    await self._apply(batch, replay=True)
                    total += len(batch)
                    batch = []
            if batch:
                await self._apply(batch, replay=True)
                total += len(batch)
        async with self._lock:
            try:
                n = await asyncio.to_thread(refresh_index, self.index, self.library, full=True)
            except DiskFull as exc:
                self._index_failed(exc)
                n = 0
            self._version = await asyncio.to_thread(self._compute_version)
            self._version_dirty = False
        self._replaying = False
        log.info("library replayed %d ops in %.2f s (%d documents, %d re-indexed)", total,
                 time.monotonic() - started, sum(1 for _ in self.library.documents()), n)
        await self._open_my_mail()

    # -- the search index on a full disk ----------------------------------------------------

    def _index_failed(self, exc: DiskFull) -> None:
        """A write to the index failed for lack of space: what it missed stays owed."""
        if not self._index_full_logged:
            log.error("%s: search results miss recent changes until there is room (the"
                      " index catches up by itself)", exc)
        self._index_full_logged = True

    async def _catch_up_index(self) -> None:
        """Index what a full disk kept out of the index (called from ``run``'s loop)."""
        async with self._lock:
            try:
                n = await asyncio.to_thread(refresh_index, self.index, self.library)
            except DiskFull as exc:
                self._index_failed(exc)
                return
        if self._index_full_logged:
            log.info("search index caught up with the library (%d document(s) indexed)", n)
        self._index_full_logged = False

    async def _ensure_ready(self) -> None:
        await self._ready.wait()

    # -- applying committed ops -------------------------------------------------------------

    async def _on_commit(self, ops: Sequence[Any]) -> None:
        await self._apply(ops, replay=False)
        self._wake.set()

    async def _apply(self, ops: Sequence[Any], *, replay: bool) -> None:
        wall = self._wall_ms()
        lib_ops: list[OpLike] = []
        new_mail: list[MailItem] = []
        receipts: list[MailReceipt] = []
        situation_changed: list[dict[str, Any]] = []
        published: list[Bulletin] = []
        changed_notices: list[bytes] = []
        trust_ops = [o for o in ops if o.namespace == "trust"
                     or (o.namespace == "bulletin" and o.kind not in NOTICE_KINDS)]
        if trust_ops:
            async with self._trust_lock:
                published = await self._apply_trusted(trust_ops, wall, replay=replay)
        for op in ops:
            ns = op.namespace
            if ns == "library":
                lib_ops.append(op)
            elif ns == "bulletin" and op.kind in NOTICE_KINDS:
                if self.notices.apply(op, wall) and op.kind != KIND_SEEN:
                    changed_notices.append(op.doc_id)
            elif ns == "situation":
                if self.situation.apply(op) and op.kind in (KIND_SET, KIND_SIT_SNAPSHOT):
                    situation_changed.append({"owner": op.author.hex()})
            elif ns == "mail":
                item = self.mail.apply(op, wall)
                if isinstance(item, MailItem):
                    new_mail.append(item)
                elif isinstance(item, MailReceipt):
                    receipts.append(item)
        supersede = self.situation.take_superseded()
        changed: set[bytes] = set()
        if lib_ops:
            async with self._lock:
                changed = await asyncio.to_thread(self._apply_library, lib_ops,
                                                  not (replay or self._deferred_index))
                supersede += self.library.take_superseded()
        for snap_id, doc_id, ranges, prior in supersede:
            try:  # (outside _lock: ops it un-parks come back through _on_commit)
                dropped = await self.store.supersede(snap_id, doc_id, ranges, prior)
            except (SyncLocalError, DiskFull) as exc:
                log.warning("snapshot %s of %s not applied to the op store: %s",
                            snap_id.hex()[:8], doc_id.hex()[:8], exc)
                continue
            if dropped:
                log.debug("snapshot %s of %s: %d op(s) superseded", snap_id.hex()[:8],
                          doc_id.hex()[:8], dropped)
        if changed and not replay:
            if self._deferred_index:  # a bulk import: one event at its end
                self._bulk_changed |= changed
            else:
                self._publish_changed(changed)
        if replay:
            return
        for b in published:
            shown = self.notices.show([b], wall)
            if shown:
                self._to_acknowledge.add(b.doc_id)
                self.node.publish("bulletin.published", {"bulletin": self._notice_json(shown[0])})
        for doc_id in dict.fromkeys(changed_notices):
            for b in self.bulletins.active(wall):
                if b.doc_id != doc_id:
                    continue
                if self.notices.retracted(b):
                    self._to_acknowledge.discard(doc_id)
                    self.node.publish("bulletin.retracted", {"bulletin_id": doc_id.hex()})
                else:
                    for n in self.notices.show([b], wall):
                        self._to_acknowledge.add(doc_id)
                        self.node.publish("bulletin.updated", {"bulletin": self._notice_json(n)})
        for ev in situation_changed:
            self.node.publish("situation.changed", ev)
        for r in receipts:
            self._announce_delivery(r)
        if any(m.recipient == self._ident.node_id for m in new_mail) and not self._replaying:
            asyncio.get_running_loop().create_task(self._open_my_mail())
        if not self._replaying:
            # mail for someone else: a browser attached here hears it on its live stream
            for m in new_mail:
                if m.recipient != self._ident.node_id:
                    self.node.publish("mail.arrived", {"to": m.recipient.hex(),
                                                       "message_id": m.op_id.hex()[:24]})

    # -- trust and bulletins --------------------------------------------------------------------

    def _load_trust(self, explicit: Path | None) -> TrustStore:
        """The pinned trust: ``--trust FILE`` and the state directory's copy, the newer wins."""
        def load(path: Path) -> TrustConfig:
            try:
                return TrustConfig.load(path)
            except OSError as exc:
                raise LibraryError(f"trust configuration {path}: {exc.strerror or exc}") \
                    from None

        given = load(explicit) if explicit is not None else None
        saved = load(self._state_trust) if self._state_trust.exists() else None
        if given is not None and saved is not None:
            if saved.root != given.root:
                log.warning("%s names another community root than %s; using %s", explicit,
                            self._state_trust, explicit)
            elif saved.version > given.version:
                log.info("trust: version %d from %s is newer than %s's %d", saved.version,
                         self._state_trust, explicit, given.version)
                return TrustStore(saved)
            return TrustStore(given)
        if given is None and saved is not None:
            self.trust_path = self._state_trust
        config = given or saved
        if config is not None:
            return TrustStore(config)
        if self._pin_path.exists():
            try:
                fp, _ = parse_fingerprint(self._pin_path.read_text(encoding="utf-8"))
            except (OSError, LibraryError) as exc:
                raise LibraryError(f"trust pin {self._pin_path}: {exc}") from None
            return TrustStore(pinned=fp)
        return TrustStore()

    def _save_trust(self) -> None:
        """Keep the pinned root (and the newest configuration) in the state directory."""
        c = self.trust.config
        if c is None:
            if self.trust.pinned is not None:
                _write_atomic(self._pin_path, format_fingerprint(self.trust.pinned) + "\n")
            return
        if c.version < self._saved_version and self._state_trust.exists():
            return
        _write_atomic(self._state_trust, c.to_toml())
        self._saved_version = c.version
        self._pin_path.unlink(missing_ok=True)

    @staticmethod
    def _size(op: OpLike) -> int:
        raw = getattr(op, "raw", None)
        return len(raw) if isinstance(raw, bytes) else len(op.body) + 200

    def _authorize_bulletin(self, op: OpLike, wall_now_ms: int) -> None:
        """Show it, carry it (bounded) when its authority cannot be checked, or refuse it.

        Notices (update, retract, receipt) are checked by the notice board: signed by the
        bulletin's publisher, or a receipt by anyone.
        """
        if op.kind in NOTICE_KINDS:
            self.notices.authorize(op, wall_now_ms)
            return
        if self.bulletins.classify(op, wall_now_ms) is None:
            self.carried.admit(op, self._size(op), wall_now_ms)

    def _is_member(self, key: bytes) -> bool:
        """A member for the op store: enrolled (``TrustStore.member``), or anyone while the
        configuration enrols nobody (no trust, or no members list and no dealer certificate)."""
        if not self.trust.enrols():
            return not self.trust.revoked(key)
        return self.trust.member(key)

    def add_trust_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` whenever the configuration or the key registry changed (the safety
        service reads successors' corrections again)."""
        self._trust_listeners.append(fn)

    def _trust_moved(self) -> None:
        """The configuration changed: recount the store's pool, drop revoked keys' links."""
        self.store.membership_changed()
        for fn in self._trust_listeners:
            fn()
        recheck = getattr(self.node, "recheck_links", None)  # meshd's Node (not in NodeApi)
        if recheck is not None:
            recheck()

    def _authorize_trust(self, op: OpLike, wall_now_ms: int) -> None:
        """Our root's updates are kept (adopted when newer); dealers' certificates and key
        statements when they verify here; other verified ones are carried."""
        if op.kind in (KIND_MEMBER, KIND_REVOKE):
            verdict = self.trust.classify_key(op)[0]
            if verdict is TrustVerdict.ADOPT and not self._accountable(op):
                # verified, but anyone can sign a statement about a fresh key: what
                # non-members publish in this protected namespace stays within the pool
                verdict = TrustVerdict.CARRY
        else:
            verdict = self.trust.classify(op)[0]
        if verdict is TrustVerdict.CARRY:
            self.carried.admit(op, self._size(op), wall_now_ms)

    def _accountable(self, op: OpLike) -> bool:
        """True when a certificate or statement was published by a member (or us)."""
        return op.author == self._author or self.trust.member(op.author)

    def _trust_state(self) -> tuple[int, bytes | None, int]:
        return self.trust.version, self.trust.root, self.trust.keys.generation

    async def _apply_trusted(self, ops: Sequence[Op], wall: int, *,
                             replay: bool) -> list[Bulletin]:
        """Trust then bulletin ops of one commit (under ``_trust_lock``); the ones to announce."""
        before = self._trust_state()
        withdraw: list[bytes] = []
        # updates first (a certificate or statement may rely on the configuration they bring)
        for op in sorted(ops, key=lambda o: (o.namespace != "trust", o.kind != KIND_TRUST_UPDATE)):
            if op.namespace == "trust":
                self._take_trust(op, wall)
        if self._trust_state() != before:
            withdraw += self.bulletins.drop_untrusted()
        published: list[Bulletin] = []
        for op in ops:
            if op.namespace == "bulletin":
                b = self._take_bulletin(op, wall, withdraw)
                if b is not None and op.kind == KIND_PUBLISH:
                    published.append(b)
        if self._trust_state() != before:
            published += await self._recheck(wall, withdraw)
        await self._withdraw(withdraw, announce=not replay)
        if self._trust_state() != before:
            self._trust_moved()
            await asyncio.to_thread(self._save_trust)
            if not replay:
                self._announce_trust()
        return published

    def _take_trust(self, op: OpLike, wall: int) -> bool:
        """A committed trust op: adopt, keep as stale, or count as carried; True if adopted."""
        if op.kind in (KIND_MEMBER, KIND_REVOKE):
            return self._take_key(op, wall)
        try:
            verdict, config = self.trust.classify(op)
        except Refused as exc:
            self.bulletins.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            return False
        if verdict is TrustVerdict.CARRY:
            self.carried.restore(op, self._size(op), wall)
            return False
        self.carried.discard(op.op_id)
        if verdict is TrustVerdict.ADOPT:
            self.trust.config = config
            log.info("trust: adopted version %d of %s (%d authorities, %d revoked)",
                     config.version, config.community or "the community",
                     len(config.authorities), len(config.revoked))
            return True
        return False

    def _take_key(self, op: OpLike, wall: int) -> bool:
        """A committed certificate or key statement: kept, or carried; True if it changed
        who is a member or revoked."""
        try:
            changed = self.trust.take_key(op)
        except Refused as exc:
            self.bulletins.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            self.carried.discard(op.op_id)
            return False
        if changed is None or not self._accountable(op):  # (counted in the pool)
            self.carried.restore(op, self._size(op), wall)
        else:
            self.carried.discard(op.op_id)
        if changed is None:
            return False
        if changed and op.kind == KIND_REVOKE:
            st = parse_key_statement(op)
            log.warning("trust: key %s revoked by %s%s", st.subject.hex()[:8],
                        "itself" if st.signer == st.subject else st.signer.hex()[:8],
                        f", continued by {st.successor.hex()[:8]}" if st.successor else "")
        return changed

    def _take_bulletin(self, op: OpLike, wall: int, withdraw: list[bytes]) -> Bulletin | None:
        """A committed bulletin op: shown (returned), carried, or refused now (withdrawn)."""
        try:
            b = self.bulletins.classify(op, wall)
        except Refused as exc:
            self.bulletins.drops.drop(exc.reason, op.author.hex()[:8], exc.detail)
            self.carried.discard(op.op_id)
            withdraw.append(op.op_id)
            return None
        if b is None:
            self.carried.restore(op, self._size(op), wall)
            return None
        self.carried.discard(op.op_id)
        self.bulletins.add(b)
        return b

    async def _recheck(self, wall: int, withdraw: list[bytes]) -> list[Bulletin]:
        """Trust changed: check the carried ops again; the bulletins that became verifiable."""
        carried = list(self.carried)
        if not carried:
            return []
        pairs = await self.store.get_raw_pairs([c.op_id for c in carried])
        ops = [decode_op(raw, verify=False) for _, raw in pairs]
        held = {op.op_id for op in ops}
        for c in carried:
            if c.op_id not in held:
                self.carried.discard(c.op_id)
        while True:  # an adopted update may make another carried update (ours) adoptable
            adopted = False
            for op in ops:
                if op.namespace == "trust" and op.op_id in self.carried:
                    adopted |= self._take_trust(op, wall)
            if not adopted:
                break
            withdraw += self.bulletins.drop_untrusted()
        shown: list[Bulletin] = []
        for op in ops:
            if op.namespace == "bulletin" and op.op_id in self.carried:
                b = self._take_bulletin(op, wall, withdraw)
                if b is not None:
                    shown.append(b)
        return shown

    async def _withdraw(self, op_ids: list[bytes], *, announce: bool) -> None:
        """Delete refused bulletins from the store (no longer forwarded) and say so."""
        if not op_ids:
            return
        gone = await self.store.forget(op_ids)
        if gone:
            log.info("trust: withdrew %d bulletin(s) no longer trusted", len(gone))
        if announce and gone:
            self.node.publish("bulletin.revoked", {"op_ids": [g.hex() for g in gone]})

    def _announce_trust(self) -> None:
        c = self.trust.config
        self.node.publish("trust.changed", {
            "community": c.community if c else "", "version": self.trust.version,
            "authorities": len(c.authorities) if c else 0})

    def _publish_changed(self, changed: set[bytes]) -> None:
        ids = sorted(d.hex() for d in changed)
        self.node.publish("library.changed", {"doc_ids": ids[:MAX_EVENT_IDS],
                                              "count": len(ids)})

    def _apply_library(self, ops: list[OpLike], index: bool) -> set[bytes]:
        """In a worker thread, under ``_lock``: apply, then index what changed."""
        for op in ops:
            self.library.apply(op)
        self._version_dirty = True
        if index:
            try:
                refresh_index(self.index, self.library)
            except DiskFull as exc:  # the ops are committed: the index catches up later
                self._index_failed(exc)
        return {op.doc_id for op in ops}

    def _announce_delivery(self, r: MailReceipt) -> None:
        """Tell control clients when a receipt for mail we sent arrives."""
        mail = next((m for m in self.mail.outbox() if m.op_id == r.ref), None)
        at = self.mail.delivered(r.ref)
        if mail is not None and at is not None:
            self.node.publish("mail.delivered", {"message_id": mail.op_id.hex()[:24],
                                                 "to": mail.recipient.hex(), "delivered_ms": at})
            log.info("[%s] mail %s delivered", short_id(mail.recipient), mail.op_id.hex()[:8])

    async def _open_my_mail(self) -> None:
        """Open mail addressed to us, put it in the inbox, and write receipts (once each)."""
        async with self._write_lock:
            for mail in self.mail.unopened_for_me():
                if self.mail.delivered(mail.op_id) is not None:
                    continue
                opened = self.mail.open_for(mail)
                if opened is None:
                    continue
                if self._inbox is not None:
                    try:  # the receipt says "delivered": only once the inbox holds it
                        await self._inbox.deliver(opened.sender, mail.op_id.hex()[:24],
                                                  opened.text, opened.sent_ms, via="mail",
                                                  sender_name=opened.sender_name)
                    except OSError as exc:
                        log.warning("mail %s not stored, no receipt written: %s",
                                    mail.op_id.hex()[:8], exc)
                        continue
                doc_id, body, expiry = prepare_receipt(self._ident, mail, self._wall_ms())
                try:
                    await self.store.add_local(self._ident.signing_key, kind=KIND_RECEIPT,
                                               doc_id=doc_id, body=body, expiry_ms=expiry)
                except (Unauthorized, SyncLocalError, DiskFull) as exc:
                    log.warning("receipt for mail %s not written: %s", mail.op_id.hex()[:8],
                                exc)
                log.info("[%s] mail opened (%d characters)", short_id(opened.sender),
                         len(opened.text))

    async def _compact(self) -> None:
        """Snapshot our own situation records that are due; compact the library documents
        the planner picks, if this node's key may (a member)."""
        for kind in self.situation.snapshot_due(self._author, self.compaction.situation_ops):
            body = self.situation.prepare_snapshot(self._author, kind)
            if body is None:
                continue
            async with self._write_lock:
                try:
                    await self.store.add_local(self._ident.signing_key, kind=KIND_SIT_SNAPSHOT,
                                               doc_id=record_id(self._author, kind), body=body,
                                               expiry_ms=SNAPSHOT_EXPIRY_MS)
                except (Unauthorized, SyncLocalError, DiskFull) as exc:
                    log.warning("snapshot of our %s record not written: %s", kind, exc)
        if not self.trust.member(self._author):
            return
        async with self._lock:
            tasks = plan_compaction(list(self.library.compaction_stats()),
                                    now_ms=self._wall_ms(), policy=self.compaction)
            prepared = []
            for t in tasks:
                try:
                    out = self.library.prepare_snapshot(t.doc_id, purge=t.purge)
                except (LibraryError, LocalProtocolError) as exc:
                    log.warning("cannot compact %s: %s", t.doc_id.hex()[:8], exc)
                    continue
                if out is None:
                    log.debug("document %s not compacted (its state does not fit one op, or"
                             " ops still wait)", t.doc_id.hex()[:8])
                    continue
                prepared.append((t, *out))
        for t, p, n in prepared:
            async with self._write_lock:
                try:
                    await self.store.add_local(self._ident.signing_key, kind=KIND_SNAPSHOT,
                                               doc_id=t.doc_id, body=p.body,
                                               expiry_ms=SNAPSHOT_EXPIRY_MS)
                except (Unauthorized, SyncLocalError, DiskFull) as exc:
                    log.warning("snapshot of %s not written: %s", t.doc_id.hex()[:8], exc)
                    continue
            log.info("compacted %s (%s): %d op(s) superseded", t.doc_id.hex()[:8], t.why, n)

    def _purge(self) -> None:
        wall = self._wall_ms()
        self.notices.purge(wall)
        gone = self.bulletins.purge(wall)
        if gone:
            self.node.publish("bulletin.expired", {"op_ids": [g.hex() for g in gone]})
        self.mail.purge(wall)
        self.carried.expire(wall)
        self.carried.retain(self.store.__contains__, wall)

    # -- local writes ----------------------------------------------------------------------------

    async def _submit(self, kind_ops: Sequence[tuple[str, bytes, bytes]],
                      progress: Callable[[int, int], None] | None = None) -> int:
        """Sign and commit ops in order (each reaches the state through ``_on_commit``)."""
        n = 0
        for kind, doc_id, body in kind_ops:
            try:
                await self.store.add_local(self._ident.signing_key, kind=kind, doc_id=doc_id,
                                           body=body)
            except Unauthorized as exc:
                raise ControlError("failed", f"refused: {exc}") from None
            except SyncLocalError as exc:
                raise ControlError("failed", str(exc)) from None
            except DiskFull as exc:
                stored = f"{n} of {len(kind_ops)} change(s) stored" if n else "nothing stored"
                raise ControlError("failed", f"disk full: {stored}; free some space on the"
                                   " disk and try again", {"disk_full": True, "ops": n,
                                                           "total": len(kind_ops)}) from exc
            n += 1
            if progress is not None:
                progress(n, len(kind_ops))
        return n

    def _resolve_doc(self, params: dict[str, Any]) -> bytes:
        # "doc_id" is accepted too (the TUI's library view sends it)
        ident = _str_param(params, "id" if "id" in params else "doc_id", max_len=64)
        assert ident is not None
        q = ident.strip().lower()
        if len(q) < 4 or any(c not in "0123456789abcdef" for c in q):
            raise _bad("ID is 32 hex characters or a unique prefix of at least 4")
        if len(q) == 32:
            doc_id = bytes.fromhex(q)
            if self.library.get(doc_id) is None:
                raise ControlError("not_found", f"no document {q} here", {"id": q})
            return doc_id
        found = [d.doc_id for d in self.library.documents(include_deleted=True)
                 if d.doc_id.hex().startswith(q)]
        if not found:
            raise ControlError("not_found", f"no document matches {q}", {"id": q})
        if len(found) > 1:
            raise _bad(f"{q} matches {len(found)} documents; give more of the id")
        return found[0]

    def _doc_json(self, d: DocumentView) -> dict[str, Any]:
        return {"doc_id": d.doc_id.hex(), "collection": d.collection, "title": d.title,
                "body": d.body, "tags": list(d.tags), "lang": d.lang, "deleted": d.deleted,
                "authors": sorted(a.hex() for a in d.authors),
                "created_ms": d.created_hlc >> 16, "updated_ms": d.updated_hlc >> 16}

    async def _h_add(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        collection = _str_param(params, "collection", max_len=32)
        title = _str_param(params, "title", max_len=200)
        body = _str_param(params, "body")
        lang = _str_param(params, "lang", required=False, max_len=16) or ""
        tags = params.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _bad("tags must be a list of strings")
        assert collection is not None and title is not None and body is not None
        doc_id = new_doc_id(os.urandom(16))
        async with self._write_lock:
            async with self._lock:
                try:
                    prepared = self.library.prepare_create(
                        self._author, collection=collection, title=title, body=body,
                        tags=tags, lang=lang)
                except LocalProtocolError as exc:
                    raise _bad(str(exc)) from None
            n = await self._submit([(p.kind, doc_id, p.body) for p in prepared])
        return {"doc_id": doc_id.hex(), "ops": n}

    async def _h_edit(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        body = _str_param(params, "body", required=False)
        title = _str_param(params, "title", required=False, max_len=200)
        if body is None and title is None:
            raise _bad("edit needs body or title")
        async with self._write_lock:
            async with self._lock:
                doc_id = self._resolve_doc(params)
                try:
                    prepared = self.library.prepare_edit(doc_id, self._author, body=body,
                                                         title=title)
                except LocalProtocolError as exc:
                    raise ControlError("failed", str(exc)) from None
            n = await self._submit([(p.kind, doc_id, p.body) for p in prepared])
        return {"doc_id": doc_id.hex(), "ops": n}

    async def _h_show(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        async with self._lock:
            doc_id = self._resolve_doc(params)
            d = self.library.get(doc_id)
            n = len(self.library.history(doc_id))
        assert d is not None
        return {**self._doc_json(d), "changes": n}

    async def _h_history(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        async with self._lock:
            doc_id = self._resolve_doc(params)
            hist = self.library.history(doc_id)
        names = self._names_by_key()
        return {"doc_id": doc_id.hex(), "history": [
            {"op_id": h.op_id.hex(), "author": h.author.hex(),
             "author_name": names.get(h.author, ""), "time_ms": h.hlc >> 16, "kind": h.kind,
             "fields": list(h.fields), "inserted": h.inserted, "deleted": h.deleted,
             "reverts": h.reverts.hex() if h.reverts else None} for h in hist]}

    async def _h_search(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        query = _str_param(params, "query", max_len=256)
        collection = _str_param(params, "collection", required=False, max_len=32)
        limit = params.get("limit", 10)
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"limit is an integer from 1 to {MAX_LIMIT}")
        assert query is not None
        async with self._lock:
            try:
                hits = await asyncio.to_thread(self.index.search, query, collection=collection,
                                               limit=limit)
            except LibraryError as exc:
                raise _bad(str(exc)) from None
        return {"query": query, "results": [
            {"doc_id": h.doc_id.hex(), "collection": h.collection, "title": h.title,
             "snippet": h.snippet, "score": round(h.score, 6)} for h in hits]}

    def _progress_cb(self, op: str, phase: str) -> Callable[[int, int, str], None]:
        loop = asyncio.get_running_loop()
        last = [0.0]

        def cb(done: int, total: int, path: str) -> None:
            now = time.monotonic()
            if done < total and now - last[0] < 0.1:
                return  # at most ~10 events a second
            last[0] = now
            loop.call_soon_threadsafe(self.node.publish, "library.progress",
                                      {"op": op, "phase": phase, "done": done,
                                       "total": total, "path": path})
        return cb

    def _folder(self, params: dict[str, Any]) -> Path:
        raw = _str_param(params, "path", max_len=4096)
        assert raw is not None
        path = Path(raw)
        if not path.is_absolute():
            raise _bad("path must be absolute (meshctl passes absolute paths)")
        return path

    async def _h_import(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        folder = self._folder(params)
        if not folder.is_dir():
            raise ControlError("failed", f"{folder} is not a directory")
        started = time.monotonic()
        reading = self._progress_cb("import", "reading")
        source = _str_param(params, "source", required=False, max_len=200)
        if source is not None and not source.strip():
            raise _bad("source must not be empty")
        may_restore = self.trust.authority(self._author) is not None
        async with self._write_lock:
            async with self._lock:
                ops, summary = await asyncio.to_thread(
                    lambda: plan_import(self.library, self._author, folder, reading,
                                        source=source, may_restore=may_restore))
            writing = self._progress_cb("import", "writing")
            self._deferred_index = True
            index_full: DiskFull | None = None
            try:
                n = await self._submit([(o.kind, o.doc_id, o.body) for o in ops],
                                       lambda d, t: writing(d, t, ""))
            finally:
                self._deferred_index = False
                async with self._lock:
                    try:
                        await asyncio.to_thread(refresh_index, self.index, self.library)
                    except DiskFull as exc:
                        self._index_failed(exc)
                        index_full = exc
                if self._bulk_changed:
                    self._publish_changed(self._bulk_changed)
                    self._bulk_changed = set()
        if index_full is not None:
            raise ControlError(
                "failed", f"disk full: the import is stored ({n} change(s), they replicate),"
                " but the search index could not be updated; it catches up by itself once"
                " there is room: free some space on the disk",
                {"disk_full": True, "ops": n, "index": "behind", "summary": summary.line()})
        return {"path": str(folder), "added": summary.added, "changed": summary.changed,
                "unchanged": summary.unchanged,
                "errors": [{"path": p, "error": e} for p, e in summary.errors],
                "merged": summary.merged, "source": source or default_source(folder),
                "ops": n, "summary": summary.line(),
                "elapsed_s": round(time.monotonic() - started, 3)}

    async def _h_export(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        folder = self._folder(params)
        started = time.monotonic()
        cb = self._progress_cb("export", "writing")
        async with self._lock:
            try:
                summary = await asyncio.to_thread(export_folder, self.library, folder, cb)
            except (OSError, LibraryError) as exc:
                raise ControlError("failed", f"export to {folder}: {exc}") from None
        return {"path": str(folder), "added": summary.added, "changed": summary.changed,
                "unchanged": summary.unchanged, "summary": summary.line(),
                "elapsed_s": round(time.monotonic() - started, 3)}

    def _doc_or_bad(self, params: dict[str, Any]) -> bytes:
        """Like ``_resolve_doc``, but an unknown id is a usage error (exit 2): a write."""
        try:
            return self._resolve_doc(params)
        except ControlError as exc:
            if exc.code == "not_found":
                raise _bad(exc.message) from None
            raise

    async def _h_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        async with self._write_lock:
            async with self._lock:
                doc_id = self._doc_or_bad(params)
                d = self.library.get(doc_id)
                assert d is not None
                if d.deleted:
                    raise _bad(f"document {doc_id.hex()} is already deleted")
            p = self.library.prepare_delete()
            n = await self._submit([(p.kind, doc_id, p.body)])
        return {"doc_id": doc_id.hex(), "title": d.title, "deleted": True, "ops": n}

    async def _h_restore(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        async with self._write_lock:
            async with self._lock:
                doc_id = self._doc_or_bad(params)
                d = self.library.get(doc_id)
                assert d is not None
                if not d.deleted:
                    raise _bad(f"document {doc_id.hex()} is not deleted")
            if self.trust.authority(self._author) is None:
                raise ControlError("failed", "only an authority in the trust configuration "
                                   "restores a deleted document", {"key": self._author.hex()})
            p = self.library.prepare_delete(restore=True)
            n = await self._submit([(p.kind, doc_id, p.body)])
        return {"doc_id": doc_id.hex(), "title": d.title, "deleted": False, "ops": n}

    def _list_json(self, d: DocumentView) -> dict[str, Any]:
        return {"doc_id": d.doc_id.hex(), "collection": d.collection, "title": d.title,
                "lang": d.lang, "tags": list(d.tags), "deleted": d.deleted,
                "authors": len(d.authors), "chars": len(d.body),
                "updated_ms": d.updated_hlc >> 16}

    async def _h_list(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        collection = _str_param(params, "collection", required=False, max_len=32)
        deleted = params.get("deleted", False)
        if not isinstance(deleted, bool):
            raise _bad("deleted must be true or false")
        async with self._lock:
            docs = [d for d in self.library.documents(include_deleted=deleted)
                    if collection is None or d.collection == collection]
        docs.sort(key=lambda d: (d.collection, d.title, d.doc_id))
        return {"collection": collection, "documents": [self._list_json(d) for d in docs]}

    def _compute_version(self) -> dict[str, Any]:
        """This node's library version: a digest of document heads per collection, and overall."""
        per = self.library.version()
        h = hashlib.sha256()
        for coll, (digest, _n) in sorted(per.items()):
            h.update(f"{coll}={digest};".encode())
        return {"version": h.hexdigest()[:16],
                "collections": {c: {"version": v, "documents": n}
                                for c, (v, n) in per.items()}}

    async def _h_version(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        await self._refresh_version()
        return {**self._version, "node_id": self._ident.node_id.hex()}

    async def _h_reach(self, params: dict[str, Any]) -> dict[str, Any]:
        """Which known nodes hold this node's library version (they say so in their info answer)."""
        await self._ensure_ready()
        timeout = params.get("timeout_s", 2.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
                not 0 < timeout <= 30:
            raise _bad("timeout_s is seconds, more than 0 and at most 30")
        await self._refresh_version()
        mine = str(self._version["version"])
        info = getattr(self.node, "info", None)
        dests = getattr(self.node, "destinations", None)
        if info is None or dests is None:
            raise ControlError("failed", "this node cannot ask others for their facts")
        others = list(dests())
        answers = await asyncio.gather(*(info.query(d, timeout) for d in others))
        nodes = []
        for d, ans in zip(others, answers, strict=True):
            theirs = ans.facts.get("lib") if ans is not None else None
            nodes.append({"node_id": d.hex(), "name": ans.name if ans else "",
                          "version": theirs, "answered": ans is not None,
                          "current": theirs == mine})
        nodes.sort(key=lambda n: (not n["current"], n["name"], n["node_id"]))
        return {"version": mine, "nodes": nodes,
                "current": sum(1 for n in nodes if n["current"]), "known": len(nodes)}

    async def _h_repair(self, params: dict[str, Any]) -> dict[str, Any]:
        """Delete duplicate live documents (same collection and title) but the newest of each.

        Only deletions: two nodes repairing at once write the same tombstones.
        """
        await self._ensure_ready()
        dry_run = params.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise _bad("dry_run must be true or false")
        async with self._write_lock:
            async with self._lock:
                groups: dict[tuple[str, str], list[DocumentView]] = {}
                for d in self.library.documents():
                    groups.setdefault((d.collection, d.title), []).append(d)
            out = []
            todo: list[tuple[str, bytes, bytes]] = []
            p = self.library.prepare_delete()
            for (coll, title), docs in sorted(groups.items()):
                if len(docs) < 2:
                    continue
                docs.sort(key=lambda d: (d.updated_hlc, d.doc_id), reverse=True)
                out.append({"collection": coll, "title": title, "kept": docs[0].doc_id.hex(),
                            "deleted": [d.doc_id.hex() for d in docs[1:]]})
                todo += [(p.kind, d.doc_id, p.body) for d in docs[1:]]
            n = 0 if dry_run else await self._submit(todo)
        return {"groups": out, "deleted": len(todo), "dry_run": dry_run, "ops": n}

    # -- situation files -----------------------------------------------------------------------

    def _names_by_key(self) -> dict[bytes, str]:
        """Ed25519 key -> display name of every node we hold an announcement for."""
        out: dict[bytes, str] = {self._author: self.node.name}
        known = getattr(self.node, "known_nodes", None)
        if known is None:
            return out
        for node_hex, _name in known():
            ann = self.node.announcement_of(bytes.fromhex(node_hex))
            if ann is not None:
                out[ann.ed25519_pub] = ann.name
        return out

    def _node_of_key(self) -> dict[bytes, str]:
        out: dict[bytes, str] = {self._author: self._ident.node_id.hex()}
        known = getattr(self.node, "known_nodes", None)
        for node_hex, _ in (known() if known is not None else []):
            ann = self.node.announcement_of(bytes.fromhex(node_hex))
            if ann is not None:
                out[ann.ed25519_pub] = node_hex
        return out

    def _record_json(self, r: SituationRecord, names: dict[bytes, str],
                     nodes: dict[bytes, str]) -> dict[str, Any]:
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.fields.items()}
        return {"owner": r.owner.hex(), "node_id": nodes.get(r.owner, ""),
                "name": names.get(r.owner, ""), "kind": str(r.kind), "fields": fields,
                "updated_ms": r.updated_hlc >> 16,
                # the first key of the owner's chain of devices (successor statements)
                "person": self.trust.keys.person(r.owner).hex()}

    async def _h_situation_set(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        kind = _str_param(params, "kind", max_len=16)
        fields = params.get("fields")
        if not isinstance(fields, dict) or not fields:
            raise _bad("fields must be a non-empty object")
        try:
            doc_id, body = prepare_set(self._author, str(kind), fields)
        except (LocalProtocolError, ValueError) as exc:
            raise _bad(str(exc)) from None
        async with self._write_lock:
            await self._submit([(KIND_SET, doc_id, body)])
        rec = self.situation.get(self._author, str(kind))
        assert rec is not None
        return self._record_json(rec, self._names_by_key(), self._node_of_key())

    async def _h_situation_show(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        query = _str_param(params, "node", max_len=256)
        assert query is not None
        node_id = self.node.resolve(query)
        if node_id == self._ident.node_id:
            key = self._author
        else:
            ann = self.node.announcement_of(node_id)
            if ann is None:
                raise ControlError("not_found", f"no announcement (keys) known for "
                                   f"{short_id(node_id)}", {"node_id": node_id.hex()})
            key = ann.ed25519_pub
        names, nodes = self._names_by_key(), self._node_of_key()
        return {"node_id": node_id.hex(), "name": names.get(key, ""),
                "short_id": short_id(node_id), "owner": key.hex(),
                "records": [self._record_json(r, names, nodes)
                            for r in sorted(self.situation.of_owner(key),
                                            key=lambda r: str(r.kind))]}

    async def _h_situation_list(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        kind = _str_param(params, "kind", required=False, max_len=16)
        if kind is not None and kind not in RecordKind.__members__.values():
            raise _bad(f"kind is one of {', '.join(k.value for k in RecordKind)}")
        names, nodes = self._names_by_key(), self._node_of_key()
        return {"records": [self._record_json(r, names, nodes)
                            for r in self.situation.records(kind)]}

    async def _h_situation_summary(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        stale_s = params.get("stale_s", DEFAULT_STALE_S)
        if isinstance(stale_s, bool) or not isinstance(stale_s, int | float) or \
                not 0 < stale_s <= 30 * 24 * 3600:
            raise _bad("stale_s is seconds, more than 0 and at most 30 days")
        return town_summary(self.situation.records(), now_ms=self._wall_ms(),
                            names=self._names_by_key(), nodes=self._node_of_key(),
                            stale_after_s=stale_s)

    # -- bulletins ------------------------------------------------------------------------------

    def _bulletin_json(self, b: Bulletin) -> dict[str, Any]:
        return {"op_id": b.op_id.hex(), "title": b.title, "body": b.text,
                "author": b.author.hex(), "authority": {"name": b.authority.name,
                                                        "role": str(b.authority.role)},
                "issued_ms": b.issued_ms, "expires_ms": b.expires_ms}

    def _trust_json(self) -> dict[str, Any]:
        c = self.trust.config
        return {"file": str(self.trust_path) if self.trust_path else None,
                "version": self.trust.version, "authorities": len(c.authorities) if c else 0,
                "key": self._author.hex(),
                "authority": self.trust.authority(self._author) is not None}

    async def _h_bulletin_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        title = _str_param(params, "title", max_len=200)
        body = _str_param(params, "body", max_len=8000)
        expires_s = params.get("expires_s", DEFAULT_BULLETIN_S)
        if isinstance(expires_s, bool) or not isinstance(expires_s, int | float) or \
                not 0 < expires_s <= 30 * 24 * 3600:
            raise _bad("expires_s is seconds, more than 0 and at most 30 days")
        assert title is not None and body is not None
        if self.trust.authority(self._author) is None:
            raise ControlError("failed", "this node's key is not an authority in the trust "
                               "configuration" + ("" if self.trust_path else
                                                  " (no trust file: meshd --trust FILE)"),
                               {"key": self._author.hex()})
        issued = self._wall_ms()
        expires = issued + max(1, round(expires_s * 1000))
        doc_id = new_doc_id(os.urandom(16))
        root = self.trust.root
        assert root is not None  # an authority exists only under a pinned root
        try:
            payload = prepare_bulletin(self._ident.sign, self._author, doc_id, title=title,
                                       text=body, issued_ms=issued, expires_ms=expires,
                                       root=root, trust_version=self.trust.version)
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        async with self._write_lock:
            try:
                op = await self.store.add_local(self._ident.signing_key, kind=KIND_PUBLISH,
                                                doc_id=doc_id, body=payload, expiry_ms=expires)
            except Unauthorized as exc:
                raise ControlError("failed", f"refused: {exc}") from None
        b = next((x for x in self.bulletins.active(self._wall_ms()) if x.op_id == op.op_id),
                 None)
        if b is None:
            raise ControlError("failed", "the bulletin was stored but is not live")
        self._to_acknowledge.add(b.doc_id)
        self._wake.set()
        return self._notice_json(Notice(b, 1, 0))

    async def _h_bulletin_list(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        wall = self._wall_ms()
        return {"bulletins": [self._notice_json(n) for n in
                              self.notices.show(self.bulletins.active(wall), wall)],
                "trust": self._trust_json()}

    # -- trust ---------------------------------------------------------------------------------

    def _trust_show(self) -> dict[str, Any]:
        c = self.trust.config
        pinned = self.trust.pinned
        carried = sorted(self.carried, key=lambda e: (e.kind, e.admitted_ms, e.op_id))
        return {
            "community": c.community if c else "",
            "pinned": "root" if c else ("fingerprint" if pinned else "none"),
            "root": c.root.hex() if c else None,
            "fingerprint": format_fingerprint(pinned) if pinned else None,
            "version": self.trust.version,
            "authorities": [{"key": a.key.hex(), "role": str(a.role), "name": a.name}
                            for a in sorted(c.authorities.values(),
                                            key=lambda a: (a.role, a.name, a.key))]
            if c else [],
            "revoked": sorted(k.hex() for k in c.revoked) if c else [],
            "members": sorted(k.hex() for k in c.members) if c else [],
            # dealers' certificates (counted while their dealer is a dealer authority)
            "certified": [{"member": m.member.hex(), "dealer": m.dealer.hex(),
                           "valid": self.trust.dealer(m.dealer)}
                          for m in sorted(self.trust.keys.certificates(),
                                          key=lambda m: (m.member, m.dealer))][:MAX_SHOWN_KEYS],
            # key statements verified here: revocations by the key, its dealer or the root
            "revocations": [{"key": st.subject.hex(), "by": st.signer.hex(),
                             "rank": rank.name.lower(),
                             "successor": st.successor.hex() if st.successor else None}
                            for st, rank in sorted(self.trust.keys.statements(),
                                                   key=lambda x: (x[0].subject, x[0].signer))
                            ][:MAX_SHOWN_KEYS],
            # the successor each revoked key has here (none while contested)
            "successors": {k.hex(): s.hex() for k in sorted(self.trust.keys.revocations())
                           if (s := self.trust.keys.successor(k)) is not None},
            "revoked_here": self.trust.revoked(self._author),
            "person": self.trust.keys.person(self._author).hex(),
            "member": self.trust.member(self._author),
            "file": str(self.trust_path) if self.trust_path else None,
            "key": self._author.hex(),
            "authority": self.trust.authority(self._author) is not None,
            "carried": {"ops": len(self.carried), "bytes": self.carried.bytes,
                        "max_ops": self.carried.max_ops, "max_bytes": self.carried.max_bytes,
                        "items": [{"op_id": e.op_id.hex(), "kind": e.kind,
                                   "author": e.author.hex(), "expires_ms": e.expiry_ms}
                                  for e in carried[:MAX_SHOWN_CARRIED]]},
        }

    async def _h_trust_show(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        return self._trust_show()

    async def _h_trust_export(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        c = self.trust.config
        if c is None:
            raise ControlError("failed", "this node holds no trust configuration to export"
                               + (" (pinned by fingerprint; waiting for an update from the "
                                  "root)" if self.trust.pinned else ""))
        return {"config": c.to_toml(), "community": c.community, "version": c.version,
                "fingerprint": format_fingerprint(self.trust.pinned or b""),
                "authorities": len(c.authorities)}

    async def _h_trust_join(self, params: dict[str, Any]) -> dict[str, Any]:
        """Pin a root: an enrolment file's text (``config``) or a ``fingerprint``."""
        await self._ensure_ready()
        text = _str_param(params, "config", required=False, max_len=512 * 1024)
        fp_text = _str_param(params, "fingerprint", required=False, max_len=200)
        if (text is None) == (fp_text is None):
            raise _bad("trust.join takes config (an enrolment file's text) or fingerprint")
        async with self._trust_lock:
            before = self.trust.version, self.trust.root, self.trust.pinned
            try:
                if text is not None:
                    self.trust.pin(TrustConfig.from_toml(text))
                else:
                    assert fp_text is not None
                    fp, root = parse_fingerprint(fp_text)
                    if root is not None and self.trust.config is None:
                        self.trust.pin(TrustConfig(root, 0, {}))
                    else:
                        self.trust.pin_fingerprint(fp)
            except LibraryError as exc:
                code = "bad_request" if "configuration" in str(exc) or "fingerprint" in \
                    str(exc) else "failed"
                raise ControlError(code, str(exc)) from None
            if (self.trust.version, self.trust.root, self.trust.pinned) != before:
                wall = self._wall_ms()
                withdraw = self.bulletins.drop_untrusted()
                shown = await self._recheck(wall, withdraw)
                await self._withdraw(withdraw, announce=True)
                self._trust_moved()
                await asyncio.to_thread(self._save_trust)
                self._announce_trust()
                for b in shown:
                    self.node.publish("bulletin.published", {"bulletin": self._bulletin_json(b)})
                log.info("trust: joined %s (fingerprint %s, version %d)",
                         self.trust.config.community if self.trust.config else "a community",
                         format_fingerprint(self.trust.pinned or b""), self.trust.version)
        return self._trust_show()

    async def _h_trust_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        """Store and spread a root-signed ``trust.update`` made by ``meshctl trust authority``."""
        await self._ensure_ready()
        raw_hex = _str_param(params, "op", max_len=2 * MAX_OP_SIZE)
        assert raw_hex is not None
        try:
            raw = bytes.fromhex(raw_hex)
            op = decode_op(raw)
        except (ValueError, RemoteProtocolError) as exc:
            raise _bad(f"not a signed op: {exc}") from None
        if op.kind != KIND_TRUST_UPDATE:
            raise _bad("only trust.update ops are published this way")
        try:
            verdict, config = self.trust.classify(op)
        except Refused as exc:
            raise ControlError("failed", f"refused: {exc.reason} {exc.detail}") from None
        if verdict is TrustVerdict.CARRY:
            raise ControlError("failed", "this node is not pinned to that root (run `meshctl "
                               "trust join FINGERPRINT` on it first)")
        if verdict is TrustVerdict.STALE:
            raise ControlError("failed", f"version {config.version} is not newer than this "
                               f"node's {self.trust.version}")
        res = await self.store.apply_remote([raw], peer="meshctl")
        if res.refused:
            raise ControlError("failed", f"refused by the store: {dict(res.refused)}")
        return {"op_id": op.op_id.hex(), **self._trust_show()}

    async def _h_trust_submit(self, params: dict[str, Any]) -> dict[str, Any]:
        """Publish a signed ``trust.member`` or ``trust.revoke`` body made elsewhere (a dealer's
        key file, a statement the owner kept): wrapped in an ephemeral op of this node's key."""
        await self._ensure_ready()
        kind = _str_param(params, "kind", max_len=40)
        body_hex = _str_param(params, "body", max_len=16 * 1024)
        assert kind is not None and body_hex is not None
        if kind not in (KIND_MEMBER, KIND_REVOKE):
            raise _bad("kind is trust.member or trust.revoke")
        try:
            body = bytes.fromhex(body_hex)
        except ValueError:
            raise _bad("body is hex") from None
        probe = _Probe(kind, body, self._author)
        try:
            probe.doc_id = (member_doc_id(_body_key(body, "m")) if kind == KIND_MEMBER
                            else statement_doc_id(_body_key(body, "s")))
            verdict = self.trust.classify_key(probe)[0]
        except Refused as exc:
            raise ControlError("failed", f"refused: {exc.reason} {exc.detail}".strip()) \
                from None
        if verdict is TrustVerdict.CARRY:
            raise ControlError("failed", "this node cannot check it (not enrolled in that "
                               "community, or the enrolling dealer's certificate is unknown "
                               "here): publish it from an enrolled node")
        wall = self._wall_ms()
        try:
            op = await self.store.add_local(self._ident.signing_key, kind=kind,
                                            doc_id=probe.doc_id, body=body,
                                            expiry_ms=wall + STATEMENT_LIFETIME_MS)
        except (Unauthorized, SyncLocalError, DiskFull) as exc:
            raise ControlError("failed", f"not stored: {exc}") from None
        return {"op_id": op.op_id.hex(), "kind": kind, **self._trust_show()}

    async def _h_trust_statement(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sign, with this node's key, a statement revoking it (and naming a ``successor``),
        for its owner to keep offline: returned, not published."""
        await self._ensure_ready()
        succ_hex = _str_param(params, "successor", required=False, max_len=64)
        successor = None
        if succ_hex is not None:
            try:
                successor = bytes.fromhex(succ_hex)
            except ValueError:
                successor = b""
            if len(successor) != 32 or successor == self._author:
                raise _bad("successor is another node's 64-hex key")
        doc_id, body = prepare_key_statement(self._ident.signing_key.sign, self._author,
                                             self._author, successor=successor,
                                             made_ms=self._wall_ms())
        return {"kind": KIND_REVOKE, "body": body.hex(), "key": self._author.hex(),
                "successor": succ_hex, "doc_id": doc_id.hex()}

    def _notice_json(self, n: Notice) -> dict[str, Any]:
        return {**self._bulletin_json(n.bulletin), "bulletin_id": n.bulletin.doc_id.hex(),
                "version": n.version, "reached": n.reached}

    def _my_bulletin(self, params: dict[str, Any]) -> Bulletin:
        """The live bulletin ``params["id"]`` names (id or unique prefix); ours to change."""
        raw = _str_param(params, "id", max_len=64)
        assert raw is not None
        q = raw.strip().lower()
        if len(q) < 4 or any(c not in "0123456789abcdef" for c in q):
            raise _bad("ID is a bulletin id (32 hex characters) or a unique prefix of at least 4")
        wall = self._wall_ms()
        live = {n.bulletin.doc_id: n.bulletin for n in
                self.notices.show(self.bulletins.active(wall), wall)}
        found = [b for d, b in live.items() if d.hex().startswith(q)]
        if not found:
            raise _bad(f"no live bulletin {q} here (see bulletin list)")
        if len(found) > 1:
            raise _bad(f"{q} matches {len(found)} bulletins; give more of the id")
        if found[0].author != self._author:
            raise ControlError("failed", "only the authority that published a bulletin changes "
                               "it", {"author": found[0].author.hex()})
        return found[0]

    async def _submit_notice(self, kind: str, doc_id: bytes, body: bytes, expires: int) -> None:
        async with self._write_lock:
            try:
                await self.store.add_local(self._ident.signing_key, kind=kind, doc_id=doc_id,
                                           body=body, expiry_ms=expires)
            except Unauthorized as exc:
                raise ControlError("failed", f"refused: {exc}") from None

    async def _h_bulletin_update(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        title = _str_param(params, "title", required=False, max_len=200)
        body = _str_param(params, "body", required=False, max_len=8000)
        expires_s = params.get("expires_s")
        if expires_s is not None and (isinstance(expires_s, bool) or
                                      not isinstance(expires_s, int | float) or
                                      not 0 < expires_s <= 30 * 24 * 3600):
            raise _bad("expires_s is seconds, more than 0 and at most 30 days")
        if title is None and body is None:
            raise _bad("update needs a title or a body")
        wall = self._wall_ms()
        b = self._my_bulletin(params)
        [cur] = self.notices.show([b], wall)
        version = self.notices.latest_version(b) + 1
        expires = (wall + max(1, round(expires_s * 1000)) if expires_s is not None
                   else cur.bulletin.expires_ms)
        try:
            payload = prepare_update(self._ident.sign, self._author, b.doc_id, version=version,
                                     title=cur.bulletin.title if title is None else title,
                                     text=cur.bulletin.text if body is None else body,
                                     issued_ms=wall, expires_ms=expires)
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        await self._submit_notice(KIND_UPDATE, b.doc_id, payload, expires)
        [now] = self.notices.show([b], self._wall_ms())
        return self._notice_json(now)

    async def _h_bulletin_retract(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        wall = self._wall_ms()
        b = self._my_bulletin(params)
        version = self.notices.latest_version(b) + 1
        expires = max(b.expires_ms, wall + 1)
        try:
            payload = prepare_retract(self._ident.sign, self._author, b.doc_id, version=version,
                                      issued_ms=wall, expires_ms=expires)
        except LocalProtocolError as exc:
            raise _bad(str(exc)) from None
        await self._submit_notice(KIND_RETRACT, b.doc_id, payload, expires)
        return {"bulletin_id": b.doc_id.hex(), "version": version, "retracted": True}

    # -- mail ----------------------------------------------------------------------------------

    async def queue_mail(self, recipient: NodeId, text: str) -> dict[str, Any]:
        """Seal ``text`` to ``recipient`` and store it as a mail op (the recipient is out of reach).

        Raises ``ControlError`` ``not_found`` when the recipient's keys are unknown.
        """
        await self._ensure_ready()
        if recipient == self._ident.node_id:
            raise ControlError("unreachable", "that is this node itself")
        ann = self.node.announcement_of(recipient)
        if ann is None:
            raise ControlError("not_found", f"no announcement (keys) known for "
                               f"{short_id(recipient)}", {"node_id": recipient.hex()})
        if len(text.encode("utf-8")) > 32 * 1024:
            raise _bad("message exceeds 32768 bytes")
        doc_id, body, expiry = prepare_mail(self._ident, recipient, ann.x25519_pub, text,
                                            self._wall_ms(), self.node.name)
        async with self._write_lock:
            try:
                op = await self.store.add_local(self._ident.signing_key, kind=KIND_SEALED,
                                                doc_id=doc_id, body=body, expiry_ms=expiry)
            except Unauthorized as exc:
                raise ControlError("failed", f"mail refused: {exc}") from None
        res = {"node_id": recipient.hex(), "message_id": op.op_id.hex()[:24],
               "status": "queued", "expires_ms": expiry}
        self.node.publish("mail.queued", res)
        log.info("[%s] no route: message queued as mail %s", short_id(recipient),
                 op.op_id.hex()[:8])
        return res

    async def _h_mail_list(self, params: dict[str, Any]) -> dict[str, Any]:
        await self._ensure_ready()
        names = {bytes.fromhex(n): name for n, name in
                 (getattr(self.node, "known_nodes", list)())}
        out = []
        for m in self.mail.outbox():
            at = self.mail.delivered(m.op_id)
            out.append({"message_id": m.op_id.hex()[:24], "to": m.recipient.hex(),
                        "to_name": names.get(m.recipient, ""), "queued_ms": m.queued_ms,
                        "expires_ms": m.expiry_ms,
                        "status": "delivered" if at is not None else "queued",
                        "delivered_ms": at})
        return {"outbox": out, "carried": self.mail.carried()}

