"""Safety registry benchmark: name search at 100,000 people beside the library search.

Run: ``.venv/bin/python bench/safety.py [--people 100000] [--library-docs 100000] [--json]``

Synthetic people are generated deterministically (seeded ``random.Random``):
common Japanese surnames with Zipf-like frequencies (田中 and 佐藤 are in
thousands of records, the hard case), given names, and readings written at
random in hiragana, katakana or half-width katakana, so every kana query has
to be kana-insensitive to find them all.  Every person is a real signed
``safety.person`` op applied through ``SafetyRegistry.apply`` (the rate is
reported), then indexed by ``SafetyIndex``.

Measured over the same queries (kanji surname, katakana / hiragana /
half-width readings, full name, one- and two-character parts of a given name):

* ``safety search`` -- what the daemon's ``safety.search`` does: ``SafetyIndex.search``
  (fold, FTS5 MATCH over a window of the newest matches, ranking) plus reading
  the 20 people from the registry and shaping their JSON (``person_json``);
* ``raw FTS5`` -- the bare ``MATCH ... LIMIT 20`` on the n-gram table (no
  folding, ranking or records): the floor;
* ``scan`` -- ``instr`` over every folded name and reading, what the search
  would cost without an index;
* ``library search`` -- ``SearchIndex.search`` over ``--library-docs`` synthetic
  documents (bench/library.py's generator), 2- and 4-character words: the
  library's own search, the baseline the issue names.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.library import QUERIES_2, QUERIES_4, _cpu, generate
from library_replica.safety import KIND_PERSON, SafetyRegistry, fold, prepare_person
from library_replica.safety_index import SafetyIndex, parse_name_query
from library_replica.safety_service import person_json
from library_replica.search import SearchIndex

#: (surname, reading), most common first (Zipf-like weights)
SURNAMES = [("佐藤", "さとう"), ("鈴木", "すずき"), ("高橋", "たかはし"), ("田中", "たなか"),
            ("伊藤", "いとう"), ("渡辺", "わたなべ"), ("山本", "やまもと"), ("中村", "なかむら"),
            ("小林", "こばやし"), ("加藤", "かとう"), ("吉田", "よしだ"), ("山田", "やまだ"),
            ("佐々木", "ささき"), ("山口", "やまぐち"), ("松本", "まつもと"), ("井上", "いのうえ"),
            ("木村", "きむら"), ("林", "はやし"), ("斎藤", "さいとう"), ("清水", "しみず"),
            ("山崎", "やまざき"), ("森", "もり"), ("池田", "いけだ"), ("橋本", "はしもと"),
            ("阿部", "あべ"), ("石川", "いしかわ"), ("山下", "やました"), ("中島", "なかじま"),
            ("石井", "いしい"), ("小川", "おがわ"), ("前田", "まえだ"), ("岡田", "おかだ")]
GIVEN = [("由紀", "ゆき"), ("健", "けん"), ("花子", "はなこ"), ("太郎", "たろう"),
         ("翔太", "しょうた"), ("美咲", "みさき"), ("大輔", "だいすけ"), ("陽菜", "ひな"),
         ("蓮", "れん"), ("結衣", "ゆい"), ("一郎", "いちろう"), ("直子", "なおこ"),
         ("誠", "まこと"), ("愛", "あい"), ("拓也", "たくや"), ("恵子", "けいこ"),
         ("健一", "けんいち"), ("真由美", "まゆみ"), ("悠真", "ゆうま"), ("さくら", "さくら")]
#: (label, query): what people type at a shelter desk
QUERIES = [
    ("kanji surname (2 chars)", ["田中", "佐藤", "鈴木", "山本", "中村"]),
    ("katakana reading", ["タナカ", "サトウ", "スズキ", "ヤマモト", "ナカムラ"]),
    ("hiragana reading", ["たなか", "さとう", "すずき", "やまもと", "なかむら"]),
    ("half-width kana", ["ﾀﾅｶ", "ｻﾄｳ", "ｽｽﾞｷ", "ﾔﾏﾓﾄ", "ﾅｶﾑﾗ"]),
    ("full name", ["田中 由紀", "佐藤 花子", "鈴木 健", "山本 太郎", "中村 美咲"]),
    ("reading, full", ["たなか ゆき", "サトウ ハナコ", "すずき けん", "ヤマモト タロウ",
                       "なかむら みさき"]),
    ("part of given name (1 char)", ["紀", "花", "健", "郎", "咲"]),
    ("part of given name (2 kana)", ["ゆき", "ハナ", "たろ", "ミサ", "けん"]),
]


def _hira_to_kata(s: str) -> str:
    return "".join(chr(ord(c) + 0x60) if "ぁ" <= c <= "ゖ" else c for c in s)


_HALF = str.maketrans(dict(zip(
    "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンャュョッー",
    "ｱｲｳｴｵｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄﾅﾆﾇﾈﾉﾊﾋﾌﾍﾎﾏﾐﾑﾒﾓﾔﾕﾖﾗﾘﾙﾚﾛﾜｦﾝｬｭｮｯｰ", strict=True)))
_VOICED = {"ガ": "ｶﾞ", "ギ": "ｷﾞ", "グ": "ｸﾞ", "ゲ": "ｹﾞ", "ゴ": "ｺﾞ", "ザ": "ｻﾞ", "ジ": "ｼﾞ",
           "ズ": "ｽﾞ", "ゼ": "ｾﾞ", "ゾ": "ｿﾞ", "ダ": "ﾀﾞ", "デ": "ﾃﾞ", "ド": "ﾄﾞ", "バ": "ﾊﾞ",
           "ビ": "ﾋﾞ", "ブ": "ﾌﾞ", "ベ": "ﾍﾞ", "ボ": "ﾎﾞ"}


def _half_width(s: str) -> str:
    kata = _hira_to_kata(s)
    return "".join(_VOICED.get(c, c) for c in kata).translate(_HALF)


def generate_people(n: int, seed: int = 11) -> list[tuple[str, str]]:
    """``n`` deterministic (name, reading) pairs; readings in mixed kana scripts."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) for k in range(len(SURNAMES))]
    out = []
    for _ in range(n):
        (sk, sr), (gk, gr) = rng.choices(SURNAMES, weights)[0], rng.choice(GIVEN)
        reading = f"{sr} {gr}"
        script = rng.random()
        if script < 0.4:
            reading = _hira_to_kata(reading)
        elif script < 0.5:
            reading = _half_width(reading)
        out.append((f"{sk} {gk}", reading))
    return out


