"""Library benchmark: search latency beside raw FTS5, import and materialisation rates.

Run: ``.venv/bin/python bench/library.py [--sizes 10000,100000] [--json]``

Synthetic Japanese documents are generated deterministically (seeded
``random.Random``, Zipf-like word frequencies, so common words such as 避難
appear in a large share of documents, the hard case for ranking).  For each
corpus size it measures, over the same data and the same query words:

* ``search`` -- ``SearchIndex.search`` end to end (parse, FTS5 MATCH with bm25
  ranking, join, snippets), 10 results;
* ``raw FTS5`` -- the bare ranked MATCH on the FTS5 table the query goes to
  (trigram for 4-character words, the bigram table for 2-character words):
  ``SELECT rowid FROM t WHERE t MATCH ? ORDER BY rank LIMIT 10``;
* ``scan`` (2-character words only) -- ``instr(body, ?)`` over every document,
  what searching short words would cost without the n-gram index.

Plus the import rate (documents indexed per second) and the materialisation
rate (library ops applied per second through ``Library.apply``: creates and
edits of Yjs text).  Time is bounded: well under three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from library_replica.documents import Library
from library_replica.ops import new_doc_id
from library_replica.search import SearchIndex

WORDS_2 = ["避難", "給水", "充電", "電話", "地震", "停電", "断水", "毛布", "食料", "医療",
           "救助", "安否", "道路", "車両", "電池", "通信", "倉庫", "病院", "学校", "公園",
           "火災", "津波", "台風", "訓練", "名簿", "支援", "物資", "案内", "連絡", "電力"]
WORDS_3 = ["避難所", "給水車", "公民館", "充電器", "発電機", "体育館", "消防団", "自治会",
           "診療所", "駐車場", "保育園", "集会所", "防災無線", "仮設住宅", "炊き出し"]
WORDS_4 = ["避難訓練", "給水車両", "電力融通", "安否確認", "防災倉庫", "非常食料", "救急医療",
           "道路情報", "通信障害", "物資配布"]
WORDS_LONG = ["スマートグリッド", "モバイルバッテリー", "ハザードマップ", "ボランティア",
              "メッシュネットワーク", "ポータブル電源"]
PARTICLES = ["の", "を", "に", "は", "で", "と", "が", "へ", "から", "まで"]
ENDINGS = ["します。", "です。", "ください。", "があります。", "を確認。", "。"]
QUERIES_2 = WORDS_2[:10]
QUERIES_4 = WORDS_4


@dataclass(frozen=True, slots=True)
class SynthDoc:
    doc_id: bytes
    collection: str
    title: str
    body: str
    tags: tuple[str, ...]
    lang: str
    authors: frozenset[bytes]


def _vocab_weights() -> tuple[list[str], list[float]]:
    vocab = WORDS_2 + WORDS_3 + WORDS_4 + WORDS_LONG
    rng = random.Random(7)
    rng.shuffle(vocab)
    # Zipf-like: the k-th word has weight 1/(k+1)
    return vocab, [1.0 / (k + 1) for k in range(len(vocab))]


def generate(n: int, seed: int = 1) -> list[SynthDoc]:
    """``n`` deterministic synthetic Japanese documents (about 120 characters of body each)."""
    rng = random.Random(seed)
    vocab, weights = _vocab_weights()
    authors = [hashlib.sha256(b"author%d" % i).digest() for i in range(50)]
    collections = ["work", "social", "history", "know-how"]
    docs: list[SynthDoc] = []
    for i in range(n):
        parts: list[str] = []
        for _ in range(rng.randint(5, 9)):
            a, b = rng.choices(vocab, weights, k=2)
            parts.append(a + rng.choice(PARTICLES) + b + rng.choice(ENDINGS))
        title = "".join(rng.choices(vocab, weights, k=2)) + f"（第{i}号）"
        docs.append(SynthDoc(new_doc_id(b"bench%d" % i), rng.choice(collections), title,
                             "".join(parts), (rng.choice(WORDS_2),), "ja",
                             frozenset({rng.choice(authors)})))
    return docs


def _pct(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), qs[18]  # p50, p95


def _time_ms(fn: object, *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)  # type: ignore[operator]
    return (time.perf_counter() - t0) * 1000.0


def bench_size(n: int, rounds: int, tmp: Path) -> dict[str, object]:
    docs = generate(n)
    path = tmp / f"bench{n}.sqlite"
    index = SearchIndex(path)
    t0 = time.perf_counter()
    batch = 5000
    for i in range(0, n, batch):
        index.upsert_many(docs[i : i + batch])
    import_s = time.perf_counter() - t0
    raw = sqlite3.connect(str(path))
    out: dict[str, object] = {"documents": n, "import_docs_per_s": round(n / import_s),
                              "import_s": round(import_s, 2)}
    for label, words, table in (("2-char", QUERIES_2, "ngram"), ("4-char", QUERIES_4, "tri")):
        ours: list[float] = []
        base: list[float] = []
        hits = 0
        sql = f"SELECT rowid FROM {table} WHERE {table} MATCH ? ORDER BY rank LIMIT 10"
        for _ in range(rounds):
            for w in words:
                ours.append(_time_ms(index.search, w))
                base.append(_time_ms(lambda w=w, sql=sql: raw.execute(sql, (f'"{w}"',)).fetchall()))
        for w in words:
            hits += len(index.search(w))
        p50, p95 = _pct(ours)
        b50, b95 = _pct(base)
        row: dict[str, object] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                                  "raw_p50_ms": round(b50, 2), "raw_p95_ms": round(b95, 2),
                                  "hits": hits}
        if label == "2-char":
            scans = [_time_ms(lambda w=w: raw.execute(
                "SELECT id FROM docs WHERE instr(body, ?) > 0", (w,)).fetchall())
                for w in words[:3]]
            row["scan_median_ms"] = round(statistics.median(scans), 1)
        matches = raw.execute(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?",
                              (f'"{words[0]}"',)).fetchone()[0]
        row["matches_of_first_word"] = matches
        out[label] = row
    # our search only: a 4-char word with a 2-char word (two FTS tables), and a
    # 2-char word with a collection filter
    for label, queries, kw in (
            ("mixed 4+2", [f"{a} {b}" for a, b in zip(QUERIES_4, QUERIES_2, strict=True)], {}),
            ("2-char + collection", QUERIES_2, {"collection": "work"})):
        times = [_time_ms(lambda q=q, kw=kw: index.search(q, **kw))
                 for _ in range(rounds) for q in queries]
        p50, p95 = _pct(times)
        out[label] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                      "hits": sum(len(index.search(q, **kw)) for q in queries)}
    raw.close()
    index.close()
    return out


def bench_materialise(n_docs: int) -> dict[str, object]:
    """Ops per second through Library.apply: one create and two edits per document."""
    from tests.library_replica.factory import Author, hlc  # real Ed25519 envelopes

    author = Author()
    src = Library()
    docs = generate(n_docs, seed=3)
    ops = []
    for i, d in enumerate(docs):
        [p] = src.prepare_create(author.pub, collection=d.collection, title=d.title, body=d.body)
        op = author.op(p.kind, d.doc_id, p.body, hlc(i))
        src.apply(op)
        ops.append(op)
        for k in range(2):
            body = d.body[: 20 + k] + "（更新）" + d.body[20 + k :]
            [p] = src.prepare_edit(d.doc_id, author.pub, body=body)
            op = author.op(p.kind, d.doc_id, p.body, hlc(i, k + 1))
            src.apply(op)
            ops.append(op)
    lib = Library()
    t0 = time.perf_counter()
    for op in ops:
        lib.apply(op)
    dt = time.perf_counter() - t0
    return {"ops": len(ops), "ops_per_s": round(len(ops) / dt)}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--rounds", type=int, default=5, help="repetitions of each query word")
    ap.add_argument("--materialise-docs", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, object] = {
        "machine": f"{_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}, "
                   f"sqlite {sqlite3.sqlite_version}",
        "sizes": [],
    }
    results["load_before"] = round(os.getloadavg()[0], 2)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmbench") as tmp:
        for n in sizes:
            results["sizes"].append(bench_size(n, args.rounds, Path(tmp)))  # type: ignore[attr-defined]
    results["materialise"] = bench_materialise(args.materialise_docs)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["load_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    print(f"machine: {results['machine']} (1-min load {results['load_before']} before, "
          f"{results['load_after']} after)\n")
    print("| docs | query | search p50 ms | search p95 ms | raw FTS5 p50 ms | raw FTS5 p95 ms"
          " | scan ms | matches of first word |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results["sizes"]:  # type: ignore[attr-defined]
        for label in ("2-char", "4-char", "mixed 4+2", "2-char + collection"):
            q = r[label]
            matches = q.get("matches_of_first_word")
            print(f"| {r['documents']:,} | {label} | {q['p50_ms']} | {q['p95_ms']} | "
                  f"{q.get('raw_p50_ms', '-')} | {q.get('raw_p95_ms', '-')} | "
                  f"{q.get('scan_median_ms', '-')} | "
                  f"{'-' if matches is None else format(matches, ',')} |")
    print()
    for r in results["sizes"]:  # type: ignore[attr-defined]
        print(f"import {r['documents']:,} docs: {r['import_docs_per_s']:,} docs/s "
              f"({r['import_s']} s)")
    m = results["materialise"]
    print(f"materialisation: {m['ops_per_s']:,} ops/s over {m['ops']:,} ops "  # type: ignore[index]
          "(create + 2 edits per document, Yjs text)")
    print(f"total: {results['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
