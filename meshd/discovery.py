"""Neighbour discovery over multicast DNS (python-zeroconf).

Theory of operation
-------------------
Each node runs one ``AsyncZeroconf`` bound only to the addresses of the
interfaces its configuration names (a head unit also has a cellular modem and
a vehicle network the mesh must stay off).  With no interface named, zeroconf
is not started at all.  The node registers one service of type
``_carmesh._udp.local.`` named ``<name>-<shortid>`` whose TXT record carries
``id`` (full hex NodeId), ``role``, ``name``, ``v`` (protocol version) and
``port``, with short record TTLs (``DEFAULT_TTL_S``) so that a car that drives
away without a goodbye is forgotten quickly.  Besides zeroconf's three announcements
at registration (within half a second) we announce three more, 1, 2 and 4 s apart
(``LATE_ANNOUNCE_GAPS_S``), for a link that passed nothing at first.

A browser reports services appearing, changing and disappearing (a goodbye is
a record with TTL 0, RFC 6762 §10.1).  Expiry needs our own help: python-zeroconf
raises every received PTR TTL to at least 1125 s (``_DNS_PTR_MIN_TTL``, to
limit browser refresh queries), so a car that vanishes silently would stay
listed for about 19 minutes.  We therefore watch each known instance's SRV
record, which keeps our short TTL: past half its lifetime we ask for it again
(one multicast query for all such instances, RFC 6762 §5.2), and once it has
expired unanswered the peer is gone.  A silent departure is noticed within
about ``ttl_s * 1.25``.  Peers we hold a live link to are not asked (``linked``):
the link's own hellos prove them alive, and those queries and their answers were
most of an idle link's traffic.  Their SRV records may expire meanwhile; when the
link goes, such a peer is asked once more and forgotten only if that query goes
unanswered until the next check (about ``ttl_s / 4``).  For
each one we resolve the service, parse its TXT record ourselves from the raw
bytes (size limit first, strict types after; malformed records are dropped,
counted and logged once), ignore our own service, and pick the advertised
address that shares a subnet with one of our interfaces: a node with several
interfaces advertises all of its addresses, and only the one on our link is
reachable without routing.

Discovery is a hint, not a proof: the NodeId in a TXT record is only claimed.
The link handshake (meshd.links.handshake) makes the peer prove it.

The pure parts (``parse_txt``, ``pick_address``, ``PeerTable``) do no I/O and are
unit tested; ``Discovery`` is the thin asyncio adapter around zeroconf.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ifaddr

# DNSOutgoing and DNSQuestion are importable from the top level but not listed in its __all__
from zeroconf import (  # type: ignore[attr-defined]
    DNSOutgoing,
    DNSQuestion,
    IPVersion,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshd import PROTOCOL_VERSION
from meshd.core.codec import DropCounter
from meshd.core.errors import DecodeError, LocalProtocolError
from meshd.core.identity import MAX_NAME_LEN, NODE_ID_LEN, NodeId, Role, short_id

__all__ = [
    "DEFAULT_TTL_S",
    "SERVICE_TYPE",
    "BindPlan",
    "Discovery",
    "InterfaceError",
    "InterfaceWatch",
    "PeerSeen",
    "PeerTable",
    "TxtRecord",
    "encode_txt",
    "instance_name",
    "interface_addresses",
    "parse_txt",
    "pick_address",
    "plan_binding",
    "usable_interfaces",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "_carmesh._udp.local."
#: TTL of every record we publish; short so a vanished car expires quickly (RFC 6762 §10
#: recommends 120 s / 75 min for fixed hosts, which is far too long for moving ones)
DEFAULT_TTL_S = 20
#: the whole TXT rdata; ours is about 100 bytes
MAX_TXT_SIZE = 512
#: resolutions in flight at once; more service events than this are dropped (a flood)
MAX_PENDING_RESOLVES = 64
RESOLVE_TIMEOUT_MS = 3000
#: gaps between the announcements we send after zeroconf's three at registration (225 ms
#: apart).  RFC 6762 §8.3 allows up to eight, each gap at least double the one before.
#: zeroconf's are over within half a second, and a neighbour that missed them all (a link
#: that does not pass traffic yet: a fresh interface's IPv6 routes stay unusable until the
#: kernel has seen its carrier; loss) may never ask us: its own startup queries (1, 4, 9 s
#: after start) are suppressed as duplicates whenever our identical query came just
#: before (RFC 6762 §7.3), and after those it only refreshes records it already holds.
LATE_ANNOUNCE_GAPS_S = (1.0, 2.0, 4.0)
#: distinct service instances remembered at once
MAX_PEERS = 1024
_INSTANCE_MAX = 63  # one DNS label (RFC 6763 §4.1.1)
_TXT_NAME_MAX_BYTES = 200  # "name=" + this fits one TXT string (255 bytes, RFC 6763 §6.1)
# record types and class (RFC 1035 §3.2.2, §3.2.4; SRV: RFC 2782), query flags (RFC 6762 §18)
_TYPE_SRV = 33
_CLASS_IN = 1
_FLAGS_QUERY = 0x0000

IfAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class InterfaceError(LocalProtocolError):
    """A configured interface does not exist or has no usable address."""


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A neighbour discovered on one of our links (its NodeId is claimed, not yet proven)."""

    node_id: NodeId
    name: str
    role: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TxtRecord:
    """The decoded, type-checked contents of a carmesh TXT record."""

    node_id: NodeId
    name: str
    role: str
    version: int
    port: int


