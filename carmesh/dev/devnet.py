"""Development network in Linux network namespaces (tests, ``make demo``, benchmarks).

Theory of operation
-------------------
A ``DevNet`` owns a set of network namespaces, one per node, joined by veth
pairs.  Everything it creates carries the prefix ``cm`` plus a short random run
token (``cm3f2a-a`` is node ``a`` of run ``3f2a``), so parallel runs never
collide and leftovers are recognisable.  A veth pair is created directly inside
the two namespaces (``ip link add ... netns A type veth peer ... netns B``), so
nothing ever appears in the host's own namespace, and its addresses
(``10.77.<k>.0/24`` for the k-th link unless given) exist only inside the
namespaces.  IP forwarding stays off in every namespace: a packet crosses more
than one link only if the mesh forwards it.

Interfaces are named after the neighbour they lead to (``to-b`` inside node
``a``) and are up with MULTICAST on, which is all python-zeroconf needs to work
inside a namespace (one instance per node).  Loss is an nftables rule on the
ingress hook of the receiving interface (``numgen random mod 100 < N drop``);
this kernel has no netem, so delay would need a userspace shim.

Cleanup: ``close()`` (also run by the context managers, on exceptions too, by an
``atexit`` hook, and on SIGTERM/SIGINT) kills every process started with
``popen`` (by process group), then any other process still inside our
namespaces, and deletes the namespaces, which removes their veths and nftables
tables with them.  Each run leaves a marker file with its owner's pid and
process start time; ``cleanup_stale`` removes namespaces whose owner is dead (a
crashed run) and leaves live runs, and namespaces it did not make, alone.

Every command runs with a timeout; a failing command raises ``DevNetError``
with the command and its stderr.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import ipaddress
import itertools
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from meshd.core.errors import LocalProtocolError

__all__ = [
    "PREFIX",
    "DevNet",
    "DevNetError",
    "LinkInfo",
    "NetNode",
    "cleanup_stale",
    "have_netns",
    "list_namespaces",
    "main",
]

log = logging.getLogger(__name__)

PREFIX = "cm"
#: where each run records its owner (pid, start time) so crashed runs can be told from live ones
MARKER_DIR = Path("/run/carmesh-devnet")
CMD_TIMEOUT_S = 20.0
KILL_GRACE_S = 3.0
#: how long ``link`` waits for a new veth pair to be operational
LINK_READY_S = 10.0
_NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,11}$")
_TOKEN_RE = re.compile(r"^[a-z0-9]{2,8}$")
_LINK_BASE = ipaddress.IPv4Network("10.77.0.0/16")
_LINK_BASE6 = ipaddress.IPv6Network("fd77::/48")  # a ULA prefix; fd77:0:0:<k>::/64 per link

IfAddress = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class DevNetError(LocalProtocolError):
    """A namespace command failed (not root, missing tool, name in use...)."""


@dataclass(frozen=True, slots=True)
class NetNode:
    """One node of the dev network: a namespace with ``lo`` up."""

    name: str  # short name, e.g. "a"
    netns: str  # namespace name, e.g. "cm3f2a-a"


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """One veth link: the interface and addresses at each end (``a`` is the first node given).

    ``addr_a``/``addr_b`` are the primary addresses (IPv4 unless the link is IPv6-only);
    ``addr6_a``/``addr6_b`` the IPv6 ones when the link has IPv6.
    """

    a: NetNode
    b: NetNode
    if_a: str
    if_b: str
    addr_a: IfAddress
    addr_b: IfAddress
    addr6_a: ipaddress.IPv6Interface | None = None
    addr6_b: ipaddress.IPv6Interface | None = None


def _two_hosts(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[IfAddress, IfAddress]:
    hosts = net.hosts()
    try:
        first, second = next(hosts), next(hosts)
    except StopIteration:
        raise DevNetError(f"subnet {net} has fewer than two host addresses") from None
    return (ipaddress.ip_interface(f"{first}/{net.prefixlen}"),
            ipaddress.ip_interface(f"{second}/{net.prefixlen}"))


def _v6(addr: IfAddress) -> ipaddress.IPv6Interface:
    if not isinstance(addr, ipaddress.IPv6Interface):
        raise DevNetError(f"{addr} is not an IPv6 address")
    return addr


def _run(argv: Sequence[str], *, input_text: str | None = None,
         check: bool = True, timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise DevNetError(f"{argv[0]}: not installed ({exc})") from None
    except subprocess.TimeoutExpired:
        raise DevNetError(f"timed out after {timeout}s: {' '.join(argv)}") from None
    if check and proc.returncode != 0:
        raise DevNetError(f"failed ({proc.returncode}): {' '.join(argv)}: {proc.stderr.strip()}")
    return proc


@functools.cache
def have_netns() -> str | None:
    """None when namespaces can be created here, else the reason they cannot (for pytest skips).

    Root is not enough in a container without CAP_SYS_ADMIN: the first call creates
    and deletes a probe namespace to find out (the answer is cached).
    """
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        dirs = [*os.environ.get("PATH", "").split(":"), "/usr/sbin", "/sbin"]
        if not any(Path(d, tool).exists() for d in dirs if d):
            return f"needs the {tool!r} command"
    probe = f"{PREFIX}{secrets.token_hex(3)}-probe"
    try:
        made = _run(["ip", "netns", "add", probe], check=False)
    except DevNetError as exc:
        return str(exc)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def list_namespaces() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def _kill_group_then_wait(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)


def _kill_pids_in(netns: str) -> None:
    """Kill every process still inside ``netns`` (all of them belong to the run that made it)."""
    out = _run(["ip", "netns", "pids", netns], check=False).stdout
    pids = [int(p) for p in out.split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_GRACE_S
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()
                    and not _is_zombie(p)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _delete_netns(netns: str) -> None:
    _kill_pids_in(netns)
    proc = _run(["ip", "netns", "del", netns], check=False)
    if proc.returncode != 0 and netns in list_namespaces():
        log.warning("devnet: could not delete namespace %s: %s", netns, proc.stderr.strip())


# --- process-wide cleanup on exit and on SIGTERM/SIGINT ---------------------------------------

_live: set[DevNet] = set()
_live_lock = threading.RLock()
_prev_handlers: dict[int, Any] = {}
_atexit_registered = False


def _close_all() -> None:
    with _live_lock:
        nets = list(_live)
    for net in nets:
        net.close()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _close_all()
    prev = _prev_handlers.get(signum, signal.SIG_DFL)
    _restore_handlers()
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _atexit_registered  # noqa: PLW0603
    if not _atexit_registered:
        atexit.register(_close_all)
        _atexit_registered = True
    if threading.current_thread() is not threading.main_thread() or _prev_handlers:
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        prev = signal.getsignal(sig)
        if prev is signal.SIG_IGN:
            continue
        _prev_handlers[sig] = prev
        signal.signal(sig, _on_signal)


def _restore_handlers() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, prev in list(_prev_handlers.items()):
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        del _prev_handlers[sig]


# --- the dev network --------------------------------------------------------------------------


class DevNet:
    """A set of namespaces joined by veth pairs; deletes everything it created on close/exit."""

    def __init__(self, token: str | None = None, *, prefix: str = PREFIX,
                 install_signal_handlers: bool = True) -> None:
        reason = have_netns()
        if reason is not None:
            raise DevNetError(f"devnet {reason}")
        if token is not None and not _TOKEN_RE.match(token):
            raise DevNetError(f"run token {token!r}: 2-8 lowercase letters or digits")
        self.tag = self._claim_tag(prefix, token)
        self._nodes: dict[str, NetNode] = {}
        self._namespaces: list[str] = []
        self._links: dict[frozenset[str], LinkInfo] = {}
        self._link_count = 0
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()
        self._marker = MARKER_DIR / self.tag
        with _live_lock:
            _live.add(self)
            if install_signal_handlers:
                _install_handlers()
            else:
                global _atexit_registered  # noqa: PLW0603
                if not _atexit_registered:
                    atexit.register(_close_all)
                    _atexit_registered = True

    @staticmethod
    def _claim_tag(prefix: str, token: str | None) -> str:
        """Reserve a run tag nobody uses: its marker is created exclusively (O_EXCL)."""
        MARKER_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = list_namespaces()
        pid = os.getpid()
        record = json.dumps({"pid": pid, "start": _proc_start_time(pid)}).encode()
        for _ in range(32):
            tag = f"{prefix}{token if token is not None else secrets.token_hex(2)}"
            if any(ns.startswith(tag + "-") for ns in existing):
                if token is not None:
                    raise DevNetError(f"run {tag} is in use (its namespaces exist)")
                continue
            try:
                fd = os.open(MARKER_DIR / tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if token is not None:
                    raise DevNetError(f"run {tag} is in use (marker {MARKER_DIR / tag})") from None
                continue
            try:
                os.write(fd, record)
            finally:
                os.close(fd)
            return tag
        raise DevNetError("could not find an unused run token")

    # context managers (sync and async)
    def __enter__(self) -> DevNet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> DevNet:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        import asyncio  # only the async path needs it

        await asyncio.to_thread(self.close)

    # nodes and links
    @property
    def nodes(self) -> list[NetNode]:
        """Nodes in creation order."""
        return list(self._nodes.values())

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this run created (and has not deleted yet)."""
        return list(self._namespaces)

    def _check_open(self) -> None:
        if self._closed:
            raise DevNetError("devnet is closed")

    def node(self, name: str) -> NetNode:
        """The node called ``name``."""
        return self._nodes[name]

    def add_node(self, name: str) -> NetNode:
        """Create a namespace for node ``name`` (1-12 of ``a-z0-9_``) with ``lo`` up."""
        with self._lock:
            self._check_open()
            if not _NODE_NAME_RE.match(name):
                raise DevNetError(f"node name {name!r}: 1-12 of a-z, 0-9, _ (starting a-z/0-9)")
            if name in self._nodes:
                raise DevNetError(f"node {name!r} exists")
            node = NetNode(name=name, netns=f"{self.tag}-{name}")
            _run(["ip", "netns", "add", node.netns])
            # recorded before anything else can fail: close() deletes it even if half made
            # (but never a namespace that "ip netns add" refused because it exists)
            self._namespaces.append(node.netns)
            _run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
            self._nodes[name] = node
            log.debug("devnet: node %s (%s)", name, node.netns)
            return node

    def _next_index(self) -> int:
        if self._link_count >= 256:
            raise DevNetError("out of automatic link subnets (256 links); pass subnet=")
        self._link_count += 1
        return self._link_count - 1

    def link(self, a: NetNode, b: NetNode, subnet: str | None = None, *,
             ipv6: bool = False) -> tuple[str, str]:
        """Join ``a`` and ``b`` by a veth pair; returns (ifname in a, ifname in b).

        Addresses come from ``10.77.<k>.0/24`` for the k-th link unless ``subnet`` is
        given (IPv4, or IPv6 for an IPv6-only link); ``a`` gets the first host address
        and ``b`` the second.  ``ipv6=True`` adds ``fd77:0:0:<k>::/64`` addresses too.
        The interfaces are named ``to-<peer>`` and are up with MULTICAST on; it returns
        once the kernel has them operational (carrier seen, IPv6 routes usable).
        """
        with self._lock:
            self._check_open()
            for n in (a, b):
                if self._nodes.get(n.name) != n:
                    raise DevNetError(f"{n.name!r} is not a node of this devnet")
            if a == b:
                raise DevNetError("cannot link a node to itself")
            key = frozenset((a.name, b.name))
            if key in self._links:
                raise DevNetError(f"{a.name} and {b.name} are already linked")
            k = self._next_index()
            try:
                net = (ipaddress.ip_network(subnet) if subnet is not None
                       else list(_LINK_BASE.subnets(new_prefix=24))[k])
            except ValueError as exc:
                raise DevNetError(f"subnet {subnet!r}: {exc}") from None
            addr_a, addr_b = _two_hosts(net)
            addr6_a: ipaddress.IPv6Interface | None = None
            addr6_b: ipaddress.IPv6Interface | None = None
            if net.version == 6:
                addr6_a, addr6_b = _v6(addr_a), _v6(addr_b)
            elif ipv6:
                net6 = ipaddress.IPv6Network((int(_LINK_BASE6.network_address) + (k << 64), 64))
                addr6_a, addr6_b = (_v6(x) for x in _two_hosts(net6))
            if_a, if_b = f"to-{b.name}", f"to-{a.name}"
            _run(["ip", "link", "add", if_a, "netns", a.netns, "type", "veth",
                  "peer", "name", if_b, "netns", b.netns])
            for ns, ifn, addr, addr6 in ((a.netns, if_a, addr_a, addr6_a),
                                         (b.netns, if_b, addr_b, addr6_b)):
                _run(["ip", "-n", ns, "addr", "add", str(addr), "dev", ifn]
                     + (["nodad"] if addr.version == 6 else []))
                if addr6 is not None and addr6 != addr:
                    _run(["ip", "-n", ns, "addr", "add", str(addr6), "dev", ifn, "nodad"])
                _run(["ip", "-n", ns, "link", "set", ifn, "up", "multicast", "on"])
            info = LinkInfo(a=a, b=b, if_a=if_a, if_b=if_b, addr_a=addr_a, addr_b=addr_b,
                            addr6_a=addr6_a, addr6_b=addr6_b)
            self._links[key] = info
            self._wait_operational(info)
            return if_a, if_b

    def _wait_operational(self, info: LinkInfo) -> None:
        """Wait (bounded) until both ends are operationally up and their IPv6 routes usable.

        ``ip link set up`` returns before the kernel has seen the veth's carrier: it does
        that later (its link watch, which needs the RTNL lock other namespaces' setup and
        teardown hold), and until then the interface's IPv6 routes are marked dead: sends
        fail with "Network is unreachable" and multicast to it is dropped.  A test whose
        processes started at once lost its first packets (zeroconf's announcements) under load.
        """
        deadline = time.monotonic() + LINK_READY_S
        ends = [(info.a.netns, info.if_a), (info.b.netns, info.if_b)]
        while ends:
            ns, ifn = ends[0]
            state = _run(["ip", "-n", ns, "-o", "link", "show", "dev", ifn]).stdout
            routes = _run(["ip", "-n", ns, "-6", "route", "show", "table", "all",
                           "dev", ifn]).stdout
            if "state UP" in state and not re.search(r"\b(dead|linkdown)\b", routes):
                ends.pop(0)
                continue
            if time.monotonic() > deadline:
                log.warning("devnet: %s in %s not operational after %.0f s: %s %s", ifn, ns,
                            LINK_READY_S, state.strip(), routes.strip())
                return
            time.sleep(0.01)

    def link_info(self, a: NetNode, b: NetNode) -> LinkInfo:
        """The link between ``a`` and ``b`` (``LinkInfo.a`` is the node given first to ``link``)."""
        try:
            return self._links[frozenset((a.name, b.name))]
        except KeyError:
            raise DevNetError(f"{a.name} and {b.name} are not linked") from None

    def _end(self, node: NetNode, other: NetNode
             ) -> tuple[str, IfAddress, ipaddress.IPv6Interface | None]:
        info = self.link_info(node, other)
        if info.a == node:
            return info.if_a, info.addr_a, info.addr6_a
        return info.if_b, info.addr_b, info.addr6_b

    def ifname(self, node: NetNode, towards: NetNode) -> str:
        """The interface in ``node`` that leads to ``towards``."""
        return self._end(node, towards)[0]

    def address(self, node: NetNode, towards: NetNode, *, family: int | None = None) -> str:
        """``node``'s IP address on its link to ``towards`` (``family=6``: its IPv6 one)."""
        _, primary, v6 = self._end(node, towards)
        if family == 6:
            if v6 is None:
                raise DevNetError(f"the {node.name}–{towards.name} link has no IPv6")
            return str(v6.ip)
        if family == 4 and primary.version != 4:
            raise DevNetError(f"the {node.name}–{towards.name} link has no IPv4")
        return str(primary.ip)

    def interfaces(self, node: NetNode) -> list[str]:
        """All link interfaces of ``node`` (not ``lo``), in link order."""
        out = []
        for info in self._links.values():
            if info.a == node:
                out.append(info.if_a)
            elif info.b == node:
                out.append(info.if_b)
        return out

    def neighbours(self, node: NetNode) -> list[NetNode]:
        """Nodes linked to ``node``, in link order."""
        out = []
        for info in self._links.values():
            if info.a == node:
                out.append(info.b)
            elif info.b == node:
                out.append(info.a)
        return out

    def unlink(self, a: NetNode, b: NetNode) -> None:
        """Delete the veth pair between ``a`` and ``b``."""
        with self._lock:
            self._check_open()
            info = self.link_info(a, b)
            _run(["ip", "-n", info.a.netns, "link", "del", info.if_a])
            del self._links[frozenset((a.name, b.name))]

    def set_link_up(self, a: NetNode, b: NetNode, up: bool) -> None:
        """Take both ends of the a–b link down (``up=False``) or bring them back up."""
        info = self.link_info(a, b)
        state = "up" if up else "down"
        for ns, ifn in ((info.a.netns, info.if_a), (info.b.netns, info.if_b)):
            _run(["ip", "-n", ns, "link", "set", ifn, state])
        if up:
            self._wait_operational(info)

    def set_ingress_loss(self, node: NetNode, ifname: str, percent: int) -> None:
        """Drop ``percent`` % of what arrives on ``node``'s ``ifname`` (0 removes the rule)."""
        if type(percent) is not int or not 0 <= percent <= 100:
            raise DevNetError(f"loss percent {percent!r}: an int in 0..100")
        chain = "in_" + ifname.replace("-", "_")
        script = (
            "add table netdev cmloss\n"
            f"add chain netdev cmloss {chain} "
            f"{{ type filter hook ingress device \"{ifname}\" priority 0; policy accept; }}\n"
            f"flush chain netdev cmloss {chain}\n"
        )
        if percent == 100:  # numgen's range is 0..99: "< 100" does not parse
            script += f"add rule netdev cmloss {chain} counter drop\n"
        elif percent > 0:
            script += (f"add rule netdev cmloss {chain} "
                       f"numgen random mod 100 < {percent} counter drop\n")
        self._check_open()
        _run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input_text=script)

    def set_loss(self, a: NetNode, b: NetNode, percent: int) -> None:
        """Drop ``percent`` % of packets each way on the a–b link (nftables, on ingress)."""
        info = self.link_info(a, b)
        self.set_ingress_loss(info.a, info.if_a, percent)
        self.set_ingress_loss(info.b, info.if_b, percent)

    def dropped(self, node: NetNode, ifname: str) -> int:
        """Packets the loss rule on ``node``'s ``ifname`` has dropped so far (0 without a rule)."""
        chain = "in_" + ifname.replace("-", "_")
        proc = _run(["ip", "netns", "exec", node.netns, "nft", "list", "chain", "netdev",
                     "cmloss", chain], check=False)
        m = re.search(r"counter packets (\d+)", proc.stdout)
        return int(m.group(1)) if m else 0

    # processes
    def popen(self, node: NetNode, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside ``node``'s namespace; it is killed (with its group) on close."""
        with self._lock:
            self._check_open()
            kw.setdefault("start_new_session", True)
            proc: subprocess.Popen[Any] = subprocess.Popen(
                ["ip", "netns", "exec", node.netns, *argv], **kw)
            self._procs.append(proc)
            return proc

    def run(self, node: NetNode, argv: Sequence[str], *, timeout: float = CMD_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside ``node``'s namespace to completion; output captured as text."""
        self._check_open()
        return _run(["ip", "netns", "exec", node.netns, *argv], timeout=timeout, check=check)

    # topologies
    def line(self, n: int, names: Sequence[str] | None = None) -> list[NetNode]:
        """``n`` nodes (``a``, ``b``, ... unless named) linked in a chain."""
        if names is None:
            if n > 26:
                raise DevNetError("give names for more than 26 nodes")
            names = [chr(ord("a") + i) for i in range(n)]
        if len(names) != n or n < 1:
            raise DevNetError("line needs n >= 1 names")
        nodes = [self.add_node(name) for name in names]
        for x, y in itertools.pairwise(nodes):
            self.link(x, y)
        return nodes

    def diamond(self, names: Sequence[str] = ("a", "b", "c", "d")) -> list[NetNode]:
        """Four nodes: ``a`` linked to ``b`` and ``c``, both linked to ``d`` (two paths a→d)."""
        a, b, c, d = (self.add_node(name) for name in names)
        self.link(a, b)
        self.link(a, c)
        self.link(b, d)
        self.link(c, d)
        return [a, b, c, d]

    # cleanup
    def close(self) -> None:
        """Kill our processes and delete every namespace we created (idempotent)."""
        if os.getpid() != self._owner_pid:
            return  # a forked child's atexit must not tear down its parent's network
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs, self._procs = self._procs, []
            for proc in procs:
                _kill_group_then_wait(proc)
            for ns in reversed(self._namespaces):
                _delete_netns(ns)
            self._namespaces.clear()
            self._nodes.clear()
            self._links.clear()
            with contextlib.suppress(OSError):
                self._marker.unlink()
        with _live_lock:
            _live.discard(self)
            if not _live:
                _restore_handlers()


def _owner_state(tag: str) -> bool | None:
    """True: the run's owner is alive; False: it died; None: no marker (not a DevNet run)."""
    try:
        doc = json.loads((MARKER_DIR / tag).read_text())
        pid, start = int(doc["pid"]), str(doc["start"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return False  # a marker we wrote but cannot read: its run is not alive
    return _proc_start_time(pid) == start


def cleanup_stale(prefix: str = PREFIX, *, include_unmarked: bool = False) -> list[str]:
    """Delete namespaces left by crashed DevNet runs (owner dead); returns the names removed.

    A namespace belongs to a run when it is named ``<prefix><token>-<node>`` and the run's
    marker file exists.  Runs whose owner is alive are left alone, so parallel runs are
    safe.  Namespaces with the prefix but no marker (made by hand, or by a run whose
    markers were lost) are removed only with ``include_unmarked=True``.
    """
    pattern = re.compile(rf"^({re.escape(prefix)}[a-z0-9]{{2,8}})-[a-z0-9_]{{1,12}}$")
    removed = []
    states: dict[str, bool | None] = {}
    for ns in list_namespaces():
        m = pattern.match(ns)
        if not m:
            continue
        tag = m.group(1)
        if tag not in states:
            states[tag] = _owner_state(tag)
        state = states[tag]
        if state is True or (state is None and not include_unmarked):
            continue
        _delete_netns(ns)
        removed.append(ns)
        log.warning("devnet: removed stale namespace %s", ns)
    if MARKER_DIR.is_dir():
        for marker in MARKER_DIR.iterdir():
            if marker.name.startswith(prefix) and _owner_state(marker.name) is False:
                with contextlib.suppress(OSError):
                    marker.unlink()
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m carmesh.dev.devnet {list,cleanup}``: show or remove dev-network namespaces."""
    parser = argparse.ArgumentParser(prog="python -m carmesh.dev.devnet",
                                     description="carmesh dev-network namespaces")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="namespaces with the prefix, and whether their run is alive")
    clean = sub.add_parser("cleanup", help="remove namespaces of crashed runs")
    clean.add_argument("--include-unmarked", action="store_true",
                       help=f"also remove {PREFIX}* namespaces no DevNet run claims")
    parser.add_argument("--prefix", default=PREFIX)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "list":
        pattern = re.compile(rf"^({re.escape(args.prefix)}[a-z0-9]{{2,8}})-[a-z0-9_]{{1,12}}$")
        for ns in list_namespaces():
            m = pattern.match(ns)
            if m:
                state = _owner_state(m.group(1))
                label = {True: "live run", False: "crashed run", None: "no marker"}[state]
                print(f"{ns}\t{label}")
        return 0
    removed = cleanup_stale(args.prefix, include_unmarked=args.include_unmarked)
    print(f"removed {len(removed)} namespace(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
