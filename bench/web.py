"""Web app benchmark: the app shell's size and first load over a slow link, search time at the
server, and 200 concurrent phones on one car beside aiohttp serving a static file.

Run: ``.venv/bin/python bench/web.py [--quick] [--json]`` (the slow link needs root)

* ``shell`` -- what a phone downloads on its first visit to ``/``, gzip as served: the page,
  the stylesheet and scripts it names (what the page needs to show), then the manifest,
  icons and the service worker with everything it precaches (what makes the next visit
  instant).  Target: the whole shell at most 150 KB compressed.
* ``slow link`` -- that first visit timed from a "phone" network namespace to a meshd in a
  "car" namespace over HTTPS, the veth limited by a ``tbf`` qdisc on both ends (RATE, 1 and
  0.25 Mbit/s), six connections at a time as a browser opens them.  The namespaces are
  created and deleted by ``carmesh.dev.devnet`` (root only; skipped otherwise).
* ``search`` -- ``GET /library?q=WORD`` on the web app of a real node in this process whose
  search index holds 10,000 then 100,000 synthetic documents (``bench/library.py``'s corpus,
  put straight into the node's index: materialising 100,000 signed documents would take
  minutes and is measured by ``bench/library.py``).  Time at the server: from the request
  entering the app to the rendered page (a middleware outside all others), p50/p95 over 2-
  and 4-character words; the baseline in the same run is the index's own ``search`` (what
  ``library.search`` runs in a thread) called directly.  Target: p95 at most 100 ms.
* ``load`` -- 200 clients, each from its own loopback address (a street of phones: the
  per-client rate limit applies to each, as it would), against a meshd process's ``/``
  (the home page, rendered from the node's bulletins) and ``/static/app.css``, and against
  a bare aiohttp process serving the same file with ``web.FileResponse`` -- the ceiling of
  the framework on this machine.  Two runs each: *saturating* (every client sends its
  requests back to back: the capacity in requests/s; latency is then clients / capacity
  by Little's law, whatever the server) and *paced* (each client waits an exponential
  think time, mean ``--think`` 2 s, before each request: 200 phones in use, about 100
  requests/s offered).  The servers are pinned to one core and the load generator to the
  other.  Requests/s and latency p50/p95/p99; any answer other than 200 is counted.
  A last paced run on ``/`` has every client hold the live event stream (``/events``)
  open and read while it loads pages, as every open page of the app does; the streams'
  statuses are counted (a 503 would mean ``max_streams`` is below the street).
  Target: p95 at most 200 ms on ``/`` in the paced run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SHELL_TARGET_KB = 150
SEARCH_TARGET_MS = 100
LOAD_TARGET_MS = 200
RATES = ("1mbit", "256kbit")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def _pct(samples: list[float]) -> dict[str, float]:
    if len(samples) < 2:
        v = samples[0] if samples else 0.0
        return {"p50_ms": round(v, 2), "p95_ms": round(v, 2), "p99_ms": round(v, 2)}
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(qs[94], 2),
            "p99_ms": round(qs[98], 2)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the shell (a client)

_REF = re.compile(r'(?:href|src)="(/[^"]*)"')


async def fetch_shell(base: str, *, parallel: int = 6, timeout_s: float = 120.0
                      ) -> dict[str, Any]:
    """A first visit to ``base``/: the page, what it names, then the service worker's shell.

    Returns bytes as sent (gzip where served so) and seconds to "page" (page + stylesheet +
    scripts) and to "all" (everything the service worker precaches too).
    """
    import aiohttp

    conn = aiohttp.TCPConnector(limit=parallel, ssl=False)
    hdrs = {"Accept-Encoding": "gzip, deflate, br", "Accept-Language": "ja"}
    sizes: dict[str, tuple[int, int]] = {}
    async with aiohttp.ClientSession(connector=conn, headers=hdrs,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s),
                                     auto_decompress=False) as s:

        async def get(path: str) -> bytes:
            async with s.get(base + path) as r:
                if r.status != 200:
                    raise RuntimeError(f"{path}: HTTP {r.status}")
                raw = await r.read()
                body = gzip.decompress(raw) if r.headers.get("Content-Encoding") == "gzip" \
                    else raw
                sizes[path] = (len(raw), len(body))
                return body

        t0 = time.perf_counter()
        html = (await get("/")).decode()
        page = [p for p in dict.fromkeys(_REF.findall(html))
                if p.startswith("/static/") and p.endswith((".css", ".js"))]
        await asyncio.gather(*(get(p) for p in page))
        t_page = time.perf_counter() - t0
        sw = (await get("/sw.js")).decode()
        m = re.search(r"const SHELL = (\[[^\]]*\]);", sw)
        precache = json.loads(m.group(1)) if m else []
        manifest = json.loads(await get("/manifest.webmanifest"))
        rest = [p for p in dict.fromkeys(precache + [i["src"] for i in manifest["icons"]]
                                          + [p for p in _REF.findall(html)
                                             if p.startswith("/static/")])
                if p not in sizes]
        await asyncio.gather(*(get(p) for p in rest))
        t_all = time.perf_counter() - t0
    page_paths = ["/", *page]
    return {
        "page_bytes": sum(sizes[p][0] for p in page_paths),
        "page_bytes_uncompressed": sum(sizes[p][1] for p in page_paths),
        "all_bytes": sum(v[0] for v in sizes.values()),
        "all_bytes_uncompressed": sum(v[1] for v in sizes.values()),
        "files": {p: v[0] for p, v in sorted(sizes.items())},
        "page_s": round(t_page, 3), "all_s": round(t_all, 3)}


async def _wait_http(base: str, timeout_s: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as s:
        while True:
            try:
                async with s.get(base + "/offline") as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base} did not answer in {timeout_s:.0f} s")
            await asyncio.sleep(0.2)


async def client_main(base: str, runs: int) -> dict[str, Any]:
    """The phone's side of the slow-link run: a warm-up visit, then ``runs`` first visits."""
    await _wait_http(base, 90)
    await fetch_shell(base)  # the car loads its web app on the first connection
    visits = [await fetch_shell(base) for _ in range(runs)]
    out = dict(visits[0])
    out["page_s"] = round(statistics.median(v["page_s"] for v in visits), 3)
    out["all_s"] = round(statistics.median(v["all_s"] for v in visits), 3)
    out["runs"] = runs
    return out