# --- pure helpers -----------------------------------------------------------------------------


def instance_name(name: str, node_id: NodeId) -> str:
    """Service instance label ``<name>-<shortid>``: unique per node, one DNS label, no dots."""
    suffix = "-" + short_id(node_id)
    clean = re.sub(r"[^\w\- ]", "-", name, flags=re.UNICODE).strip() or "node"
    while len((clean + suffix).encode()) > _INSTANCE_MAX:
        clean = clean[:-1]
    return clean + suffix


def encode_txt(node_id: NodeId, name: str, role: str, port: int,
               version: int = PROTOCOL_VERSION) -> dict[str, str]:
    """The TXT properties we publish for our own service (the name cut to fit one TXT string)."""
    name = name[:MAX_NAME_LEN]
    while len(name.encode()) > _TXT_NAME_MAX_BYTES:  # a TXT string is at most 255 bytes
        name = name[:-1]
    return {"id": node_id.hex(), "role": role, "name": name,
            "v": str(version), "port": str(port)}


def _txt_strings(rdata: bytes) -> list[bytes]:
    """Split TXT rdata into its length-prefixed strings (RFC 1035 §3.3.14)."""
    out: list[bytes] = []
    i = 0
    while i < len(rdata):
        n = rdata[i]
        if i + 1 + n > len(rdata):
            raise DecodeError("txt", "truncated string")
        out.append(rdata[i + 1:i + 1 + n])
        i += 1 + n
    return out


def _small_int(props: dict[str, str], key: str, lo: int, hi: int) -> int:
    text = props.get(key)
    if text is None:
        raise DecodeError("txt", f"missing {key}")
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise DecodeError("txt", f"{key} is not a number")
    value = int(text)
    if not lo <= value <= hi:
        raise DecodeError("txt", f"{key} outside {lo}..{hi}")
    return value


