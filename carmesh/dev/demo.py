"""``make demo``: a small mesh on this machine, shown step by step, cleaned up on exit or Ctrl-C.

As root the nodes run in Linux network namespaces joined by veth pairs in a
line (``cm<token>-a`` … ) and find each other with zeroconf only; otherwise
they run on loopback with static peers.  Nothing leaves the machine: the
namespaces' addresses exist only inside them, and every namespace and process
the demo made is removed when it ends (``DevNet`` also cleans up on SIGINT).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carmesh.dev.devnet import DevNet, cleanup_stale, have_netns
from carmesh.dev.harness import Cluster, Daemon, free_udp_port, wait_until

__all__ = ["main"]

# not hex letters alone: NODE resolves a unique NodeId prefix before a display name
NAMES = ("akane", "botan", "chika", "daiki")


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n==> {text}")


def _expected_neighbours(names: tuple[str, ...]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {n: set() for n in names}
    for x, y in itertools.pairwise(names):
        out[x].add(y)
        out[y].add(x)
    return out


def _who_sees_whom(cluster: Cluster, names: tuple[str, ...]) -> None:
    say(f"  {'node':<6} {'node id':<10} sees")
    for n in names:
        d = cluster[n]
        seen = d.neighbours()
        desc = ", ".join(f"{m} (rtt {v['rtt_ms']:.2f} ms, loss {v['loss']:.0%})"
                         for m, v in sorted(seen.items()) if v.get("rtt_ms") is not None)
        say(f"  {n:<6} {d.node_id[:8]:<10} {desc or '-'}")


def _wait_links(cluster: Cluster, names: tuple[str, ...], timeout: float) -> None:
    want = _expected_neighbours(names)
    for n in names:
        def ok(n: str = n) -> bool:
            return set(cluster[n].neighbours()) >= want[n]
        wait_until(ok, timeout, 0.3, f"{n} to see {sorted(want[n])}")


def _recording(cluster: Cluster) -> Path:
    return cluster.root / f"{NAMES[-1]}-heard.wav"


def _start_netns(net: DevNet, cluster: Cluster) -> None:
    nodes = net.line(len(NAMES), list(NAMES))
    for node in nodes:
        args = [x for i in net.interfaces(node) for x in ("--interface", i)]
        if node.name == NAMES[-1]:
            args += ["--auto-answer", "--answer-record", str(_recording(cluster))]
        say(f"  {node.netns}: meshd --name {node.name} {' '.join(args)}")
        cluster.add(node.name, args, prefix=["ip", "netns", "exec", node.netns])


def _start_loopback(cluster: Cluster) -> None:
    ports = {n: free_udp_port() for n in NAMES}
    want = _expected_neighbours(NAMES)
    for n in NAMES:
        peers = [x for m in sorted(want[n]) for x in ("--peer", f"127.0.0.1:{ports[m]}")]
        args = ["--listen", f"127.0.0.1:{ports[n]}", *peers]
        if n == NAMES[-1]:
            args += ["--auto-answer", "--answer-record", str(_recording(cluster))]
        say(f"  meshd --name {n} {' '.join(args)}")
        cluster.add(n, args)


def run(use_netns: bool, keep: bool) -> int:
    cluster = Cluster(log_level="info")
    net: DevNet | None = None
    try:
        with cluster:
            if use_netns:
                cleanup_stale()
                net = DevNet()
                step(f"four nodes in network namespaces, a line akane - botan - chika - daiki ({net.tag}-*), "
                     "discovery by zeroconf only")
                _start_netns(net, cluster)
            else:
                step("four nodes on loopback with static peers, a line akane - botan - chika - daiki")
                _start_loopback(cluster)
            for d in cluster:
                d.wait_ready(30)
            step("waiting for the links (hellos every 0.5 s) ...")
            t0 = time.monotonic()
            _wait_links(cluster, NAMES, 30)
            say(f"  all links up after {time.monotonic() - t0:.1f} s")
            step("who sees whom (meshctl neighbours)")
            _who_sees_whom(cluster, NAMES)
            first, last = NAMES[0], NAMES[-1]
            step(f"routes at {first} (Babel: metric 256 per good hop)")
            wait_until(lambda: len(cluster[first].meshctl("routes")[1]["routes"]) >= len(NAMES) - 1,
                       30, 0.3, f"{first} to learn routes")
            _show(cluster[first], "routes", fmt=lambda r: "\n".join(
                f"  to {x['name']:<8} via {x['next_hop_name']:<8} metric {x['metric']:<5} "
                f"seqno {x['seqno']}" for x in r["routes"]))
            step(f"meshctl traceroute {last}, from {first}")
            _show(cluster[first], "traceroute", last, fmt=lambda r: "\n".join(
                f"  {h['hop']}  {h['name']:<8} {h['rtt_ms']:.2f} ms" for h in r["hops"]))
            step(f"meshctl ping {last}, from {first} (three hops)")
            _show(cluster[first], "ping", last, "--count", "3",
                  fmt=lambda r: f"  {r['received']}/{r['sent']} replies over "
                                f"{r['replies'][0]['hops']} hops, rtt avg {r['rtt_ms']['avg']:.2f} ms")
            step(f"meshctl send {last}, from {first} (sealed end to end: the relays see ciphertext)")
            _show(cluster[first], "send", last, f"hello from {first} / こんにちは, 避難所は体育館です",
                  fmt=lambda r: f"  {r['status']} after {r['attempts']} attempt(s)")
            _show(cluster[last], "messages",
                  fmt=lambda r: "\n".join(f"  {last}'s inbox: from {m['from_name']}: {m['text']}"
                                          for m in r["messages"]))
            _library_step(cluster, first, last)
            _call_step(cluster, first, last)
            if keep:
                say("\nThe mesh keeps running; state dirs under " + str(cluster.root))
                say("Press Ctrl-C to stop and clean up.")
                while True:
                    time.sleep(3600)
            step("stopping the nodes and removing what the demo created")
    except KeyboardInterrupt:
        say("\ninterrupted")
    except AssertionError as exc:
        say(f"\ndemo failed: {exc}")
        return 1
    finally:
        if net is not None:
            net.close()
    say("done: no namespace or process left behind")
    return 0


def _library_step(cluster: Cluster, first: str, last: str) -> None:
    """Load the sample library at one end; an edit there is found by a search at the other."""
    from library_replica.markdown_io import SAMPLE_DIR

    step(f"meshctl library import {SAMPLE_DIR.name}/, at {first} (the bilingual sample library)")
    _show(cluster[first], "library", "import", str(SAMPLE_DIR),
          fmt=lambda r: f"  {r['summary']} in {r['elapsed_s']:.2f} s")
    step(f"meshctl library search 給水, at {last} (two-character Japanese word, three hops away)")
    t0 = time.monotonic()

    def found(query: str) -> Any:
        rc, res = cluster[last].meshctl("library", "search", query, "--limit", "3")
        return res if rc == 0 and isinstance(res, dict) and res["results"] else None

    hits = wait_until(lambda: found("給水"), 30, 0.3, f"{last} to find the sample library")
    for h in hits["results"]:
        say(f"  {h['doc_id'][:8]}  [{h['collection']}] {h['title']}")
        say(f"            {' '.join(h['snippet'].split())}")
    say(f"  (synced through botan and chika in {time.monotonic() - t0:.1f} s)")
    doc = hits["results"][0]["doc_id"]
    rc, shown = cluster[first].meshctl("library", "show", doc)
    if rc != 0 or not isinstance(shown, dict):
        raise AssertionError(f"meshctl library show exited {rc}: {shown}")
    step(f"an edit at {first}: meshctl library edit {doc[:8]} --body ... (adds a line)")
    body = shown["body"].rstrip("\n") + "\n\n臨時給水所: 公民館前 14:00 (temporary water point at the community hall)\n"
    _show(cluster[first], "library", "edit", doc, "--body", body,
          fmt=lambda r: f"  edited {r['doc_id'][:8]} ({r['ops']} op)")
    step(f"meshctl library search 臨時給水所, at {last}")
    t0 = time.monotonic()
    hits = wait_until(lambda: found("臨時給水所"), 30, 0.3, f"{last} to find the edit")
    for h in hits["results"]:
        say(f"  {h['doc_id'][:8]}  {h['title']}: {' '.join(h['snippet'].split())}")
    say(f"  (the edit reached {last} in {time.monotonic() - t0:.1f} s)")
    _show(cluster[last], "library", "history", doc, fmt=lambda r: "\n".join(
        f"  {h['kind']:<15} by {h['author_name'] or h['author'][:8]:<8} "
        f"+{h['inserted']}/-{h['deleted']} characters" for h in r["history"]))


def _call_step(cluster: Cluster, first: str, last: str) -> None:
    """A free call across the line: a 440 Hz tone from the first node, recorded at the last."""
    step(f"meshctl call {last} --play tone:440 --duration 4, from {first} "
         f"({last} auto-answers and records; botan and chika relay ciphertext)")
    _show(cluster[first], "call", last, "--play", "tone:440", "--duration", "4",
          fmt=lambda r: f"  call {r['call_id'][:8]} {r['reason']} after {r['duration_s']:.1f} s, "
                        f"setup {r['setup_ms']:.0f} ms, quality {r['quality']}")
    path = _recording(cluster)
    seconds, hz = _analyse(path)
    say(f"  {last} recorded {seconds:.1f} s of audio; its strongest frequency is {hz:.0f} Hz "
        f"(the tone played at {first} was 440 Hz)")
    player = shutil.which("play")
    if player and subprocess.run([player, "-q", str(path)], capture_output=True,
                                 timeout=15, check=False).returncode == 0:
        say("  (played back on this machine's speaker)")
    else:
        say(f"  (no speaker here; to listen: play {path} while --keep holds the files)")


def _analyse(path: Path) -> tuple[float, float]:
    """Length in seconds and dominant frequency of a 16-bit PCM WAV file."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    mono = frames.reshape(-1, channels).mean(axis=1) if channels > 1 else frames
    if mono.size == 0:
        return 0.0, 0.0
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(mono.size)))
    return mono.size / rate, float(np.fft.rfftfreq(mono.size, 1 / rate)[int(spectrum.argmax())])


def _show(d: Daemon, *args: str, fmt: Callable[[Any], str]) -> None:
    rc, res = d.meshctl(*args)
    if rc != 0 or not isinstance(res, dict):
        raise AssertionError(f"meshctl {' '.join(args)} exited {rc}: {res}")
    say(fmt(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m carmesh.dev.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loopback", action="store_true", help="use loopback even as root")
    p.add_argument("--keep", action="store_true", help="keep the mesh running until Ctrl-C")
    args = p.parse_args(argv)
    use_netns = not args.loopback and os.geteuid() == 0 and have_netns() is None
    if not use_netns and not args.loopback:
        say(f"(not using network namespaces: {have_netns() or 'not root'}; running on loopback)")
    return run(use_netns, args.keep)


if __name__ == "__main__":
    sys.exit(main())
