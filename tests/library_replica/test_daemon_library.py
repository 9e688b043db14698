"""Tier 3: the library, situation files, bulletins and mail in real daemons on loopback.

Three daemons in a line ann -- bob -- cy (static peers; sync carries ops neighbour
to neighbour).  Every node loads the same trust file, naming cy's key as the one
authority.  Node names are not hex: NODE resolves an id prefix first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from library_replica.situation import KIND_SET, prepare_set
from meshd.control.client import ControlClient
from meshd.core.identity import Identity
from sync.node_service import DB_NAME
from sync.store import OpStore
from tests.daemons import (
    MESHCTL,
    Cluster,
    Daemon,
    free_udp_port,
    meshctl_ok,
    meshctl_until,
    wait_until,
)

pytestmark = pytest.mark.slow


_ok = functools.partial(meshctl_ok, timeout=120)


_eventually = meshctl_until


def _titles(res: dict[str, Any]) -> list[str]:
    return [r["title"] for r in res["results"]]


async def _forge_situation(db: Path, victim: bytes) -> None:
    """Store, in a node's database while it is stopped, a write to ``victim``'s record
    by another key (the op is signed, only not authorised): the daemon will offer it."""
    store = await OpStore.open(db, wall_clock=time.time)
    store.register_authorizer("situation", lambda op, now: None)  # the forger's own rules
    doc_id, body = prepare_set(victim, "shelter", {"capacity": 9999, "note": "forged"})
    await store.add_local(Identity.generate().signing_key, kind=KIND_SET, doc_id=doc_id,
                          body=body)
    await store.close()


@pytest.fixture(scope="module")
def line() -> Iterator[Cluster]:
    with Cluster(log_level="info") as cl:
        ids = {}
        for name in ("ann", "bob", "cy"):
            (cl.root / name).mkdir()
            ids[name] = Identity.load_or_create(cl.root / name)
        root = Identity.generate()
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(root.ed25519_pub, 1, {ids["cy"].ed25519_pub: Authority(
            ids["cy"].ed25519_pub, AuthorityRole.CITY, "City of Test")}).to_toml())
        asyncio.run(_forge_situation(cl.root / "ann" / DB_NAME, ids["cy"].ed25519_pub))
        ports = {n: free_udp_port() for n in ("ann", "bob", "cy")}
        for name, peers in (("ann", []), ("bob", ["ann"]), ("cy", ["bob"])):
            args = ["--listen", f"127.0.0.1:{ports[name]}", "--trust", str(trust)]
            for p in peers:
                args += ["--peer", f"127.0.0.1:{ports[p]}"]
            cl.add(name, args)
        for d in cl:
            d.wait_ready()
        wait_until(lambda: "ann" in cl["bob"].neighbours() and "cy" in cl["bob"].neighbours(),
                   30, what="ann -- bob -- cy linked")
        yield cl


def test_add_at_one_end_found_at_the_other_then_edit_show_history(line: Cluster) -> None:
    ann, cy = line["ann"], line["cy"]
    res = _ok(ann, "library", "add", "--collection", "know-how", "--title", "給水所の案内",
              "--body", "避難所の給水は午前9時から。Water from nine.", "--tag", "water",
              "--lang", "ja")
    doc = res["doc_id"]
    assert len(doc) == 32
    # a two-character Japanese word, two hops away
    hits = _eventually(cy, lambda r: r if _titles(r) else None, "library", "search", "給水",
                       what="cy finds the new document")
    assert hits["results"][0]["doc_id"] == doc and "«給水»" in hits["results"][0]["snippet"]
    # edit at the far end (by prefix), found back at the first end
    _ok(cy, "library", "edit", doc[:8], "--body", "避難所の給水は午前10時から。Water from ten.")
    _eventually(ann, lambda r: r if _titles(r) else None, "library", "search", "ten",
                what="ann finds cy's edit")
    _ok(cy, "library", "edit", doc, "--title", "給水所の案内（改訂）")
    shown = _eventually(ann, lambda r: r if r["title"].endswith("（改訂）") else None,
                        "library", "show", doc)
    assert shown["body"] == "避難所の給水は午前10時から。Water from ten."
    assert shown["tags"] == ["water"] and shown["lang"] == "ja" and shown["changes"] == 3
    assert len(shown["authors"]) == 2
    hist = _ok(ann, "library", "history", doc)["history"]
    assert [h["kind"] for h in hist] == ["library.create", "library.edit", "library.edit"]
    assert [h["author_name"] for h in hist] == ["ann", "cy", "cy"]
    assert hist[2]["fields"] == ["title"]
    # the old wording is gone from the index; unknown ids are "not found" (exit 4)
    assert _ok(ann, "library", "search", "nine")["results"] == []
    rc, err = ann.meshctl("library", "show", "0" * 32)
    assert rc == 4 and err["error"]["code"] == "not_found"
    rc, err = ann.meshctl("library", "edit", doc)  # neither --body nor --title
    assert rc == 2


def test_import_a_thousand_files_export_and_reimport_unchanged(line: Cluster,
                                                                tmp_path: Path) -> None:
    ann, bob = line["ann"], line["bob"]
    src = tmp_path / "src"
    for i in range(1000):
        d = src / ("work" if i % 2 else "social")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"doc{i:04d}.md").write_text(
            f"---\ntitle: Note {i}\ncollection: {d.name}\ntags: [bulk, n{i % 7}]\n---\n"
            f"Body of note {i}: 備蓄{i} marker{i:04d}\n", encoding="utf-8")
    (src / "broken.md").write_text("---\ntitle: no end\n", encoding="utf-8")
    rc, res = ann.meshctl("library", "import", str(src), timeout=120)
    assert rc == 1, res  # one file had an error: the import did not do all it was asked
    assert len(res["added"]) == 1000 and res["changed"] == [] and res["ops"] == 1000
    assert [e["path"] for e in res["errors"]] == ["broken.md"]
    hit = _ok(ann, "library", "search", "marker0777")["results"]
    assert [h["title"] for h in hit] == ["Note 777"]
    assert len(_ok(ann, "library", "search", "note", "--collection", "work",
                   "--limit", "200")["results"]) == 200
    # export, then re-import the export: every file unchanged
    out = tmp_path / "export"
    exp = _ok(ann, "library", "export", str(out))
    n_docs = len(exp["added"])
    assert n_docs >= 1000 and len(list(out.rglob("*.md"))) == n_docs
    back = _ok(ann, "library", "import", str(out))
    assert len(back["unchanged"]) == n_docs and back["added"] == back["changed"] == []
    assert back["summary"].startswith("0 added, 0 changed")
    # an edited exported file comes back as one change
    f = next(out.rglob("Note-5-*.md"))
    f.write_text(f.read_text(encoding="utf-8").replace("marker0005", "marker5555"),
                 encoding="utf-8")
    back = _ok(ann, "library", "import", str(out))
    assert len(back["changed"]) == 1 and back["ops"] == 1
    # and the whole lot reached the neighbour
    _eventually(bob, lambda r: r if _titles(r) == ["Note 5"] else None, "library", "search",
                "marker5555", timeout=60, what="bob has the bulk import and the change")


async def _import_watching_events(sock: Path, folder: Path) -> tuple[Any, list[tuple[str, Any]]]:
    async with await ControlClient.connect(sock, timeout=5) as client:
        sub = await client.subscribe(["library.*"])
        res = await client.call("library.import", {"path": str(folder)}, timeout=60)
        events: list[tuple[str, Any]] = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for ev in sub:
                    events.append(ev)
        return res, events


def test_import_progress_events_and_the_progress_bar(line: Cluster, tmp_path: Path) -> None:
    bob = line["bob"]
    for i in range(40):
        (tmp_path / f"p{i:02d}.md").write_text(f"# Progress {i}\n\nprogress body {i}\n",
                                               encoding="utf-8")
    res, events = asyncio.run(_import_watching_events(bob.state_dir / "control.sock", tmp_path))
    assert len(res["added"]) == 40
    progress = [d for e, d in events if e == "library.progress"]
    assert progress and all(d["op"] == "import" and d["total"] == 40 for d in progress)
    assert {"phase": "writing", "done": 40} in [{"phase": d["phase"], "done": d["done"]}
                                                for d in progress]
    changed = [d for e, d in events if e == "library.changed"]
    assert len(changed) == 1 and changed[0]["count"] == 40  # one event for the whole import
    # without --json: a bar on stderr, the summary on stdout
    r = subprocess.run([*MESHCTL, "--state-dir", str(bob.state_dir), "library", "export",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"export {tmp_path / 'out'}: ") and " added, " in r.stdout
    assert "writing  [" in r.stderr and "#" * 30 in r.stderr


def test_situation_owner_writes_and_a_forged_write_is_refused(line: Cluster) -> None:
    ann, bob, cy = line["ann"], line["bob"], line["cy"]
    rec = _ok(cy, "situation", "set", "shelter", "--field", "capacity=40",
              "--field", "name=Gym", "--field", 'supplies={"water": 120}')
    assert rec["fields"] == {"capacity": 40, "name": "Gym", "supplies": {"water": 120}}
    _ok(ann, "situation", "set", "vehicle", "--field", "battery_offer_kwh=12.5",
        "--field", "available=true")
    shown = _eventually(ann, lambda r: r if r["records"] else None, "situation", "show", "cy",
                        what="ann sees cy's shelter")
    assert shown["records"][0]["fields"]["capacity"] == 40
    _eventually(bob, lambda r: r if len(r["records"]) == 2 else None, "situation", "list",
                what="bob sees both records")
    # ann's store has held, since before it started, a write to cy's shelter record
    # signed by another key: no node shows it, and bob refused it when ann offered it
    for d in (ann, bob, cy):
        fields = _ok(d, "situation", "show", "cy")["records"][0]["fields"]
        assert fields["capacity"] == 40 and "note" not in fields, (d.name, fields)
    refused = _eventually(bob, lambda r: r if r["refused"].get("unauthorized") else None,
                          "sync", "status", what="bob refused the forged op")
    assert refused["refused"]["unauthorized"] >= 1
    listed = _ok(bob, "situation", "list", "--kind", "vehicle")["records"]
    assert [(r["name"], r["fields"]["battery_offer_kwh"]) for r in listed] == [("ann", 12.5)]
    rc, err = ann.meshctl("situation", "set", "shelter", "--field", "capacity=-3")
    assert rc == 2, err


def test_bulletins_need_authority_and_expire_everywhere(line: Cluster) -> None:
    ann, bob, cy = line["ann"], line["bob"], line["cy"]
    rc, err = ann.meshctl("bulletin", "publish", "--title", "Fake", "--body", "not an authority")
    assert rc == 1 and "not an authority" in err["error"]["message"]
    listed = _ok(cy, "bulletin", "list")
    assert listed["trust"]["authority"] is True and listed["trust"]["version"] == 1
    long = _ok(cy, "bulletin", "publish", "--title", "給水情報", "--body", "Water at the gym",
               "--expires", "3600")
    short = _ok(cy, "bulletin", "publish", "--title", "Short", "--body", "gone soon",
                "--expires", "4")
    assert long["authority"] == {"name": "City of Test", "role": "city"}
    for d in (ann, bob):
        _eventually(d, lambda r: r if len(r["bulletins"]) == 2 else None, "bulletin", "list",
                    what=f"{d.name} has both bulletins")
    # the short one passes its expiry: gone on every node, the other stays
    deadline_s = short["expires_ms"] / 1000 - time.time()
    assert deadline_s < 5
    for d in (ann, bob, cy):
        left = _eventually(d, lambda r: r if len(r["bulletins"]) == 1 else None,
                           "bulletin", "list", timeout=15, what=f"{d.name} drops the expired")
        assert left["bulletins"][0]["op_id"] == long["op_id"]
    assert _ok(ann, "bulletin", "list")["trust"]["authority"] is False


def test_a_restart_replays_the_library_while_status_answers(line: Cluster) -> None:
    ann = line["ann"]
    before = _ok(ann, "library", "search", "note", "--limit", "200")["results"]
    assert len(before) == 200  # the bulk import above
    ann.stop()
    ann.start()
    ann.wait_ready()  # status answers at once; library methods wait for the replay
    assert _ok(ann, "library", "search", "note", "--limit", "200")["results"] == before
    assert _ok(ann, "library", "search", "marker5555")["results"][0]["title"] == "Note 5"
    assert "library replayed" in ann.log()
    wait_until(lambda: "bob" in ann.neighbours(), 30, what="ann linked to bob again")


def _route_gone(d: Daemon, name: str) -> bool:
    rc, res = d.meshctl("routes")
    return rc == 0 and not any(r["name"] == name and r["reachable"] for r in res["routes"])


def test_message_to_a_node_that_is_off_is_queued_carried_and_delivered(line: Cluster) -> None:
    ann, bob, cy = line["ann"], line["bob"], line["cy"]
    _eventually(ann, lambda r: r if any(x["name"] == "cy" and x["reachable"]
                                        for x in r["routes"]) else None, "routes",
                what="ann routes to cy")
    cy.kill9()
    wait_until(lambda: _route_gone(ann, "cy"), 20, what="ann loses its route to cy")
    res = _ok(ann, "send", "cy", "水は体育館にあります")
    assert res["status"] == "queued"
    mid = res["message_id"]
    out = _ok(ann, "mail")["outbox"]
    assert [(m["message_id"], m["status"], m["to_name"]) for m in out] == [(mid, "queued", "cy")]
    _eventually(bob, lambda r: r if r["carried"] == 1 else None, "mail",
                what="bob carries the mail")
    # nothing is known about this node at all: still exit 4
    rc, _ = ann.meshctl("send", "nobody-here", "hello")
    assert rc == 4
    rc, _ = ann.meshctl("send", "ann", "to myself")  # not queued for itself either
    assert rc == 4
    cy.start()
    cy.wait_ready()
    inbox = _eventually(cy, lambda r: r if r["messages"] else None, "messages", timeout=40,
                        what="cy opens the mail")
    assert [(m["text"], m["from_name"], m.get("via")) for m in inbox["messages"]] == [
        ("水は体育館にあります", "ann", "mail")]
    done = _eventually(ann, lambda r: r if r["outbox"][0]["status"] == "delivered" else None,
                       "mail", timeout=40, what="ann sees delivered")
    assert done["outbox"][0]["delivered_ms"] >= done["outbox"][0]["queued_ms"]
    # a restart does not put the message into the inbox twice
    cy.stop()
    cy.start()
    cy.wait_ready()
    # mail.list answers once the library has replayed its ops and opened the mail
    # addressed to it: a second delivery would be in the inbox by then
    _ok(cy, "mail")
    assert len(_ok(cy, "messages")["messages"]) == 1
