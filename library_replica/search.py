"""Full-text search over the library: SQLite FTS5, Japanese words of any length.

Theory of operation
-------------------
FTS5's trigram tokenizer finds any substring of three or more characters, in
any script, but nothing shorter -- and Japanese words of one and two
characters are common (避難, 給水, 電話).  ``LIKE`` on a trigram table misses
short non-ASCII patterns in SQLite 3.40, and a scan of 100k documents costs
165-240 ms, so short words go through n-gram indexes instead, the way CJK
analysers do it: a second FTS5 table holds, for every run of letters and
digits, its unigrams and bigrams as tokens of their own (``unicode61``
tokenizer over space-separated n-grams).  A one-character word is a unigram
token and a two-character word a bigram token: an index lookup, not a scan.

A query is split on white space (ASCII or ideographic); every word must match
(AND).  Words of three or more characters go to the trigram table, shorter
ones to the n-gram table.  A query with both kinds runs on the n-gram table
alone when its long words are all letters and digits (a long word there is the
phrase of its bigrams, consecutive tokens within a run: the same substring
semantics), else on the trigram table joined with the n-gram matches.  Results
are ranked by FTS5's bm25 (title weighted above body) of the table the query
ran on.  Filters: collection, tag, author -- each a CROSS JOIN with the FTS
table as the outer loop, because FTS5 answers ``rowid IN (subquery)`` by
re-running its MATCH for every candidate (seconds at 10k documents, measured).
Snippets are cut around the first match and every match in them is
highlighted.

Ranking a very common word exactly costs a lookup per matching document (bm25
reads each one's column sizes): 100-150 ms at 100k documents when a word is in
most of them.  So when a query matches more than ``RANK_WINDOW`` (500) documents,
only the most recently indexed ``RANK_WINDOW`` matches are ranked (newer
information first, which suits an emergency library); the cut is found by
walking the match list without scoring.  ``rank_window=False`` ranks all.

Text is NFKC-normalised before indexing and querying, so full-width Latin
letters and half-width katakana match their usual forms.  Matching is
case-insensitive.  Both short and long words match as substrings.

This is a synchronous SQLite adapter: call it from one thread at a time
(the daemon runs it in a worker thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from library_replica.ops import LibraryError
from meshd.core.codec import pack
from meshd.core.errors import DiskFull, is_disk_full

log = logging.getLogger(__name__)

__all__ = [
    "IndexableDocument",
    "Query",
    "SearchHit",
    "SearchIndex",
    "ngram_text",
    "normalise",
    "parse_query",
    "refresh_index",
]

MAX_QUERY_CHARS = 256
MAX_QUERY_WORDS = 16
MAX_LIMIT = 200
#: at most this many matches are scored (the most recently indexed ones)
RANK_WINDOW = 500
#: a long word matching more documents than this (estimated) is ranked in Python:
#: FTS5's bm25 would first walk all its matches for the IDF (measured crossover)
_PY_RANK_MATCHES = 15_000
#: bm25 column weights: (title, body)
_WEIGHTS = "5.0, 1.0"
_SPLIT = re.compile(r"[\s\u3000]+")


class IndexableDocument(Protocol):
    """What the index reads from a document (``documents.DocumentView`` fits)."""

    @property
    def doc_id(self) -> bytes: ...
    @property
    def collection(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def lang(self) -> str: ...
    @property
    def authors(self) -> frozenset[bytes]: ...


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One ranked result: lower ``score`` is better (bm25)."""

    doc_id: bytes
    collection: str
    title: str
    snippet: str
    score: float


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: words for the trigram table (3+ characters) and the n-gram table."""

    long_words: tuple[str, ...]
    short_words: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.long_words + self.short_words


def normalise(text: str) -> str:
    """NFKC, the form both the index and queries use."""
    return unicodedata.normalize("NFKC", text)


def _is_token_char(ch: str) -> bool:
    # what FTS5's unicode61 keeps inside a token: letters and numbers
    return unicodedata.category(ch)[0] in "LN"


def _runs(text: str) -> Iterable[str]:
    run: list[str] = []
    for ch in text:
        if _is_token_char(ch):
            run.append(ch)
        elif run:
            yield "".join(run)
            run = []
    if run:
        yield "".join(run)


def ngram_text(text: str) -> str:
    """The unigram and bigram tokens of ``text`` (normalised, lower case), space separated."""
    out: list[str] = []
    for run in _runs(normalise(text).lower()):
        out.extend(run)
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return " ".join(out)


def parse_query(text: str) -> Query:
    """Split a query into words (all must match); raises ``LibraryError`` if it has none."""
    if len(text) > MAX_QUERY_CHARS:
        raise LibraryError(f"query longer than {MAX_QUERY_CHARS} characters")
    long_words: list[str] = []
    short_words: list[str] = []
    for raw in _SPLIT.split(normalise(text).strip()):
        word = raw.strip("\"'「」『』()（）")
        if len(word) >= 3:
            long_words.append(word)
        else:
            # a short word is matched through its letters and digits only
            for run in _runs(word.lower()):
                short_words.append(run)
    if not long_words and not short_words:
        raise LibraryError("empty query")
    words = list(dict.fromkeys(long_words)) + list(dict.fromkeys(short_words))
    if len(words) > MAX_QUERY_WORDS:
        raise LibraryError(f"more than {MAX_QUERY_WORDS} words")
    return Query(tuple(dict.fromkeys(long_words)), tuple(dict.fromkeys(short_words)))


def _phrase(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def _digest(doc: IndexableDocument) -> bytes:
    h = hashlib.sha256(pack([doc.collection, doc.title, doc.body, list(doc.tags), doc.lang,
                             sorted(doc.authors)]))
    return h.digest()[:16]


def _bigram_phrase(word: str) -> str:
    w = word.lower()
    return '"' + " ".join(w[i : i + 2] for i in range(len(w) - 1)) + '"'


def _snippet(text: str, words: tuple[str, ...], marks: tuple[str, str], width: int) -> str:
    if not text:
        return ""
    pattern = re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)),
                         re.IGNORECASE)
    first = pattern.search(text)
    start = 0 if first is None else max(0, first.start() - width // 4)
    end = min(len(text), start + width)
    window = text[start:end]
    body = pattern.sub(lambda m: f"{marks[0]}{m.group(0)}{marks[1]}", window)
    body = body.replace("\n", " ")
    return ("…" if start > 0 else "") + body + ("…" if end < len(text) else "")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs(
    id INTEGER PRIMARY KEY,
    doc_id BLOB UNIQUE NOT NULL,
    collection TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    lang TEXT NOT NULL,
    ngram_title TEXT NOT NULL,
    ngram_body TEXT NOT NULL,
    digest BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_collection ON docs(collection);
CREATE TABLE IF NOT EXISTS doc_tags(tag TEXT NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY(tag, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS doc_authors(author BLOB NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY(author, id)) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS tri USING fts5(
    title, body, content='docs', content_rowid='id', tokenize='trigram');
CREATE VIRTUAL TABLE IF NOT EXISTS ngram USING fts5(
    ngram_title, ngram_body, content='docs', content_rowid='id',
    tokenize='unicode61 remove_diacritics 0');
"""


