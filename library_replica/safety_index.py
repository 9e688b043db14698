"""Name search over the safety registry: SQLite FTS5, kana- and width-insensitive.

Theory of operation
-------------------
Each person is one row holding the *folded* name and reading
(``safety.fold``: NFKC, case folded, katakana as hiragana, separators
removed), indexed the way the library's search is (``search.py``): an FTS5
trigram table for words of three or more characters and an FTS5 table of
unigram and bigram tokens for one- and two-character words (田中, ゆき, 田), so
every lookup is an index query, never a scan.  Name and reading are separate
columns, so no n-gram spans the two.

A query is folded and split on white space; every word must match (AND), in
the name or the reading.  When every word is letters and digits (names almost
always are) the query runs on the n-gram table alone, a long word there being
the phrase of its bigrams (consecutive tokens: substring semantics); otherwise
long words go to the trigram table joined with the n-gram matches of short ones.

Ranking: at most ``WINDOW`` matches are read, newest (most recently indexed)
first -- FTS5 walks its match list in rowid order cheaply -- and those are
ordered by how well they match (the whole name or reading, a prefix of one,
anywhere), then newest first.  Synchronous: call it from one thread at a time.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from library_replica.ops import LibraryError
from library_replica.safety import fold
from library_replica.search import ngram_text

__all__ = ["SafetyIndex", "parse_name_query"]

MAX_QUERY_CHARS = 200
MAX_QUERY_WORDS = 8
MAX_LIMIT = 200
#: at most this many matches are ranked (the most recently indexed)
WINDOW = 500
_SPLIT = re.compile(r"[\s\u3000]+")


class IndexablePerson(Protocol):
    """What the index reads from a person (``safety.PersonView`` fits)."""

    @property
    def person_id(self) -> bytes: ...
    @property
    def name(self) -> str: ...
    @property
    def reading(self) -> str: ...


@dataclass(frozen=True, slots=True)
class NameQuery:
    """Folded query words: long (3+ characters) and short ones."""

    long_words: tuple[str, ...]
    short_words: tuple[str, ...]

    @property
    def words(self) -> tuple[str, ...]:
        return self.long_words + self.short_words


def _token_char(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LN"


def parse_name_query(text: str) -> NameQuery:
    """Split and fold a name query; raises ``LibraryError`` when it has no words."""
    if len(text) > MAX_QUERY_CHARS:
        raise LibraryError(f"query longer than {MAX_QUERY_CHARS} characters")
    words = [w for w in (fold(raw) for raw in _SPLIT.split(
        unicodedata.normalize("NFKC", text))) if w]
    # a short word is matched through its letters and digits: one with none matches nothing
    words = list(dict.fromkeys(w for w in words if len(w) >= 3 or any(map(_token_char, w))))
    if not words:
        raise LibraryError("empty query")
    if len(words) > MAX_QUERY_WORDS:
        raise LibraryError(f"more than {MAX_QUERY_WORDS} words")
    return NameQuery(tuple(w for w in words if len(w) >= 3),
                     tuple(w for w in words if len(w) < 3))


def _phrase(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def _ngram_match(word: str) -> str:
    """An FTS5 expression matching ``word`` as a substring on the n-gram table."""
    runs: list[str] = []
    cur = ""
    for ch in word:
        if _token_char(ch):
            cur += ch
        elif cur:
            runs.append(cur)
            cur = ""
    if cur:
        runs.append(cur)
    parts = []
    for run in runs:
        if len(run) <= 2:
            parts.append(_phrase(run))
        else:
            parts.append('"' + " ".join(run[i:i + 2] for i in range(len(run) - 1)) + '"')
    return " AND ".join(parts)


def _digest(name_f: str, reading_f: str) -> bytes:
    return hashlib.sha256(f"{name_f}\x00{reading_f}".encode()).digest()[:12]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS people(
    id INTEGER PRIMARY KEY,
    person_id BLOB UNIQUE NOT NULL,
    name TEXT NOT NULL,
    reading TEXT NOT NULL,
    ng_name TEXT NOT NULL,
    ng_reading TEXT NOT NULL,
    digest BLOB NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS people_tri USING fts5(
    name, reading, content='people', content_rowid='id', tokenize='trigram');
CREATE VIRTUAL TABLE IF NOT EXISTS people_ngram USING fts5(
    ng_name, ng_reading, content='people', content_rowid='id',
    tokenize='unicode61 remove_diacritics 0');
"""


