"""The composition root: one ``Node`` assembles identity, links, cores and services.

Theory of operation
-------------------
The node owns the pure protocol cores (``NeighbourTable`` now, the routing
core later) and the adapters that feed them: ``LinkManager`` (QUIC),
``Discovery`` (zeroconf) and ``ControlServer`` (the Unix socket).  Bytes
arrive through the ``LinkListener`` callbacks; the node hands them to the core
named by the datagram's first byte (``Channel``), then *pumps*: it sends what
the cores want to send, drains their events, and re-arms one timer at the
nearest deadline the cores report (babeld's main loop, with asyncio's
``call_at``).  No core ever reads the clock; ``now`` is the loop's monotonic
time.

End-to-end services (``ping`` now; ``msg``, ``sig``, ``media``, ``info``
later) register a handler per ``Service`` code and send with ``send_packet``;
packets not for us are forwarded to the next hop with the hop limit
decremented.  Long-lived tasks belong to the ``TaskGroup`` of ``run()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd import DEFAULT_PORT, __version__
from meshd.config import Config, parse_hostport
from meshd.control.server import ControlServer
from meshd.core.channels import Channel
from meshd.core.clock import MeshClock
from meshd.core.codec import DropCounter
from meshd.core.errors import (
    ControlError,
    LocalProtocolError,
    RemoteProtocolError,
    VerificationError,
)
from meshd.core.fragment import Reassembler, split
from meshd.core.identity import (
    ANNOUNCE_MAX_SKEW_S,
    ANNOUNCE_REFRESH_S,
    KEY_FILE,
    SEQNO_FILE,
    Announcement,
    AnnouncementBook,
    Identity,
    NodeId,
    SeqnoFile,
    short_id,
)
from meshd.core.packet import (
    DEFAULT_HOP_LIMIT,
    HEADER_LEN,
    MeshPacket,
    Service,
    decrement_hop_limit,
    max_payload,
    peek_header,
)
from meshd.links.manager import MESH_MTU, LinkManager
from meshd.metrics import DEFAULT_METRICS, MetricsServer, parse_metrics_address
from meshd.names import resolve_node
from meshd.paths import default_socket_path, default_state_dir, secure_state_dir
from meshd.pins import PinStore, parse_peer
from meshd.routing.flows import FlowKey, FlowTable
from meshd.routing.neighbours import LinkCostChanged, NeighbourLost, NeighbourTable, NeighbourUp
from meshd.routing.table import INFINITY, LeafMoved, RouteChanged, RoutingTable
from meshd.services.api import MetricsSource, NodeService, PacketHandler
from meshd.services.info import InfoService
from meshd.services.messaging import Messenger, Undeliverable
from meshd.services.ping import Pinger

if TYPE_CHECKING:  # zeroconf and ifaddr load only for a node that names an interface
    from meshd.discovery import Discovery, IfAddress, InterfaceWatch, PeerSeen

__all__ = ["Node", "PacketHandler"]

logger = logging.getLogger(__name__)

MAX_PING_PAYLOAD = 256
MAX_PAYLOAD = max_payload(MESH_MTU)
#: the larger NodeId of two that discovered each other dials this much later (the smaller first)
DISCOVERED_DIAL_DELAY_S = 1.5
#: how often the named interfaces are looked at again (ones not up yet, new addresses), s
INTERFACE_POLL_S = 2.0
#: hellos on a quiet, stable link slow down to this (seconds; 0.5 s while traffic flows).
#: At most half the link's QUIC idle timeout (``meshd.links.manager.IDLE_TIMEOUT_S``, 20 s; a
#: peer may ask for less), with room for a lost hello, so a quiet link is never closed for
#: idleness.
IDLE_HELLO_INTERVAL_S = 8.0
#: the metric a gateway advertises for a leaf attached to it (a clean link's cost)
LEAF_METRIC = 256
#: leaves one node serves at most
MAX_LEAVES = 1024


@dataclass(slots=True)
class _PeerInfo:
    """What the node knows about a linked neighbour beyond the cores."""

    announcement: Announcement
    address: tuple[str, int]
    initiator: bool
    up_since: float  # wall clock


class Node:
    """A running carmesh node; ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, config: Config, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.state_dir = config.state_dir or default_state_dir()
        secure_state_dir(self.state_dir)
        #: the raw system clock; everything signed or checked uses mesh time (``self._wall``)
        self._raw_wall = wall_clock
        self.clock = MeshClock()
        self._clock_warned: str | None = None
        known_before = (self.state_dir / KEY_FILE).exists()
        self.identity = Identity.load_or_create(self.state_dir)
        self.name = config.name or f"{config.role.value}-{short_id(self.identity.node_id)}"
        self._seqnos = SeqnoFile(self.state_dir / SEQNO_FILE, wall_clock=self._wall,
                                 expect_existing=known_before)
        self.announcement = self._sign_announcement()
        self.book = AnnouncementBook()
        self.drops = DropCounter(logger)
        self.links = LinkManager(self.identity, lambda: self.announcement, self,
                                 wall_clock=self._wall)
        self.neighbours = NeighbourTable(rng=random.Random(),
                                         max_hello_interval=IDLE_HELLO_INTERVAL_S, ack_hold=True)
        #: (ours, theirs) ACK holding last set on each link (``Connection.set_ack_hold``)
        self._ack_hold: dict[NodeId, tuple[bool, bool]] = {}
        self._pump_soon: asyncio.Handle | None = None
        self.book.accept(self.announcement, self._wall())
        self.routing = RoutingTable(
            node_id=self.identity.node_id, announcement=self.announcement,
            verify=self._verify_announcement, on_seqno_request=self._bump_seqno,
            rng=random.Random(), stub=config.stub)
        self.pins = PinStore(self.state_dir / "pins.json")
        self.pinger = Pinger(self, self._now)
        self.info = InfoService(self, self._now)
        self.info.serve_remote({"status": self._h_status, "neighbours": self._h_neighbours,
                                "routes": self._h_routes},
                               admins=frozenset(bytes.fromhex(a) for a in config.admin))
        self.control = ControlServer(self._socket_path(), self._handlers())
        self.discovery: Discovery | None = None
        self.interfaces: InterfaceWatch | None = None
        self._peers: dict[NodeId, _PeerInfo] = {}
        #: discovered peers waiting for their dial (the larger NodeId lets the smaller go first)
        self._discovery_dials: dict[NodeId, asyncio.TimerHandle] = {}
        self._services: dict[int, PacketHandler] = {
            Service.PING: self.pinger.on_packet, Service.FRAG: self._on_fragment,
            Service.INFO: self.info.on_packet}
        self._reassembler = Reassembler()
        self._frag_ids = itertools.count(random.getrandbits(31))
        self.messenger = Messenger(self, self.state_dir / "messages.jsonl", self.control.publish,
                                   self._now)
        self.register_service(Service.MSG, self.messenger.on_packet)
        #: set by the composition root: ``send`` to a node with no route but known keys
        #: queues the message through this (store-and-forward mail) instead of failing
        self.mail_fallback: Callable[[NodeId, str], Awaitable[dict[str, Any]]] | None = None
        #: leaves (browsers) attached here, by their NodeId: packets for them go to
        #: ``leaf_sink`` (docs/protocols.md, "Leaves"); ``leaf_moved`` hears of one that
        #: attached through another gateway since
        self._leaves: dict[NodeId, Announcement] = {}
        self._leaf_reassembler = Reassembler()
        self.leaf_sink: Callable[[NodeId, MeshPacket], None] | None = None
        self.leaf_moved: Callable[[NodeId], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started_mono = 0.0
        self.listening: list[tuple[str, int]] = []
        self.ready = False
        self._app_services: list[NodeService] = []
        #: mesh packets forwarded for others, and those the next hop's link refused
        self.forwarded = 0
        self.forward_failed = 0
        #: per-flow counters of what we relay (``relay.flows``; calls show there on relays)
        self.flows = FlowTable()
        self.metrics_server: MetricsServer | None = None
        # Test-only: append every received link datagram (after QUIC decryption) to this
        # file, so tests can show that relays never see a sealed message's plaintext.
        dump = os.environ.get("CARMESH_DATAGRAM_DUMP")
        self._dump = open(dump, "ab") if dump else None  # noqa: SIM115 - closed in _shutdown

    # ------------------------------------------------------------------ setup

    def _wall(self) -> float:
        """Mesh time (unix seconds): the system clock bounded by the neighbours' (``MeshClock``)."""
        return self.clock.time(self._raw_wall())

    def refuse_keys(self, revoked: Callable[[bytes], bool]) -> None:
        """Refuse links with nodes whose Ed25519 key ``revoked`` names (a lost or stolen device).

        The composition root installs the application's trust here (meshd knows no trust);
        ``recheck_links`` closes the links that a newer answer refuses.
        """
        self.links.refuse_key = revoked
        self.recheck_links()

    def recheck_links(self) -> None:
        """Close the links to neighbours whose key is now refused (the trust changed)."""
        for peer, info in list(self._peers.items()):
            if self.links.refuse_key(info.announcement.ed25519_pub):
                logger.warning("[%s] closing the link: its key was revoked", short_id(peer))
                self.links.close_link(peer, "revoked", refused=True)

    def mesh_time(self) -> float:
        """Mesh time for the application services (the op store's HLC, expiries)."""
        return self._wall()

    def _on_clock_moved(self, now: float) -> None:
        """The applied clock offset moved: say so, and re-sign in the corrected time."""
        view = self.clock.view(now)
        if view.warning is not None:
            logger.warning("clock: %s", view.warning)
        else:
            logger.warning("clock: the system clock agrees with the neighbours again;"
                           " signing with it")
        self.announcement = self._sign_announcement()
        self.book.accept(self.announcement, self._wall())
        self.routing.set_announcement(self.announcement, now)
        self.control.publish("clock.changed", self._clock_json(now))

    def _clock_json(self, now: float) -> dict[str, Any]:
        view = self.clock.view(now)
        return {
            "offset_s": round(view.offset_s, 3),
            "estimate_s": None if view.estimate_s is None else round(view.estimate_s, 3),
            "neighbours": {short_id(p): round(off, 3) for p, off in sorted(view.samples.items())},
            "warning": view.warning,
        }

    def _socket_path(self) -> Path:
        return default_socket_path(self.state_dir)

    def _sign_announcement(self, at_least: int = 0) -> Announcement:
        return self.identity.announce(self._seqnos.next(at_least), self._wall(), self.name,
                                      self.config.role)

    def _bump_seqno(self, at_least: int) -> Announcement:
        """Routing asks for a newer seqno (RFC 8966 §3.8.2): sign, persist, adopt."""
        self.announcement = self._sign_announcement(at_least)
        return self.announcement

    def _verify_announcement(self, raw: bytes) -> Announcement:
        """Routing's verifier: signature and freshness; newer ones also go to the book."""
        ann = Announcement.decode(raw)
        ann.check_fresh(self._wall())
        with contextlib.suppress(RemoteProtocolError):
            self.book.accept(ann, self._wall())
        return ann

    def register_service(self, service: int, handler: PacketHandler) -> None:
        """Deliver packets addressed to us with this service code to ``handler``."""
        if service in self._services:
            raise LocalProtocolError(f"service {service} registered twice")
        self._services[service] = handler

    def add_service(self, service: NodeService) -> None:
        """Plug an application service in (before ``run``): its methods, streams and events."""
        for method, handler in service.handlers().items():
            if method in self.control.handlers:
                raise LocalProtocolError(f"control method {method!r} served twice")
            self.control.handlers[method] = handler
        for name, stream_handler in service.stream_services().items():
            self.links.register_stream_service(name, stream_handler)
        self._app_services.append(service)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to control clients subscribed to it."""
        self.control.publish(event, data)

    async def open_stream(self, peer: NodeId, service: str) -> Any:
        """A message-framed stream to neighbour ``peer`` for stream service ``service``."""
        return await self.links.open_stream(peer, service)

    def _listen_addresses(self) -> list[tuple[str, int]]:
        """--listen if given, else loopback (with --interface: see ``_on_interfaces``)."""
        if self.config.listen:
            return [parse_hostport(hp, default_port=DEFAULT_PORT) for hp in self.config.listen]
        return [("127.0.0.1", DEFAULT_PORT)]

    async def _on_interfaces(self, usable: dict[str, list[IfAddress]]) -> None:
        """The named interfaces that are up changed (also at start): listen on their new
        addresses (port 7420, unless --listen was given) and run zeroconf on them."""
        old, self.discovery = self.discovery, None
        if old is not None:
            for seen in old.peers():  # the new instance finds those still there again
                self._on_peer_gone(seen.node_id)
            with contextlib.suppress(Exception):
                await old.close()
        if not usable:
            return
        from meshd.discovery import Discovery, InterfaceError, plan_binding

        plan = plan_binding(usable)
        if not self.config.listen:
            for addr in plan.advertised:
                if any(host == addr for host, _ in self.listening):
                    continue
                try:
                    self.listening.append(await self.links.listen(addr, DEFAULT_PORT))
                except OSError as exc:
                    logger.error("cannot listen on %s:%d: %s", addr, DEFAULT_PORT, exc)
                    continue
                if self.ready:
                    logger.info("listening on %s:%d too", addr, DEFAULT_PORT)
        if not self.listening:
            return
        discovery = Discovery(
            node_id=self.identity.node_id, name=self.name, role=self.config.role.value,
            port=self.listening[0][1], interfaces=list(usable),
            on_seen=self._on_peer_seen, on_gone=self._on_peer_gone,
            linked=self.links.is_linked)
        try:
            await discovery.start()
        except (InterfaceError, OSError) as exc:  # the interface went again meanwhile
            logger.error("discovery on %s not started: %s", ", ".join(usable), exc)
            return
        self.discovery = discovery

    # ------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly (goodbyes, links, socket)."""
        self._loop = asyncio.get_running_loop()
        self._started_mono = self._now()
        try:
            if self.config.listen or not self.config.interface:
                for host, port in self._listen_addresses():
                    try:
                        self.listening.append(await self.links.listen(host, port))
                    except OSError as exc:  # uvloop wraps the errno in __cause__
                        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
                        raise LocalProtocolError(
                            f"cannot listen on {host}:{port}: {cause.strerror or cause} (is another "
                            "meshd running there? pick another --listen port)") from None
            if self.config.interface:
                from meshd.discovery import InterfaceWatch

                # interfaces named but not up yet, or that appear later, are picked up
                self.interfaces = InterfaceWatch(list(self.config.interface),
                                                 self._on_interfaces,
                                                 interval_s=INTERFACE_POLL_S)
                await self.interfaces.check()
            logger.info("node %s (%s) listening on %s", short_id(self.identity.node_id), self.name,
                        ", ".join(f"{h}:{p}" for h, p in self.listening)
                        or "no address yet (waiting for the named interfaces)")
            if not self.config.interface:
                logger.warning("no --interface named: running on loopback only, zeroconf is off; "
                               "name an interface (--interface wlan0) to join a mesh")
            for spec in self.config.peer:
                self._add_static_peer(spec)
            await self.control.start()
            await self._start_metrics()
            self.ready = True
            self._pump()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._refresh_announcement(stop))
                service_tasks = [tg.create_task(self.messenger.run())]  # the inbox writer
                service_tasks += [tg.create_task(svc.run()) for svc in self._app_services]
                if self.interfaces is not None:
                    service_tasks.append(tg.create_task(self._follow_interfaces(self.interfaces)))
                await stop.wait()
                self.ready = False
                for task in service_tasks:
                    task.cancel()
        finally:
            await self._shutdown()

    async def _follow_interfaces(self, watch: InterfaceWatch) -> None:
        while True:
            try:
                await watch.run()
            except Exception:  # adapter boundary: the mesh must not stop for an interface
                logger.exception("following the interfaces failed; trying again")
                await asyncio.sleep(watch.interval_s)

    async def _shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._pump_soon is not None:
            self._pump_soon.cancel()
        for handle in self._discovery_dials.values():
            handle.cancel()
        self._discovery_dials.clear()
        self.pinger.cancel_all()
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await self.discovery.close()
        for svc in self._app_services:
            try:
                await svc.close()
            except Exception:  # adapter boundary: one service failing to close stops no other
                logger.exception("closing service %s", type(svc).__name__)
        await self.links.close()
        await self.control.close()
        if self.metrics_server is not None:
            await self.metrics_server.close()
        if self._dump is not None:
            self._dump.close()
        logger.info("node %s stopped", short_id(self.identity.node_id))

    async def _start_metrics(self) -> None:
        """Serve OpenMetrics (``--metrics``); a taken port is logged, never fatal to the mesh."""
        where = parse_metrics_address(self.config.metrics or DEFAULT_METRICS)
        if where is None:
            return
        server = MetricsServer(self, *where)
        try:
            await server.start()
        except OSError as exc:
            level = logging.ERROR if self.config.metrics else logging.WARNING
            logger.log(level, "metrics endpoint not started: cannot listen on %s:%d (%s); "
                       "set --metrics ADDR:PORT or --metrics off", *where, exc.strerror or exc)
            return
        self.metrics_server = server
        logger.info("metrics at %s", server.url)

    def app_services(self) -> list[NodeService]:
        """The application services plugged in with ``add_service``."""
        return list(self._app_services)

    async def _refresh_announcement(self, stop: asyncio.Event) -> None:
        """Re-sign well before the announcement would turn stale for others."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), ANNOUNCE_REFRESH_S)
            if not stop.is_set():
                self.announcement = self._sign_announcement()
                self.routing.set_announcement(self.announcement, self._now())
                self._pump()

    def _add_static_peer(self, spec: str) -> None:
        peer = parse_peer(spec)
        expect = peer.node_id or self.pins.get(peer.host, peer.port)

        def learned(node_id: NodeId, host: str = peer.host, port: int = peer.port) -> None:
            if self.pins.get(host, port) is None:
                self.pins.pin(host, port, node_id)

        self.links.add_static_peer(peer.host, peer.port, expect, on_learned=learned)

    def _on_peer_seen(self, seen: PeerSeen) -> None:
        if seen.node_id == self.identity.node_id:
            return
        # Both ends discover each other; the smaller NodeId dials first and the
        # link layer resolves a simultaneous dial deterministically.  The link layer keeps
        # dialling (with backoff, a bounded number at once) until the service is gone.
        delay = 0.0 if self.identity.node_id < seen.node_id else DISCOVERED_DIAL_DELAY_S
        assert self._loop is not None
        pending = self._discovery_dials.pop(seen.node_id, None)
        if pending is not None:
            pending.cancel()
        self._discovery_dials[seen.node_id] = self._loop.call_later(
            delay, self._dial_discovered, seen)

    def _dial_discovered(self, seen: PeerSeen) -> None:
        self._discovery_dials.pop(seen.node_id, None)
        if not self.ready:
            return
        self.links.add_discovered_peer(seen.node_id, seen.host, seen.port)

    def _on_peer_gone(self, node_id: NodeId) -> None:
        """The service said goodbye (or expired): stop dialling it; a live link stays."""
        logger.info("[%s] discovery: service gone", short_id(node_id))
        pending = self._discovery_dials.pop(node_id, None)
        if pending is not None:
            pending.cancel()
        self.links.remove_discovered_peer(node_id)

    # ------------------------------------------------------- LinkListener

    def link_up(self, peer: NodeId, announcement: Announcement, remote: tuple[str, int],
                initiator: bool) -> None:
        try:
            self.book.accept(announcement, self._wall(), expect=peer)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(peer), str(exc))
        self._peers[peer] = _PeerInfo(announcement, remote, initiator, self._wall())
        idle = self.links.idle_timeout_s(peer)
        # a quiet link's hellos stay below half its idle timeout (an older peer's may be 8 s)
        self.neighbours.link_up(peer, self._now(), None if idle is None else idle / 2)
        logger.info("[%s] link up with %s at %s:%d", short_id(peer), announcement.name, *remote[:2])
        self._pump()

    def link_down(self, peer: NodeId, reason: str) -> None:
        info = self._peers.pop(peer, None)
        self._ack_hold.pop(peer, None)
        self.neighbours.link_down(peer, self._now())
        if info is not None:
            logger.info("[%s] link down: %s", short_id(peer), reason)
        self._pump()

    def datagram_received(self, peer: NodeId, data: bytes) -> None:
        if self._dump is not None:
            self._dump.write(len(data).to_bytes(4, "big") + data)
        if not data:
            self.drops.drop("empty", short_id(peer))
            return
        now = self._now()
        channel = data[0]
        if channel == Channel.NEIGHBOUR:
            self.neighbours.receive(peer, data[1:], now, self._raw_wall())
            self._sync_ack_hold(peer, now)
            offset = self.neighbours.clock_offset(peer)
            if offset is not None:
                self.clock.sample(peer, offset, now)
        elif channel == Channel.ROUTING:
            self.routing.receive(peer, data[1:], now)
        elif channel == Channel.PACKET:
            woke = self.neighbours.traffic(peer, now)  # a busy link keeps fast hellos
            if self._on_packet(peer, data, now) and not woke:
                return  # forwarded: no core changed, nothing to pump (a relay's hot path)
        else:
            self.drops.drop("channel", short_id(peer), f"unknown channel {channel}")
        self._pump()

    # ---------------------------------------------------------------- pump

    def _now(self) -> float:
        # time.monotonic, not loop.time(): uvloop's clock ticks in whole milliseconds,
        # too coarse for RTTs on a fast link.
        return time.monotonic()

    def _pump(self) -> None:
        """Send what the cores want to send, handle their events, re-arm the timer."""
        if self._loop is None:
            return
        now = self._now()
        if self.clock.update(self._raw_wall(), now):
            self._on_clock_moved(now)
        for peer, payload in self.neighbours.datagrams_to_send(now, self._raw_wall()):
            self._sync_ack_hold(peer, now)  # before the send: a held ACK may ride on it
            self._send_link(peer, Channel.NEIGHBOUR, payload)
        while (event := self.neighbours.next_event()) is not None:
            if isinstance(event, NeighbourUp):
                self.routing.neighbour_up(event.peer, event.cost, now)
                self.control.publish("neighbour.up", self._neighbour_json(event.peer))
                for svc in self._app_services:
                    svc.neighbour_up(event.peer)
            elif isinstance(event, NeighbourLost):
                logger.info("[%s] neighbour lost: %s", short_id(event.peer), event.reason)
                self.routing.neighbour_lost(event.peer, now)
                self.clock.forget(event.peer)
                for svc in self._app_services:
                    svc.neighbour_lost(event.peer)
                self.control.publish("neighbour.lost", {"node_id": event.peer.hex(),
                                                        "reason": event.reason})
                self.links.close_link(event.peer, f"neighbour lost: {event.reason}")
            elif isinstance(event, LinkCostChanged):
                self.routing.cost_changed(event.peer, event.cost, now)
        for peer, payload in self.routing.datagrams_to_send(now):
            self._send_link(peer, Channel.ROUTING, payload)
        while (revent := self.routing.next_event()) is not None:
            if isinstance(revent, RouteChanged):
                self._on_route_changed(revent)
            elif isinstance(revent, LeafMoved) and revent.leaf in self._leaves:
                del self._leaves[revent.leaf]
                logger.info("[%s] leaf attached elsewhere now (seqno %d)", short_id(revent.leaf),
                            revent.seqno)
                if self.leaf_moved is not None:
                    self.leaf_moved(revent.leaf)
        self._arm_timer()

    def _sync_ack_hold(self, peer: NodeId, now: float) -> None:
        """Tell the link whether quiet-link ACKs may wait (the hellos decide, see neighbours)."""
        want = self.neighbours.ack_hold(peer, now)
        if self._ack_hold.get(peer, (False, False)) != want:
            self._ack_hold[peer] = want
            self.links.set_ack_hold(peer, *want)

    def _on_route_changed(self, ev: RouteChanged) -> None:
        ann = self.book.get(ev.destination)
        data = {"destination": ev.destination.hex(), "name": ann.name if ann else "",
                "next_hop": ev.next_hop.hex() if ev.next_hop else None,
                "metric": ev.metric, "seqno": ev.seqno}
        logger.debug("route to %s via %s metric %d", short_id(ev.destination),
                     short_id(ev.next_hop) if ev.next_hop else "-", ev.metric)
        self.control.publish("route.changed", data)

    def _arm_timer(self) -> None:
        assert self._loop is not None
        timers = [t for t in (self.neighbours.get_timer(), self.routing.get_timer()) if t is not None]
        deadline = min(timers) if timers else None
        if deadline is not None and deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            self._timer = self._loop.call_later(max(0.0, deadline - self._now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        now = self._now()
        for core in (self.neighbours, self.routing):
            t = core.get_timer()
            if t is not None and t <= now:
                core.handle_timer(now)
        self._pump()

    def _send_link(self, peer: NodeId, channel: Channel, payload: bytes,
                   deadline: float | None = None) -> bool:
        if channel == Channel.PACKET and self.neighbours.traffic(peer, self._now()):
            self._schedule_pump()  # a quiet link woke up: fast hellos, a probe, a tighter timer
        return self.links.send_datagram(peer, bytes([channel]) + payload, deadline=deadline)

    def _schedule_pump(self) -> None:
        """Pump once, soon (not from inside a send that a pump may itself be running)."""
        if self._pump_soon is None and self._loop is not None:
            self._pump_soon = self._loop.call_soon(self._pumped_soon)

    def _pumped_soon(self) -> None:
        self._pump_soon = None
        self._pump()

    # ------------------------------------------------------------- packets

    def next_hop(self, destination: NodeId) -> NodeId | None:
        """The neighbour to send a packet for ``destination`` to, or None if unreachable."""
        hop = self.routing.next_hop(destination)
        if hop is not None and hop in self._peers:
            return hop
        if destination in self._peers and destination in self.neighbours.peers():
            return destination
        return None

    def send_packet(self, destination: NodeId, service: int, payload: bytes, *,
                    flow_id: int = 0, deadline: float | None = None,
                    hop_limit: int = DEFAULT_HOP_LIMIT) -> bool:
        """Send one end-to-end packet; False when there is no route or the link refused it."""
        return self._send_from(self.identity.node_id, destination, service, payload,
                               flow_id=flow_id, deadline=deadline, hop_limit=hop_limit)

    def _send_from(self, source: NodeId, destination: NodeId, service: int, payload: bytes, *,
                   flow_id: int = 0, deadline: float | None = None,
                   hop_limit: int = DEFAULT_HOP_LIMIT) -> bool:
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(payload)} bytes exceeds the mesh MTU")
        pkt = MeshPacket(source, destination, hop_limit, service, flow_id, payload)
        if destination in self._leaves:
            self._to_leaf(pkt, self._now())
            return True
        if destination == self.identity.node_id != source:
            self._deliver_local(pkt, self._now())  # a leaf's message to its own gateway
            return True
        hop = self.next_hop(destination)
        if hop is None:
            return False
        return self._send_link(hop, Channel.PACKET, pkt.encode(), deadline)

    def send_message(self, destination: NodeId, service: int, data: bytes) -> bool:
        """Send an end-to-end message of any size up to the fragment limit (fragmenting as needed)."""
        return self.send_message_from(self.identity.node_id, destination, service, data)

    def send_message_from(self, source: NodeId, destination: NodeId, service: int,
                          data: bytes) -> bool:
        """``send_message`` with another packet source: a leaf attached here (whose sealed
        message names it as the sender), or the source of a message held for a leaf that
        is passed on to the leaf's new gateway.  Only ``meshd.services.leaves`` calls it."""
        if len(data) <= MAX_PAYLOAD:
            return self._send_from(source, destination, service, data)
        frags = split(service, next(self._frag_ids), data, MAX_PAYLOAD)
        return all([self._send_from(source, destination, Service.FRAG, f) for f in frags])

    # ------------------------------------------------------------- leaves

    def attach_leaf(self, ann: Announcement) -> bool:
        """Originate the route to a leaf whose signed announcement names us as its gateway.

        The caller (``meshd.services.leaves``) has checked the leaf's proof of possession.
        Raises ``VerificationError`` for a stale or wrongly addressed announcement; False
        when a newer attachment of the leaf elsewhere is known.
        """
        if ann.gateway != self.identity.node_id:
            raise VerificationError("gateway", "the attachment names another gateway")
        wall = self._wall()
        ann.check_fresh(wall)
        if ann.timestamp < wall - ANNOUNCE_MAX_SKEW_S:
            raise VerificationError("stale", "an attachment is signed within 5 minutes")
        if ann.node_id not in self._leaves and len(self._leaves) >= MAX_LEAVES:
            raise VerificationError("capacity", f"{MAX_LEAVES} leaves attached here already")
        with contextlib.suppress(VerificationError):  # a replay of what the book holds
            self.book.accept(ann, wall)
        if not self.routing.set_stub(ann, LEAF_METRIC, self._now()):
            return False
        self._leaves[ann.node_id] = ann
        self._pump()
        return True

    def detach_leaf(self, leaf: NodeId) -> None:
        """Stop serving ``leaf`` (its attachment went stale): its route is retracted."""
        if self._leaves.pop(leaf, None) is not None:
            self.routing.drop_stub(leaf, self._now())
            self._pump()

    def leaves(self) -> dict[NodeId, Announcement]:
        """The leaves attached here, with the announcement each attached with."""
        return dict(self._leaves)

    def _to_leaf(self, pkt: MeshPacket, now: float) -> None:
        if pkt.service == Service.FRAG:
            try:
                done = self._leaf_reassembler.add(pkt.source, pkt.payload, now)
            except RemoteProtocolError as exc:
                self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
                return
            if done is None:
                return
            pkt = MeshPacket(pkt.source, pkt.destination, pkt.hop_limit, done[0], pkt.flow_id,
                             done[1])
        if pkt.service != Service.MSG or self.leaf_sink is None:
            self.drops.drop("leaf-service", short_id(pkt.source), f"service {pkt.service}")
            return
        self.leaf_sink(pkt.destination, pkt)

    def _deliver_local(self, pkt: MeshPacket, now: float) -> None:
        handler = self._services.get(pkt.service)
        if handler is None:
            self.drops.drop("service", short_id(pkt.source), f"no service {pkt.service}")
            return
        try:
            handler(pkt, now)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(pkt.source), str(exc))

    def _on_fragment(self, pkt: MeshPacket, now: float) -> None:
        done = self._reassembler.add(pkt.source, pkt.payload, now)
        if done is None:
            return
        service, data = done
        handler = self._services.get(service)
        if handler is None or service == Service.FRAG:
            self.drops.drop("service", short_id(pkt.source), f"no service {service}")
            return
        handler(MeshPacket(pkt.source, pkt.destination, pkt.hop_limit, service, pkt.flow_id, data),
                now)

    def announcement_of(self, node_id: NodeId) -> Announcement | None:
        """The newest verified announcement of ``node_id`` (its keys, name, role), if known."""
        return self.book.get(node_id)

    @property
    def max_payload(self) -> int:
        """Largest ``send_packet`` payload in bytes (``NodeApi``)."""
        return MAX_PAYLOAD

    def wall_ms(self) -> int:
        return int(self._wall() * 1000)

    def now(self) -> float:
        """The node's monotonic clock (``NodeApi``): the ``now`` every packet handler gets."""
        return self._now()

    def _on_packet(self, peer: NodeId, data: bytes, now: float) -> bool:
        """Deliver or forward the mesh packet in link datagram ``data`` (channel byte first);
        True if it was forwarded.  A relay reads the header in place and passes the datagram
        on with its hop limit decremented: no decode and re-encode of the packet."""
        try:
            hop_limit, service, source, destination, flow_id = peek_header(data, 1, MESH_MTU - 1)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(peer), str(exc))
            return False
        if destination == self.identity.node_id:
            pkt = MeshPacket(source, destination, hop_limit, service, flow_id,
                             data[1 + HEADER_LEN:])
            handler = self._services.get(service)
            if handler is None:
                self.drops.drop("service", short_id(peer), f"no service {service}")
                return False
            try:
                handler(pkt, now)
            except RemoteProtocolError as exc:
                self.drops.drop(exc.reason, short_id(source), str(exc))
            return False
        if destination in self._leaves:
            self._to_leaf(MeshPacket(source, destination, hop_limit, service, flow_id,
                                     data[1 + HEADER_LEN:]), now)
            return False
        flow = FlowKey(source, destination, service, flow_id) if flow_id else None
        size = len(data) - 1 - HEADER_LEN
        if hop_limit <= 1:
            if flow is not None:
                self.flows.forwarded(flow, size, False, now)
            if service == Service.PING:
                try:
                    self.pinger.time_exceeded(MeshPacket(source, destination, hop_limit, service,
                                                         flow_id, data[1 + HEADER_LEN:]))
                except RemoteProtocolError as exc:
                    self.drops.drop(exc.reason, short_id(source), str(exc))
            else:
                self.drops.drop("hop_limit", short_id(peer))
            return False
        hop = self.next_hop(destination)
        if hop is None or hop == peer:
            self.drops.drop("no_route", short_id(peer))
            if flow is not None:
                self.flows.forwarded(flow, size, False, now)
            return False
        if self.neighbours.traffic(hop, now):
            self._schedule_pump()  # a quiet link woke up (as in _send_link)
        passed = self.links.send_datagram(hop, decrement_hop_limit(data, 1))
        if passed:
            self.forwarded += 1
        else:
            self.forward_failed += 1
        if flow is not None:
            self.flows.forwarded(flow, size, passed, now)
        return True

    # ------------------------------------------------------------- control

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        return {
            "status": self._h_status,
            "neighbours": self._h_neighbours,
            "send": self._h_send,
            "routes": self._h_routes,
            "messages": self._h_messages,
            "relay.flows": self._h_relay_flows,
            **self.pinger.handlers(),
            **self.info.handlers(),
        }

    def known_nodes(self) -> list[tuple[str, str]]:
        """(node id hex, display name) of every node we hold an announcement for."""
        return [(a.node_id.hex(), a.name) for a in self.book]

    def resolve(self, query: str) -> NodeId:
        """NODE argument → NodeId (full id, else exact name, else unique prefix of 4+ digits)."""
        return bytes.fromhex(resolve_node(query, self.known_nodes()))

    async def _h_status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": self.identity.node_id.hex(),
            "short_id": short_id(self.identity.node_id),
            "name": self.name,
            "role": self.config.role.value,
            "version": __version__,
            "ready": self.ready,
            "uptime_s": round(self._now() - self._started_mono, 3),
            "state_dir": str(self.state_dir),
            "listen": [f"{h}:{p}" for h, p in self.listening],
            "interfaces": list(self.config.interface),
            "neighbours": len(self.neighbours.peers()),
            "routes": len(self.routing.destinations()),
            "stub": self.routing.stub,
            "default_route": (None if (d := self.routing.default_route()) is None
                              else {"node_id": d.hex(), "name": self.name_of(d)}),
            "seqno": self.announcement.seqno,
            "pid": os.getpid(),
            "drops": self.drop_counts(),
            "drop_sources": self.drop_sources(),
            "clock": self._clock_json(self._now()),
            "metrics": self.metrics_server.url if self.metrics_server is not None else None,
            "inbox_error": self.messenger.store_error,
        }

    def drop_sources(self, limit: int = 32) -> list[dict[str, Any]]:
        """The node's and its cores' drops per (reason, peer short id), most first (``status``)."""
        total: dict[tuple[str, str], int] = {}
        counters = [self.drops, self.links.drops, self.neighbours.drops, self.routing.drops,
                    self.messenger.drops]
        if self.discovery is not None:
            counters.append(self.discovery.drops)
        for counter in counters:
            for key, n in counter.by_peer.items():
                total[key] = total.get(key, 0) + n
        top = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        return [{"reason": r, "peer": p, "count": n} for (r, p), n in top]

    def core_drop_counts(self) -> dict[str, int]:
        """Refused input by reason over meshd itself: node, links, neighbours, routing,
        discovery, messaging."""
        total: dict[str, int] = {}
        counters = [self.drops, self.links.drops, self.neighbours.drops, self.routing.drops,
                    self.messenger.drops]
        if self.discovery is not None:
            counters.append(self.discovery.drops)
        for counter in counters:
            for reason, n in counter.counts.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def drop_counts(self) -> dict[str, int]:
        """Refused input by reason, over the node, its cores, adapters and services
        (what ``carmesh_drops_total`` reports)."""
        total = self.core_drop_counts()
        for svc in self._app_services:
            if not isinstance(svc, MetricsSource):
                continue
            for fam in svc.metrics():
                if fam.name == "carmesh_drops_total" and fam.labels == ("reason",):
                    for (reason,), n in fam.samples:
                        total[reason] = total.get(reason, 0) + int(n)
        return total

    def relay_drop_counts(self) -> dict[str, int]:
        """Packets for others not forwarded: hop limit spent, no route, next link refused."""
        return {"hop_limit": self.drops.counts["hop_limit"],
                "no_route": self.drops.counts["no_route"], "link": self.forward_failed}

    def _neighbour_json(self, peer: NodeId) -> dict[str, Any]:
        info = self._peers.get(peer)
        stats = self.neighbours.stats(peer)
        link = self.links.links().get(peer)
        ann = info.announcement if info else self.book.get(peer)
        return {
            "node_id": peer.hex(),
            "short_id": short_id(peer),
            "name": ann.name if ann else "",
            "role": ann.role.value if ann else "",
            "address": f"{info.address[0]}:{info.address[1]}" if info else "",
            "state": stats.state.value,
            "rtt_ms": None if stats.rtt_ms is None else round(stats.rtt_ms, 3),
            "loss": round(stats.loss, 4),
            "tx_packets": link.tx_datagrams if link else 0,
            "rx_packets": link.rx_datagrams if link else 0,
            "tx_bytes": (link.tx_datagram_bytes + link.tx_stream_bytes) if link else 0,
            "rx_bytes": (link.rx_datagram_bytes + link.rx_stream_bytes) if link else 0,
            "cost": stats.cost,
            "etx": None if stats.etx == float("inf") else round(stats.etx, 3),
            "up_since": info.up_since if info else None,
            "initiator": info.initiator if info else None,
        }

    async def _h_neighbours(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"neighbours": [self._neighbour_json(p) for p in self.neighbours.links()]}

    def my_links(self) -> list[tuple[NodeId, int]]:
        """Our usable neighbours and their link costs."""
        return [(p, self.neighbours.stats(p).cost) for p in self.neighbours.peers()]

    def destinations(self) -> list[NodeId]:
        """Every node we have a route to."""
        return [d for d in self.routing.destinations() if d != self.identity.node_id]

    @property
    def role(self) -> str:
        return self.config.role.value

    def name_of(self, node_id: NodeId | None) -> str:
        """The display name from ``node_id``'s announcement, or "" if unknown."""
        ann = self.book.get(node_id) if node_id is not None else None
        return ann.name if ann else ""

    async def _h_relay_flows(self, params: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        out = []
        for key, st in self.flows.snapshot(now):
            try:
                service = Service(key.service).name.lower()
            except ValueError:
                service = str(key.service)
            out.append({
                "source": key.source.hex(), "source_name": self.name_of(key.source),
                "destination": key.destination.hex(),
                "destination_name": self.name_of(key.destination),
                "service": service, "flow_id": key.flow_id, "packets": st.packets,
                "bytes": st.bytes, "dropped": st.dropped, "loss": round(st.loss, 4),
                "rate_pps": round(st.rate_pps, 1), "age_s": round(now - st.first, 3),
                "idle_s": round(now - st.last, 3),
            })
        return {"flows": out}

    async def _h_routes(self, params: dict[str, Any]) -> dict[str, Any]:
        show_all = params.get("all", False) is True
        out = []
        for r in self.routing.routes(self._now()):
            if not (show_all or r.selected) or r.destination == self.identity.node_id:
                continue
            out.append({
                "destination": r.destination.hex(), "name": self.name_of(r.destination),
                "next_hop": r.next_hop.hex(), "next_hop_name": self.name_of(r.next_hop),
                "metric": r.metric, "reachable": r.metric < INFINITY, "seqno": r.seqno,
                "age_s": round(r.age, 3), "feasible": r.feasible, "selected": r.selected,
            })
        return {"routes": out}

    async def _h_send(self, params: dict[str, Any]) -> dict[str, Any]:
        query, text = params.get("node"), params.get("text")
        timeout = params.get("timeout", 10.0)
        if not isinstance(query, str) or not isinstance(text, str) or not isinstance(timeout, int | float):
            raise ControlError("bad_request", "send needs node (str) and text (str)")
        target = self.resolve(query)
        who = {"name": self.name_of(target), "short_id": short_id(target)}
        queue = self.mail_fallback if self.announcement_of(target) is not None else None
        if queue is not None and self.next_hop(target) is None and target not in self._leaves:
            return {**await queue(target, text), **who}
        try:
            res = await self.messenger.send(target, text, float(timeout))
        except Undeliverable as exc:
            if queue is not None and exc.reason == "unreachable":
                return {**await queue(target, text), **who}
            code = {"timeout": "timeout", "not_stored": "failed"}.get(exc.reason, "unreachable")
            data: dict[str, Any] = {"node_id": target.hex(), **who}
            if exc.why:
                data["why"] = exc.why
            raise ControlError(code, str(exc), data) from None
        except LocalProtocolError as exc:
            raise ControlError("bad_request", str(exc)) from None
        return {"node_id": target.hex(), **who, "message_id": res.message_id,
                "status": "delivered", "attempts": res.attempts, "rtt_ms": res.rtt_ms}

    async def _h_messages(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"messages": self.messenger.messages()}
