"""Field benchmark: emergency bulletins and mail in a town with no carrier network, simulated.

Run: ``.venv/bin/python bench/field.py [--quick] [--nodes N] [--scenario town|disaster]
[--seed S] [--duration S] [--json] [--plot PNG] [--mails N] [--extra sync-periodic,
epidemic-oracle,sync-flood,sync-quiet,sync-copies-N]``

A town (``tests.sim.town``: a ~4.5 x 3.4 km street grid, cars at 10-50 km/h,
pedestrians at 0.5-1.5 m/s, phones at 8 shelters, a dealer in the centre; the
disaster variant puts most phones at the shelters and sends the cars from
shelter to shelter) over a ~100 m radio whose delay and loss grow with
distance.  Two signed bulletins are posted (by a phone at the first shelter,
then by the dealer) and ``max(10, n / 10)`` sealed mail ops between random
pairs; they spread with each mechanism over the same contacts (same seed, same
moves, same contact trace, checked):

* **sync**: every node runs the real sync session core (``sync.session``) and
  apply planner (``sync.apply``) behind an in-memory store
  (``tests.sync.simsync.SyncSimNode``) on the digest schedule
  (``sync.session.PeerDigests``: a 10-byte note each way at contact start and
  after a change, a reconciliation only where the digests differ), over
  reliable streams on the lossy links.  Mail (``mail.sealed`` ops) goes by
  custody (``sync.custody``: binary spray-and-wait with 8 copies, the last copy
  only to the recipient), as the daemon does;
* **epidemic** flooding (Vahdat and Becker): at every contact each end sends its
  summary vector (16-byte id prefixes), then every op the other's vector lacks,
  in full; an op that arrives later goes at once to every neighbour not known
  to hold it; no reconciliation;
* **spray-and-wait** (binary, 8 copies), for mail only;
* **ideal**: zero transfer time along the contacts in range each tick
  (time-respecting paths), costing bulletin bytes x nodes reached.

``--extra`` adds ``sync-periodic`` (the daemon's schedule: reconcile at link-up,
push on commit, every 30 s while something committed is not known at the neighbour),
``epidemic-oracle`` (flooding that knows what a neighbour lacks for free, no vectors: a
lower bound for any flooding), ``sync-flood`` (sync flooding mail too), ``sync-quiet``
(contacts that begin on a lossy link stay quiet while it improves:
``PeerDigests.quiet``) and ``sync-copies-N`` (mail with N copies).  ``--mails 0``:
bulletins only.

Figures: bulletin coverage of ever-connected nodes (nodes with a contact after
the bulletin was posted), delay p50/p95 from posting to holding, bytes sent on
the air from the first posting to the end (everything: notes, vectors, data,
acknowledgements, re-sends, mail included), mail delivery ratio and delay and
the op bytes each mechanism sent for mail, wall and CPU time.  Not simulated:
calls and routing (``call_connect`` is null), link set-up before the first
sync byte (links come up at once).  ``--json`` prints one JSON object as the
last line.

``--routing`` runs the routing part instead (``tests.sim.town_routing``): cars as
routers and phones as stubs (20 % cars in the town, 30 % in the disaster), every
node running the real routing core on the virtual clock; it reports routing
control bytes per link per second (``routing_bytes_per_link_s``: mean and p95)
and the call connect ratio (``call_connect``) among random pairs with a path at
the time.  Defaults there: 10,000 nodes for 3,600 s; ``--quick`` 1,000 nodes for
300 s.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sync.custody import DEFAULT_COPIES, MailCustody
from sync.envelope import Op
from sync.session import OPS, parse_ops
from tests.sim import Network, sim_id
from tests.sim.streams import MessageReceived, StreamKey, StreamMux, StreamOpened
from tests.sim.town import TownMap, TownMobility, Walker
from tests.sync.simsync import MemOpStore, SyncSimNode

BULLETIN_BODY = 600  #: bytes of text per bulletin
MAIL_BODY = 300  #: bytes of a sealed mail body
SPRAY_COPIES = 8  #: spray-and-wait's copies per message
SAMPLE_S = 10.0  #: coverage-over-time sampling
#: the streams' re-send interval doubles while nothing is acknowledged (as QUIC's probe
#: timeout), for every mechanism; False: a fixed 0.2 s (the benchmark before)
STREAM_BACKOFF = True
#: sync: a reconciliation after a node's own change opens 50 ms + up to this much later
PUSH_JITTER_S = 0.25


# -- the population ------------------------------------------------------------------------


def population(n: int, scenario: str, town: TownMap,
               rng: random.Random) -> tuple[dict[bytes, Walker], list[bytes]]:
    """Walkers for ``n`` nodes; node ids in order (0 = a phone at shelter 0, 1 = the dealer)."""
    if scenario == "disaster":
        shares = {"phone": 0.7, "car": 0.3, "pedestrian": 0.0}
    else:
        shares = {"phone": 0.2, "car": 0.4, "pedestrian": 0.4}
    n_phone = max(1, round((n - 1) * shares["phone"]))
    n_car = round((n - 1) * shares["car"])
    kinds = ["phone", "dealer"] + ["phone"] * (n_phone - 1) + ["car"] * n_car
    kinds += ["pedestrian"] * (n - len(kinds))
    kinds = kinds[:n]
    walkers: dict[bytes, Walker] = {}
    ids: list[bytes] = []
    for i, kind in enumerate(kinds):
        nid = sim_id(i)
        ids.append(nid)
        if kind == "dealer":
            walkers[nid] = Walker(kind, town.dealer, town.dealer_point(), static=True)
        elif kind == "phone":
            s = town.shelters[0] if i == 0 else rng.choice(town.shelters)
            x, y = town.point(*s)
            r, a = 30.0 * math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
            walkers[nid] = Walker(kind, s, (x + r * math.cos(a), y + r * math.sin(a)),
                                  static=True)
        else:
            at = (rng.choice(town.shelters) if scenario == "disaster"
                  else (rng.randrange(town.cols), rng.randrange(town.rows)))
            walkers[nid] = Walker(kind, at, town.point(*at))
    return walkers, ids


# -- the epidemic baseline -----------------------------------------------------------------


class EpidemicNode:
    """Flooding with summary vectors (Vahdat and Becker's epidemic routing, one round).

    At contact start each end sends its summary vector (``V`` then the 16-byte id prefix of
    every bulletin it holds) on a reliable stream; on the peer's vector it sends, in full
    (``O`` then the op), every bulletin the vector lacks.  A bulletin that arrives later is
    sent at once to every neighbour not known to hold it (its vector, what it sent us, what
    we sent it): no reconciliation, no offer, so a neighbour that got it from someone else
    meanwhile gets it again.  With ``oracle=True`` a node knows what a neighbour holds for
    free instead (no vectors sent): a lower bound for any flooding."""

    def __init__(self, node_id: bytes, directory: dict[bytes, EpidemicNode],
                 on_new: Any, *, oracle: bool = False,
                 kinds: dict[bytes, str] | None = None,
                 op_bytes: dict[str, int] | None = None) -> None:
        self.node_id = node_id
        self.kinds = kinds or {}
        self.op_bytes_by_kind = op_bytes if op_bytes is not None else {}
        self.directory = directory  # the oracle (oracle=True only): who holds what
        self.oracle = oracle
        self.on_new = on_new
        self.held: dict[bytes, bytes] = {}
        self.mux = StreamMux(backoff=STREAM_BACKOFF)
        self.up: dict[bytes, StreamKey] = {}
        #: per neighbour: id prefixes it holds to our knowledge (None: its vector not heard)
        self.known: dict[bytes, set[bytes] | None] = {}
        self.vector_bytes = 0

    def post(self, raw: bytes, now: float) -> None:
        self._got(raw, now, None)

    def _got(self, raw: bytes, now: float, src: bytes | None) -> None:
        op_id = hashlib.sha256(raw).digest()
        if src is not None and (k := self.known.get(src)) is not None:
            k.add(op_id[:16])
        if op_id in self.held:
            return
        self.held[op_id] = raw
        self.on_new(self.node_id, op_id, now)
        for peer in sorted(self.up):
            self._offer(peer, now)

    def _offer(self, peer: bytes, now: float) -> None:
        known = self.known.get(peer)
        if known is None:
            return  # its vector has not arrived: it will say what it lacks
        lacks = self.directory[peer].held if self.oracle else None
        for op_id, raw in self.held.items():
            if op_id[:16] in known or (lacks is not None and op_id in lacks):
                continue
            known.add(op_id[:16])
            k = self.kinds.get(op_id, "bulletin")
            self.op_bytes_by_kind[k] = self.op_bytes_by_kind.get(k, 0) + len(raw)
            self.mux.send(self.up[peer], b"O" + raw, now)

    def link_up(self, peer: bytes, now: float) -> None:
        self.up[peer] = self.mux.open(peer)
        if self.oracle:
            self.known[peer] = set()
            self._offer(peer, now)
        else:
            self.known[peer] = None
            vector = b"V" + b"".join(sorted(i[:16] for i in self.held))
            self.vector_bytes += len(vector)
            self.mux.send(self.up[peer], vector, now)

    def link_down(self, peer: bytes, now: float) -> None:
        self.up.pop(peer, None)
        self.known.pop(peer, None)
        self.mux.reset_peer(peer)

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        self.mux.receive(src, data, now)
        while (ev := self.mux.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                if ev.key.peer not in self.up:
                    continue
                if ev.data[:1] == b"O":
                    self._got(ev.data[1:], now, ev.key.peer)
                elif ev.data[:1] == b"V" and (len(ev.data) - 1) % 16 == 0:
                    v = ev.data[1:]
                    self.known[ev.key.peer] = {v[i:i + 16] for i in range(0, len(v), 16)}
                    self._offer(ev.key.peer, now)
            elif isinstance(ev, StreamOpened) and ev.key.peer not in self.up:
                self.mux.reset(ev.key)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, bytes]]:
        return self.mux.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.mux.get_timer()

    def handle_timer(self, now: float) -> None:
        self.mux.handle_timer(now)


class SprayNode(EpidemicNode):
    """Binary spray-and-wait (Spyropoulos, Psounis and Raghavendra, 2005) for mail.

    A message starts with ``SPRAY_COPIES`` copies at its sender.  Contacts begin with the
    summary vectors of ``EpidemicNode``; a node holding ``c > 1`` copies of a message hands
    ``c // 2`` of them to a neighbour that lacks it, and with one copy left it waits and
    gives the message only to its destination.  Messages are ``O``, copies (1 byte), the
    destination (16 bytes), the op."""

    def __init__(self, node_id: bytes, on_new: Any, op_bytes: dict[str, int]) -> None:
        super().__init__(node_id, {}, on_new)
        self.copies: dict[bytes, int] = {}
        self.dst: dict[bytes, bytes] = {}
        self.op_bytes = op_bytes

    def post_mail(self, raw: bytes, dst: bytes, now: float) -> None:
        self._take(raw, SPRAY_COPIES, dst, now, None)

    def _take(self, raw: bytes, copies: int, dst: bytes, now: float, src: bytes | None) -> None:
        op_id = hashlib.sha256(raw).digest()
        if src is not None and (k := self.known.get(src)) is not None:
            k.add(op_id[:16])
        if op_id in self.held:
            return
        self.held[op_id] = raw
        self.copies[op_id] = 0 if dst == self.node_id else copies
        self.dst[op_id] = dst
        self.on_new(self.node_id, op_id, now)
        for peer in sorted(self.up):
            self._offer(peer, now)

    def _offer(self, peer: bytes, now: float) -> None:
        known = self.known.get(peer)
        if known is None:
            return
        for op_id, raw in self.held.items():
            c = self.copies[op_id]
            if op_id[:16] in known or not (c > 1 or (c == 1 and self.dst[op_id] == peer)):
                continue
            give = c // 2 if c > 1 else 1
            self.copies[op_id] = c - give
            known.add(op_id[:16])
            self.op_bytes["mail"] = self.op_bytes.get("mail", 0) + len(raw)
            self.mux.send(self.up[peer], b"O" + bytes([give]) + self.dst[op_id] + raw, now)

    def receive(self, src: bytes, data: bytes, now: float) -> None:
        self.mux.receive(src, data, now)
        while (ev := self.mux.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                if ev.key.peer not in self.up:
                    continue
                d = ev.data
                if d[:1] == b"O" and len(d) > 18:
                    self._take(d[18:], d[1], d[2:18], now, ev.key.peer)
                elif d[:1] == b"V" and (len(d) - 1) % 16 == 0:
                    self.known[ev.key.peer] = {d[i:i + 16] for i in range(1, len(d), 16)}
                    self._offer(ev.key.peer, now)
            elif isinstance(ev, StreamOpened) and ev.key.peer not in self.up:
                self.mux.reset(ev.key)


class _CountingMux(StreamMux):
    """A ``StreamMux`` that counts the message bytes sent on each stream, and the op bytes
    in the ``OPS`` frames handed to it (by namespace: first sends, not stream re-sends)."""

    def __init__(self, store: MemOpStore, op_bytes: dict[str, int]) -> None:
        super().__init__(backoff=STREAM_BACKOFF)
        self.sent_on: dict[StreamKey, int] = {}
        self.store = store
        self.op_bytes = op_bytes

    def send(self, key: StreamKey, msg: bytes, now: float) -> None:
        self.sent_on[key] = self.sent_on.get(key, 0) + len(msg)
        if msg[:1] == bytes([OPS]):
            for raw in parse_ops(msg[1:])[1]:
                ns = self.store.namespace_of(hashlib.sha256(raw).digest()) or "?"
                self.op_bytes[ns] = self.op_bytes.get(ns, 0) + len(raw)
        super().send(key, msg, now)


class FieldSyncNode(SyncSimNode):
    """A ``SyncSimNode`` that reports each op the moment it is committed, and splits the
    session bytes it sends into sessions that moved ops and sessions that moved none."""

    def __init__(self, *args: Any, on_new: Any, op_bytes: dict[str, int], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.on_new = on_new
        self.mux = self.counting = _CountingMux(self.store, op_bytes)
        self.session_bytes = {"moved": 0, "idle": 0}
        self.sessions = {"moved": 0, "idle": 0}

    def _committed(self, ops: Sequence[Op], now: float) -> None:
        for op in ops:
            self.on_new(self.node_id, op.op_id, now)
        super()._committed(ops, now)

    def _end(self, key: StreamKey, outcome: str, now: float) -> None:
        super()._end(key, outcome, now)
        ev = self.ended[-1]
        kind = "moved" if ev.ops_in or ev.ops_out else "idle"
        self.sessions[kind] += 1
        self.session_bytes[kind] += self.counting.sent_on.pop(key, 0)


# -- one run -------------------------------------------------------------------------------


@dataclass
class Outcome:
    held_at: dict[bytes, dict[bytes, float]] = field(default_factory=dict)  # op -> node -> t
    bytes_from_post: int = 0
    bytes_total: int = 0
    datagrams: int = 0
    contacts: int = 0
    link_seconds: float = 0.0
    #: (t, nodes holding a bulletin, averaged over the bulletins)
    samples: list[tuple[float, float]] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    # the ideal (filled by the sync run only)
    ideal_at: dict[bytes, dict[bytes, float]] = field(default_factory=dict)
    connected_after: dict[bytes, set[bytes]] = field(default_factory=dict)
    ideal_samples: list[tuple[float, float]] = field(default_factory=list)
    # sync only: message bytes of sessions that moved ops / moved none (no stream overhead)
    session_bytes: dict[str, int] = field(default_factory=lambda: {"moved": 0, "idle": 0})
    sessions: dict[str, int] = field(default_factory=lambda: {"moved": 0, "idle": 0})
    note_datagrams: int = 0  # sync: digest notes sent
    op_bytes: dict[str, int] = field(default_factory=dict)  # op bytes sent, by namespace
    vector_bytes: int = 0  # epidemic: summary vector message bytes
    resent_bytes: int = 0  # stream re-sends (datagram bytes), whole run


@dataclass(frozen=True)
class Mail:
    op_id: bytes
    size: int
    posted: float
    sender: bytes
    to: bytes


@dataclass(frozen=True)
class Bulletin:
    op_id: bytes
    size: int
    posted: float
    poster: bytes


def simulate(kind: str, n: int, scenario: str, seed: int, duration: float,
             posts: list[tuple[float, int]], town: TownMap | None = None, *,
             with_ideal: bool = False, mails: Sequence[tuple[float, int, int]] = (),
             ) -> tuple[Outcome, list[Bulletin], list[Mail]]:
    """Run one mechanism (``sync``, ``sync-periodic``, ``epidemic``, ``epidemic-oracle`` or
    ``spray``: mail only); ``posts`` are (time, poster index), ``mails`` (time, sender
    index, recipient index).  Returns the outcome, the bulletins and the mails."""
    t0, c0 = time.perf_counter(), time.process_time()
    is_sync = kind.startswith("sync")
    # sync forwards mail by custody (binary spray-and-wait, sync.custody) with this many
    # copies; "sync-flood" floods it as it did before
    copies: int | None = None
    if kind in ("sync", "sync-periodic", "sync-quiet"):
        copies = DEFAULT_COPIES
    elif kind.startswith("sync-copies-"):
        copies = int(kind.rsplit("-", 1)[1])
    town = town or TownMap()
    rng = random.Random(seed)
    walkers, ids = population(n, scenario, town, rng)
    net = Network(seed)
    out = Outcome()

    def link_loss(a: bytes, b: bytes) -> float | None:
        # what the link layer measures of a neighbour (hello loss): the radio's loss at the
        # pair's distance, as of the last mobility tick
        link = net.links.get((a, b))
        return None if link is None else link.params.loss

    def on_new(node: bytes, op_id: bytes, now: float) -> None:
        out.held_at.setdefault(op_id, {}).setdefault(node, now)

    # the bulletins: signed once, the same bytes for every mechanism
    key_rng = random.Random(f"{seed}:keys")
    bulletins: list[tuple[bytes, bytes, float, int]] = []  # (op id, raw, t, poster)
    for k, (t, poster) in enumerate(posts):
        sk = Ed25519PrivateKey.from_private_bytes(key_rng.randbytes(32))
        store = MemOpStore()
        op = store.add_local(sk, kind="bulletin.post", doc_id=bytes([k]) * 16,
                             body=key_rng.randbytes(BULLETIN_BODY // 2).hex().encode(),
                             wall_ms=1_800_000_000_000 + int(t * 1000))
        bulletins.append((op.op_id, op.raw, t, poster))
    mail_rng = random.Random(f"{seed}:mail")
    mail: list[tuple[bytes, bytes, float, int, int]] = []  # (op id, raw, t, sender, to)
    for t, src, dst in mails:
        sk = Ed25519PrivateKey.from_private_bytes(mail_rng.randbytes(32))
        op = MemOpStore().add_local(sk, kind="mail.sealed", doc_id=ids[dst],
                                    body=mail_rng.randbytes(MAIL_BODY),
                                    wall_ms=1_800_000_000_000 + int(t * 1000),
                                    expiry_ms=1_800_000_000_000 + 7 * 86_400_000)
        mail.append((op.op_id, op.raw, t, src, dst))
    kinds = {op_id: "mail" for op_id, *_ in mail}
    if kind == "spray":
        bulletins = []

    sync_nodes: dict[bytes, FieldSyncNode] = {}
    epi_nodes: dict[bytes, EpidemicNode] = {}
    spray_nodes: dict[bytes, SprayNode] = {}
    for i, nid in enumerate(ids):
        if kind == "spray":
            spray_nodes[nid] = SprayNode(nid, on_new, out.op_bytes)
            net.add_node(nid, spray_nodes[nid])
        elif is_sync:
            node = FieldSyncNode(nid, MemOpStore(),
                                 random.Random(seed * 100_003 + i),
                                 interval_s=30.0, on_new=on_new, op_bytes=out.op_bytes,
                                 digests=kind != "sync-periodic",
                                 custody=(MailCustody(nid, copies=copies)
                                          if copies is not None else None),
                                 link_loss=(None if kind != "sync-quiet" else
                                            lambda peer, nid=nid: link_loss(nid, peer)))
            node.push_jitter_s = PUSH_JITTER_S
            sync_nodes[nid] = node
            net.add_node(nid, node)
        else:
            epi_nodes[nid] = EpidemicNode(nid, epi_nodes, on_new,
                                          oracle=kind == "epidemic-oracle", kinds=kinds,
                                          op_bytes=out.op_bytes)
            net.add_node(nid, epi_nodes[nid])

    injects = [(op_id, raw, t, poster, -1) for op_id, raw, t, poster in bulletins]
    injects += mail
    for op_id, raw, t, poster, to in injects:
        def post(op_id: bytes = op_id, raw: bytes = raw, poster: int = poster,
                 to: int = to) -> None:
            nid = ids[poster]
            if kind == "spray":
                spray_nodes[nid].post_mail(raw, ids[to], net.now)
                net.replace_node(nid, spray_nodes[nid])
            elif is_sync:
                node = sync_nodes[nid]
                applied, _ = node.store.apply_remote([raw], 1_800_000_000_000
                                                     + int(net.now * 1000))
                assert [o.op_id for o in applied] == [op_id], node.store.refused
                node.originated(applied)
                node._committed(applied, net.now)
                net.replace_node(nid, node)  # (re-reads its timer and output)
            else:
                epi_nodes[nid].post(raw, net.now)
                net.replace_node(nid, epi_nodes[nid])
        net.schedule(t, post)
    first_post = min((t for _, _, t, _, _ in injects), default=0.0)

    def mark() -> None:
        out.bytes_from_post = -net.stats.bytes_sent
    net.schedule(first_post, mark)

    mobility = TownMobility(net, town, walkers, rng,
                            car_targets=list(town.shelters) if scenario == "disaster" else None)
    if with_ideal:  # the ideal and the ever-connected sets, from the contact trace
        ideal: dict[bytes, dict[bytes, float]] = {op_id: {} for op_id, *_ in injects}
        connected: dict[bytes, set[bytes]] = {op_id: set() for op_id, *_ in injects}

        last_contact: dict[bytes, float] = {}  # node -> the last tick it had a link in range

        def on_tick(now: float, pairs: list[tuple[bytes, bytes]]) -> None:
            # the connected components of this tick's links (one pass), then each op's
            # reach grows by the components holding a node it reached: zero transfer time
            adj: dict[bytes, list[bytes]] = {}
            for a, b in pairs:
                adj.setdefault(a, []).append(b)
                adj.setdefault(b, []).append(a)
            comp_of: dict[bytes, int] = {}
            comps: list[list[bytes]] = []
            for x in adj:
                if x in comp_of:
                    continue
                k = len(comps)
                comp_of[x] = k
                members, stack = [x], [x]
                while stack:
                    for y in adj[stack.pop()]:
                        if y not in comp_of:
                            comp_of[y] = k
                            members.append(y)
                            stack.append(y)
                comps.append(members)
                last_contact.update(dict.fromkeys(members, now))
            for op_id, _, t, poster, _ in injects:
                if now < t:
                    continue
                reached = ideal[op_id]
                reached.setdefault(ids[poster], t)
                if len(reached) == n:
                    continue
                for k in {comp_of[x] for x in reached if x in comp_of}:
                    for y in comps[k]:
                        reached.setdefault(y, now)
        mobility.on_tick.append(on_tick)
        out.ideal_at, out.connected_after = ideal, connected

    def sample() -> None:
        now = net.now
        out.samples.append((now, sum(len(out.held_at.get(b[0], {})) for b in bulletins)
                            / max(1, len(bulletins))))
        if with_ideal:
            out.ideal_samples.append((now, sum(len(out.ideal_at[b[0]]) for b in bulletins)
                                      / max(1, len(bulletins))))
        if now + SAMPLE_S <= duration:
            net.schedule(now + SAMPLE_S, sample)
    net.schedule(0.0, sample)

    mobility.start()
    net.run_until(duration)
    if with_ideal:  # ever connected after a posting: a link in range at a tick since
        for op_id, _, t, _, _ in injects:
            connected[op_id] = {x for x, last in last_contact.items() if last >= t}
    out.bytes_from_post += net.stats.bytes_sent
    out.bytes_total = net.stats.bytes_sent
    out.datagrams = net.stats.sent
    out.contacts = mobility.contacts
    out.link_seconds = mobility.link_seconds
    out.wall_s = time.perf_counter() - t0
    out.cpu_s = time.process_time() - c0
    out.note_datagrams = sum(node.notes_sent for node in sync_nodes.values())
    out.vector_bytes = sum(node.vector_bytes for node in epi_nodes.values())
    out.resent_bytes = (sum(node.mux.resent_bytes for node in sync_nodes.values())
                        + sum(node.mux.resent_bytes for node in epi_nodes.values())
                        + sum(node.mux.resent_bytes for node in spray_nodes.values()))
    for node in sync_nodes.values():
        for part in ("moved", "idle"):
            out.session_bytes[part] += node.session_bytes[part]
            out.sessions[part] += node.sessions[part]
    return (out, [Bulletin(op_id, len(raw), t, ids[poster]) for op_id, raw, t, poster in bulletins],
            [Mail(op_id, len(raw), t, ids[src], ids[dst]) for op_id, raw, t, src, dst in mail])


# -- figures -------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, math.ceil(q * len(s)) - 1)]


def figures(held: dict[bytes, dict[bytes, float]], bulletins: list[Bulletin],
            connected: dict[bytes, set[bytes]],
            ideal: dict[bytes, dict[bytes, float]]) -> dict[str, Any]:
    """Coverage of ever-connected nodes and of the ideal's reach, summed over the bulletins
    as (bulletin, node) pairs; delays from posting over the nodes reached (poster excluded)."""
    reached = denom = ideal_n = 0
    ds: list[float] = []
    for b in bulletins:
        h = held.get(b.op_id, {})
        denom += len(connected[b.op_id] | set(h))  # (the poster, and anyone who got it, had contact)
        reached += len(h)
        ideal_n += len(ideal[b.op_id])
        ds.extend(at - b.posted for nid, at in h.items() if nid != b.poster)
    return {"coverage": reached / denom if denom else None,
            "coverage_of_ideal": reached / ideal_n if ideal_n else None,
            "pairs_reached": reached, "pairs_ever_connected": denom,
            "delay_p50_s": _pct(ds, 0.5), "delay_p95_s": _pct(ds, 0.95)}


def run(n: int, scenario: str, seed: int, duration: float, town: TownMap | None = None, *,
        extra: Sequence[str] = (), n_mail: int | None = None) -> dict[str, Any]:
    """Sync, epidemic and the ideal on the same town and seed; the figures (``--json``).

    ``extra`` adds runs reported beside them: ``"sync-periodic"`` (the daemon's
    schedule: reconcile at link-up, push on commit, every 30 s while needed) and
    ``"epidemic-oracle"`` (flooding that knows what a neighbour lacks for free)."""
    posts = [(60.0, 0), (120.0, 1)]  # a phone at the first shelter, then the dealer
    mrng = random.Random(f"{seed}:mail-pairs")
    mails = []
    for _ in range(max(10, n // 10) if n_mail is None else n_mail):
        src, dst = mrng.sample(range(n), 2)
        mails.append((mrng.uniform(60.0, min(360.0, duration / 2)), src, dst))
    mails.sort()
    s_out, bulletins, mail = simulate("sync", n, scenario, seed, duration, posts, town,
                                      with_ideal=True, mails=mails)
    e_out, _, _ = simulate("epidemic", n, scenario, seed, duration, posts, town, mails=mails)
    w_out, _, _ = simulate("spray", n, scenario, seed, duration, posts, town, mails=mails)
    extras = {k: simulate(k, n, scenario, seed, duration, posts, town, mails=mails)[0]
              for k in extra}
    if any(o.contacts != s_out.contacts for o in (e_out, w_out, *extras.values())):
        raise AssertionError("the runs saw different contacts")
    conn, ideal = s_out.connected_after, s_out.ideal_at
    sync_f = figures(s_out.held_at, bulletins, conn, ideal)
    epi_f = figures(e_out.held_at, bulletins, conn, ideal)
    ideal_f = figures(ideal, bulletins, conn, ideal)
    size = {b.op_id: b.size for b in bulletins}
    size.update({m.op_id: m.size for m in mail})
    # every op (bulletins and mail) to every node the ideal reaches
    ideal_bytes = sum(size[op_id] * (len(h) - 1) for op_id, h in s_out.ideal_at.items())

    def reached(o: Outcome) -> int:
        return sum(len(o.held_at.get(b.op_id, {})) - 1 for b in bulletins)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def mail_f(o: Outcome) -> dict[str, Any]:
        ds = [o.held_at[m.op_id][m.to] - m.posted for m in mail
              if m.to in o.held_at.get(m.op_id, {})]
        return {"delivered": len(ds), "ratio": len(ds) / len(mail) if mail else None,
                "ratio_of_ideal": ratio(len(ds), deliverable),
                "delay_p50_s": _pct(ds, 0.5), "delay_p95_s": _pct(ds, 0.95),
                "op_bytes": o.op_bytes.get("mail", 0)}

    deliverable = sum(1 for m in mail if m.to in s_out.ideal_at[m.op_id])
    mail_r: dict[str, Any] = {"messages": len(mail), "bytes_each": mail[0].size if mail else None,
              "deliverable_ideal": deliverable, "spray_copies": SPRAY_COPIES,
              "sync_copies": DEFAULT_COPIES,
              "sync": mail_f(s_out), "epidemic": mail_f(e_out), "spray": mail_f(w_out),
              "spray_bytes_whole_run": w_out.bytes_total, "spray_wall_s": round(w_out.wall_s, 1)}
    mail_r["ratio_vs_epidemic"] = ratio(mail_r["sync"]["ratio"], mail_r["epidemic"]["ratio"])
    mail_r["op_bytes_vs_spray"] = ratio(mail_r["sync"]["op_bytes"], mail_r["spray"]["op_bytes"])
    r: dict[str, Any] = {
        "bench": "field", "nodes": n, "scenario": scenario, "seed": seed,
        "duration_s": duration, "bulletins": len(bulletins),
        "bulletin_bytes": [b.size for b in bulletins], "contacts": s_out.contacts,
        "link_seconds": s_out.link_seconds,
        "coverage": sync_f["coverage"],
        "delay_p95_vs_epidemic": ratio(sync_f["delay_p95_s"], epi_f["delay_p95_s"]),
        "bytes_vs_epidemic": ratio(s_out.bytes_from_post, e_out.bytes_from_post),
        # bulletin op bytes handed to links (first sends and re-opened sessions, not the
        # stream re-sends), sync / epidemic: the bulletins' share without the mail
        "bulletin_op_bytes_vs_epidemic": ratio(s_out.op_bytes.get("bulletin", 0),
                                               e_out.op_bytes.get("bulletin", 0)),
        "call_connect": None,  # calls are not simulated in this version
        "sync": {**sync_f, "bytes": s_out.bytes_from_post, "bytes_whole_run": s_out.bytes_total,
                 "bytes_per_node_reached": ratio(s_out.bytes_from_post, reached(s_out)),
                 "datagrams": s_out.datagrams, "wall_s": round(s_out.wall_s, 1),
                 "cpu_s": round(s_out.cpu_s, 1),
                 "session_bytes_moved": s_out.session_bytes["moved"],
                 "session_bytes_idle": s_out.session_bytes["idle"],
                 "sessions_moved": s_out.sessions["moved"],
                 "sessions_idle": s_out.sessions["idle"],
                 "note_datagrams": s_out.note_datagrams,
                 "resent_bytes": s_out.resent_bytes,
                 "bytes_per_link_second": ratio(s_out.bytes_total, s_out.link_seconds)},
        "epidemic": {**epi_f, "bytes": e_out.bytes_from_post,
                     "bytes_whole_run": e_out.bytes_total,
                     "bytes_per_node_reached": ratio(e_out.bytes_from_post, reached(e_out)),
                     "vector_bytes": e_out.vector_bytes,
                     "resent_bytes": e_out.resent_bytes,
                     "datagrams": e_out.datagrams, "wall_s": round(e_out.wall_s, 1),
                     "cpu_s": round(e_out.cpu_s, 1)},
        "ideal": {**ideal_f, "bytes": ideal_bytes},
        "bytes_vs_ideal": ratio(s_out.bytes_from_post, ideal_bytes),
        "coverage_curve": {"t": [t for t, _ in s_out.samples],
                           "sync": [c for _, c in s_out.samples],
                           "epidemic": [c for _, c in e_out.samples],
                           "ideal": [c for _, c in s_out.ideal_samples]},
        "mail": mail_r,
        "mail_delivery": mail_r["sync"]["ratio"],
        "wall_s": round(s_out.wall_s + e_out.wall_s + w_out.wall_s
                        + sum(o.wall_s for o in extras.values()), 1),
        "cpu_s": round(s_out.cpu_s + e_out.cpu_s + w_out.cpu_s
                       + sum(o.cpu_s for o in extras.values()), 1),
    }
    for k, o in extras.items():
        f = figures(o.held_at, bulletins, conn, ideal)
        r[k] = {**f, "bytes": o.bytes_from_post,
                "bytes_per_node_reached": ratio(o.bytes_from_post, reached(o)),
                "bytes_vs_epidemic": ratio(o.bytes_from_post, e_out.bytes_from_post),
                "mail": mail_f(o),
                "sessions_moved": o.sessions["moved"], "sessions_idle": o.sessions["idle"],
                "datagrams": o.datagrams, "wall_s": round(o.wall_s, 1)}
    return r


def routing_run(n: int, scenario: str, seed: int, duration: float) -> dict[str, Any]:
    """The routing part (``--routing``): figures of ``tests.sim.town_routing``."""
    from tests.sim.town_routing import TownRouting
    sim = TownRouting(n, scenario, seed)
    f = sim.run(duration).figures()
    return {"bench": "field-routing", "scenario": scenario, "seed": seed, **f,
            "routing_bytes_per_link_s_mean": f["routing_bytes_per_link_s"]["mean"],
            "routing_bytes_per_link_s_p95": f["routing_bytes_per_link_s"]["p95"]}


def _routing_main(a: argparse.Namespace) -> int:
    n = a.nodes or (1000 if a.quick else 10_000)
    duration = a.duration or (300.0 if a.quick else 3600.0)
    r = routing_run(n, a.scenario, a.seed, duration)
    rb = r["routing_bytes_per_link_s"]
    c = r["calls"]
    print(f"field routing: {n} nodes ({r['cars']} cars as routers, {r['phones']} phones as "
          f"stubs), {a.scenario}, seed {a.seed}, {duration:.0f} s simulated "
          f"({r['warmup_s']:.0f} s warm-up), {r['contacts']} contacts, wall {r['wall_s']} s "
          f"(CPU {r['cpu_s']} s)")
    print(f"routing control per link: mean {_fmt(rb['mean'])} B/s, p95 {_fmt(rb['p95'])} B/s "
          f"over {rb['links']} links up >= 10 s")
    for kind, k in r["routing_by_link_kind"].items():
        print(f"  {kind:12} mean {_fmt(k['bytes_per_link_s_mean'])} B/s, "
              f"p95 {_fmt(k['bytes_per_link_s_p95'])} B/s ({k['links']} links)")
    print(f"calls: {c['connected']} of {c['with_path']} with a path connected "
          f"({_fmt(r['call_connect'])}; {c['sampled']} pairs sampled; failures "
          f"{c['failures']}); phones next to a car with a default route "
          f"{_fmt(r['stubs_near_a_car_with_default'])}; car tables {r['car_table_size']}")
    if a.json:
        print(json.dumps(r, sort_keys=True))
    return 0


def plot_png(path: Path, curve: dict[str, list[float]], n: int, width: int = 640,
             height: int = 360) -> None:
    """Coverage over time as a PNG without a plotting library: nodes holding a bulletin
    (mean over the bulletins) as a fraction of all ``n`` nodes; black axes with a tick every
    60 s and every 10 %, ideal in grey, epidemic in red, sync in blue (drawn last)."""
    import struct
    import zlib
    px = bytearray(b"\xff" * (width * height * 3))
    left, bottom, top, right = 40, height - 30, 10, width - 10
    t = curve["t"]
    t_end = t[-1] if t and t[-1] > 0 else 1.0

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            i = (y * width + x) * 3
            px[i:i + 3] = bytes(rgb)

    def line(x0: int, y0: int, x1: int, y1: int, rgb: tuple[int, int, int]) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for k in range(steps + 1):
            x = x0 + (x1 - x0) * k // steps
            y = y0 + (y1 - y0) * k // steps
            for dx, dy in ((0, 0), (0, 1), (1, 0)):
                put(x + dx, y + dy, rgb)

    def xy(ti: float, c: float) -> tuple[int, int]:
        return (left + round((right - left) * ti / t_end),
                bottom - round((bottom - top) * c / max(n, 1)))

    black = (0, 0, 0)
    line(left, bottom, right, bottom, black)
    line(left, bottom, left, top, black)
    for k in range(11):
        y = bottom - (bottom - top) * k // 10
        line(left - 5, y, left, y, black)
        for x in range(left + 1, right, 4):
            put(x, y, (225, 225, 225))
    for k in range(int(t_end // 60) + 1):
        x = left + round((right - left) * k * 60 / t_end)
        line(x, bottom, x, bottom + 5, black)
    for name, rgb in (("ideal", (150, 150, 150)), ("epidemic", (220, 30, 30)),
                      ("sync", (30, 60, 220))):
        pts = [xy(ti, c) for ti, c in zip(t, curve[name], strict=False)]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            line(x0, y0, x1, y1, rgb)
    raw = b"".join(b"\x00" + bytes(px[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="300 nodes, 15 simulated minutes")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--scenario", choices=("town", "disaster"), default="town")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--duration", type=float, default=None, help="simulated seconds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--extra", default="",
                    help="comma-separated extra runs: sync-periodic, epidemic-oracle, "
                         "sync-flood (mail flooded), sync-copies-N (mail with N copies), "
                         "sync-quiet (contacts that begin lossy stay quiet while the link "
                         "improves)")
    ap.add_argument("--mails", type=int, default=None,
                    help="mail messages (default max(10, nodes / 10); 0: bulletins only)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="write coverage over time (PNG): sync blue, epidemic red, ideal grey")
    ap.add_argument("--routing", action="store_true",
                    help="the routing part instead: cars as routers, phones as stubs")
    a = ap.parse_args(argv)
    if a.routing:
        return _routing_main(a)
    n = a.nodes or (300 if a.quick else 1000)
    duration = a.duration or (900.0 if a.quick else 1800.0)
    extra = [k for k in a.extra.split(",") if k]
    for k in extra:
        if k not in ("sync-periodic", "epidemic-oracle", "sync-flood", "sync-quiet") and not (
                k.startswith("sync-copies-") and k[12:].isdigit() and 1 <= int(k[12:]) <= 64):
            ap.error(f"unknown extra run {k!r}")
    r = run(n, a.scenario, a.seed, duration, extra=extra, n_mail=a.mails)
    print(f"field: {n} nodes, {a.scenario}, seed {a.seed}, {duration:.0f} s simulated, "
          f"{r['contacts']} contacts, wall {r['wall_s']} s (CPU {r['cpu_s']} s)")
    print(f"{'':10} {'coverage':>9} {'of ideal':>9} {'p50 s':>7} {'p95 s':>7} {'bytes':>11} "
          f"{'B/reached':>10}")
    for name in ("sync", "epidemic", *extra, "ideal"):
        f = r[name]
        print(f"{name:10} {_fmt(f['coverage']):>9} {_fmt(f['coverage_of_ideal']):>9} "
              f"{_fmt(f['delay_p50_s']):>7} "
              f"{_fmt(f['delay_p95_s']):>7} {_fmt(f['bytes']):>11} "
              f"{_fmt(f.get('bytes_per_node_reached')):>10}")
    print(f"delay p95 vs epidemic {_fmt(r['delay_p95_vs_epidemic'])}, bytes vs epidemic "
          f"{_fmt(r['bytes_vs_epidemic'])}, vs ideal {_fmt(r['bytes_vs_ideal'])}; bulletin op "
          f"bytes vs epidemic {_fmt(r['bulletin_op_bytes_vs_epidemic'])}; "
          "calls: not simulated")
    m = r["mail"]
    print(f"mail: {m['messages']} messages of {m['bytes_each']} B, {m['deliverable_ideal']} "
          "deliverable (ideal); delivered / p50 s / p95 s / op bytes sent:")
    for name in ("sync", "epidemic", "spray", *extra):
        f = m[name] if name in m else r[name]["mail"]
        print(f"  {name:14} {f['delivered']:>5} {_fmt(f['delay_p50_s']):>7} "
              f"{_fmt(f['delay_p95_s']):>7} {f['op_bytes']:>10}")
    sy = r["sync"]
    print(f"sync sessions: {sy['sessions_moved']} moved ops ({sy['session_bytes_moved']} B of "
          f"messages), {sy['sessions_idle']} moved none ({sy['session_bytes_idle']} B); "
          f"{sy['note_datagrams']} digest notes; stream re-sends {sy['resent_bytes']} B "
          f"(epidemic {r['epidemic']['resent_bytes']} B); "
          f"{_fmt(sy['bytes_per_link_second'])} B/s per link in range")
    if a.plot is not None:
        plot_png(a.plot, r["coverage_curve"], n)
    if a.json:
        print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
