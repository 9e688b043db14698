"""The pure link-handshake core (meshd.links.handshake) with literal keys, nonces and times."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.codec import pack, unpack
from meshd.core.errors import LocalProtocolError, RemoteProtocolError, VerificationError
from meshd.core.identity import Identity, Role
from meshd.links.handshake import (
    HANDSHAKE_TIMEOUT_S,
    REFUSAL_REASONS,
    ClientHandshake,
    HandshakeState,
    ServerHandshake,
    proof_payload,
)

WALL = 1_750_000_000.0  # wall-clock seconds of every announcement below
NOW = 100.0  # monotonic seconds
NONCE = bytes(range(32))
SERVER_FP = b"\x5a" * 32  # the fingerprint of the server's certificate


def ident(seed: int) -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32),
                    X25519PrivateKey.from_private_bytes(bytes([seed + 100]) * 32))


SERVER = ident(1)
CLIENT = ident(2)
OTHER = ident(3)
SERVER_ANN = SERVER.announce(7, WALL, "server", Role.CAR)
CLIENT_ANN = CLIENT.announce(3, WALL, "client", Role.PHONE)


def server(**kw: object) -> ServerHandshake:
    args: dict[str, object] = {"nonce": NONCE, "now": NOW}
    args.update(kw)
    return ServerHandshake(SERVER, SERVER_ANN, SERVER_FP, **args)  # type: ignore[arg-type]


def client(**kw: object) -> ClientHandshake:
    args: dict[str, object] = {"expect": SERVER.node_id, "cert_key": SERVER.ed25519_pub,
                               "cert_fingerprint": SERVER_FP, "now": NOW}
    args.update(kw)
    return ClientHandshake(CLIENT, CLIENT_ANN, **args)  # type: ignore[arg-type]


def run(s: ServerHandshake, c: ClientHandshake, now: float = NOW + 0.1,
        wall: float = WALL + 1) -> None:
    challenge = s.receive(c.hello(), now, wall)
    assert challenge is not None
    proof = c.receive(challenge, now, wall)
    assert proof is not None
    accept = s.receive(proof, now, wall)
    assert accept is not None
    assert c.receive(accept, now, wall) is None


def test_literal_identities_are_stable() -> None:
    # the NodeIds follow from the literal keys: a change in derivation shows here
    assert SERVER.node_id.hex() == ident(1).node_id.hex()
    assert len(SERVER.node_id) == 16 and SERVER.node_id != CLIENT.node_id


def test_happy_path_both_learn_each_other() -> None:
    s, c = server(), client()
    run(s, c)
    assert s.state is HandshakeState.DONE and c.state is HandshakeState.DONE
    assert s.peer is not None and s.peer.node_id == CLIENT.node_id and s.peer.raw == CLIENT_ANN.raw
    assert c.peer is not None and c.peer.node_id == SERVER.node_id


def test_tofu_client_learns_id() -> None:
    c = client(expect=None)
    run(server(), c)
    assert c.peer is not None and c.peer.node_id == SERVER.node_id


def test_wrong_node_id_refused() -> None:
    s, c = server(), client(expect=OTHER.node_id)
    challenge = s.receive(c.hello(), NOW, WALL)
    assert challenge is not None
    with pytest.raises(VerificationError) as err:
        c.receive(challenge, NOW, WALL)
    assert err.value.reason == "identity"
    assert c.state is HandshakeState.FAILED


def test_certificate_key_mismatch_refused() -> None:
    s, c = server(), client(cert_key=OTHER.ed25519_pub)
    challenge = s.receive(c.hello(), NOW, WALL)
    assert challenge is not None
    with pytest.raises(VerificationError) as err:
        c.receive(challenge, NOW, WALL)
    assert err.value.reason == "cert-key"


def test_wrong_fingerprint_refused() -> None:
    """The client saw another certificate (a machine in the middle): the server refuses."""
    s, c = server(), client(cert_fingerprint=b"\x66" * 32)
    challenge = s.receive(c.hello(), NOW, WALL)
    assert challenge is not None
    proof = c.receive(challenge, NOW, WALL)
    assert proof is not None
    with pytest.raises(VerificationError) as err:
        s.receive(proof, NOW, WALL)
    assert err.value.reason == "fingerprint"
    assert s.peer is None and s.state is HandshakeState.FAILED


def _proof(sig: bytes, fp: bytes = SERVER_FP, ann: bytes = CLIENT_ANN.raw) -> bytes:
    return pack({"t": "proof", "ann": ann, "fp": fp, "sig": sig})


def test_bad_signature_refused() -> None:
    s = server()
    s.receive(client().hello(), NOW, WALL)
    good = CLIENT.sign(proof_payload(NONCE, SERVER_FP, SERVER.node_id, CLIENT.node_id))
    for sig in (bytes(64), good[:-1] + bytes([good[-1] ^ 1]),
                # signed by another key over the right payload
                OTHER.sign(proof_payload(NONCE, SERVER_FP, SERVER.node_id, CLIENT.node_id)),
                # right key, another nonce (a recorded proof replayed into a new handshake)
                CLIENT.sign(proof_payload(b"\x01" * 32, SERVER_FP, SERVER.node_id,
                                          CLIENT.node_id))):
        s2 = server()
        s2.receive(client().hello(), NOW, WALL)
        with pytest.raises(VerificationError) as err:
            s2.receive(_proof(sig), NOW, WALL)
        assert err.value.reason == "signature"
    s.receive(_proof(good), NOW, WALL)
    assert s.state is HandshakeState.DONE


def test_a_neighbour_with_a_wrong_clock_still_links() -> None:
    """Issue 11 item 3: announcements two days old or ahead were refused as stale/future, so a
    node with a wrong clock was isolated.  TLS and the nonce prove liveness; the link comes up
    and the hellos then tell both ends their clock offset."""
    two_days = 2 * 86400.0
    old = SERVER.announce(8, WALL - two_days, "server", Role.CAR)
    s = ServerHandshake(SERVER, old, SERVER_FP, nonce=NONCE, now=NOW)
    ahead = CLIENT.announce(4, WALL + two_days, "client", Role.PHONE)
    c = ClientHandshake(CLIENT, ahead, expect=SERVER.node_id, cert_key=SERVER.ed25519_pub,
                        cert_fingerprint=SERVER_FP, now=NOW)
    run(s, c)
    assert s.state is HandshakeState.DONE and c.state is HandshakeState.DONE
    assert c.peer is not None and c.peer.timestamp == WALL - two_days
    assert s.peer is not None and s.peer.timestamp == WALL + two_days
    # the other checks still hold: a wrong certificate key is refused whatever the clock
    bad = ClientHandshake(CLIENT, ahead, expect=SERVER.node_id, cert_key=CLIENT.ed25519_pub,
                          cert_fingerprint=SERVER_FP, now=NOW)
    with pytest.raises(VerificationError) as err:
        run(ServerHandshake(SERVER, old, SERVER_FP, nonce=NONCE, now=NOW), bad)
    assert err.value.reason == "cert-key"


def test_replayed_older_announcement_refused() -> None:
    """An announcement older (lower seqno) than one already seen from that node is a replay."""
    newer_server = SERVER.announce(9, WALL, "server", Role.CAR)
    c = client(known={SERVER.node_id: newer_server})
    s = server()
    with pytest.raises(VerificationError) as err:
        c.receive(s.receive(c.hello(), NOW, WALL) or b"", NOW, WALL)
    assert err.value.reason == "replay"
    newer_client = CLIENT.announce(5, WALL, "client", Role.PHONE)
    s2 = server(known={CLIENT.node_id: newer_client})
    c2 = client()
    proof = c2.receive(s2.receive(c2.hello(), NOW, WALL) or b"", NOW, WALL)
    with pytest.raises(VerificationError) as err:
        s2.receive(proof or b"", NOW, WALL)
    assert err.value.reason == "replay"
    # the same seqno again is not a replay (the node did not re-announce since)
    run(server(known={CLIENT.node_id: CLIENT_ANN}), client(known={SERVER.node_id: SERVER_ANN}))


def test_forged_announcement_refused() -> None:
    """Announcement bytes whose signature does not verify are refused before anything else."""
    outer = unpack(CLIENT_ANN.raw, 1024)
    outer["s"] = bytes(64)
    forged = pack(outer)
    s = server()
    s.receive(client().hello(), NOW, WALL)
    sig = CLIENT.sign(proof_payload(NONCE, SERVER_FP, SERVER.node_id, CLIENT.node_id))
    with pytest.raises(VerificationError) as err:
        s.receive(_proof(sig, ann=forged), NOW, WALL)
    assert err.value.reason == "signature"


def test_timeout() -> None:
    s, c = server(), client()
    challenge = s.receive(c.hello(), NOW + 1, WALL)
    assert challenge is not None
    s.check_timeout(NOW + HANDSHAKE_TIMEOUT_S)  # exactly at the deadline: still fine
    with pytest.raises(VerificationError) as err:
        c.receive(challenge, NOW + HANDSHAKE_TIMEOUT_S + 0.01, WALL)
    assert err.value.reason == "timeout"
    with pytest.raises(VerificationError) as err:
        s.check_timeout(NOW + HANDSHAKE_TIMEOUT_S + 0.01)
    assert err.value.reason == "timeout"
    done_s, done_c = server(), client()
    run(done_s, done_c)
    done_s.check_timeout(NOW + 1000)  # a finished handshake never times out
    done_c.check_timeout(NOW + 1000)


def test_out_of_order_and_self_refused() -> None:
    s = server()
    with pytest.raises(VerificationError) as err:
        s.receive(pack({"t": "proof"}), NOW, WALL)
    assert err.value.reason == "unexpected"
    c = client()
    with pytest.raises(VerificationError) as err:
        c.receive(pack({"t": "accept"}), NOW, WALL)
    assert err.value.reason == "unexpected"
    with pytest.raises(VerificationError) as err:
        server().receive(pack({"t": "hello", "v": 99}), NOW, WALL)
    assert err.value.reason == "version"
    # connecting to ourselves
    me = ClientHandshake(SERVER, SERVER_ANN, expect=None, cert_key=SERVER.ed25519_pub,
                         cert_fingerprint=SERVER_FP, now=NOW)
    with pytest.raises(VerificationError) as err:
        me.receive(server().receive(me.hello(), NOW, WALL) or b"", NOW, WALL)
    assert err.value.reason == "self"


def test_local_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        ServerHandshake(SERVER, SERVER_ANN, SERVER_FP, nonce=b"short", now=NOW)
    with pytest.raises(LocalProtocolError):
        ServerHandshake(SERVER, CLIENT_ANN, SERVER_FP, nonce=NONCE, now=NOW)
    with pytest.raises(LocalProtocolError):
        ClientHandshake(CLIENT, CLIENT_ANN, expect=None, cert_key=b"x", cert_fingerprint=SERVER_FP,
                        now=NOW)


def test_oversize_message_refused_before_decoding() -> None:
    with pytest.raises(RemoteProtocolError) as err:
        server().receive(pack({"t": "hello", "v": 1, "pad": bytes(5000)}), NOW, WALL)
    assert err.value.reason == "oversize"


# --- Hypothesis: nothing but RemoteProtocolError out of any decoder -----------------------------

def _valid_messages() -> list[bytes]:
    s, c = server(), client()
    hello = c.hello()
    challenge = s.receive(hello, NOW, WALL) or b""
    proof = c.receive(challenge, NOW, WALL) or b""
    accept = s.receive(proof, NOW, WALL) or b""
    return [hello, challenge, proof, accept]


VALID = _valid_messages()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip" and base:
            i = draw(st.integers(0, len(base) - 1))
            base[i] ^= draw(st.integers(1, 255))
        elif op == "cut" and base:
            i = draw(st.integers(0, len(base)))
            base = base[:i]
        else:
            i = draw(st.integers(0, len(base)))
            base[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(base)


def _feed_everywhere(data: bytes) -> None:
    targets: list[ServerHandshake | ClientHandshake] = []
    s1 = server()
    targets.append(s1)  # expects hello
    s2 = server()
    s2.receive(VALID[0], NOW, WALL)
    targets.append(s2)  # expects proof
    c1 = client()
    targets.append(c1)  # expects challenge
    c2 = client()
    c2.receive(VALID[1], NOW, WALL)
    targets.append(c2)  # expects accept
    for t in targets:
        try:
            t.receive(data, NOW, WALL + 1)
        except RemoteProtocolError as exc:
            assert exc.reason in REFUSAL_REASONS, exc.reason
            assert t.state is HandshakeState.FAILED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_only_remote_errors(data: bytes) -> None:
    _feed_everywhere(data)


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_mutated_messages_only_remote_errors(data: bytes) -> None:
    _feed_everywhere(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "v", "ann", "nonce", "fp", "sig", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(-2, 300),
                                 st.sampled_from(["hello", "challenge", "proof", "accept"]),
                                 st.binary(max_size=80), st.floats(allow_nan=True),
                                 st.lists(st.integers(-(2**63), 2**64 - 1), max_size=3)),
                       max_size=6))
def test_structured_garbage_only_remote_errors(fields: dict[str, object]) -> None:
    _feed_everywhere(pack(fields))
