"""A full disk (issue 11, item 8): said as such, and the search index never loses a change.

The disk is filled in two ways: SQLite's own page limit (``PRAGMA max_page_count``,
which fails a write exactly as a full disk does, "database or disk is full") on one
database at a time, so the op store can commit while the index cannot; and, in
``test_daemon_disk_full.py``, a small tmpfs filled to the last byte under a real daemon.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from library_replica.node_service import INDEX_NAME, LibraryNodeService
from library_replica.search import SearchIndex, refresh_index
from meshd.core.errors import ControlError, DiskFull, is_disk_full
from meshd.core.identity import Identity, NodeId
from sync.store import OpStore


def _cap(db: sqlite3.Connection) -> None:
    """Make every write that needs a new page fail with SQLITE_FULL (a disk full to the byte)."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def _uncap(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA max_page_count = 1073741823")


async def _cap_store(store: OpStore, on: bool) -> None:
    db = store._db  # the test fills the store's "disk" (aiosqlite's thread)
    async with db.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    await db.execute(f"PRAGMA max_page_count = {row[0] if on else 1073741823}")


@dataclass(frozen=True)
class Doc:
    doc_id: bytes
    title: str
    body: str
    collection: str = "work"
    tags: tuple[str, ...] = ()
    lang: str = "ja"
    authors: frozenset[bytes] = frozenset()
    deleted: bool = False


@dataclass
class Lib:
    docs: dict[bytes, Doc] = field(default_factory=dict)
    changed: set[bytes] = field(default_factory=set)

    def put(self, doc: Doc) -> None:
        self.docs[doc.doc_id] = doc
        self.changed.add(doc.doc_id)

    def drain_changed(self) -> set[bytes]:
        out, self.changed = self.changed, set()
        return out

    def get(self, doc_id: bytes) -> Doc | None:
        return self.docs.get(doc_id)

    def documents(self) -> list[Doc]:
        return [d for d in self.docs.values() if not d.deleted]


def _ids(index: SearchIndex, query: str) -> set[bytes]:
    return {h.doc_id for h in index.search(query)}


def test_is_disk_full_knows_enospc_and_sqlite_full() -> None:
    import errno

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t(x)")
    _cap(db)
    with pytest.raises(sqlite3.OperationalError) as info:
        db.execute("INSERT INTO t VALUES (randomblob(100000))")
    assert is_disk_full(info.value)
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(DiskFull("x"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("no such table: t"))
    assert str(DiskFull("3 op(s) not stored")) == (
        "disk full: 3 op(s) not stored; free some space on the disk")


def test_index_write_on_a_full_disk_raises_disk_full_and_keeps_the_change_owed(
        tmp_path: Path) -> None:
    index = SearchIndex(tmp_path / "idx.sqlite")
    lib = Lib()
    lib.put(Doc(b"a" * 16, "避難所の案内", "体育館に避難してください"))
    assert refresh_index(index, lib) == 1
    _cap(index._db)  # the test fills the index's "disk"
    lib.put(Doc(b"b" * 16, "給水所", "給水は公園で" + "水" * 20_000))
    # was: OperationalError "cannot rollback - no transaction is active", and the change lost
    with pytest.raises(DiskFull, match="disk full"):
        refresh_index(index, lib)
    assert index.behind and index.owed == {b"b" * 16}
    assert _ids(index, "給水") == set()  # not indexed, but not forgotten
    assert _ids(index, "避難") == {b"a" * 16}  # reads still work
    with pytest.raises(DiskFull):  # still full: still owed
        refresh_index(index, lib)
    assert index.owed == {b"b" * 16}
    _uncap(index._db)  # room again
    assert refresh_index(index, lib) == 1
    assert not index.behind
    assert _ids(index, "給水") == {b"b" * 16}
    index.close()


def test_full_refresh_that_fails_is_owed_whole(tmp_path: Path) -> None:
    path = tmp_path / "idx.sqlite"
    SearchIndex(path).close()
    index = SearchIndex(path)
    lib = Lib()
    for i in range(3):
        lib.put(Doc(bytes([i]) * 16, f"文書{i}", "電話" * 2000))
    _cap(index._db)
    with pytest.raises(DiskFull):
        refresh_index(index, lib, full=True)
    assert index.owed_full
    _uncap(index._db)
    assert refresh_index(index, lib) == 3  # a plain refresh does the owed full one
    assert not index.behind
    assert len(_ids(index, "電話")) == 3
    index.close()


# -- the library service over a real op store ------------------------------------------------


class FakeNode:
    """The part of ``NodeApi`` the library service uses."""

    def __init__(self, state_dir: Path) -> None:
        self.identity = Identity.generate()
        self.state_dir = state_dir
        self.name = "dealer"
        self.events: list[tuple[str, dict[str, Any]]] = []

    def publish(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))

    def announcement_of(self, node_id: NodeId) -> None:
        return None

    def resolve(self, query: str) -> NodeId:
        raise ControlError("not_found", query)


