"""The listening side of links: aioquic's QUIC server with address validation and admission limits.

``LinkServer`` is aioquic's ``QuicServer`` (``aioquic/asyncio/server.py``)
with its new-connection path replaced: every Initial that would open a
connection is put to ``meshd.links.admission`` first, which answers accept,
Retry (stateless address validation, RFC 9000 §8.1.2) or refuse (a stateless
CONNECTION_CLOSE with CONNECTION_REFUSED).  Nothing is kept for an Initial
that is not accepted, and spoofed Initials hold at most
``AdmissionPolicy.retry_above`` handshakes.

Order of work per datagram, cheapest first: a packet whose destination cid
names a connection (short header, or long header of a handshake in progress)
is handed to it after a slice and a dict look-up, with no header parse; an
unknown long-header datagram is put to ``InitialBudget`` (per source and in
all) on its raw bytes and dropped silently beyond it; only within the budget
is its header parsed and the admission asked (a header parse, an HMAC and a
Retry: about 45 µs).  So a flood beyond the budget costs a few microseconds a
packet and the existing links keep their latency.

Everything else (routing packets to connections by connection id, version
negotiation, the connection-id callbacks) is aioquic's, and so are the private
attributes this class relies on: ``_protocols``, ``_configuration``,
``_transport`` and the protocol's ``_connection_*_handler`` hooks.
``tests/meshd/test_links_aioquic.py`` pins them.

Logging is rate-limited: a flood is one warning when it starts and one summary
line per ``FLOOD_LOG_INTERVAL_S`` while it lasts, never a line per packet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from aioquic._buffer import Buffer
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    RETRY_AEAD_KEY_VERSION_1,
    RETRY_AEAD_KEY_VERSION_2,
    RETRY_AEAD_NONCE_VERSION_1,
    RETRY_AEAD_NONCE_VERSION_2,
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_long_header_first_byte,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshd.links.admission import InitialBudget, PendingHandshakes, RetryTokens, Verdict
from meshd.links.connection import Connection, addr_of

__all__ = ["FLOOD_LOG_INTERVAL_S", "LinkServer", "encode_initial_close", "encode_retry", "serve_links"]

log = logging.getLogger(__name__)

#: at most one summary line per this many seconds while Initials are refused or retried
FLOOD_LOG_INTERVAL_S = 10.0


def encode_initial_close(version: int, source_cid: bytes, destination_cid: bytes,
                         error_code: int) -> bytes:
    """A server Initial packet carrying CONNECTION_CLOSE(``error_code``), made without state.

    The Initial keys derive from ``source_cid``, the destination cid the client
    chose (as aioquic's own INVALID_TOKEN close does).
    """
    crypto = CryptoPair()
    crypto.setup_initial(cid=source_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=source_cid, is_client=False,
                                max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
                                peer_cid=destination_cid, version=version)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE,
                              capacity=TRANSPORT_CLOSE_FRAME_CAPACITY)
    buf.push_uint_var(error_code)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(0)
    datagrams, _ = builder.flush()
    return datagrams[0]


_RETRY_AEADS: dict[int, AESGCM] = {}


def encode_retry(version: int, source_cid: bytes, destination_cid: bytes,
                 original_destination_cid: bytes, token: bytes) -> bytes:
    """A Retry packet (RFC 9000 §17.2.5), as aioquic's ``encode_quic_retry`` makes it.

    The same bytes, a few times cheaper: the integrity tag's AES-GCM key
    (RFC 9001 §5.8, fixed per version) is set up once, not for every packet
    of a flood.
    """
    aead = _RETRY_AEADS.get(version)
    if aead is None:
        key = (RETRY_AEAD_KEY_VERSION_2 if version == QuicProtocolVersion.VERSION_2
               else RETRY_AEAD_KEY_VERSION_1)
        aead = _RETRY_AEADS[version] = AESGCM(key)
    nonce = (RETRY_AEAD_NONCE_VERSION_2 if version == QuicProtocolVersion.VERSION_2
             else RETRY_AEAD_NONCE_VERSION_1)
    packet = b"".join((
        bytes([encode_long_header_first_byte(version, QuicPacketType.RETRY, 0)]),
        version.to_bytes(4, "big"), bytes([len(destination_cid)]), destination_cid,
        bytes([len(source_cid)]), source_cid, token))
    pseudo = bytes([len(original_destination_cid)]) + original_destination_cid + packet
    return packet + aead.encrypt(nonce, b"", pseudo)


class _FloodLog:
    """Counts what the admission turned away; logs a summary at most once per interval."""

    def __init__(self, counts: Counter[str], interval_s: float) -> None:
        self.counts = counts
        self._interval_s = interval_s
        self._last_at: float | None = None
        self._since_last: Counter[str] = Counter()
        self._dropped_since_last = 0

    def count(self, what: str, now: float) -> None:
        self.counts[what] += 1
        self._since_last[what] += 1
        self._maybe_log(now)

    def note_dropped(self, now: float) -> None:
        """An Initial beyond the budget (already counted): log only when a summary is due."""
        self._dropped_since_last += 1
        if self._last_at is None or now - self._last_at >= self._interval_s:
            self._maybe_log(now)

    def _maybe_log(self, now: float) -> None:
        if self._dropped_since_last:
            self._since_last["dropped-over-budget"] += self._dropped_since_last
            self._dropped_since_last = 0
        if self._last_at is None or now - self._last_at >= self._interval_s:
            if self._last_at is None:
                log.warning("new handshakes are piling up or arriving too fast: clients must now "
                            "prove their address (QUIC Retry) and per-source limits apply (%s)",
                            _fmt(self._since_last))
            else:
                log.warning("handshake admission in the last %.0f s: %s",
                            now - self._last_at, _fmt(self._since_last))
            self._last_at = now
            self._since_last = Counter()


def _fmt(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


class LinkServer(QuicServer):
    """aioquic's QuicServer with Retry-based address validation and admission limits."""

    def __init__(self, *, configuration: QuicConfiguration,
                 create_protocol: Callable[..., Connection], pending: PendingHandshakes,
                 tokens: RetryTokens, counts: Counter[str],
                 budget: InitialBudget | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(configuration=configuration, create_protocol=create_protocol)
        self._cid_length = configuration.connection_id_length
        self._budget = budget if budget is not None else InitialBudget()
        self._pending = pending
        self._tokens = tokens
        self._clock = clock
        self._flood = _FloodLog(counts, FLOOD_LOG_INTERVAL_S)
        self.counts = counts

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        data = cast(bytes, data)
        n = len(data)
        if n < 1:
            return
        if not data[0] & 0x80:
            # short header: a packet of an established connection, dispatched by its cid
            # without a header parse (aioquic drops one with an unknown cid too)
            protocol = self._protocols.get(data[1:1 + self._cid_length])
            if protocol is not None:
                protocol.datagram_received(data, addr)
            return
        if n < 7:
            return
        dcid_end = 6 + data[5]
        protocol = self._protocols.get(data[6:dcid_end])
        if protocol is not None:
            # a handshake in progress: its connection checks the rest
            protocol.datagram_received(data, addr)
            return
        if n < SMALLEST_MAX_DATAGRAM_SIZE or dcid_end >= n:
            # too small to open a connection (RFC 9000 §14.1) or to need a version
            # negotiation (§5.2.2): aioquic drops these too (or negotiated versions; no more)
            return
        # would open a connection: ration the work (a dict look-up per packet beyond it)
        scid_end = dcid_end + 1 + data[dcid_end]
        has_token = scid_end < n and data[scid_end] != 0
        now = self._clock()
        if not self._budget.allow(addr, has_token, now):
            self.counts["dropped-over-budget"] += 1
            self._flood.note_dropped(now)
            return
        buf = Buffer(data=data)
        try:
            header = pull_quic_header(buf, host_cid_length=self._cid_length)
        except ValueError:
            return
        transport = self._transport
        assert transport is not None
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None
                and header.version not in self._configuration.supported_versions):
            # as aioquic: answer an unknown version, never a version negotiation (no loops)
            transport.sendto(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=self._configuration.supported_versions), addr)
            return
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            return  # not a connection opener (aioquic drops these too)
        protocol = self._new_connection(header, addr_of(addr), addr)
        if protocol is not None:
            protocol.datagram_received(data, addr)

    def _new_connection(self, header: Any, source: tuple[str, int], addr: Any) -> Connection | None:
        now = self._clock()
        odcid: bytes = header.destination_cid
        retry_scid: bytes | None = None
        validated = False
        if header.token:
            try:
                odcid = self._tokens.validate(source, header.destination_cid, header.token, now)
            except ValueError:
                # not ours, expired or forged: drop without a reply (no reflection, no state)
                self._flood.count("invalid-token", now)
                return None
            retry_scid = header.destination_cid
            validated = True
        verdict = self._pending.admit(source[0], validated)
        transport = self._transport
        assert transport is not None
        if verdict is Verdict.RETRY:
            scid = os.urandom(8)
            transport.sendto(encode_retry(
                header.version, source_cid=scid, destination_cid=header.source_cid,
                original_destination_cid=header.destination_cid,
                token=self._tokens.create(source, header.destination_cid, scid, now)), addr)
            self._flood.count("retry-sent", now)
            return None
        if verdict is Verdict.REFUSE:
            transport.sendto(encode_initial_close(
                header.version, source_cid=header.destination_cid,
                destination_cid=header.source_cid,
                error_code=QuicErrorCode.CONNECTION_REFUSED), addr)
            self._flood.count("refused-busy", now)
            return None
        self.counts["accepted-validated" if validated else "accepted"] += 1
        connection = QuicConnection(
            configuration=self._configuration,
            original_destination_connection_id=odcid,
            retry_source_connection_id=retry_scid)
        protocol: Connection = self._create_protocol(connection)
        protocol.connection_made(transport)
        protocol._connection_id_issued_handler = partial(self._connection_id_issued,
                                                         protocol=protocol)
        protocol._connection_id_retired_handler = partial(self._connection_id_retired,
                                                          protocol=protocol)
        protocol._connection_terminated_handler = partial(self._connection_terminated,
                                                          protocol=protocol)
        self._protocols[header.destination_cid] = protocol
        self._protocols[connection.host_cid] = protocol
        key = id(protocol)
        self._pending.add(key, source[0], validated)
        protocol.ready.add_done_callback(lambda _f: self._pending.done(key))
        return protocol


async def serve_links(host: str, port: int, *, configuration: QuicConfiguration,
                      create_protocol: Callable[..., Connection], pending: PendingHandshakes,
                      tokens: RetryTokens, counts: Counter[str]) -> LinkServer:
    """Listen on ``host:port`` (UDP) with a ``LinkServer``."""
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(
        lambda: LinkServer(configuration=configuration, create_protocol=create_protocol,
                           pending=pending, tokens=tokens, counts=counts),
        local_addr=(host, port))
    return server