# ------------------------------------------------------------------ meshd and baseline servers

def _meshd(state: Path, web_local: str, https: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "carmesh.cli", "--state-dir", str(state), "--name",
            "bench-car", "--listen", "127.0.0.1:0", "--web-local", web_local,
            "--metrics", "off", "--log-level", "warning"]
    return argv + (["--web", https] if https else [])


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def static_server_main(port: int, path: Path) -> None:
    """The baseline: aiohttp serving one file with ``web.FileResponse``, nothing else."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_get("/file", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


# ------------------------------------------------------------------ slow link (namespaces)

def bench_slow_link(rates: tuple[str, ...], runs: int) -> dict[str, Any]:
    from carmesh.dev.devnet import DevNet, have_netns

    why = "not root" if os.geteuid() != 0 else have_netns()
    if why is not None or shutil.which("tc") is None:
        return {"skipped": why or "no tc"}
    out: dict[str, Any] = {}
    with DevNet() as dev, tempfile.TemporaryDirectory(prefix="cmwebb") as tmp:
        car, phone = dev.add_node("car"), dev.add_node("phone")
        if_car, if_phone = dev.link(car, phone)
        addr = dev.address(car, phone)
        base = f"https://{addr}:7443"
        proc = dev.popen(car, _meshd(Path(tmp) / "car", "127.0.0.1:7480", f"{addr}:7443"),
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for rate in rates:
                for node, ifn in ((car, if_car), (phone, if_phone)):
                    dev.run(node, ["tc", "qdisc", "replace", "dev", ifn, "root", "tbf", "rate",
                                   rate, "burst", "32kbit", "latency", "400ms"])
                res = dev.run(phone, [sys.executable, str(Path(__file__).resolve()),
                                      "--client", base, "--runs", str(runs)], timeout=600)
                doc = json.loads(res.stdout)
                out[rate] = {"page_s": doc["page_s"], "all_s": doc["all_s"],
                             "page_bytes": doc["page_bytes"], "all_bytes": doc["all_bytes"],
                             "runs": doc["runs"]}
        finally:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    return out


# ------------------------------------------------------------------ search at the server

async def bench_search(sizes: list[int], rounds: int) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from bench.library import QUERIES_2, QUERIES_4, generate
    from carmesh.app import build_node, web_seams
    from meshd.config import Config
    from web.app import make_app
    from web.pwa import SHELL

    server_ms: list[float] = []

    @web.middleware
    async def timing(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        t0 = time.perf_counter()
        try:
            return await handler(request)
        finally:
            server_ms.append((time.perf_counter() - t0) * 1000)

    out: dict[str, Any] = {"sizes": []}
    with tempfile.TemporaryDirectory(prefix="cmwebs") as tmp:
        node = await build_node(Config(state_dir=Path(tmp), listen=("127.0.0.1:0",),
                                       no_web=True, metrics="off", name="bench-car"))
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop))
        call, subscribe = web_seams(node)
        await call("bulletin.list", {})  # the library has replayed
        [lib] = [s for s in node.app_services() if type(s).__name__ == "LibraryNodeService"]
        index = lib.index  # type: ignore[attr-defined]
        app = make_app(call, subscribe)
        app.middlewares.insert(0, timing)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        try:
            shell = await fetch_shell(base)
            shell["precached"] = list(SHELL)
            out["shell"] = shell
            docs = generate(max(sizes))
            have = 0
            async with aiohttp.ClientSession() as s:
                for n in sorted(sizes):
                    t0 = time.perf_counter()
                    for i in range(have, n, 5000):
                        await asyncio.to_thread(index.upsert_many, docs[i:min(n, i + 5000)])
                    have = n
                    load_s = time.perf_counter() - t0
                    rows: dict[str, Any] = {"documents": n, "index_s": round(load_s, 1)}
                    for label, words in (("2-char", QUERIES_2), ("4-char", QUERIES_4)):
                        server_ms.clear()
                        client: list[float] = []
                        bare: list[float] = []
                        hits = 0
                        for _ in range(rounds):
                            for w in words:
                                # the baseline: the index alone, as library.search calls it
                                t0 = time.perf_counter()
                                index.search(w, limit=20)
                                bare.append((time.perf_counter() - t0) * 1000)
                                t0 = time.perf_counter()
                                async with s.get(base + "/library", params={"q": w}) as r:
                                    html = await r.text()
                                    assert r.status == 200, (r.status, html[:200])
                                client.append((time.perf_counter() - t0) * 1000)
                                hits += html.count('<li><a href="/library/')
                        rows[label] = {**_pct(server_ms), "client": _pct(client),
                                       "index": _pct(bare),
                                       "requests": len(client), "results": hits}
                    out["sizes"].append(rows)
        finally:
            await runner.cleanup()
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return out


# ------------------------------------------------------------------ 200 clients

async def _load(url: str, clients: int, per_client: int, think_s: float = 0.0,
                events_url: str | None = None) -> dict[str, Any]:
    """``clients`` sessions each sending ``per_client`` requests, one after another, with a
    think time (exponential, mean ``think_s``) before each; 0 saturates the server.  With
    ``events_url`` each client first opens that live event stream (as every open page of
    the app does) and holds it, read, until its requests are done."""
    import random

    import aiohttp

    lat: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    streams: dict[int, int] = {}  # status of each client's event stream
    start = asyncio.Event()

    async def drain(r: aiohttp.ClientResponse) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.CancelledError):
            while await r.content.readany():
                pass

    async def one(i: int) -> None:
        nonlocal errors
        rng = random.Random(i)
        local = f"127.0.{1 + i // 250}.{1 + i % 250}"  # a phone of its own
        conn = aiohttp.TCPConnector(limit=2 if events_url else 1, local_addr=(local, 0))
        async with aiohttp.ClientSession(connector=conn, headers={
                "Accept-Encoding": "gzip", "Accept-Language": "ja"}) as s:
            stream: aiohttp.ClientResponse | None = None
            reader: asyncio.Task[None] | None = None
            if events_url:
                try:
                    stream = await s.get(events_url)
                    streams[stream.status] = streams.get(stream.status, 0) + 1
                    reader = asyncio.create_task(drain(stream))
                except (aiohttp.ClientError, OSError):
                    streams[0] = streams.get(0, 0) + 1
            await start.wait()
            for _ in range(per_client):
                if think_s > 0:
                    await asyncio.sleep(rng.expovariate(1 / think_s))
                t0 = time.perf_counter()
                try:
                    async with s.get(url) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except (aiohttp.ClientError, OSError):
                    errors += 1
                    continue
                lat.append((time.perf_counter() - t0) * 1000)
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if stream is not None:
                stream.close()

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await asyncio.sleep(0.5)  # every session made
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    dt = time.perf_counter() - t0
    return {"requests": len(lat), "requests_per_s": round(len(lat) / dt), "think_s": think_s,
            **_pct(lat),
            "non_200": sum(n for st, n in statuses.items() if st != 200), "errors": errors,
            "seconds": round(dt, 2),
            **({"streams": {str(k): v for k, v in sorted(streams.items())}}
               if events_url else {})}


TARGETS = ("car /", "car /static/app.css", "aiohttp FileResponse")
LIVE = "car / + each holding /events"


async def _load_all(car_url: str, file_url: str, clients: int, per_client: int,
                    paced: int, think_s: float) -> dict[str, Any]:
    await _wait_http(car_url, 90)
    out: dict[str, Any] = {"saturating": {}, "paced": {}}
    for label, url in zip(TARGETS, (car_url + "/", car_url + "/static/app.css", file_url),
                          strict=True):
        await _load(url, 20, 3)  # warm up (the car loads its web app on the first connection)
        out["saturating"][label] = await _load(url, clients, per_client)
        out["paced"][label] = await _load(url, clients, paced, think_s)
    # what phones really do: each open page holds the live event stream while it loads pages
    out["paced"][LIVE] = await _load(car_url + "/", clients, paced, think_s,
                                     events_url=car_url + "/events")
    return out


def bench_load(clients: int, per_client: int, paced: int, think_s: float) -> dict[str, Any]:
    taskset = shutil.which("taskset")
    pin = [taskset, "-c", "0"] if taskset and (os.cpu_count() or 1) > 1 else []
    if pin:
        os.sched_setaffinity(0, {1})
    out: dict[str, Any] = {"clients": clients, "requests_per_client": per_client,
                           "paced_requests_per_client": paced, "think_s": think_s,
                           "pinned": bool(pin)}
    css = ROOT / "web" / "static" / "app.css"
    with tempfile.TemporaryDirectory(prefix="cmwebl") as tmp:
        web_port, file_port = _free_port(), _free_port()
        log = (Path(tmp) / "meshd.log").open("wb")
        car = subprocess.Popen([*pin, *_meshd(Path(tmp) / "car", f"127.0.0.1:{web_port}")],
                               env=_env(), stdout=subprocess.DEVNULL, stderr=log,
                               start_new_session=True)
        base = subprocess.Popen([*pin, sys.executable, str(Path(__file__).resolve()),
                                 "--static-server", str(file_port), str(css)],
                                env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(100):
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", file_port), 1):
                    break
                time.sleep(0.2)
            out.update(asyncio.run(_load_all(f"http://127.0.0.1:{web_port}",
                                             f"http://127.0.0.1:{file_port}/file",
                                             clients, per_client, paced, think_s)))
        finally:
            for p in (car, base):
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()
            log.close()
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return out


# ------------------------------------------------------------------ report

def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


def _print(r: dict[str, Any]) -> None:
    print(f"machine: {r['machine']} (1-min load {r['load_before']} before, "
          f"{r['load_after']} after)\n")
    if "search" in r:
        _print_shell_search(r)
    if "slow_link" in r:
        _print_slow(r["slow_link"])
    if "load" in r:
        _print_load(r["load"])
    print(f"\ntotal: {r['total_s']} s")


def _print_shell_search(r: dict[str, Any]) -> None:
    sh = r["search"]["shell"]
    ok = "meets" if sh["all_bytes"] <= SHELL_TARGET_KB * 1024 else "MISSES"
    print(f"shell, first visit (gzip as served): page {_kb(sh['page_bytes'])} "
          f"({_kb(sh['page_bytes_uncompressed'])} uncompressed); with the service worker's "
          f"precache, manifest and icons {_kb(sh['all_bytes'])} "
          f"({_kb(sh['all_bytes_uncompressed'])}); target <= {SHELL_TARGET_KB} KB: {ok}")
    for p, n in sh["files"].items():
        print(f"  {p:<28} {n:>7,} B")
    print("\n| documents | words | server p50 ms | server p95 ms | server p99 ms | "
          "client p95 ms | index alone p50 ms | index alone p95 ms | requests | results |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in r["search"]["sizes"]:
        for label in ("2-char", "4-char"):
            q = row[label]
            print(f"| {row['documents']:,} | {label} | {q['p50_ms']} | {q['p95_ms']} | "
                  f"{q['p99_ms']} | {q['client']['p95_ms']} | {q['index']['p50_ms']} | "
                  f"{q['index']['p95_ms']} | {q['requests']} | {q['results']} |")


def _print_slow(sl: dict[str, Any]) -> None:
    print()
    if "skipped" in sl:
        print(f"slow link: skipped ({sl['skipped']})")
    else:
        print("| link (tbf, both ways) | page shown s | whole shell s | bytes |")
        print("|---|---:|---:|---:|")
        for rate, v in sl.items():
            print(f"| {rate}/s | {v['page_s']} | {v['all_s']} | {v['all_bytes']:,} |")


def _print_load(ld: dict[str, Any]) -> None:
    print(f"\n{ld['clients']} clients (servers pinned to a core: {ld['pinned']}); saturating: "
          f"{ld['requests_per_client']} requests each back to back; paced: "
          f"{ld['paced_requests_per_client']} each, {ld['think_s']} s apart on average")
    print("| run | target | requests/s | p50 ms | p95 ms | p99 ms | not 200 | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in ("saturating", "paced"):
        for label in (*TARGETS, LIVE):
            v = ld[run].get(label)
            if v is None:
                continue
            print(f"| {run} | {label} | {v['requests_per_s']:,} | {v['p50_ms']} | "
                  f"{v['p95_ms']} | {v['p99_ms']} | {v['non_200']} | {v['errors']} |")
    if LIVE in ld["paced"]:
        print(f"event streams by status: {ld['paced'][LIVE]['streams']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true",
                    help="smaller corpora and fewer requests (about a minute)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--sizes", help="documents in the index (default 10000,100000)")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--think", type=float, default=2.0,
                    help="mean seconds between one phone's requests in the paced run")
    ap.add_argument("--skip-netns", action="store_true")
    ap.add_argument("--parts", default="search,slow,load",
                    help="which runs (comma-separated; the shell is measured with search)")
    ap.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=3, help=argparse.SUPPRESS)
    ap.add_argument("--static-server", nargs=2, metavar=("PORT", "FILE"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:  # inside the phone namespace
        print(json.dumps(asyncio.run(client_main(args.client, args.runs))))
        return 0
    if args.static_server:
        static_server_main(int(args.static_server[0]), Path(args.static_server[1]))
        return 0
    sizes = [int(s) for s in (args.sizes or ("2000,10000" if args.quick else "10000,100000"))
             .split(",") if s]
    results: dict[str, Any] = {
        "machine": f"{_cpu()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "load_before": round(os.getloadavg()[0], 2)}
    t0 = time.perf_counter()
    parts = set(args.parts.split(","))
    if "search" in parts:
        results["search"] = asyncio.run(bench_search(sizes, 2 if args.quick else 5))
    if "slow" in parts:
        results["slow_link"] = ({"skipped": "--skip-netns"} if args.skip_netns else
                                bench_slow_link(RATES[:1] if args.quick else RATES,
                                                1 if args.quick else 3))
    if "load" in parts:
        results["load"] = bench_load(args.clients, 10 if args.quick else 50,
                                     5 if args.quick else 30, args.think)
    results["total_s"] = round(time.perf_counter() - t0, 1)
    results["load_after"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        _print(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