async def _until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LibraryNodeService]:
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time)
    svc = LibraryNodeService(FakeNode(tmp_path), store, trust_path=None,  # type: ignore[arg-type]
                             purge_interval_s=0.02)
    task = asyncio.create_task(svc.run())
    try:
        await svc._ready.wait()  # replayed
        yield svc
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
        await store.close()


def _folder(root: Path, n: int) -> Path:
    folder = root / "import"
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i}.md").write_text(
            f"---\ntitle: 給水所 {i}\ncollection: know-how\n---\n公園で給水します。番号 {i}\n" + "水と食料。" * 2000,
            encoding="utf-8")
    return folder


async def _search(svc: LibraryNodeService, query: str) -> list[str]:
    res = await svc.handlers()["library.search"]({"query": query, "limit": 50})
    return sorted(r["title"] for r in res["results"])


async def test_import_when_the_index_disk_is_full_says_so_and_search_catches_up(
        service: LibraryNodeService, tmp_path: Path) -> None:
    svc = service
    folder = _folder(tmp_path, 5)
    _cap(svc.index._db)  # the index's disk is full, the store's is not
    with pytest.raises(ControlError) as info:
        await svc.handlers()["library.import"]({"path": str(folder)})
    err = info.value
    # was: "OperationalError: cannot rollback - no transaction is active"
    assert err.code == "failed" and err.message.startswith("disk full: the import is stored")
    assert err.data["disk_full"] is True and err.data["ops"] == 5
    stored = [op async for op in svc.store.iter_namespace("library")]
    assert len(stored) == 5  # committed (and offered to peers)
    assert svc.index.behind
    # room again: the running service indexes what it owes, no restart
    _uncap(svc.index._db)
    await _until(lambda: not svc.index.behind, 10, "the index to catch up")
    assert await _search(svc, "給水") == [f"給水所 {i}" for i in range(5)]


async def test_a_write_on_a_full_store_is_refused_as_disk_full(
        service: LibraryNodeService) -> None:
    svc = service
    add = svc.handlers()["library.add"]
    await add({"collection": "work", "title": "first", "body": "避難所は体育館"})
    await _cap_store(svc.store, True)
    second = {"collection": "work", "title": "second", "body": "避難所は学校。" * 3000}
    with pytest.raises(ControlError) as info:
        await add(second)
    assert info.value.code == "failed"
    assert info.value.message == ("disk full: nothing stored; free some space on the disk and"
                                  " try again")
    assert info.value.data["disk_full"] is True
    assert await _search(svc, "避難所") == ["first"]  # reads go on
    await _cap_store(svc.store, False)
    await add(second)
    assert await _search(svc, "避難所") == ["first", "second"]


def test_index_that_cannot_be_created_on_a_full_disk_searches_from_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_init = SearchIndex.__init__

    def full_disk_init(self: SearchIndex, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            raise sqlite3.OperationalError("database or disk is full")
        real_init(self, path)

    monkeypatch.setattr(SearchIndex, "__init__", full_disk_init)
    path = tmp_path / INDEX_NAME
    index = SearchIndex.open_checked(path)
    assert index.in_memory
    assert not list(tmp_path.glob("*.damaged-*"))  # a full disk is no damage
    index.close()
