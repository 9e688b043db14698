"""Markdown import/export (dealer workflow) and the bundled sample library."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from library_replica.documents import KIND_CREATE, KIND_EDIT, KIND_RESTORE, Library
from library_replica.markdown_io import (
    SAMPLE_DIR,
    ImportOp,
    TextProgress,
    export_folder,
    import_doc_id,
    legacy_doc_id,
    parse_markdown,
    plan_import,
)
from library_replica.ops import LibraryError
from library_replica.search import SearchIndex, refresh_index
from tests.library_replica.factory import Author, hlc


def _submit(lib: Library, who: Author, ops: list[ImportOp], t: int = 1) -> None:
    for i, op in enumerate(ops):
        lib.apply(who.op(op.kind, op.doc_id, op.body, hlc(t, i)))


def test_parse_front_matter_forms() -> None:
    md = parse_markdown("\ufeff---\r\ntitle: '給水'\r\ncollection: work\r\ntags:\r\n  - a\r\n"
                        "  - b\r\nlang: ja\r\n---\r\n本文\r\n")
    assert (md.title, md.collection, md.tags, md.lang, md.body) == (
        "給水", "work", ("a", "b"), "ja", "本文\n")
    assert parse_markdown("# 見出しだけ\n本文").title == "見出しだけ"
    for bad in ("---\ntitle: x\n", "no title at all", "---\n: x\n---\n", "---\nid: zz\ntitle: x\n---\n"):
        with pytest.raises(LibraryError):
            parse_markdown(bad)


def test_sample_library_imports_and_is_searchable() -> None:
    lib, dealer = Library(), Author()
    seen: list[tuple[int, int]] = []
    ops, summary = plan_import(lib, dealer.pub, SAMPLE_DIR, lambda d, t, p: seen.append((d, t)))
    assert 12 <= len(summary.added) <= 20 and not summary.errors, summary.errors
    assert all(op.kind == KIND_CREATE for op in ops)
    assert seen[-1] == (len(ops), len(ops)) and len(seen) == len(ops)
    _submit(lib, dealer, ops)
    langs = {d.lang for d in lib.documents()}
    assert langs == {"ja", "en"}
    assert {d.collection for d in lib.documents()} == {"know-how", "history", "work", "social"}
    idx = SearchIndex()
    refresh_index(idx, lib)
    for word in ("避難", "給水", "充電", "スマートグリッド", "井", "battery", "EV"):
        assert idx.search(word), word
    # importing the same folder again changes nothing
    again, summary2 = plan_import(lib, dealer.pub, SAMPLE_DIR)
    assert again == [] and len(summary2.unchanged) == len(ops)


def test_reimport_reports_added_changed_unchanged_and_errors(tmp_path: Path) -> None:
    lib, dealer = Library(), Author()
    (tmp_path / "a.md").write_text("---\ntitle: 停電\n---\n停電のときは\n", encoding="utf-8")
    (tmp_path / "b.md").write_text("---\ntitle: Water\nlang: en\n---\nBring water.\n",
                                   encoding="utf-8")
    ops, s = plan_import(lib, dealer.pub, tmp_path)
    assert sorted(s.added) == ["a.md", "b.md"]
    _submit(lib, dealer, ops)
    (tmp_path / "a.md").write_text("---\ntitle: 停電\ntags: [電力]\n---\n停電のときは懐中電灯\n",
                                   encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("# New\ntext\n", encoding="utf-8")
    (tmp_path / "bad.md").write_bytes(b"\xff\xfe not utf-8")
    ops, s = plan_import(lib, dealer.pub, tmp_path)
    assert s.added == ["sub/c.md"] and s.changed == ["a.md"] and s.unchanged == ["b.md"]
    assert [e[0] for e in s.errors] == ["bad.md"]
    assert s.line() == "1 added, 1 changed, 1 unchanged, 1 errors"
    assert sorted(op.kind for op in ops) == [KIND_CREATE, KIND_EDIT]
    _submit(lib, dealer, ops, t=2)
    [a] = [d for d in lib.documents() if d.title == "停電"]
    assert a.body == "停電のときは懐中電灯\n" and a.tags == ("電力",)
    # a document deleted in the library but present in the folder is restored
    gone = lib.prepare_delete()
    _submit(lib, dealer, [ImportOp(gone.kind, a.doc_id, gone.body, "a.md")], t=3)
    assert a.doc_id not in {d.doc_id for d in lib.documents()}
    (tmp_path / "bad.md").unlink()
    ops, s = plan_import(lib, dealer.pub, tmp_path)
    assert s.changed == ["a.md"] and [op.kind for op in ops] == [KIND_RESTORE]
    _submit(lib, dealer, ops, t=4)
    assert a.doc_id in {d.doc_id for d in lib.documents()}


def test_export_then_reimport_roundtrips(tmp_path: Path) -> None:
    lib, dealer, other = Library(), Author(), Author()
    ops, _ = plan_import(lib, dealer.pub, SAMPLE_DIR)
    _submit(lib, dealer, ops)
    out = tmp_path / "export"
    bar = io.StringIO()
    s = export_folder(lib, out, TextProgress(bar))
    assert len(s.added) == len(ops) and "\n" in bar.getvalue()
    assert export_folder(lib, out).line() == f"0 added, 0 changed, {len(ops)} unchanged"
    # another dealer imports the export: same ids, nothing to change
    again, s2 = plan_import(lib, other.pub, out)
    assert again == [] and len(s2.unchanged) == len(ops)
    # into an empty library, the export recreates the same documents
    fresh = Library()
    ops2, _ = plan_import(fresh, other.pub, out)
    _submit(fresh, other, ops2)
    a = sorted((d.doc_id, d.title, d.body, d.tags, d.collection, d.lang)
                for d in lib.documents())
    b = sorted((d.doc_id, d.title, d.body, d.tags, d.collection, d.lang)
                for d in fresh.documents())
    assert a == b


def test_import_never_follows_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    secret = tmp_path / "wifi.md"
    secret.write_text("# Wi-Fi\npassword: hunter2\n", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "more.md").write_text("# Outside\nprivate\n", encoding="utf-8")
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "ok.md").write_text("# OK\nfine\n", encoding="utf-8")
    (src / "leak.md").symlink_to(secret)
    (src / "dir-leak").symlink_to(outside, target_is_directory=True)
    (src / "inside.md").symlink_to(src / "real" / "ok.md")  # stays inside: imported once
    lib, dealer = Library(), Author()
    ops, s = plan_import(lib, dealer.pub, src)
    assert s.added == ["real/ok.md"]
    assert sorted(p for p, _ in s.errors) == ["dir-leak", "leak.md"]
    assert all("symbolic link" in e for _, e in s.errors)
    _submit(lib, dealer, ops)
    assert [d.title for d in lib.documents()] == ["OK"]
    assert not any("hunter2" in op.body.decode("utf-8", "replace") for op in ops)


def test_export_never_writes_through_a_preplaced_symlink(tmp_path: Path) -> None:
    lib, dealer = Library(), Author()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.md").write_text("---\ntitle: Alpha\ncollection: work\n---\nA\n",
                                          encoding="utf-8")
    ops, _ = plan_import(lib, dealer.pub, tmp_path / "in")
    _submit(lib, dealer, ops)
    out = tmp_path / "out"
    first = export_folder(lib, out)
    [rel] = first.added
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite", encoding="utf-8")
    target = out / rel
    target.unlink()
    target.symlink_to(victim)  # pre-placed by someone else
    s = export_folder(lib, out)
    assert s.changed == [rel]
    assert victim.read_text(encoding="utf-8") == "do not overwrite"
    assert not target.is_symlink() and "title: \"Alpha\"" in target.read_text(encoding="utf-8")
    # a collection directory replaced by a link elsewhere is refused, nothing written there
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for f in (out / "work").iterdir():
        f.unlink()
    (out / "work").rmdir()
    (out / "work").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(LibraryError, match="symbolic link"):
        export_folder(lib, out)
    assert list(elsewhere.iterdir()) == []


def _folder(root: Path, texts: dict[str, str]) -> Path:
    for rel, text in texts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


SAMPLE = {"a.md": "---\ntitle: 給水\ncollection: work\n---\n給水は午前9時から。\n",
          "sub/b.md": "# Battery\n\nCars lend power.\n"}


def test_two_nodes_import_the_same_folder_one_document_one_copy_then_an_edit(
        tmp_path: Path) -> None:
    town_dir = _folder(tmp_path / "t" / "sample", SAMPLE)
    dealer_dir = _folder(tmp_path / "d" / "sample", SAMPLE)
    town_lib, dealer_lib = Library(), Library()
    town, dealer = Author(), Author()
    t_ops, _ = plan_import(town_lib, town.pub, town_dir)
    d_ops, _ = plan_import(dealer_lib, dealer.pub, dealer_dir)
    assert {o.doc_id for o in t_ops} == {o.doc_id for o in d_ops}  # same ids, any importer
    t_signed = [town.op(o.kind, o.doc_id, o.body, hlc(1, i)) for i, o in enumerate(t_ops)]
    d_signed = [dealer.op(o.kind, o.doc_id, o.body, hlc(2, i)) for i, o in enumerate(d_ops)]
    for op in t_signed:
        town_lib.apply(op)
    for op in d_signed:
        dealer_lib.apply(op)
    # the dealer imports an edited copy (same folder name) before syncing with the town
    (dealer_dir / "a.md").write_text(SAMPLE["a.md"].replace("9時", "10時"), encoding="utf-8")
    e_ops, s = plan_import(dealer_lib, dealer.pub, dealer_dir)
    assert s.changed == ["a.md"] and s.unchanged == ["sub/b.md"]
    e_signed = [dealer.op(o.kind, o.doc_id, o.body, hlc(3, i)) for i, o in enumerate(e_ops)]
    for op in e_signed:
        dealer_lib.apply(op)
    for op in d_signed + e_signed:  # sync, in both directions
        town_lib.apply(op)
    for op in t_signed:
        dealer_lib.apply(op)
    for lib in (town_lib, dealer_lib):
        docs = sorted((d.title, d.body) for d in lib.documents())
        assert docs == [("Battery", "# Battery\n\nCars lend power.\n"),
                        ("給水", "給水は午前10時から。\n")]
    assert town_lib.version() == dealer_lib.version()
    assert set(town_lib.version()) == {"work", "know-how"}


def test_an_import_merges_the_copies_earlier_imports_made(tmp_path: Path) -> None:
    """Before stable ids each importing author made its own copy; a new import deletes them."""
    folder = _folder(tmp_path / "sample", SAMPLE)
    lib, town, dealer = Library(), Author(), Author()
    for t, who in enumerate((town, dealer), 1):  # the old scheme: an id per author and path
        for i, rel in enumerate(sorted(SAMPLE)):
            md = parse_markdown(SAMPLE[rel])
            old = legacy_doc_id(who.pub, rel)
            for j, p in enumerate(lib.prepare_create(who.pub, collection=md.collection,
                                                     title=md.title, body=md.body)):
                lib.apply(who.op(p.kind, old, p.body, hlc(t, i * 10 + j)))
    assert len(list(lib.documents())) == 4  # every document twice
    ops, s = plan_import(lib, dealer.pub, folder)
    assert sorted(s.added) == sorted(SAMPLE) and len(s.merged) == 4
    assert "4 earlier copies merged" in s.line()
    _submit(lib, dealer, ops, t=5)
    assert sorted(d.title for d in lib.documents()) == ["Battery", "給水"]
    assert {d.doc_id for d in lib.documents()} == {import_doc_id("sample", r) for r in SAMPLE}
    # the copies are tombstones with their history kept
    gone = lib.get(legacy_doc_id(town.pub, "a.md"))
    assert gone is not None and gone.deleted
    assert [h.kind for h in lib.history(gone.doc_id)] == [KIND_CREATE, "library.delete"]


def test_a_deleted_document_is_restored_by_an_import_only_when_allowed(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "sample", SAMPLE)
    lib, dealer = Library(), Author()
    ops, _ = plan_import(lib, dealer.pub, folder)
    _submit(lib, dealer, ops)
    doc = import_doc_id("sample", "a.md")
    p = lib.prepare_delete()
    _submit(lib, dealer, [ImportOp(p.kind, doc, p.body, "a.md")], t=2)
    ops, s = plan_import(lib, dealer.pub, folder, may_restore=False)
    assert ops == [] and [e[0] for e in s.errors] == ["a.md"] and "authority" in s.errors[0][1]
    ops, s = plan_import(lib, dealer.pub, folder)
    assert [o.kind for o in ops] == [KIND_RESTORE] and s.changed == ["a.md"]