def parse_txt(rdata: bytes) -> TxtRecord:
    """Decode raw TXT rdata into a ``TxtRecord``; raises ``DecodeError`` on anything malformed.

    Keys are case-insensitive and only the first occurrence counts (RFC 6763 §6.4).
    """
    if len(rdata) > MAX_TXT_SIZE:
        raise DecodeError("oversize", f"TXT {len(rdata)} > {MAX_TXT_SIZE} bytes")
    props: dict[str, str] = {}
    for item in _txt_strings(rdata):
        if not item:
            continue
        key_b, sep, value_b = item.partition(b"=")
        try:
            key = key_b.decode("ascii").lower()
            value = value_b.decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("txt", "not ASCII key / UTF-8 value") from None
        if not key or not sep:
            continue  # boolean attributes are not ours; ignore them
        props.setdefault(key, value)
    id_hex = props.get("id")
    if id_hex is None:
        raise DecodeError("txt", "missing id")
    if len(id_hex) != 2 * NODE_ID_LEN or not re.fullmatch(r"[0-9a-fA-F]+", id_hex):
        raise DecodeError("txt", "id is not a full hex NodeId")
    role = props.get("role")
    if role is None:
        raise DecodeError("txt", "missing role")
    if role not in {r.value for r in Role}:
        raise DecodeError("txt", "unknown role")
    name = props.get("name")
    if name is None:
        raise DecodeError("txt", "missing name")
    if len(name) > MAX_NAME_LEN or not name.isprintable():
        raise DecodeError("txt", "bad name")
    return TxtRecord(node_id=bytes.fromhex(id_hex), name=name, role=role,
                     version=_small_int(props, "v", 0, 255),
                     port=_small_int(props, "port", 1, 65535))


