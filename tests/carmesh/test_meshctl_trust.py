"""meshctl trust: init and key new offline (mode 0600, never in the state directory, never
overwritten); the root's authority remove [--revoke] and revoke [--successor] against a real
library service behind a real control socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carmesh.meshctl import main
from carmesh.meshctl.trust import load_root_key, load_statement, write_root_key
from library_replica.bulletins import (
    KIND_TRUST_UPDATE,
    Authority,
    AuthorityRole,
    TrustConfig,
    TrustStore,
    fingerprint,
    format_fingerprint,
)
from library_replica.keycerts import KIND_REVOKE, parse_key_statement
from library_replica.node_service import LibraryNodeService
from meshd.control.server import ControlServer
from sync.apply import Quotas
from sync.store import OpStore
from tests.library_replica.test_disk_full import FakeNode


def test_init_writes_a_private_root_key_without_a_daemon(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, key = tmp_path / "state", tmp_path / "usb" / "root.key"
    key.parent.mkdir()
    assert main(["--state-dir", str(state), "--json", "trust", "init", "--root-key", str(key),
                 "--community", "Town"]) == 0
    doc = json.loads(capsys.readouterr().out)
    secret, community = load_root_key(key)
    pub = secret.public_key().public_bytes_raw()
    assert doc == {"root_key_file": str(key.resolve()), "root": pub.hex(),
                   "fingerprint": format_fingerprint(fingerprint(pub)), "community": "Town"}
    assert community == "Town" and key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(key)]) == 1
    assert key.read_bytes() == before  # never overwritten
    inside = state / "root.key"
    state.mkdir()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(inside)]) == 2
    assert not inside.exists()
    assert main(["--state-dir", str(state), "trust", "init", "--root-key", str(inside),
                 "--force"]) == 0
    assert inside.exists()


def test_key_new_writes_a_private_key_file_and_statements_are_checked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, key = tmp_path / "state", tmp_path / "desk" / "dealer.key"
    key.parent.mkdir()
    assert main(["--state-dir", str(state), "--json", "trust", "key", "new", str(key)]) == 0
    doc = json.loads(capsys.readouterr().out)
    secret, _ = load_root_key(key)
    assert doc == {"key_file": str(key.resolve()),
                   "key": secret.public_key().public_bytes_raw().hex()}
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    assert main(["--state-dir", str(state), "trust", "key", "new", str(key)]) == 1
    assert key.read_bytes() == before
    state.mkdir()
    assert main(["--state-dir", str(state), "trust", "key", "new", str(state / "k")]) == 2
    assert not (state / "k").exists()
    # a statement file: kind and body, nothing else is taken
    good = tmp_path / "ok.statement"
    good.write_text('kind = "trust.revoke"\nbody = "8101"\n', encoding="utf-8")
    assert load_statement(good) == ("trust.revoke", b"\x81\x01")
    for text in ('kind = "trust.update"\nbody = "00"\n', 'kind = "trust.revoke"\n',
                 'kind = "trust.revoke"\nbody = "zz"\n', "not toml ="):
        bad = tmp_path / "bad.statement"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError):
            load_statement(bad)


# -- the root's tools against a real library service (real op store, real control socket) --

ROOT_SECRET, DEALER_SECRET = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
ROOT_PUB, DEALER = (k.public_key().public_bytes_raw() for k in (ROOT_SECRET, DEALER_SECRET))
CITY, PHONE, NEW_PHONE, CAR = (Ed25519PrivateKey.generate().public_key()
                               .public_bytes_raw() for _ in range(4))


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[tuple[LibraryNodeService, Path, Path]]:
    """(service, control socket, root key file): a node enrolled in Town, version 5, with a
    dealer and a city authority and two listed members (a phone and a car)."""
    root_key = tmp_path / "usb" / "root.key"
    root_key.parent.mkdir()
    write_root_key(root_key, ROOT_SECRET, "Town")
    trust = tmp_path / "town.trust.toml"
    trust.write_text(TrustConfig(
        ROOT_PUB, 5, {DEALER: Authority(DEALER, AuthorityRole.DEALER, "Dealer"),
                      CITY: Authority(CITY, AuthorityRole.CITY, "City")}, "Town",
        members=frozenset({PHONE, CAR})).to_toml(), encoding="utf-8")
    state = tmp_path / "state"
    state.mkdir()
    store = await OpStore.open(tmp_path / "ops.sqlite", wall_clock=time.time,
                               quotas=Quotas(protected_namespaces=frozenset({"trust",
                                                                             "bulletin"})))
    svc = LibraryNodeService(FakeNode(state), store, trust_path=trust)  # type: ignore[arg-type]
    task = asyncio.create_task(svc.run())
    sock = Path(tempfile.mkdtemp(prefix="cmt", dir="/tmp")) / "control.sock"
    server = ControlServer(sock, dict(svc.handlers()))
    await server.start()
    try:
        await svc._ready.wait()
        yield svc, sock, root_key
    finally:
        await server.close()
        shutil.rmtree(sock.parent, ignore_errors=True)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await svc.close()
        await store.close()


async def _meshctl(sock: Path, *argv: str | Path) -> int:
    return await asyncio.to_thread(main, ["--socket", str(sock), "--json",
                                          *(str(a) for a in argv)])


async def _trust_ops(svc: LibraryNodeService) -> list[Any]:
    return [op async for op in svc.store.iter_namespace("trust")]


async def test_authority_remove_revoke_signs_a_configuration_that_refuses_the_key(
        desk: tuple[LibraryNodeService, Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    svc, sock, root_key = desk
    # without --revoke: the city loses its role, its key stays a citizen's
    assert await _meshctl(sock, "trust", "authority", "remove", CITY.hex(),
                          "--root-key", root_key) == 0
    doc = json.loads(capsys.readouterr().out)
    c = svc.trust.config
    assert c is not None and c.version > 5 and CITY not in c.authorities
    assert not svc.trust.revoked(CITY) and DEALER in c.authorities
    assert [a["name"] for a in doc["authorities"]] == ["Dealer"]
    # with --revoke: a stolen dealer key is refused, and so are its new ops
    assert await _meshctl(sock, "trust", "authority", "remove", DEALER.hex(), "--revoke",
                          "--root-key", root_key) == 0
    doc = json.loads(capsys.readouterr().out)
    c = svc.trust.config
    assert c is not None and c.authorities == {} and c.revoked == {DEALER}
    assert doc["revoked"] == [DEALER.hex()] and doc["authorities"] == []
    assert c.members == {PHONE, CAR}  # the listed members stay
    assert svc.trust.revoked(DEALER) and not svc.trust.member(DEALER)
    updates = [op for op in await _trust_ops(svc) if op.kind == KIND_TRUST_UPDATE]
    assert len(updates) == 2 and all(op.author == ROOT_PUB for op in updates)
    # the update is what every node takes: signed by the root, a newer version
    parsed = TrustStore(TrustConfig(ROOT_PUB, 0)).classify(updates[-1])
    assert parsed[1].revoked == {DEALER}
    # removing a key that is no authority fails and signs nothing
    assert await _meshctl(sock, "trust", "authority", "remove", DEALER.hex(),
                          "--root-key", root_key) == 1
    assert len(await _trust_ops(svc)) == 2
    # a root key that is not this community's is refused before anything is signed
    other = root_key.parent / "other.key"
    write_root_key(other, Ed25519PrivateKey.generate(), "Elsewhere")
    assert await _meshctl(sock, "trust", "authority", "remove", CITY.hex(), "--revoke",
                          "--root-key", other) == 1
    assert len(await _trust_ops(svc)) == 2 and not svc.trust.revoked(CITY)


async def test_root_revoke_with_a_successor_lists_the_new_device_and_continues_the_person(
        desk: tuple[LibraryNodeService, Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    svc, sock, root_key = desk
    assert await _meshctl(sock, "trust", "revoke", PHONE.hex(), "--root-key", root_key,
                          "--successor", NEW_PHONE.hex()) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["op_id"]
    c = svc.trust.config
    assert c is not None and PHONE in c.revoked and PHONE not in c.members
    assert c.members == {CAR, NEW_PHONE}  # the new device is enrolled by the root's list
    assert svc.trust.revoked(PHONE) and svc.trust.member(NEW_PHONE)
    # the root's statement names the successor: the new device carries on the person record
    assert svc.trust.keys.successor(PHONE) == NEW_PHONE
    assert svc.trust.keys.person(NEW_PHONE) == PHONE
    stmts = [st for st in (parse_key_statement(op) for op in await _trust_ops(svc)
                           if op.kind == KIND_REVOKE)]
    assert [(st.subject, st.signer, st.successor) for st in stmts] == [
        (PHONE, ROOT_PUB, NEW_PHONE)]
    assert [r["rank"] for r in json.loads(await _show(sock, capsys))["revocations"]] == ["root"]
    # a later configuration keeps the successor a member (the statement folded in)
    assert await _meshctl(sock, "trust", "authority", "remove", CITY.hex(),
                          "--root-key", root_key) == 0
    capsys.readouterr()
    c = svc.trust.config
    assert c is not None and NEW_PHONE in c.members and PHONE in c.revoked
    # without a successor: revoked, and nobody carries it on
    assert await _meshctl(sock, "trust", "revoke", CAR.hex(), "--root-key", root_key) == 0
    capsys.readouterr()
    assert svc.trust.revoked(CAR) and svc.trust.keys.successor(CAR) is None
    assert svc.trust.config is not None and CAR not in svc.trust.config.members
    # a key is not its own successor: refused by the tool, nothing signed
    n = len(await _trust_ops(svc))
    assert await _meshctl(sock, "trust", "revoke", CITY.hex(), "--root-key", root_key,
                          "--successor", CITY.hex()) == 2
    assert len(await _trust_ops(svc)) == n


async def test_the_dealer_revokes_and_reenrols_only_the_members_it_enrolled(
        desk: tuple[LibraryNodeService, Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    svc, sock, root_key = desk
    dealer_key = root_key.parent / "dealer.key"
    write_root_key(dealer_key, DEALER_SECRET, "")
    visitor, visitors_new = (Ed25519PrivateKey.generate().public_key().public_bytes_raw()
                             for _ in range(2))
    assert await _meshctl(sock, "trust", "member", "add", visitor.hex(),
                          "--authority-key", dealer_key) == 0
    capsys.readouterr()
    assert svc.trust.member(visitor) and svc.trust.keys.dealers_of(visitor) == [DEALER]
    # the phone is a member of the root's list, not certified by this dealer: refused,
    # and nothing is signed (no certificate for the successor either)
    n = len(await _trust_ops(svc))
    assert await _meshctl(sock, "trust", "revoke", PHONE.hex(), "--authority-key", dealer_key,
                          "--successor", visitors_new.hex()) == 1
    assert "no certificate of this dealer" in capsys.readouterr().out
    assert len(await _trust_ops(svc)) == n and not svc.trust.revoked(PHONE)
    assert not svc.trust.member(visitors_new)
    # the visitor's phone is lost: the dealer revokes it and re-enrols the new one
    assert await _meshctl(sock, "trust", "revoke", visitor.hex(), "--authority-key",
                          dealer_key, "--successor", visitors_new.hex()) == 0
    capsys.readouterr()
    assert svc.trust.revoked(visitor) and not svc.trust.member(visitor)
    assert svc.trust.member(visitors_new) and svc.trust.keys.dealers_of(visitors_new) == [DEALER]
    assert svc.trust.keys.successor(visitor) == visitors_new
    assert svc.trust.keys.person(visitors_new) == visitor
    show = json.loads(await _show(sock, capsys))
    assert [(r["key"], r["rank"], r["successor"]) for r in show["revocations"]] == [
        (visitor.hex(), "dealer", visitors_new.hex())]
    # what people read: the community, its version, its authorities by name
    assert await asyncio.to_thread(main, ["--socket", str(sock), "trust", "show"]) == 0
    text = capsys.readouterr().out
    assert "community Town, version 5" in text and "authorities: 2" in text
    assert "dealer  Dealer" in text and "city    City" in text and DEALER.hex() in text
    assert "revoked " + visitor.hex()[:16] in text and "by dealer" in text


async def _show(sock: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert await _meshctl(sock, "trust", "show") == 0
    return capsys.readouterr().out
