"""Every place carmesh reads or writes aioquic's private state, each guarded, in one module.

aioquic 1.7.2 has no public accessor for what the link layer needs: the peer's
certificate, how many datagrams it holds unpacked, a stream's unacknowledged
bytes, the draining state, the pending ACK, the asyncio transport's read size,
and (``meshd.links.server``) the server's connection-id table.  Each helper
here degrades to a harmless default when the attribute it reads is gone (or
raises ``LocalProtocolError`` where no default is safe: the certificate), and
``tests/meshd/test_links_aioquic.py`` fails when an aioquic upgrade moves any
of them.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.quic import events
from aioquic.quic.connection import QuicConnection, QuicConnectionState
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.core.errors import LocalProtocolError

__all__ = [
    "UDP_RECV_SIZE",
    "ack_pending",
    "ack_with_next_packet",
    "datagrams_pending",
    "hold_ack",
    "limit_receive_size",
    "negotiated_idle_timeout",
    "peer_certificate",
    "peer_certificate_key",
    "peer_closed",
    "peer_max_ack_delay",
    "set_peer_max_ack_delay",
    "stream_unacked",
]

#: receive buffer per UDP read (stock asyncio reads 256 KiB per datagram otherwise).
#: The kernel's socket buffers stay at their default (about 208 KiB): a 1 MiB receive buffer
#: absorbed a relay's scheduling stalls, but a stream's whole send window then queued in it,
#: ahead of voice (RTT of datagrams during a stream transfer 8 ms -> 40 ms, bench/links.py)
UDP_RECV_SIZE = 4096


def limit_receive_size(transport: Any) -> None:
    """Make stock asyncio read UDP into a small buffer instead of 256 KiB per datagram.

    QUIC packets of our peers are at most ~1,200 bytes (aioquic does no PMTU
    discovery); anything larger than UDP_RECV_SIZE is truncated and then fails
    decryption like any other garbage.  uvloop has no such attribute (and no need).
    """
    if isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = UDP_RECV_SIZE


def datagrams_pending(quic: QuicConnection) -> int:
    """Datagrams aioquic holds but has not packed yet (0 if its internals changed)."""
    pending = getattr(quic, "_datagrams_pending", None)
    return len(pending) if pending is not None else 0


def ack_with_next_packet(quic: QuicConnection, now: float) -> None:
    """Let the next packet carry the pending ACK, not a packet of its own later (no-op if unknown).

    aioquic writes an ACK frame only once its ack delay has passed, even into a
    packet it sends anyway; RFC 9000 §13.2.1 lets an ACK go sooner.  Without
    this a relay answered every voice packet with a separate ACK packet a
    millisecond later, though a voice packet the other way left in between.
    """
    space = _one_rtt_space(quic)
    ack_at = getattr(space, "ack_at", None)
    if isinstance(ack_at, float) and ack_at > now:
        space.ack_at = now


def _one_rtt_space(quic: QuicConnection) -> Any:
    spaces = getattr(quic, "_spaces", None)
    return spaces.get(tls.Epoch.ONE_RTT) if isinstance(spaces, dict) else None


def ack_pending(quic: QuicConnection) -> bool:
    """True while an ACK for received 1-RTT packets waits to be sent (False if unknown)."""
    return isinstance(getattr(_one_rtt_space(quic), "ack_at", None), float)


def hold_ack(quic: QuicConnection, until: float) -> None:
    """Let the pending ACK wait until ``until`` (it rides on an earlier packet we send, see
    ``ack_with_next_packet``); no-op with no ACK pending or if the internals changed.

    Only for a peer that allows for it (``set_peer_max_ack_delay`` on its side): we
    advertise aioquic's 25 ms max_ack_delay in the handshake."""
    space = _one_rtt_space(quic)
    ack_at = getattr(space, "ack_at", None)
    if isinstance(ack_at, float) and ack_at < until:
        space.ack_at = until


def peer_max_ack_delay(quic: QuicConnection) -> float | None:
    """How long our loss recovery lets the peer take to acknowledge, seconds (None: unknown)."""
    value = getattr(getattr(quic, "_loss", None), "max_ack_delay", None)
    return value if isinstance(value, float) else None


def set_peer_max_ack_delay(quic: QuicConnection, seconds: float) -> bool:
    """Allow the peer ``seconds`` to acknowledge: the probe timeout and the RTT samples use it
    (RFC 9002 §6.2.1, §5.3).  aioquic sets it from the peer's transport parameters (25 ms);
    False (and nothing changed) if the internals changed."""
    loss = getattr(quic, "_loss", None)
    if not isinstance(getattr(loss, "max_ack_delay", None), float):
        return False
    loss.max_ack_delay = float(seconds)  # type: ignore[union-attr]
    return True


def negotiated_idle_timeout(quic: QuicConnection) -> float | None:
    """The link's QUIC idle timeout in seconds once the handshake is done: ours, or the
    peer's if it asked for a shorter one (RFC 9000 §10.1); None if the internals changed."""
    if not hasattr(quic, "_remote_max_idle_timeout"):
        return None
    remote = quic._remote_max_idle_timeout
    local = getattr(getattr(quic, "_configuration", None), "idle_timeout", None)
    if not isinstance(local, (int, float)):
        return None
    if isinstance(remote, (int, float)) and remote > 0:
        return float(min(local, remote))
    return float(local)


def peer_closed(quic: QuicConnection) -> events.ConnectionTerminated | None:
    """The peer's CONNECTION_CLOSE as soon as it arrived (None if not, or internals changed).

    aioquic emits ConnectionTerminated only when draining ends (RFC 9000 §10.2.2,
    three probe timeouts later); the link is gone the moment the close arrives.
    """
    if getattr(quic, "_state", None) is not QuicConnectionState.DRAINING:
        return None
    event = getattr(quic, "_close_event", None)
    return event if isinstance(event, events.ConnectionTerminated) else None


def stream_unacked(quic: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream and not yet acknowledged (0 if unknown)."""
    streams = getattr(quic, "_streams", None)
    stream = streams.get(stream_id) if streams is not None else None
    sender = getattr(stream, "sender", None)
    buf = getattr(sender, "_buffer", None)
    return len(buf) if buf is not None else 0


def _peer_certificate(quic_connection: Any) -> x509.Certificate | None:
    tls_ctx = getattr(quic_connection, "tls", None)
    if tls_ctx is None:
        raise LocalProtocolError("aioquic internals changed: QuicConnection has no 'tls' attribute"
                                 " (or the handshake has not started)")
    if not hasattr(tls_ctx, "_peer_certificate"):
        raise LocalProtocolError(
            "aioquic internals changed: tls.Context has no '_peer_certificate'")
    cert = tls_ctx._peer_certificate
    if cert is not None and not isinstance(cert, x509.Certificate):
        raise LocalProtocolError(f"aioquic internals changed: _peer_certificate is {type(cert)!r}")
    return cert


def peer_certificate(quic_connection: Any) -> x509.Certificate:
    """The certificate the peer presented on an aioquic ``QuicConnection`` (after its handshake)."""
    cert = _peer_certificate(quic_connection)
    if cert is None:
        raise LocalProtocolError("the peer presented no certificate (yet)")
    return cert


def peer_certificate_key(quic_connection: Any) -> bytes:
    """Raw 32-byte Ed25519 public key of the certificate the peer presented.

    Raises ``LocalProtocolError`` if aioquic's internals changed or no Ed25519
    certificate was seen.
    """
    key = peer_certificate(quic_connection).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise LocalProtocolError(f"peer certificate key is {type(key).__name__}, not Ed25519")
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)