class SafetyIndex:
    """The registry's name index in one SQLite database (``:memory:`` by default)."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM people").fetchone()[0])

    def person_ids(self) -> set[bytes]:
        """Ids of every indexed person."""
        return {r[0] for r in self._db.execute("SELECT person_id FROM people")}

    def _remove(self, pid: bytes) -> None:
        row = self._db.execute("SELECT id, name, reading, ng_name, ng_reading FROM people"
                               " WHERE person_id = ?", (pid,)).fetchone()
        if row is None:
            return
        rid, name, reading, ng_name, ng_reading = row
        self._db.execute("INSERT INTO people_tri(people_tri, rowid, name, reading)"
                         " VALUES('delete', ?, ?, ?)", (rid, name, reading))
        self._db.execute("INSERT INTO people_ngram(people_ngram, rowid, ng_name, ng_reading)"
                         " VALUES('delete', ?, ?, ?)", (rid, ng_name, ng_reading))
        self._db.execute("DELETE FROM people WHERE id = ?", (rid,))

    def upsert_many(self, people: Iterable[IndexablePerson]) -> int:
        """Index (or re-index) people in one transaction; unchanged ones are skipped."""
        n = 0
        self._db.execute("BEGIN")
        try:
            for p in people:
                name_f, reading_f = fold(p.name), fold(p.reading)
                digest = _digest(name_f, reading_f)
                row = self._db.execute("SELECT digest FROM people WHERE person_id = ?",
                                       (p.person_id,)).fetchone()
                if row is not None and row[0] == digest:
                    continue
                self._remove(p.person_id)
                ng_name, ng_reading = ngram_text(name_f), ngram_text(reading_f)
                rid = self._db.execute(
                    "INSERT INTO people(person_id, name, reading, ng_name, ng_reading, digest)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (p.person_id, name_f, reading_f, ng_name, ng_reading, digest)).lastrowid
                self._db.execute("INSERT INTO people_tri(rowid, name, reading) VALUES (?, ?, ?)",
                                 (rid, name_f, reading_f))
                self._db.execute("INSERT INTO people_ngram(rowid, ng_name, ng_reading)"
                                 " VALUES (?, ?, ?)", (rid, ng_name, ng_reading))
                n += 1
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return n

    def remove_many(self, pids: Iterable[bytes]) -> None:
        """Drop people from the index."""
        self._db.execute("BEGIN")
        try:
            for pid in pids:
                self._remove(pid)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def search(self, text: str, *, limit: int = 20) -> list[bytes]:
        """Person ids matching every word of ``text`` (name or reading), best first."""
        q = parse_name_query(text)
        limit = max(1, min(limit, MAX_LIMIT))
        words = q.words
        if all(_token_char(c) for w in words for c in w):
            window = ("SELECT rowid AS id FROM people_ngram WHERE people_ngram MATCH ?"
                      " ORDER BY rowid DESC LIMIT ?")
            params: list[object] = [" AND ".join(_ngram_match(w) for w in words), WINDOW]
        elif not q.short_words:
            window = ("SELECT rowid AS id FROM people_tri WHERE people_tri MATCH ?"
                      " ORDER BY rowid DESC LIMIT ?")
            params = [" AND ".join(_phrase(w) for w in q.long_words), WINDOW]
        else:
            window = ("SELECT people_tri.rowid AS id FROM people_tri CROSS JOIN short"
                      " ON short.id = people_tri.rowid WHERE people_tri MATCH ?"
                      " ORDER BY people_tri.rowid DESC LIMIT ?")
            params = [" AND ".join(_phrase(w) for w in q.long_words), WINDOW]
        # rank the window in SQL: the whole name or reading, then a prefix of one, then
        # anywhere; newest first within a grade
        ctes = f"w AS MATERIALIZED ({window})"
        if "CROSS JOIN short" in window:
            ctes = ("short AS MATERIALIZED (SELECT rowid AS id FROM people_ngram"
                    " WHERE people_ngram MATCH ?), " + ctes)
            params.insert(0, " AND ".join(_ngram_match(w) for w in q.short_words))
        whole, first = "".join(words), words[0]
        sql = (f"WITH {ctes} SELECT p.person_id FROM w CROSS JOIN people p ON p.id = w.id"
               " ORDER BY CASE WHEN p.name = ? OR p.reading = ? THEN 0"
               " WHEN substr(p.name, 1, ?) = ? OR substr(p.reading, 1, ?) = ? THEN 1"
               " ELSE 2 END, p.id DESC LIMIT ?")
        params += [whole, whole, len(first), first, len(first), first, limit]
        try:
            return [r[0] for r in self._db.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            raise LibraryError(f"query refused by FTS5: {exc}") from None