def _candidate(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    # a link-local IPv6 address "shares" fe80::/64 with every link and needs a
    # scope to be usable: never pick one
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_link_local:
        return None
    return addr


def pick_address(candidates: list[str], ours: list[IfAddress]) -> str | None:
    """The first advertised address that lies in the subnet of one of our interface addresses."""
    for text in candidates:
        addr = _candidate(text)
        if addr is None:
            continue
        for iface in ours:
            if addr.version == iface.version and addr in iface.network and addr != iface.ip:
                return str(addr)
    return None


class PeerTable:
    """Service instances we currently see, and the events they imply (pure).

    Several instances may claim one NodeId (a restart under a new name, or a
    liar); the node counts as gone only when its last instance is.
    """

    def __init__(self, max_peers: int = MAX_PEERS) -> None:
        self._by_instance: dict[str, PeerSeen] = {}
        self._max = max_peers

    def update(self, instance: str, peer: PeerSeen) -> bool:
        """Record ``peer`` under ``instance``; True when it is new or changed (report it)."""
        old = self._by_instance.get(instance)
        if old == peer:
            return False
        if old is None and len(self._by_instance) >= self._max:
            raise DecodeError("capacity", f"more than {self._max} services")
        self._by_instance[instance] = peer
        return True

    def remove(self, instance: str) -> NodeId | None:
        """Forget ``instance``; returns its NodeId when no other instance still claims it."""
        old = self._by_instance.pop(instance, None)
        if old is None:
            return None
        if any(p.node_id == old.node_id for p in self._by_instance.values()):
            return None
        return old.node_id

    def __contains__(self, instance: object) -> bool:
        return instance in self._by_instance

    def get(self, instance: str) -> PeerSeen | None:
        """The peer held under ``instance``, if any."""
        return self._by_instance.get(instance)

    def instances(self) -> list[str]:
        """Service instance names currently held."""
        return list(self._by_instance)

    def peers(self) -> list[PeerSeen]:
        """One entry per NodeId (the most recently updated instance wins), sorted by id."""
        by_id: dict[NodeId, PeerSeen] = {}
        for p in self._by_instance.values():
            by_id[p.node_id] = p
        return sorted(by_id.values(), key=lambda p: p.node_id)


# --- interfaces -------------------------------------------------------------------------------


def interface_addresses(ifname: str) -> list[IfAddress]:
    """The addresses (with prefix length) of ``ifname``; ``InterfaceError`` if there is none."""
    for adapter in ifaddr.get_adapters():
        if adapter.name != ifname:
            continue
        out: list[IfAddress] = []
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                out.append(ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}"))
            else:
                out.append(ipaddress.IPv6Interface(f"{ip.ip[0]}/{ip.network_prefix}"))
        return out
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        names = sorted(name for _, name in socket.if_nameindex())
        raise InterfaceError(f"no network interface named {ifname!r} "
                             f"(this host has: {', '.join(names)})") from None
    return []


@dataclass(frozen=True, slots=True)
class BindPlan:
    """Where zeroconf listens and what we advertise, derived from the named interfaces."""

    bind: list[str]  # addresses handed to zeroconf's ``interfaces=``
    ip_version: IPVersion
    advertised: list[str]  # every usable address, IPv4 first
    ours: list[IfAddress]  # with prefix lengths, for ``pick_address``


def plan_binding(per_interface: dict[str, list[IfAddress]]) -> BindPlan:
    """Bind each interface by its IPv4 addresses, or by one IPv6 address when it has no IPv4.

    Link-local IPv6 addresses are never used or advertised (they need a scope).  An
    interface without a usable address raises ``InterfaceError``.
    """
    bind4: list[str] = []
    bind6: list[str] = []
    ours: list[IfAddress] = []
    for ifname, addrs in per_interface.items():
        usable = [a for a in addrs
                  if not (isinstance(a, ipaddress.IPv6Interface) and a.ip.is_link_local)]
        if not usable:
            raise InterfaceError(f"interface {ifname!r} has no usable IP address "
                                 "(give it an IPv4 or a non-link-local IPv6 address)")
        v4 = [str(a.ip) for a in usable if a.version == 4]
        if v4:
            bind4.extend(v4)
        else:
            bind6.append(str(usable[0].ip))  # zeroconf joins IPv6 groups per interface index
        ours.extend(usable)
    if bind4 and bind6:
        ip_version = IPVersion.All
    elif bind6:
        ip_version = IPVersion.V6Only
    else:
        ip_version = IPVersion.V4Only
    advertised = ([str(a.ip) for a in ours if a.version == 4]
                  + [str(a.ip) for a in ours if a.version == 6])
    return BindPlan(bind=bind4 + bind6, ip_version=ip_version, advertised=advertised, ours=ours)


def usable_interfaces(names: list[str]) -> tuple[dict[str, list[IfAddress]], dict[str, str]]:
    """The named interfaces that have a usable address now, and why each other one has not.

    A head unit brings its hotspot up after the daemon starts, or a USB adapter appears
    later: a named interface that is missing or has no usable address is waited for,
    not an error (``InterfaceWatch`` looks again).
    """
    usable: dict[str, list[IfAddress]] = {}
    waiting: dict[str, str] = {}
    for name in dict.fromkeys(names):
        try:
            addrs = interface_addresses(name)
            plan_binding({name: addrs})
        except InterfaceError as exc:
            waiting[name] = str(exc)
            continue
        if not _is_up(name):
            waiting[name] = f"interface {name!r} is down"
            continue
        usable[name] = addrs
    return usable, waiting


def _is_up(ifname: str) -> bool:
    """IFF_UP from sysfs (True when sysfs cannot tell: the addresses decide then)."""
    try:
        flags = int(Path("/sys/class/net", ifname, "flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return True
    return bool(flags & 0x1)


#: netlink multicast groups (linux/rtnetlink.h): links, IPv4 and IPv6 addresses
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10
_RTMGRP_IPV6_IFADDR = 0x100
#: with netlink, the safety look when the kernel reported nothing this long
NETLINK_FALLBACK_S = 60.0
#: a change arrives as a burst of messages (link, addresses, routes): one look after it
_NETLINK_SETTLE_S = 0.05


def _open_netlink() -> socket.socket | None:
    """A non-blocking rtnetlink socket told of link and address changes (None if refused)."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.NETLINK_ROUTE)
    except (OSError, AttributeError):
        return None
    try:
        sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
    except OSError:
        sock.close()
        return None
    return sock


class InterfaceWatch:
    """Looks at the named interfaces when they may have changed and reports each change.

    ``on_change(usable)`` (awaited) gets the interfaces that are up with a usable address
    whenever that set or their addresses change, the first time at once.  Interfaces
    that are missing are logged once per reason, and once more when they appear.  Only
    the named interfaces are read (one ``getifaddrs`` per look, about a millisecond of
    CPU).  On Linux the kernel says when links or addresses change (rtnetlink), so an
    idle node does not look at all but every ``NETLINK_FALLBACK_S``; elsewhere, or if
    netlink is refused, it looks every ``interval_s``.
    """

    def __init__(self, names: list[str], on_change: Callable[[dict[str, list[IfAddress]]],
                                                             Awaitable[None]], *,
                 interval_s: float = 2.0, netlink: bool = True,
                 read: Callable[[list[str]], tuple[dict[str, list[IfAddress]],
                                                   dict[str, str]]] = usable_interfaces) -> None:
        self.names = list(names)
        self.interval_s = interval_s
        self.netlink = netlink
        self._on_change = on_change
        self._read = read
        self._seen: dict[str, list[str]] | None = None
        self.waiting: dict[str, str] = {}
        self.looks = 0

    async def check(self) -> bool:
        """Look once; True if the usable interfaces changed (and ``on_change`` ran)."""
        self.looks += 1
        usable, waiting = self._read(self.names)
        for name, why in waiting.items():
            if self.waiting.get(name) != why:
                log.warning("%s: waiting for it", why)
        for name in self.waiting.keys() - waiting.keys():
            log.info("interface %r is up: %s", name,
                     ", ".join(str(a) for a in usable.get(name, [])))
        self.waiting = waiting
        seen = {name: sorted(str(a) for a in addrs) for name, addrs in usable.items()}
        if seen == self._seen:
            return False
        self._seen = seen
        await self._on_change(usable)
        return True

    async def run(self) -> None:
        """Look on every change the kernel reports (or every ``interval_s`` without netlink)
        until cancelled (the first look is ``check`` at start; with netlink, one more
        follows the subscription)."""
        sock = _open_netlink() if self.netlink else None
        if sock is None:
            while True:
                await asyncio.sleep(self.interval_s)
                await self.check()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def readable() -> None:
            for _ in range(1024):  # drain; what changed does not matter, a look follows
                try:
                    sock.recv(65536)
                except BlockingIOError:
                    break
                except OSError:  # ENOBUFS: messages were lost, which still means "look"
                    break
            changed.set()

        loop.add_reader(sock.fileno(), readable)
        # look once more now that we are subscribed: a change between the first look
        # (``check`` at start) and the subscription sent its messages to nobody, and would
        # otherwise wait for the next change or the safety look a minute later
        changed.set()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), NETLINK_FALLBACK_S)
                await asyncio.sleep(_NETLINK_SETTLE_S)
                changed.clear()
                await self.check()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()


# --- asyncio adapter --------------------------------------------------------------------------


class Discovery:
    """Advertises this node and reports carmesh neighbours seen on the configured interfaces."""

    def __init__(self, *, node_id: NodeId, name: str, role: str, port: int, interfaces: list[str],
                 on_seen: Callable[[PeerSeen], None], on_gone: Callable[[NodeId], None],
                 ttl_s: int = DEFAULT_TTL_S,
                 linked: Callable[[NodeId], bool] | None = None) -> None:
        if not 1 <= port <= 65535:
            raise LocalProtocolError(f"port {port} outside 1..65535")
        self._node_id = node_id
        self._name = name
        self._role = role
        self._port = port
        self._interfaces = list(interfaces)
        self._on_seen = on_seen
        self._on_gone = on_gone
        self._ttl_s = ttl_s
        self._linked = linked
        #: instances whose liveness the link vouched for while their SRV record expired:
        #: False while still linked, True once a last query went out after the link went
        self._held: dict[str, bool] = {}
        self._table = PeerTable()
        self.drops = DropCounter(log)
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._announcing: asyncio.Future[Any] | None = None
        self._info: AsyncServiceInfo | None = None
        self._ours: list[IfAddress] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._liveness: asyncio.Task[None] | None = None
        self._generation: dict[str, int] = {}
        self._closed = False

    @property
    def running(self) -> bool:
        """True while zeroconf is running (False when no interface was configured)."""
        return self._aiozc is not None

    @property
    def instance(self) -> str:
        """Our own service instance label."""
        return instance_name(self._name, self._node_id)

    def peers(self) -> list[PeerSeen]:
        """The neighbours seen now, one per NodeId."""
        return self._table.peers()

    async def start(self) -> None:
        """Register our service and browse; ``InterfaceError`` for a missing or address-less one."""
        if self._aiozc is not None or self._closed:
            raise LocalProtocolError("Discovery.start() called twice or after close()")
        if not self._interfaces:
            log.info("discovery: no interface configured, zeroconf not started "
                     "(name one with --interface IFNAME to find neighbours)")
            return
        plan = plan_binding({name: interface_addresses(name) for name in self._interfaces})
        self._ours = plan.ours
        advertised = plan.advertised
        self._aiozc = AsyncZeroconf(interfaces=plan.bind, ip_version=plan.ip_version)
        try:
            self._info = AsyncServiceInfo(
                SERVICE_TYPE, f"{self.instance}.{SERVICE_TYPE}", port=self._port,
                properties=encode_txt(self._node_id, self._name, self._role, self._port),
                server=f"cm-{self._node_id.hex()}.local.",
                host_ttl=self._ttl_s, other_ttl=self._ttl_s, parsed_addresses=advertised,
            )
            # browse first: our first query goes out while we announce
            self._browser = AsyncServiceBrowser(self._aiozc.zeroconf, SERVICE_TYPE,
                                                handlers=[self._on_service_state_change])
            # no probing (RFC 6762 §8.1, ~1 s): the instance name carries our NodeId's short id,
            # so it is unique without asking; we announce at once (a cooperating responder)
            registered = await self._aiozc.async_register_service(
                self._info, allow_name_change=True, cooperating_responders=True)
            # its repeats (225 ms apart), then ours, go on in the background: the node
            # needs not wait
            self._announcing = asyncio.ensure_future(self._announce(registered))
            self._liveness = asyncio.get_running_loop().create_task(self._liveness_loop())
        except BaseException:
            for task in list(self._tasks):
                task.cancel()
            if self._browser is not None:
                await self._browser.async_cancel()
                self._browser = None
            await self._aiozc.async_close()
            self._aiozc = None
            raise
        log.info("discovery: advertising %s on %s (%s), port %d", self._info.name,
                 ", ".join(self._interfaces), ", ".join(advertised), self._port)

    async def close(self) -> None:
        """Stop browsing, send goodbyes for our service and close zeroconf."""
        if self._closed:
            return
        self._closed = True
        tasks: list[asyncio.Future[Any]] = list(self._tasks)
        if self._liveness is not None:
            tasks.append(self._liveness)
            self._liveness = None
        if self._announcing is not None:
            tasks.append(self._announcing)
            self._announcing = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        aiozc, self._aiozc = self._aiozc, None
        if aiozc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        try:
            await aiozc.async_unregister_all_services()  # goodbyes (TTL 0), RFC 6762 §10.1
        finally:
            await aiozc.async_close()

    async def _announce(self, registered: Awaitable[Any]) -> None:
        """zeroconf's announcements at registration, then ours (``LATE_ANNOUNCE_GAPS_S``)."""
        await registered
        for gap_s in LATE_ANNOUNCE_GAPS_S:
            await asyncio.sleep(gap_s)
            if self._aiozc is None or self._info is None:
                return
            zc = self._aiozc.zeroconf
            zc.async_send(zc.generate_service_broadcast(self._info, None))

    # browser callbacks run inside the event loop
    def _on_service_state_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                                 state_change: ServiceStateChange) -> None:
        if self._closed:
            return
        if state_change is ServiceStateChange.Removed:
            self._generation.pop(name, None)
            self._forget(name)
            return
        if len(self._tasks) >= MAX_PENDING_RESOLVES or (
                name not in self._generation and len(self._generation) >= 2 * MAX_PEERS):
            self.drops.drop("flood", "", f"more than {MAX_PENDING_RESOLVES} resolutions pending "
                                         f"or {2 * MAX_PEERS} services tracked")
            return
        gen = self._generation.get(name, 0) + 1
        self._generation[name] = gen
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, name, gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str, gen: int) -> None:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(zeroconf, RESOLVE_TIMEOUT_MS):
                log.debug("discovery: %s did not resolve", name)
                return
            if self._generation.get(name) != gen or self._closed:
                return  # a newer event (or a goodbye) superseded this one
            self._accept(name, info)
        except asyncio.CancelledError:
            raise
        except Exception:  # adapter boundary: one bad service never stops discovery
            log.exception("discovery: resolving %s failed", name)
        finally:
            # forget the bookkeeping of services that did not make it into the table
            if self._generation.get(name) == gen and name not in self._table:
                del self._generation[name]

    def _accept(self, name: str, info: Any) -> None:
        text = info.text
        try:
            if not isinstance(text, bytes):
                raise DecodeError("txt", "missing TXT record")
            txt = parse_txt(text)
        except DecodeError as exc:
            self.drops.drop(exc.reason, name, exc.detail)
            return
        if txt.node_id == self._node_id:
            return  # our own service
        if txt.version != PROTOCOL_VERSION:
            self.drops.drop("version", name, f"protocol version {txt.version}")
            return
        addresses: list[str] = list(info.parsed_scoped_addresses())
        host = pick_address(addresses, self._ours)
        if host is None:
            self.drops.drop("no-subnet", name, f"no address on our links among {addresses[:8]}")
            return
        peer = PeerSeen(node_id=txt.node_id, name=txt.name, role=txt.role, host=host,
                        port=txt.port)
        try:
            changed = self._table.update(name, peer)
        except DecodeError as exc:
            self.drops.drop(exc.reason, name, exc.detail)
            return
        if changed:
            log.info("discovery: seen %s (%s, %s) at %s", short_id(peer.node_id), peer.name,
                     peer.role, f"[{host}]:{peer.port}" if ":" in host else f"{host}:{peer.port}")
            try:
                self._on_seen(peer)
            except Exception:
                log.exception("discovery: on_seen callback failed")

    async def _liveness_loop(self) -> None:
        interval_s = max(1.0, self._ttl_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._check_liveness(current_time_millis())
            except Exception:  # adapter boundary: keep watching
                log.exception("discovery: liveness check failed")

    def _check_liveness(self, now_ms: float) -> None:
        """Forget instances whose SRV record expired; re-query those past half their TTL.

        Instances of linked peers (``linked``) are neither asked nor forgotten: the link
        proves them alive.  One that expired meanwhile is asked once when its link is gone
        and forgotten at the next check unless it answered.
        """
        if self._aiozc is None:
            return
        zc = self._aiozc.zeroconf
        ask = self._liveness_plan(
            now_ms, lambda name: zc.cache.async_all_by_details(name, _TYPE_SRV, _CLASS_IN))
        if ask:
            out = DNSOutgoing(_FLAGS_QUERY, multicast=True)
            for name in ask:
                out.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
            zc.async_send(out)

    def _liveness_plan(self, now_ms: float, srv_records: Callable[[str], Any]) -> list[str]:
        """One liveness check against ``srv_records(instance)``: forgets the expired
        instances and returns those to ask for (zeroconf's cache is passed in for tests)."""
        ask: list[str] = []
        linked = self._linked
        for name in self._table.instances():
            peer = self._table.get(name)
            if peer is not None and linked is not None and linked(peer.node_id):
                if name in self._held or all(r.is_expired(now_ms) for r in srv_records(name)):
                    self._held[name] = False  # expired while the link vouched for it
                continue
            live = [r for r in srv_records(name) if not r.is_expired(now_ms)]
            if live:
                self._held.pop(name, None)
                if all(r.is_stale(now_ms) for r in live):
                    ask.append(name)
                continue
            if self._held.get(name) is False:  # its link just went: ask once more
                self._held[name] = True
                ask.append(name)
                continue
            self._held.pop(name, None)
            self._generation.pop(name, None)  # a resolution in flight is now moot
            self._forget(name, "expired")
        return ask

    def _forget(self, name: str, why: str = "goodbye") -> None:
        self._held.pop(name, None)
        gone = self._table.remove(name)
        if gone is None:
            return
        log.info("discovery: %s gone (%s)", short_id(gone), why)
        try:
            self._on_gone(gone)
        except Exception:
            log.exception("discovery: on_gone callback failed")
