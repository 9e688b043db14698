"""A QUIC Initial flooder for tests and benchmarks of the link listener (loopback only).

Every packet is a genuine client Initial (a real aioquic ClientHello,
protected with fresh random connection ids, padded to 1,200 bytes), so the
listener would take each for a new client: the worst case of the spoofable
Initial flood of issue 11.  The flooder never answers anything it receives
(it ignores Retry packets, as a spoofer cannot see them).  It is bounded in
count and in time, and refuses any target that is not a loopback address.

    python -m carmesh.dev.initial_flood 127.0.0.1:7420 --rate 3000 --count 30000 --seconds 10 [--sources 64]

prints one JSON line: {"sent": N, "seconds": S}.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import time

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import INITIAL_CIPHER_SUITE, INITIAL_SALT_VERSION_1, CryptoPair
from aioquic.quic.packet import QuicFrameType, QuicPacketType, QuicProtocolVersion
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

from meshd import ALPN

__all__ = ["InitialFactory", "flood"]


class InitialFactory:
    """Makes client Initial datagrams with fresh random destination connection ids.

    ``valid=True``: a real ClientHello, protected with the Initial keys of each
    new id (the listener decrypts it and starts a TLS handshake: the costly
    case; about 0.3 ms per packet to make).  ``valid=False``: an Initial header
    with random payload (the listener must create a connection before it finds
    the payload undecryptable; cheap to make at any rate).
    """

    def __init__(self, valid: bool = False) -> None:
        self.valid = valid
        self.version = QuicProtocolVersion.VERSION_1
        cfg = QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        quic = QuicConnection(configuration=cfg)
        quic.connect(("127.0.0.1", 9), now=0.0)
        # a dev tool may read aioquic's private state: the ClientHello in the Initial crypto
        # stream; its transport parameters name this source cid, so every packet reuses it
        sender = quic._crypto_streams[tls.Epoch.INITIAL].sender
        self.client_hello = bytes(sender._buffer)
        self.scid = quic.host_cid

    def make(self) -> bytes:
        dcid = os.urandom(8)
        if not self.valid:
            head = (bytes([0xC3]) + self.version.to_bytes(4, "big") + bytes([8]) + dcid
                    + bytes([8]) + self.scid + b"\x00")
            rest = 1200 - len(head) - 2
            return head + (0x4000 | rest).to_bytes(2, "big") + os.urandom(rest)
        crypto = CryptoPair()
        algorithm = cipher_suite_hash(INITIAL_CIPHER_SUITE)
        initial_secret = hkdf_extract(algorithm, INITIAL_SALT_VERSION_1, dcid)
        crypto.send.setup(cipher_suite=INITIAL_CIPHER_SUITE, version=self.version,
                          secret=hkdf_expand_label(algorithm, initial_secret, b"client in", b"",
                                                   algorithm.digest_size))
        builder = QuicPacketBuilder(host_cid=self.scid, peer_cid=dcid, is_client=True,
                                    max_datagram_size=1200, version=self.version)
        builder.start_packet(QuicPacketType.INITIAL, crypto)
        buf = builder.start_frame(QuicFrameType.CRYPTO)
        buf.push_uint_var(0)
        buf.push_uint16(len(self.client_hello) | 0x4000)
        buf.push_bytes(self.client_hello)
        datagrams, _ = builder.flush()
        return datagrams[0]


def flood(host: str, port: int, *, rate: float, count: int, seconds: float,
          source: str = "127.0.0.1", valid: bool = False, sources: int = 1) -> tuple[int, float]:
    """Send up to ``count`` Initials at ``rate``/s for at most ``seconds``; (sent, elapsed).

    ``sources``: send round-robin from this many UDP sockets (source ports), as a
    spoofer varying its source address would look to per-source limits.
    """
    if not 1 <= sources <= 1024:
        raise SystemExit("initial_flood: --sources must be 1..1024")
    if not ipaddress.ip_address(host).is_loopback or not ipaddress.ip_address(source).is_loopback:
        raise SystemExit("initial_flood: loopback targets only")
    factory = InitialFactory(valid)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(sources)]
    for sock in socks:
        sock.bind((source, 0))
        sock.setblocking(False)
    start = time.monotonic()
    sent = 0
    try:
        while sent < count and (now := time.monotonic()) - start < seconds:
            due = min(count, int((now - start) * rate) + 1)
            while sent < due:
                try:
                    socks[sent % sources].sendto(factory.make(), (host, port))
                except BlockingIOError:
                    break
                sent += 1
            time.sleep(0.002)
    finally:
        for sock in socks:
            sock.close()
    return sent, time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="HOST:PORT of a listening node (loopback)")
    p.add_argument("--rate", type=float, default=3000.0, help="Initials per second")
    p.add_argument("--count", type=int, default=30000, help="at most this many Initials")
    p.add_argument("--seconds", type=float, default=10.0, help="at most this long")
    p.add_argument("--source", default="127.0.0.1", help="loopback address to send from")
    p.add_argument("--valid", action="store_true",
                   help="real ClientHellos (full TLS work for the listener) instead of garbage")
    p.add_argument("--sources", type=int, default=1,
                   help="send from this many source ports, round-robin (1..1024)")
    a = p.parse_args()
    host, _, port = a.target.rpartition(":")
    sent, elapsed = flood(host.strip("[]"), int(port), rate=a.rate, count=a.count,
                          seconds=a.seconds, source=a.source, valid=a.valid,
                          sources=a.sources)
    print(json.dumps({"sent": sent, "seconds": round(elapsed, 3)}), flush=True)


if __name__ == "__main__":
    main()
