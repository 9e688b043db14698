"""Search: Japanese words of one, two, three and more characters, English, filters, snippets."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from library_replica.ops import LibraryError, new_doc_id
from library_replica.search import SearchIndex, ngram_text, parse_query, refresh_index

ALICE = b"a" * 32
BOB = b"b" * 32


@dataclass(frozen=True)
class D:
    doc_id: bytes
    collection: str
    title: str
    body: str
    tags: tuple[str, ...] = ()
    lang: str = "ja"
    authors: frozenset[bytes] = frozenset({ALICE})


def _id(name: str) -> bytes:
    return new_doc_id(name.encode())


CORPUS = [
    D(_id("shelter"), "know-how", "避難所の開設手順",
      "地震のあと、避難所を開設する手順です。避難者の受付、給水、毛布の配布を行います。"
      "避難所では避難者名簿を作ります。", ("避難", "防災")),
    D(_id("water"), "know-how", "給水車の巡回",
      "給水車は毎朝九時に公民館へ来ます。ポリタンクを持参してください。", ("給水",)),
    D(_id("ev"), "work", "EV充電と電力融通",
      "停電時は車の電池から充電できます。スマートグリッドの実験で、EVから公民館へ電力を送りました。",
      ("電力", "EV"), authors=frozenset({BOB})),
    D(_id("history"), "history", "町の歴史",
      "この町は江戸時代に宿場町として栄えました。川の氾濫で何度も避難した記録があります。",
      ("歴史",)),
    D(_id("phone"), "social", "電話連絡網",
      "電話がつながらないときは、車のメッシュ通話を使います。", ("連絡",)),
    D(_id("english"), "know-how", "Battery sharing guide",
      "Cars can lend battery power to the shelter. Ask the dealer about the smart grid adapter.",
      ("battery",), lang="en", authors=frozenset({BOB})),
]


@pytest.fixture
def index() -> SearchIndex:
    idx = SearchIndex()
    idx.upsert_many(CORPUS)
    return idx


def _ids(hits: list) -> list[bytes]:  # type: ignore[type-arg]
    return [h.doc_id for h in hits]


def test_ngram_tokens() -> None:
    assert ngram_text("避難所") == "避 難 所 避難 難所"
    assert ngram_text("ＥＶ、充電") == "e v ev 充 電 充電"


def test_query_parsing_splits_by_length() -> None:
    q = parse_query("避難　スマートグリッド EV 所")
    assert q.long_words == ("スマートグリッド",)
    assert q.short_words == ("避難", "ev", "所")
    with pytest.raises(LibraryError):
        parse_query("  、 ")


def test_one_character_word(index: SearchIndex) -> None:
    hits = index.search("毛")
    assert _ids(hits) == [_id("shelter")]
    assert "«毛»" in hits[0].snippet


def test_two_character_words_are_ranked(index: SearchIndex) -> None:
    hits = index.search("避難")
    # the shelter document says it most often and in its title
    assert _ids(hits)[0] == _id("shelter")
    assert set(_ids(hits)) == {_id("shelter"), _id("history")}
    assert "«避難»" in hits[0].snippet
    assert hits[0].score < hits[1].score
    assert _ids(index.search("給水")) == [_id("water"), _id("shelter")]
    assert _ids(index.search("充電")) == [_id("ev")]
    assert _ids(index.search("電話")) == [_id("phone")]


def test_three_and_more_characters(index: SearchIndex) -> None:
    hits = index.search("スマートグリッド")
    assert _ids(hits) == [_id("ev")]
    assert "«スマートグリッド»" in hits[0].snippet
    assert set(_ids(index.search("公民館"))) == {_id("ev"), _id("water")}


def test_english_words_case_insensitive(index: SearchIndex) -> None:
    hits = index.search("BATTERY")
    assert _ids(hits) == [_id("english")]
    assert "«battery»" in hits[0].snippet
    assert _ids(index.search("smart grid")) == [_id("english")]


def test_several_words_must_all_match(index: SearchIndex) -> None:
    assert _ids(index.search("避難 名簿")) == [_id("shelter")]
    assert _ids(index.search("公民館 EV")) == [_id("ev")]
    assert index.search("避難 スマートグリッド") == []


def test_filters_by_collection_tag_author(index: SearchIndex) -> None:
    assert _ids(index.search("避難", collection="history")) == [_id("history")]
    assert _ids(index.search("公民館", tag="給水")) == [_id("water")]
    assert _ids(index.search("公民館", author=BOB)) == [_id("ev")]
    assert index.search("避難", collection="social") == []


def test_reindex_and_remove(index: SearchIndex) -> None:
    old = CORPUS[1]
    index.upsert(D(old.doc_id, old.collection, "給水所", "井戸水を配ります。", ("給水",)))
    assert len(index) == len(CORPUS)
    assert _id("water") not in _ids(index.search("ポリタンク"))
    assert _ids(index.search("井戸")) == [_id("water")]
    index.remove(_id("water"))
    assert index.search("井戸") == []
    assert index.search("給水") and _id("water") not in _ids(index.search("給水"))


def test_fts_syntax_in_queries_is_quoted(index: SearchIndex) -> None:
    assert index.search('"避難" OR NEAR(') == []  # every word is a quoted phrase
    assert index.search("AND") == []
    assert index.search('避難"所') == []


def test_refresh_index_follows_the_library() -> None:
    from library_replica.documents import KIND_CREATE, KIND_DELETE, KIND_EDIT, Library
    from tests.library_replica.factory import Author, hlc

    lib, idx, alice = Library(), SearchIndex(), Author()
    d = new_doc_id(b"x")
    [p] = lib.prepare_create(alice.pub, collection="know-how", title="停電", body="停電のときの連絡")
    lib.apply(alice.op(KIND_CREATE, d, p.body, hlc(1)))
    assert refresh_index(idx, lib) == 1
    assert _ids(idx.search("連絡", author=alice.pub)) == [d]
    [p] = lib.prepare_edit(d, alice.pub, body="断水のときの給水")
    lib.apply(alice.op(KIND_EDIT, d, p.body, hlc(2)))
    refresh_index(idx, lib)
    assert idx.search("連絡") == [] and _ids(idx.search("給水")) == [d]
    lib.apply(alice.op(KIND_DELETE, d, lib.prepare_delete().body, hlc(3)))
    refresh_index(idx, lib)
    assert idx.search("給水") == [] and len(idx) == 0


def test_rank_window_ranks_the_newest_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    import library_replica.search as search_mod

    idx = SearchIndex()
    docs = [D(_id(f"n{i}"), "work", f"文書{i}", "避難" * (1 + i % 3) + "の記録") for i in range(30)]
    idx.upsert_many(docs)
    full = idx.search("避難", limit=30, rank_window=False)
    assert len(full) == 30
    assert _ids(idx.search("避難", limit=30)) == _ids(full)  # under the window: identical
    monkeypatch.setattr(search_mod, "RANK_WINDOW", 5)
    windowed = idx.search("避難", limit=30)
    assert set(_ids(windowed)) == {d.doc_id for d in docs[-5:]}
    scores = [h.score for h in windowed]
    assert scores == sorted(scores)


_CHARS = "避難所給水充電車公民館スマートグリッドあいうabcEV"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=_CHARS + "、。 ", min_size=1, max_size=40), min_size=1,
                max_size=25),
       st.integers(0, 10_000), st.integers(1, 5))
def test_search_equals_a_substring_scan(bodies: list[str], pick: int, length: int) -> None:
    idx = SearchIndex()
    docs = [D(_id(f"h{i}"), "work", f"t{i}", b) for i, b in enumerate(bodies)]
    idx.upsert_many(docs)
    source = bodies[pick % len(bodies)]
    runs = [r for r in re.split(r"[、。 ]+", source) if r]
    if not runs:
        return
    run = runs[pick % len(runs)]
    start = pick % len(run)
    word = run[start : start + length]
    expected = {d.doc_id for d in docs if word.lower() in d.body.lower()}
    got = {h.doc_id for h in idx.search(word, limit=200, rank_window=False)}
    assert got == expected, word


def test_mixed_queries_with_filters(index: SearchIndex) -> None:
    assert _ids(index.search("公民館 EV", collection="work", author=BOB, tag="電力")) == [_id("ev")]
    assert index.search("公民館 EV", collection="know-how") == []
    assert _ids(index.search("避難 名簿", tag="防災", author=ALICE)) == [_id("shelter")]
    assert index.search("避難 名簿", author=BOB) == []
    assert _ids(index.search("給水", collection="know-how", tag="給水")) == [_id("water")]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=_CHARS + "、。 ", min_size=1, max_size=40), min_size=1,
                max_size=25),
       st.integers(0, 10_000), st.integers(0, 10_000))
def test_mixed_query_equals_a_substring_scan(bodies: list[str], p1: int, p2: int) -> None:
    idx = SearchIndex()
    docs = [D(_id(f"m{i}"), "work", f"t{i}", b) for i, b in enumerate(bodies)]
    idx.upsert_many(docs)
    runs = [r for b in bodies for r in re.split(r"[、。 ]+", b) if len(r) >= 3]
    if not runs:
        return
    long_run = runs[p1 % len(runs)]
    long_word = long_run[p1 % (len(long_run) - 2):][:3 + p2 % 3]
    short_run = runs[p2 % len(runs)]
    short_word = short_run[p2 % len(short_run):][:1 + p1 % 2]
    expected = {d.doc_id for d in docs
                if long_word.lower() in d.body.lower() and short_word.lower() in d.body.lower()}
    got = {h.doc_id for h in idx.search(f"{long_word} {short_word}", limit=200,
                                        rank_window=False)}
    assert got == expected, (long_word, short_word)


def test_mixed_query_with_punctuated_long_word_uses_both_tables(index: SearchIndex) -> None:
    index.upsert(D(_id("dash"), "work", "規格", "EV-充電の規格と避難"))
    assert _ids(index.search("EV-充電 避難")) == [_id("dash")]
    assert index.search("EV-充電 給水") == []


def test_persistent_index_after_restart_reindexes_only_changes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from library_replica.documents import Library
    from library_replica.markdown_io import SAMPLE_DIR, plan_import
    from tests.library_replica.factory import Author, hlc

    dealer = Author()
    lib = Library()
    ops, _ = plan_import(lib, dealer.pub, SAMPLE_DIR)
    signed = [dealer.op(op.kind, op.doc_id, op.body, hlc(1, i)) for i, op in enumerate(ops)]
    for op in signed:
        lib.apply(op)
    idx = SearchIndex(tmp_path / "search.sqlite")
    assert refresh_index(idx, lib) == len(ops)
    idx.close()
    # restart: the library is rebuilt from the stored ops, the index file is kept
    lib2 = Library()
    for op in signed:
        lib2.apply(op)
    d = signed[0].doc_id
    gone = lib2.prepare_delete()
    lib2.apply(dealer.op(gone.kind, d, gone.body, hlc(2)))
    idx2 = SearchIndex(tmp_path / "search.sqlite")
    assert refresh_index(idx2, lib2, full=True) == 1  # only the deleted document
    assert d not in idx2.doc_ids() and len(idx2) == len(ops) - 1
    assert refresh_index(idx2, lib2, full=True) == 0
    assert idx2.search("避難")


def test_window_ranking_agrees_with_fts5_bm25(monkeypatch: pytest.MonkeyPatch) -> None:
    import library_replica.search as search_mod

    idx = SearchIndex()
    docs = [D(_id(f"w{k}"), "work", f"文書{k}", "避難所" * k + "あ" * (40 - 3 * k))
            for k in (3, 1, 7, 5, 2, 9, 4)]
    docs.append(D(_id("titled"), "work", "避難所の手引き", "避難所" + "あ" * 37))
    idx.upsert_many(docs)
    fts5 = idx.search("避難所", limit=20, rank_window=False)
    monkeypatch.setattr(search_mod, "_PY_RANK_MATCHES", 0)  # rank the window in Python
    calls: list[int] = []
    real = SearchIndex._rank_window

    def spy(self: SearchIndex, ids: list[int], *a: object) -> object:
        calls.append(len(ids))
        return real(self, ids, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(SearchIndex, "_rank_window", spy)
    monkeypatch.setattr(search_mod, "RANK_WINDOW", len(docs))  # window = every match
    ours = idx.search("避難所", limit=20)
    assert calls == [len(docs)]
    assert _ids(ours) == _ids(fts5)
    assert all("«避難所»" in h.snippet for h in ours)
    monkeypatch.setattr(search_mod, "RANK_WINDOW", 4)  # only the 4 newest are ranked
    assert set(_ids(idx.search("避難所", limit=20))) == {d.doc_id for d in docs[-4:]}
