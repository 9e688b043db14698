"""Tier 3: the dealer scenario, notices and "is the town up to date?" with real daemons.

Four daemons in a line dealer -- b -- c -- town (static peers on loopback); the
dealer's key is the one authority.  The town and the dealer import the same
folder, the dealer later imports an edited copy: every node ends with one copy
of each document, with the edit, and the same library version.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from library_replica.bulletins import Authority, AuthorityRole, TrustConfig
from meshd.core.identity import Identity
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

NAMES = ("dealer", "bob", "cy", "town")  # not hex: ids resolve before names
FOLDER = {
    "water.md": "---\ntitle: 給水所\ncollection: know-how\n---\n給水は午前9時から体育館で。\n",
    "power/ev.md": "# EV power\n\nCars lend power to shelters.\n",
    "history/flood.md": "---\ntitle: 1959年の洪水\ncollection: history\n---\n堤防が切れた。\n",
}


_ok = functools.partial(meshctl_ok, timeout=120)


_eventually = functools.partial(meshctl_until, timeout=60, step=0.5)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def line() -> Iterator[Cluster]:
    with Cluster(log_level="info") as cl:
        (cl.root / "dealer").mkdir()
        dealer = Identity.load_or_create(cl.root / "dealer")
        trust = cl.root / "trust.toml"
        trust.write_text(TrustConfig(Identity.generate().ed25519_pub, 1, {
            dealer.ed25519_pub: Authority(dealer.ed25519_pub, AuthorityRole.DEALER,
                                          "Dealer")}).to_toml())
        ports = {n: free_udp_port() for n in NAMES}
        for i, n in enumerate(NAMES):
            args = ["--listen", f"127.0.0.1:{ports[n]}", "--trust", str(trust)]
            if i:
                args += ["--peer", f"127.0.0.1:{ports[NAMES[i - 1]]}"]
            cl.add(n, args)
        for d in cl:
            d.wait_ready()
        wait_until(lambda: {"bob", "town"} <= set(cl["cy"].neighbours())
                   and {"dealer", "cy"} <= set(cl["bob"].neighbours()), 30, what="a line of four")
        yield cl


def _docs(d: Daemon) -> list[tuple[str, str]]:
    listed = _ok(d, "library", "list")["documents"]
    return sorted((x["collection"], x["title"]) for x in listed)


def test_town_and_dealer_import_the_same_folder_then_an_edited_copy(
        line: Cluster, tmp_path: Path) -> None:
    dealer, town = line["dealer"], line["town"]
    town_dir = _write(tmp_path / "town" / "sample", FOLDER)
    dealer_dir = _write(tmp_path / "dealer" / "sample", FOLDER)
    a = _ok(town, "library", "import", str(town_dir))
    b = _ok(dealer, "library", "import", str(dealer_dir))
    assert len(a["added"]) == 3 and a["source"] == "sample"
    assert len(b["added"]) + len(b["unchanged"]) == 3
    # the dealer's edited copy, kept under another name: the same --source
    edited = _write(tmp_path / "dealer" / "sample-v2", {
        **FOLDER, "water.md": FOLDER["water.md"].replace("午前9時", "午前10時")})
    c = _ok(dealer, "library", "import", str(edited), "--source", "sample")
    assert c["changed"] == ["water.md"] and len(c["unchanged"]) == 2
    want = [("history", "1959年の洪水"), ("know-how", "EV power"), ("know-how", "給水所")]
    for d in line:
        _eventually(d, lambda r: r if sorted((x["collection"], x["title"])
                                             for x in r["documents"]) == want else None,
                    "library", "list", what=f"{d.name} has one copy of each document")
        hit = _eventually(d, lambda r: r if r["results"] else None, "library", "search",
                          "午前10時", what=f"{d.name} has the edit")
        assert len(hit["results"]) == 1
        body = _ok(d, "library", "show", hit["results"][0]["doc_id"])["body"]
        assert body == "給水は午前10時から体育館で。\n", (d.name, body)  # one copy of the text
        assert _ok(d, "library", "search", "午前9時")["results"] == []
        assert _docs(d) == want

    def one_version() -> set[str] | None:
        seen = {_ok(d, "library", "version")["version"] for d in line}
        return seen if len(seen) == 1 else None

    versions = wait_until(one_version, 60, 0.5, "the same library version everywhere")
    assert len(versions) == 1 and "" not in versions
    # sync status says so, with the dealer's neighbour (after a reconciliation)
    st = _eventually(dealer, lambda r: r if any(p["up_to_date"] for p in r["peers"].values())
                     else None, "sync", "status", timeout=90, what="dealer up to date")
    assert [p["name"] for p in st["peers"].values() if p["up_to_date"]] == ["bob"]
    assert "up to date with bob" in _human(dealer, "sync", "status")
    # the dealer sees which nodes hold its library version
    reach = _eventually(dealer, lambda r: r if r["current"] == 3 else None, "sync", "reach",
                        what="every node holds the dealer's library version")
    assert sorted(n["name"] for n in reach["nodes"] if n["current"]) == ["bob", "cy", "town"]


def _human(d: Daemon, *args: str) -> str:
    r = subprocess.run([*MESHCTL, "--state-dir", str(d.state_dir), *args], capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_notice_update_and_retract_reach_three_hops_and_receipts_count(line: Cluster) -> None:
    dealer, town = line["dealer"], line["town"]
    pub = _ok(dealer, "bulletin", "publish", "--title", "給水情報", "--body", "体育館で給水",
              "--expires", "3600")
    bid = pub["bulletin_id"]
    _eventually(town, lambda r: r if [b["body"] for b in r["bulletins"]] == ["体育館で給水"]
                else None, "bulletin", "list", what="town shows the bulletin")
    reached = _eventually(dealer, lambda r: r if r["bulletins"][0]["reached"] == 4 else None,
                          "bulletin", "list", what="receipts from all four nodes")
    assert reached["bulletins"][0]["version"] == 1
    upd = _ok(dealer, "bulletin", "update", bid[:8], "--body", "公民館に変更")
    assert upd["version"] == 2 and upd["bulletin_id"] == bid
    shown = _eventually(town, lambda r: r if [b["body"] for b in r["bulletins"]] == ["公民館に変更"]
                        else None, "bulletin", "list", what="town shows the update")
    assert shown["bulletins"][0]["version"] == 2 and shown["bulletins"][0]["bulletin_id"] == bid
    # only the publisher changes it; unknown ids are usage errors
    rc, err = town.meshctl("bulletin", "retract", bid)
    assert rc == 1 and "publish" in err["error"]["message"]
    rc, err = dealer.meshctl("bulletin", "retract", "ffffffff")
    assert rc == 2, err
    ret = _ok(dealer, "bulletin", "retract", bid)
    assert ret == {"bulletin_id": bid, "version": 3, "retracted": True}
    for d in line:
        _eventually(d, lambda r: r if r["bulletins"] == [] else None, "bulletin", "list",
                    what=f"{d.name} hides the retracted bulletin")


def test_delete_list_restore_repair_and_bad_input(line: Cluster) -> None:
    dealer, bob, town = line["dealer"], line["bob"], line["town"]
    before = _ok(town, "library", "list")
    rc, err = town.meshctl("library", "delete", "0123456789abcdef0123456789abcdef")
    assert rc == 2 and "no document" in err["error"]["message"]
    rc, err = town.meshctl("library", "delete", "zz")
    assert rc == 2
    assert _ok(town, "library", "list") == before  # nothing changed
    doc = _ok(town, "library", "add", "--collection", "work", "--title", "重複",
              "--body", "first copy")["doc_id"]
    dup = _ok(bob, "library", "add", "--collection", "work", "--title", "重複",
              "--body", "second copy")["doc_id"]
    _eventually(town, lambda r: r if sum(x["title"] == "重複" for x in r["documents"]) == 2
                else None, "library", "list", "--collection", "work")
    dry = _ok(town, "library", "repair", "--dry-run")
    [group] = [g for g in dry["groups"] if g["title"] == "重複"]
    assert group["kept"] in (doc, dup) and dry["ops"] == 0
    rep = _ok(town, "library", "repair")
    assert rep["deleted"] >= 1
    for d in line:
        _eventually(d, lambda r: r if [x["title"] for x in r["documents"]] == ["重複"] else None,
                    "library", "list", "--collection", "work", what=f"{d.name}: one 重複")
    kept = group["kept"]
    gone = dup if kept == doc else doc
    rc, err = town.meshctl("library", "delete", gone)
    assert rc == 2 and "already deleted" in err["error"]["message"]
    _ok(town, "library", "delete", kept)
    for d in line:
        _eventually(d, lambda r: r if not any(x["title"] == "重複" for x in r["documents"])
                    else None, "library", "list", what=f"{d.name} hides the deleted document")
    hist = _ok(town, "library", "history", kept)["history"]
    assert hist[-1]["kind"] == "library.delete"  # history kept
    # only an authority restores it
    rc, err = town.meshctl("library", "restore", kept)
    assert rc == 1 and "authority" in err["error"]["message"]
    _eventually(dealer, lambda r: r if r["deleted"] else None, "library", "show", kept)
    _ok(dealer, "library", "restore", kept)
    _eventually(town, lambda r: r if [x["title"] for x in r["documents"]] == ["重複"] else None,
                "library", "list", "--collection", "work", what="town sees it restored")
