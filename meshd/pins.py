"""Static peers and trust-on-first-use pins.

Theory of operation
-------------------
A static peer (``--peer [NODEID@]HOST:PORT``) is for links where multicast
discovery cannot work (hotspots that isolate clients) and for tests on
loopback.  Given with a NodeId, the link handshake must prove exactly that id.
Given without one, the first successful handshake learns the id (trust on
first use) and ``PinStore`` records it, so from then on that address must prove
the same id: an impostor who appears later at the same address is refused.

The pin file is JSON, written atomically (temporary file, fsync, rename) with
mode 0600.  A pin file we cannot read is a local problem and is reported as
``LocalProtocolError`` rather than silently treated as empty, because an empty
store would re-open trust on first use for every pinned peer.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from meshd import DEFAULT_PORT
from meshd.core.errors import LocalProtocolError, VerificationError
from meshd.core.identity import NODE_ID_LEN, NodeId, short_id, write_private

__all__ = ["PIN_FILE", "PinConflictError", "PinStore", "StaticPeer", "format_hostport",
           "parse_peer"]

log = logging.getLogger(__name__)

#: default file name of the pin store inside the state directory
PIN_FILE = "pins.json"
#: the pin file is ours, but refuse to read something absurd into memory
MAX_PIN_FILE_SIZE = 4 * 1024 * 1024
MAX_HOST_LEN = 253
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(\.{_LABEL})*\.?")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")


class PinConflictError(LocalProtocolError):
    """``pin`` was asked to replace an existing pin with a different NodeId."""


@dataclass(frozen=True, slots=True)
class StaticPeer:
    """A configured peer address, with the NodeId it must prove (None: learn it on first use)."""

    node_id: NodeId | None
    host: str  # an IP address (IPv6 without brackets) or a host name
    port: int

    def __str__(self) -> str:
        hp = format_hostport(self.host, self.port)
        return f"{self.node_id.hex()}@{hp}" if self.node_id is not None else hp


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with IPv6 addresses in brackets (``[::1]:7420``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str, spec: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"peer {spec!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"peer {spec!r}: port {port} is outside 1..65535")
    return port


def _normalise_host(host: str, spec: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(f"peer {spec!r}: {host!r} is neither an IP address nor a host name")
    return host.lower().rstrip(".")


def parse_peer(spec: str) -> StaticPeer:
    """Parse ``[NODEID@]HOST:PORT`` (IPv6 as ``[::1]:7420``); ``ValueError`` says what is wrong."""
    text = spec.strip()
    if not text:
        raise ValueError("peer is empty; expected [NODEID@]HOST:PORT, e.g. 10.0.0.2:7420")
    node_id: NodeId | None = None
    if "@" in text:
        id_text, _, text = text.partition("@")
        if not _HEX_RE.fullmatch(id_text) or len(id_text) != 2 * NODE_ID_LEN:
            raise ValueError(
                f"peer {spec!r}: NODEID must be the full {2 * NODE_ID_LEN}-character hex id "
                f"(not the 8-character short form); got {id_text!r}")
        node_id = bytes.fromhex(id_text)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"peer {spec!r}: missing ']' after the IPv6 address")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"peer {spec!r}: {host!r} in brackets is not an IPv6 address"
                             ) from None
        if not rest.startswith(":"):
            raise ValueError(
                f"peer {spec!r}: expected ':PORT' after ']' (e.g. [::1]:{DEFAULT_PORT})")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"peer {spec!r}: missing ':PORT' (e.g. {text}:{DEFAULT_PORT})")
        if ":" in host:
            raise ValueError(
                f"peer {spec!r}: put IPv6 addresses in brackets, e.g. [::1]:{DEFAULT_PORT}")
    if not host:
        raise ValueError(f"peer {spec!r}: host is empty")
    if len(host) > MAX_HOST_LEN:
        raise ValueError(f"peer {spec!r}: host is longer than {MAX_HOST_LEN} characters")
    return StaticPeer(node_id=node_id, host=_normalise_host(host, spec),
                      port=_parse_port(port_text, spec))


def _key(host: str, port: int) -> str:
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower().rstrip(".")
    return format_hostport(host, port)


class PinStore:
    """Trust-on-first-use pins ``host:port -> NodeId``, persisted atomically as JSON (mode 0600)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._pins: dict[str, NodeId] = self._load()

    @property
    def path(self) -> Path:
        return self._path

    def _load(self) -> dict[str, NodeId]:
        if not self._path.exists():
            return {}
        size = self._path.stat().st_size
        if size > MAX_PIN_FILE_SIZE:
            raise LocalProtocolError(f"{self._path}: pin file is {size} bytes; refusing to read it")
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise LocalProtocolError(
                f"{self._path}: pin file is not valid JSON ({exc}); "
                "fix or remove it (removing re-opens trust on first use)") from None
        if (type(doc) is not dict or doc.get("version") != 1
                or type(doc.get("pins")) is not dict):
            raise LocalProtocolError(f"{self._path}: not a version 1 pin file")
        pins: dict[str, NodeId] = {}
        for key, value in doc["pins"].items():
            if (type(value) is not str or len(value) != 2 * NODE_ID_LEN
                    or not _HEX_RE.fullmatch(value)):
                raise LocalProtocolError(
                    f"{self._path}: pin for {key!r} is not a {2 * NODE_ID_LEN}-hex NodeId")
            pins[key] = bytes.fromhex(value)
        return pins

    def _save(self) -> None:
        doc = {"version": 1, "pins": {k: v.hex() for k, v in sorted(self._pins.items())}}
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self._path, (json.dumps(doc, indent=1) + "\n").encode())

    def get(self, host: str, port: int) -> NodeId | None:
        """The NodeId pinned for ``host:port``, or None when nothing is pinned there yet."""
        return self._pins.get(_key(host, port))

    def pin(self, host: str, port: int, node_id: NodeId) -> None:
        """Pin ``node_id`` for ``host:port`` (on disk on return); a different old pin raises."""
        if len(node_id) != NODE_ID_LEN:
            raise LocalProtocolError(f"a NodeId is {NODE_ID_LEN} bytes")
        key = _key(host, port)
        old = self._pins.get(key)
        if old == node_id:
            return
        if old is not None:
            raise PinConflictError(f"{key} is pinned to {old.hex()}, not {node_id.hex()}; "
                                   f"remove the pin with unpin() if the peer really changed keys")
        self._pins[key] = bytes(node_id)
        try:
            self._save()
        except OSError:
            del self._pins[key]
            raise
        log.warning("trust on first use: pinned %s to node %s (%s)", key, short_id(node_id),
                    node_id.hex())

    def verify_or_pin(self, host: str, port: int, node_id: NodeId) -> bool:
        """Accept ``node_id`` proven at ``host:port``: pin it if new (True), pass if equal (False).

        Raises ``VerificationError`` when a different NodeId is pinned there.
        """
        old = self.get(host, port)
        if old is None:
            self.pin(host, port, node_id)
            return True
        if old != node_id:
            raise VerificationError("pin", f"{_key(host, port)} is pinned to {short_id(old)}, "
                                           f"peer proved {short_id(node_id)}")
        return False

    def unpin(self, host: str, port: int) -> bool:
        """Forget the pin for ``host:port``; True if there was one."""
        key = _key(host, port)
        old = self._pins.pop(key, None)
        if old is None:
            return False
        self._save()
        log.warning("unpinned %s (was node %s)", key, short_id(old))
        return True

    def items(self) -> list[tuple[str, NodeId]]:
        """All pins as ``(host:port, NodeId)``, sorted."""
        return sorted(self._pins.items())