class SearchIndex:
    """The library's search index in one SQLite database (``:memory:`` by default)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # character totals of normalised titles and bodies: the average document
        # length for ranking a window in Python (one pass at open, kept up to date)
        n, tl, bl = self._db.execute(
            "SELECT count(*), total(length(title)), total(length(body)) FROM docs").fetchone()
        self._n, self._len_total = int(n), float(tl) + float(bl)
        #: documents whose indexing failed (a full disk): ``refresh_index`` retries them
        self.owed: set[bytes] = set()
        #: a whole refresh is owed (the one at start failed)
        self.owed_full = False
        self.in_memory = str(path) == ":memory:"

    @property
    def behind(self) -> bool:
        """True while changes of the library are not in the index (see ``owed``)."""
        return bool(self.owed) or self.owed_full

    @classmethod
    def open_checked(cls, path: Path) -> SearchIndex:
        """Open the index at ``path``; a damaged one is moved aside and started afresh.

        The index is derived from the op store (the library service refreshes it from the
        stored ops at every start), so a damaged file — fails ``PRAGMA quick_check``, or is
        no database at all — costs a rebuild, never data.  Logged once, with where the old
        file went.
        """
        try:
            return cls._open_checked(path)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
        # the disk is full and the file cannot be opened (or created): search from memory
        # until the next start; the library service fills it from the op store
        log.warning("disk full: cannot open the search index %s; searching an index in memory"
                    " until the next start", path)
        return cls(":memory:")

    @classmethod
    def _open_checked(cls, path: Path) -> SearchIndex:
        problem: str | None = None
        if path.exists():
            try:
                db = sqlite3.connect(str(path), isolation_level=None)
                try:
                    rows = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
                finally:
                    db.close()
                if rows != ["ok"]:
                    problem = "; ".join(rows[:3])
            except sqlite3.DatabaseError as exc:
                if is_disk_full(exc):
                    raise
                problem = str(exc)
        if problem is None:
            try:
                return cls(path)
            except sqlite3.DatabaseError as exc:
                if is_disk_full(exc):  # a full disk is no damage: keep the file
                    raise
                problem = str(exc)
        aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                part.replace(aside.with_name(aside.name + suffix))
        log.warning("search index %s was damaged (%s): moved to %s, rebuilding it from the"
                    " op store", path, problem, aside)
        return cls(path)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __len__(self) -> int:
        row = self._db.execute("SELECT count(*) FROM docs").fetchone()
        return int(row[0])

    def _remove(self, doc_id: bytes) -> None:
        row = self._db.execute(
            "SELECT id, title, body, ngram_title, ngram_body FROM docs WHERE doc_id = ?",
            (doc_id,)).fetchone()
        if row is None:
            return
        rid, title, body, ng_title, ng_body = row
        self._n -= 1
        self._len_total -= len(title) + len(body)
        self._db.execute("INSERT INTO tri(tri, rowid, title, body) VALUES('delete', ?, ?, ?)",
                         (rid, title, body))
        self._db.execute(
            "INSERT INTO ngram(ngram, rowid, ngram_title, ngram_body) VALUES('delete', ?, ?, ?)",
            (rid, ng_title, ng_body))
        self._db.execute("DELETE FROM doc_tags WHERE id = ?", (rid,))
        self._db.execute("DELETE FROM doc_authors WHERE id = ?", (rid,))
        self._db.execute("DELETE FROM docs WHERE id = ?", (rid,))

    def _insert(self, doc: IndexableDocument, digest: bytes) -> None:
        title, body = normalise(doc.title), normalise(doc.body)
        ng_title, ng_body = ngram_text(title), ngram_text(body)
        cur = self._db.execute(
            "INSERT INTO docs(doc_id, collection, title, body, lang, ngram_title, ngram_body,"
            " digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (doc.doc_id, doc.collection, title, body, doc.lang, ng_title, ng_body, digest))
        rid = cur.lastrowid
        self._n += 1
        self._len_total += len(title) + len(body)
        self._db.execute("INSERT INTO tri(rowid, title, body) VALUES (?, ?, ?)", (rid, title, body))
        self._db.execute("INSERT INTO ngram(rowid, ngram_title, ngram_body) VALUES (?, ?, ?)",
                         (rid, ng_title, ng_body))
        self._db.executemany("INSERT OR IGNORE INTO doc_tags(tag, id) VALUES (?, ?)",
                             [(normalise(t).lower(), rid) for t in doc.tags])
        self._db.executemany("INSERT OR IGNORE INTO doc_authors(author, id) VALUES (?, ?)",
                             [(a, rid) for a in doc.authors])

    def upsert_many(self, docs: Iterable[IndexableDocument]) -> int:
        """Index (or re-index) documents in one transaction; returns how many changed.

        A document whose content is what the index holds already is skipped, so
        re-feeding a whole library after a restart costs little.
        """
        n = 0
        with self._transaction("index"):
            for doc in docs:
                digest = _digest(doc)
                row = self._db.execute("SELECT digest FROM docs WHERE doc_id = ?",
                                       (doc.doc_id,)).fetchone()
                if row is not None and row[0] == digest:
                    continue
                self._remove(doc.doc_id)
                self._insert(doc, digest)
                n += 1
        return n

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """BEGIN ... COMMIT; on failure nothing is kept, and a full disk raises ``DiskFull``.

        SQLite may roll back by itself on a full disk ("database or disk is full"); a
        ROLLBACK then fails with "no transaction is active" and must not hide the cause.
        """
        try:
            self._db.execute("BEGIN")
            yield
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._recount()
            if is_disk_full(exc):
                raise DiskFull(f"cannot {what} in the search index") from None
            raise

    def upsert(self, doc: IndexableDocument) -> None:
        """Index (or re-index) one document."""
        self.upsert_many([doc])

    def _recount(self) -> None:
        n, tl, bl = self._db.execute(
            "SELECT count(*), total(length(title)), total(length(body)) FROM docs").fetchone()
        self._n, self._len_total = int(n), float(tl) + float(bl)

    def doc_ids(self) -> set[bytes]:
        """Ids of every indexed document."""
        return {r[0] for r in self._db.execute("SELECT doc_id FROM docs")}

    def remove(self, doc_id: bytes) -> None:
        """Drop a document from the index (deleted, or hidden by the block list)."""
        with self._transaction("remove a document"):
            self._remove(doc_id)

    def search(self, text: str, *, collection: str | None = None, tag: str | None = None,
               author: bytes | None = None, limit: int = 10,
               marks: tuple[str, str] = ("«", "»"), snippet_chars: int = 80,
               rank_window: bool = True) -> list[SearchHit]:
        """Ranked documents matching every word of ``text``, with highlighted snippets.

        With ``rank_window`` (the default) a query matching more than
        ``RANK_WINDOW`` documents ranks the most recently indexed ``RANK_WINDOW``
        of them; ``rank_window=False`` ranks every match (slower for common words).
        """
        q = parse_query(text)
        limit = max(1, min(limit, MAX_LIMIT))
        # FTS5 answers "rowid IN (subquery)" by re-running its MATCH once per candidate
        # (seconds, measured), so every filter is a CROSS JOIN with the FTS table as
        # the outer loop (CROSS JOIN fixes the join order in SQLite), and the short
        # words of a mixed query are a materialised set joined the same way.
        table = "tri" if q.long_words else "ngram"
        match = " AND ".join(_phrase(w) for w in (q.long_words or q.short_words))
        ctes: list[str] = []
        cte_params: list[object] = []
        joins: list[str] = []
        join_params: list[object] = []
        if q.long_words and q.short_words:
            if all(_is_token_char(c) for w in q.long_words for c in w):
                # one MATCH on the n-gram table: a long word is the phrase of its
                # bigrams, which are consecutive tokens there (same substring semantics)
                table = "ngram"
                match = " AND ".join([_bigram_phrase(w) for w in q.long_words]
                                     + [_phrase(w) for w in q.short_words])
            else:
                ctes.append("short AS MATERIALIZED"
                            " (SELECT rowid AS id FROM ngram WHERE ngram MATCH ?)")
                cte_params.append(" AND ".join(_phrase(w) for w in q.short_words))
                joins.append(f"CROSS JOIN short ON short.id = {table}.rowid")
        if collection is not None:
            joins.append(f"CROSS JOIN docs dc ON dc.id = {table}.rowid AND dc.collection = ?")
            join_params.append(collection)
        if tag is not None:
            joins.append(f"CROSS JOIN doc_tags tg ON tg.id = {table}.rowid AND tg.tag = ?")
            join_params.append(normalise(tag).lower())
        if author is not None:
            joins.append(f"CROSS JOIN doc_authors au ON au.id = {table}.rowid AND au.author = ?")
            join_params.append(author)
        with_sql = f"WITH {', '.join(ctes)} " if ctes else ""
        from_sql = f"FROM {table} {' '.join(joins)} WHERE {table} MATCH ?"
        params: list[object] = [*cte_params, *join_params, match]
        try:
            # Rank at most RANK_WINDOW candidates: bm25 costs a row lookup per match,
            # and a common word (避難 in most documents) would otherwise be scored
            # 60,000 times.  The window holds the most recently indexed matches; the
            # cut is found by walking the match list alone, which is cheap.
            cut = self._db.execute(
                f"{with_sql}SELECT {table}.rowid {from_sql}"
                f" ORDER BY {table}.rowid DESC LIMIT 1 OFFSET ?", [*params, RANK_WINDOW - 1]
            ).fetchone() if rank_window else None
            if cut is not None:
                from_sql += f" AND {table}.rowid >= ?"
                params.append(cut[0])
            if cut is not None and len(q.long_words) == 1 and not q.short_words and (
                    self._estimated_matches(cut[0]) > _PY_RANK_MATCHES):
                # FTS5's bm25 first counts every document holding the phrase (its
                # IDF): 20+ ms for a 4-character word in most of 100k documents.  With
                # one word the IDF is the same for every candidate, so the window is
                # ranked here with the rest of the formula, on the candidates' text.
                ids = [r[0] for r in self._db.execute(
                    f"{with_sql}SELECT {table}.rowid {from_sql}", params)]
                return self._rank_window(ids, q.words[0], limit, marks, snippet_chars)
            # rank row ids first and read the documents of the top ``limit`` only: a
            # join before the sort would read the body of every match
            top = (f"top AS (SELECT {table}.rowid AS id, bm25({table}, {_WEIGHTS}) AS s"
                   f" {from_sql} ORDER BY s LIMIT ?)")
            sql = (f"WITH {', '.join([*ctes, top])} SELECT d.doc_id, d.collection, d.title,"
                   " d.body, top.s FROM top JOIN docs d ON d.id = top.id ORDER BY top.s")
            rows = self._db.execute(sql, [*params, limit]).fetchall()
        except sqlite3.OperationalError as exc:  # an FTS5 syntax the quoting did not cover
            raise LibraryError(f"query refused by FTS5: {exc}") from None
        words = q.words
        return [SearchHit(doc_id=r[0], collection=r[1], title=r[2],
                          snippet=_snippet(r[3] or r[2], words, marks, snippet_chars),
                          score=float(r[4]))
                for r in rows]


    def _estimated_matches(self, cut_rowid: int) -> float:
        """Matches in the whole table, from the density of the newest window."""
        top = self._db.execute("SELECT max(id) FROM docs").fetchone()[0] or cut_rowid
        return RANK_WINDOW * self._n / max(1, top - cut_rowid + 1)

    def _rank_window(self, ids: list[int], word: str, limit: int, marks: tuple[str, str],
                     snippet_chars: int) -> list[SearchHit]:
        """BM25 without its IDF factor (constant for one word), FTS5's parameters.

        score = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)), with
        tf = 5 * occurrences in the title + occurrences in the body; returned
        negated, like FTS5's bm25 (lower is better).
        """
        k1, b = 1.2, 0.75
        avg = self._len_total / self._n if self._n else 1.0
        needle = word.lower()
        scored: list[tuple[float, bytes, str, str, str]] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for doc_id, coll, title, body in self._db.execute(
                    "SELECT doc_id, collection, title, body FROM docs WHERE id IN"
                    f" ({','.join('?' * len(chunk))})", chunk):
                tf = 5.0 * title.lower().count(needle) + body.lower().count(needle)
                length = len(title) + len(body)
                score = tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg)) if tf else 0.0
                scored.append((-score, doc_id, coll, title, body))
        scored.sort(key=lambda r: (r[0], r[1]))
        return [SearchHit(doc_id=d, collection=c, title=t,
                          snippet=_snippet(bd or t, (word,), marks, snippet_chars), score=sc)
                for sc, d, c, t, bd in scored[:limit]]


class _Library(Protocol):
    def drain_changed(self) -> set[bytes]: ...
    def get(self, doc_id: bytes) -> IndexableDocumentWithState | None: ...
    def documents(self) -> Iterable[IndexableDocument]: ...


class IndexableDocumentWithState(IndexableDocument, Protocol):
    """An indexable document that may be deleted."""

    @property
    def deleted(self) -> bool: ...


def refresh_index(index: SearchIndex, library: _Library, *, full: bool = False) -> int:
    """Re-index what the library changed since the last call; returns how many changed.

    With ``full`` (after a restart, on a persistent index) every live document
    is offered (unchanged ones are skipped) and indexed documents the library
    no longer shows are removed.

    A write that fails (``DiskFull``) leaves what it did not index owed to the index
    (``SearchIndex.owed``, ``owed_full``): the next call indexes it, so the index
    catches up with the library as soon as there is room again.
    """
    # what is owed stays owed until it is written: ``behind`` holds while a refresh runs
    ids = library.drain_changed() | index.owed
    index.owed = set(ids)
    if full or index.owed_full:
        index.owed_full = True
        live = list(library.documents())
        keep = {d.doc_id for d in live}
        stale = index.doc_ids() - keep
        for doc_id in stale:
            index.remove(doc_id)
        n = index.upsert_many(live) + len(stale)
        index.owed -= ids
        index.owed_full = False
        return n
    changed: list[IndexableDocument] = []
    removed: list[bytes] = []
    for doc_id in ids:
        view = library.get(doc_id)
        if view is None or view.deleted:
            removed.append(doc_id)
        else:
            changed.append(view)
    for doc_id in removed:
        index.remove(doc_id)
        index.owed.discard(doc_id)
    n = index.upsert_many(changed) + len(removed)
    index.owed -= ids
    return n