def _pct(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=20, method="inclusive")
    return statistics.median(samples), qs[18]  # p50, p95


def _time_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def _raw_match(word: str) -> str:
    w = fold(word)
    if len(w) <= 2:
        return f'"{w}"'
    return '"' + " ".join(w[i:i + 2] for i in range(len(w) - 1)) + '"'


def bench_people(n: int, rounds: int, tmp: Path) -> dict[str, object]:
    from tests.library_replica.factory import Author, hlc  # real Ed25519 envelopes

    people = generate_people(n)
    desk = Author()
    t0 = time.perf_counter()
    ops = []
    for i, (name, reading) in enumerate(people):
        pid, body = prepare_person(desk.pub, os.urandom(16), by="desk", name=name,
                                   reading=reading, status="safe", place="第一小学校")
        ops.append(desk.op(KIND_PERSON, pid, body, hlc(1_790_000_000_000 + i)))
    sign_s = time.perf_counter() - t0
    registry = SafetyRegistry()
    t0 = time.perf_counter()
    for op in ops:
        registry.apply(op)
    apply_s = time.perf_counter() - t0
    path = tmp / "safety.sqlite"
    index = SafetyIndex(path)
    t0 = time.perf_counter()
    views = list(registry.people())
    for i in range(0, len(views), 5000):
        index.upsert_many(views[i:i + 5000])
    index_s = time.perf_counter() - t0
    raw = sqlite3.connect(str(path))

    def search(q: str) -> list[dict[str, object]]:
        return [person_json(v) for v in (registry.get(p) for p in index.search(q, limit=20))
                if v is not None]

    out: dict[str, object] = {
        "people": n, "sign_ops_per_s": round(n / sign_s), "apply_ops_per_s": round(n / apply_s),
        "index_people_per_s": round(n / index_s), "queries": {}}
    all_ours: list[float] = []
    for label, qs in QUERIES:
        ours: list[float] = []
        base: list[float] = []
        for _ in range(rounds):
            for q in qs:
                ours.append(_time_ms(lambda q=q: search(q)))  # type: ignore[misc]
                match = " AND ".join(_raw_match(w) for w in q.split())
                base.append(_time_ms(lambda m=match: raw.execute(  # type: ignore[misc]
                    "SELECT rowid FROM people_ngram WHERE people_ngram MATCH ? LIMIT 20",
                    (m,)).fetchall()))
        all_ours += ours
        first = parse_name_query(qs[0]).words
        matches = raw.execute("SELECT count(*) FROM people_ngram WHERE people_ngram MATCH ?",
                              (" AND ".join(_raw_match(w) for w in first),)).fetchone()[0]
        scans = []
        for w in (fold(q.split()[0]) for q in qs[:2]):
            scans.append(_time_ms(lambda w=w: raw.execute(  # type: ignore[misc]
                "SELECT id FROM people WHERE instr(name, ?) > 0 OR instr(reading, ?) > 0",
                (w, w)).fetchall()))
        p50, p95 = _pct(ours)
        b50, b95 = _pct(base)
        out["queries"][label] = {  # type: ignore[index]
            "p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "raw_p50_ms": round(b50, 2),
            "raw_p95_ms": round(b95, 2), "scan_ms": round(statistics.median(scans), 1),
            "hits": len(search(qs[0])), "matches_of_first": matches}
    p50, p95 = _pct(all_ours)
    out["all"] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "samples": len(all_ours)}
    # kana-insensitive: every script of a reading finds the same people
    same = {label: sorted(index.search(q, limit=200)) for label, q in
            (("hiragana", "たなか ゆき"), ("katakana", "タナカ ユキ"), ("half-width", "ﾀﾅｶ ﾕｷ"))}
    out["kana_insensitive"] = len({tuple(v) for v in same.values()}) == 1 and bool(
        same["hiragana"])
    raw.close()
    index.close()
    return out


