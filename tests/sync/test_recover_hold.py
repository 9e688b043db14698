"""After ``meshd --recover-store`` a node holds writes that would fork its own chain (issue 11).

The store came back empty: this node's own ops live only at its neighbours.  A
chained write before they are back would be seq 1 again, a second op at a taken
position: peers quarantine the node.  ``SyncNodeService`` holds such writes
while the marker ``--recover-store`` leaves is present, and releases them once
every neighbour up has completed a reconciliation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.core.identity import Identity
from sync.errors import SyncLocalError
from sync.node_service import RESYNC_MARKER, SyncNodeService
from sync.store import OpStore
from tests.sync.conftest import WALL_S
from tests.sync.helpers import chain

HLC0 = int(WALL_S * 1000) << 16


class _Node:
    """The NodeApi parts SyncNodeService reads."""

    def __init__(self, state_dir: Path, identity: Identity) -> None:
        self.state_dir = state_dir
        self.identity = identity

    async def open_stream(self, peer: bytes, service: str) -> Any:  # pragma: no cover - unused
        raise ConnectionError("no streams in this test")

    def announcement_of(self, node_id: bytes) -> None:
        return None


async def test_held_store_refuses_chained_writes_but_not_ephemeral_ones(store: OpStore) -> None:
    key = Ed25519PrivateKey.generate()
    store.local_writes_held = "held: wait for the neighbours"
    with pytest.raises(SyncLocalError, match="held: wait for the neighbours"):
        await store.add_local(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80")
    eph = await store.add_local(key, kind="library.edit", doc_id=b"D" * 16, body=b"\x80",
                                expiry_ms=int(WALL_S * 1000) + 60_000)
    assert eph.seq == 0  # outside any chain: no fork possible
    assert store.author_head(eph.author) is None


async def test_hold_released_after_every_neighbour_reconciled_and_chain_continues(
        tmp_path: Path, open_store: Callable[..., Any]) -> None:
    ident = Identity.generate()
    own_before = chain(ident.signing_key, 3, start_hlc=HLC0)  # what the neighbours hold of ours
    (tmp_path / RESYNC_MARKER).write_text("--recover-store at 20261202T080000\n")
    store: OpStore = await open_store()
    try:
        svc = SyncNodeService(_Node(tmp_path, ident), store)  # type: ignore[arg-type]
        assert store.local_writes_held is not None and "--recover-store" in store.local_writes_held
        with pytest.raises(SyncLocalError, match="fork"):
            await store.add_local(ident.signing_key, kind="library.edit", doc_id=b"D" * 16,
                                  body=b"\x81")
        ann, bob = b"a" * 32, b"b" * 32
        svc.service.neighbour_up(ann)
        svc.service.neighbour_up(bob)
        # ann gave our chain back; bob has not reconciled yet: still held
        await store.apply_remote([o.raw for o in own_before])
        svc._reconciled(ann)
        assert store.local_writes_held is not None and (tmp_path / RESYNC_MARKER).exists()
        status = await svc._h_status({})
        assert status["local_writes_held"] == store.local_writes_held
        svc._reconciled(bob)
        assert store.local_writes_held is None
        assert not (tmp_path / RESYNC_MARKER).exists()
        assert (await svc._h_status({}))["local_writes_held"] is None
        # the next write continues the chain the neighbours gave back: no fork
        op = await store.add_local(ident.signing_key, kind="library.edit", doc_id=b"D" * 16,
                                   body=b"\x81")
        assert (op.seq, op.prev) == (4, own_before[-1].op_id)
    finally:
        await store.close()


async def test_no_marker_no_hold(tmp_path: Path, store: OpStore) -> None:
    SyncNodeService(_Node(tmp_path, Identity.generate()), store)  # type: ignore[arg-type]
    assert store.local_writes_held is None


async def test_mail_is_flooded_unless_copies_are_configured(tmp_path: Path,
                                                            store: OpStore) -> None:
    node = _Node(tmp_path, Identity.generate())
    flooding = SyncNodeService(node, store)  # type: ignore[arg-type]
    assert flooding.service.custody is None and flooding.service.status()["custody"] is None
    spraying = SyncNodeService(node, store, mail_copies=4)  # type: ignore[arg-type]
    assert spraying.service.custody is not None and spraying.service.custody.copies == 4
