"""The op store and the search index refuse or repair damaged files at open (issue 11, item 9)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from library_replica.search import IndexableDocument, SearchIndex
from sync.errors import StoreCorrupt
from sync.node_service import DB_NAME, open_store
from sync.store import OpStore
from tests.sync.conftest import WALL_S, allow_all


async def _store_with_ops(path: Path, n: int) -> None:
    store = await OpStore.open(path, wall_clock=lambda: WALL_S,
                               authorizers={"library": allow_all})
    key = Ed25519PrivateKey.generate()
    for i in range(n):
        await store.add_local(key, kind="library.edit", doc_id=bytes(16), body=b"x%d" % i * 200)
    await store.close()


async def test_a_corrupt_op_store_is_refused_with_how_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "ops.sqlite"
    await _store_with_ops(path, 300)
    data = bytearray(path.read_bytes())
    data[0:16] = b"not a database!!"  # the header: "file is not a database"
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as err:
        await OpStore.open(path, wall_clock=lambda: WALL_S)
    assert "--recover-store" in str(err.value) and str(path) in str(err.value)


async def test_damaged_pages_fail_the_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "ops.sqlite"
    await _store_with_ops(path, 300)
    data = bytearray(path.read_bytes())
    assert len(data) > 8 * 4096
    data[4096 * 3:4096 * 3 + 4096] = b"\xa5" * 4096  # one b-tree page overwritten
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="damaged"):
        await OpStore.open(path, wall_clock=lambda: WALL_S)


async def test_an_empty_op_store_file_is_not_taken_for_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / DB_NAME
    await _store_with_ops(path, 3)
    path.write_bytes(b"")
    with pytest.raises(StoreCorrupt, match="empty"):
        await open_store(tmp_path)  # the daemon's open
    # a new store (no file yet) still opens
    store = await OpStore.open(tmp_path / "new.sqlite", wall_clock=lambda: WALL_S)
    assert len(store) == 0
    await store.close()


@dataclass(frozen=True)
class _Doc:
    doc_id: bytes
    title: str
    body: str
    collection: str = "know-how"
    tags: tuple[str, ...] = ()
    lang: str = "ja"
    authors: frozenset[bytes] = frozenset()


def test_a_damaged_search_index_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "library-index.sqlite"
    index = SearchIndex(path)
    docs: list[IndexableDocument] = [_Doc(bytes([i]) * 16, f"water supply {i}",
                                          "給水 " * 50 + f"point {i}") for i in range(1, 200)]
    index.upsert_many(docs)
    assert len(index) == 199
    index.close()
    data = bytearray(path.read_bytes())
    data[0:16] = b"garbage-garbage!"
    path.write_bytes(bytes(data))
    fresh = SearchIndex.open_checked(path)
    assert len(fresh) == 0  # empty: the library service refills it from the op store
    fresh.upsert_many(docs)
    assert len(fresh.search("給水")) > 0
    fresh.close()
    assert [p.name.split(".damaged-")[0] for p in tmp_path.iterdir() if ".damaged-" in p.name] \
        == ["library-index.sqlite"]