def bench_library(n: int, rounds: int, tmp: Path) -> dict[str, object]:
    docs = generate(n)
    index = SearchIndex(tmp / "library.sqlite")
    for i in range(0, n, 5000):
        index.upsert_many(docs[i:i + 5000])
    out: dict[str, object] = {"documents": n}
    for label, words in (("2-char", QUERIES_2), ("4-char", QUERIES_4)):
        times = [_time_ms(lambda w=w: index.search(w)) for _ in range(rounds)  # type: ignore[misc]
                 for w in words]
        p50, p95 = _pct(times)
        out[label] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2)}
    index.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--people", type=int, default=100_000)
    ap.add_argument("--library-docs", type=int, default=100_000,
                    help="documents for the library-search baseline (0: skip it)")
    ap.add_argument("--rounds", type=int, default=10, help="repetitions of each query")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results: dict[str, object] = {
        "machine": f"{_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}, "
                   f"sqlite {sqlite3.sqlite_version}",
        "load_before": round(os.getloadavg()[0], 2)}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmbench") as tmp:
        results["safety"] = bench_people(args.people, args.rounds, Path(tmp))
        if args.library_docs:
            results["library"] = bench_library(args.library_docs, args.rounds, Path(tmp))
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    results["load_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    s = results["safety"]
    assert isinstance(s, dict)
    print(f"machine: {results['machine']} (1-min load {results['load_before']} before, "
          f"{results['load_after']} after)\n")
    print("| people | query | safety search p50 ms | p95 ms | raw FTS5 p50 ms | raw FTS5 p95 ms"
          " | scan ms | hits | matches of first query |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, q in s["queries"].items():
        print(f"| {s['people']:,} | {label} | {q['p50_ms']} | {q['p95_ms']} | "
              f"{q['raw_p50_ms']} | {q['raw_p95_ms']} | {q['scan_ms']} | {q['hits']} | "
              f"{q['matches_of_first']:,} |")
    a = s["all"]
    print(f"| {s['people']:,} | **all queries** | {a['p50_ms']} | **{a['p95_ms']}** | | | | | |")
    lib = results.get("library")
    if isinstance(lib, dict):
        for label in ("2-char", "4-char"):
            print(f"| {lib['documents']:,} docs | library search, {label} | "
                  f"{lib[label]['p50_ms']} | {lib[label]['p95_ms']} | | | | | |")
    print()
    print(f"target: safety search p95 <= 10 ms at {s['people']:,} people: "
          f"{'met' if a['p95_ms'] <= 10 else 'NOT met'} ({a['p95_ms']} ms); "
          f"kana-insensitive: {s['kana_insensitive']}")
    print(f"signing {s['sign_ops_per_s']:,} ops/s, registry apply {s['apply_ops_per_s']:,} "
          f"ops/s, indexing {s['index_people_per_s']:,} people/s")
    print(f"total: {results['total_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
