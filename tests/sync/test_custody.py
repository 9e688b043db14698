"""Custody forwarding of mail (``sync.custody``) and its ``COPIES`` frame in the session core."""

from __future__ import annotations

import pytest

from sync.custody import MAX_COPIES, MailCustody
from sync.session import (
    ACK,
    COPIES,
    END,
    RECON_DONE,
    OpsReceived,
    PeerLedger,
    PeerMisbehaved,
    SyncSession,
    encode_varint,
    set_digest,
)
from tests.sync.test_session import Index, events, load_all, ops_frame

ME, BOB, CAROL, DAVE, ERIN = (bytes([i]) * 16 for i in range(1, 6))
M1, M2 = b"\x11" * 32, b"\x22" * 32


def test_binary_spray_then_wait_then_direct_delivery() -> None:
    c = MailCustody(ME, copies=8)
    c.originated(M1, ERIN)
    assert c.give(b"\x99" * 32, BOB) is None  # not a custody op: flooded
    assert c.give(M1, BOB) == 4
    c.handed(M1, BOB, 4)
    assert c.give(M1, BOB) == 0  # it holds it now
    assert c.give(M1, CAROL) == 2
    c.handed(M1, CAROL, 2)
    assert c.give(M1, DAVE) == 1
    c.handed(M1, DAVE, 1)
    # one copy left: wait, hand it only to the recipient
    assert c.give(M1, b"\x07" * 16) == 0 and not c.wants(b"\x07" * 16)
    assert c.wants(ERIN) and c.give(M1, ERIN) == 1
    c.handed(M1, ERIN, 1)
    assert not c.wants(ERIN) and c.delivered == 1 and c.handed_copies == 7


def test_received_copies_are_clamped_and_the_recipient_forwards_nothing() -> None:
    c = MailCustody(ME)
    c.received(M1, ERIN, 10_000)  # a lying peer: at most MAX_COPIES
    assert c.give(M1, BOB) == MAX_COPIES // 2
    c.received(M2, ERIN, None)  # no count announced: wait
    assert c.give(M2, BOB) == 0 and c.give(M2, ERIN) == 1
    mine = MailCustody(ERIN)
    mine.received(M1, ERIN, 8)
    assert mine.give(M1, BOB) == 0 and not mine.wants(BOB)
    mine.received(M2, b"short", 8)  # not a NodeId: ignored
    assert mine.give(M2, BOB) is None
    with pytest.raises(ValueError):
        MailCustody(ME, copies=0)


def test_prune_forgets_what_left_the_store() -> None:
    c = MailCustody(ME)
    c.originated(M1, ERIN)
    c.originated(M2, ERIN)
    assert c.prune(lambda i: i == M2) == 1
    assert len(c) == 1 and c.give(M1, BOB) is None and c.give(M2, BOB) == 4


def test_token_names_what_would_go_to_a_neighbour() -> None:
    c = MailCustody(ME, copies=2)
    c.originated(M1, ERIN)
    t = c.token(BOB)
    assert c.offerable(BOB) == [M1] and c.token(BOB) == t
    c.handed(M1, CAROL, 1)  # the spray phase is over
    assert c.offerable(BOB) == [] and c.token(BOB) != t
    c.holds_for(ERIN, [M1])
    assert not c.wants(ERIN)


def test_session_withholds_custody_ops_and_announces_copies_before_the_batch() -> None:
    index = Index()
    bull = index.add(b"bulletin", "bulletin", 1)
    sprayed = index.add(b"mail to erin", "mail", 2)
    waiting = index.add(b"mail to dave", "mail", 3)
    c = MailCustody(ME, copies=8)
    c.originated(sprayed, ERIN)
    c.received(waiting, DAVE, 1)
    ledger = PeerLedger()
    s = SyncSession(index, ledger, 0.0, initiator=True, reconcile=False,
                    push=[bull, sprayed, waiting], forwarding=c.for_peer(BOB))
    load_all(s, index, 0.0)
    frames = s.frames_to_send(0.0)
    # the waiting mail is not for Bob; the sprayed one goes with 4 copies (index 1)
    assert frames == [bytes([RECON_DONE]),
                      bytes([COPIES, 0, 1, 1, 4]),
                      ops_frame(0, [b"bulletin", b"mail to erin"])]
    assert c.give(sprayed, CAROL) == 4  # copies are spent on the acknowledgement only
    s.receive_frame(bytes([ACK, 0]), 0.1)
    assert c.give(sprayed, CAROL) == 2 and c.give(sprayed, BOB) == 0

    r = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    for f in frames:
        r.receive_frame(f, 0.1)
    assert events(r) == [OpsReceived(0, (b"bulletin", b"mail to erin"), (None, 4))]


def test_copies_withheld_when_spent_between_queueing_and_loading() -> None:
    index = Index()
    m = index.add(b"mail", "mail", 1)
    c = MailCustody(ME, copies=2)
    c.originated(m, ERIN)
    ledger = PeerLedger()
    s = SyncSession(index, ledger, 0.0, initiator=True, reconcile=False, push=[m],
                    forwarding=c.for_peer(BOB))
    ids = s.take_batch()
    assert ids == [m]
    c.handed(m, CAROL, 1)  # another session spent the last spare copy meanwhile
    s.batch_loaded(index.pairs(ids), 0.0)
    assert s.frames_to_send(0.0) == [bytes([RECON_DONE]), bytes([END])]
    assert not ledger.sending


@pytest.mark.parametrize("frames", [
    [bytes([COPIES, 0, 1, 5, 2]), ops_frame(0, [b"x"])],  # index beyond the batch
    [bytes([COPIES, 1, 1, 0, 2]), ops_frame(0, [b"x"])],  # another batch's number
    [bytes([COPIES, 0, 1, 0, 2]), bytes([COPIES, 0, 1, 0, 2])],  # two before a batch
    [bytes([COPIES, 0, 1, 0, 2, 9])],  # trailing bytes
    [bytes([COPIES, 0]) + encode_varint(100_000)],  # more pairs than a batch holds
])
def test_malformed_copies_end_the_session(frames: list[bytes]) -> None:
    s = SyncSession(Index(), PeerLedger(), 0.0, initiator=False, reconcile=True)
    for f in frames:
        s.receive_frame(f, 0.0)
    evs = events(s)
    assert isinstance(evs[-1], PeerMisbehaved) and s.closed
    assert not any(isinstance(e, OpsReceived) for e in evs)


def test_digest_can_leave_the_custody_namespace_out() -> None:
    a, b = Index(), Index()
    for i in (a, b):
        i.add(b"bulletin", "bulletin", 1)
    a.add(b"mail", "mail", 2)
    assert set_digest(a) != set_digest(b)
    assert set_digest(a, {"mail"}) == set_digest(b, {"mail"})


def test_mail_is_sprayed_then_carried_to_its_recipient_on_the_simulator() -> None:
    """Six simulated nodes with custody (4 copies), contacts opened and closed by hand: the
    bulletin floods, the mail goes to two carriers and then only to its recipient."""
    import random

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.sim import LinkParams, Network, sim_id
    from tests.sync.simsync import WALL0_MS, MemOpStore, SyncSimNode

    rng = random.Random(5)
    net = Network(5, default=LinkParams(loss=0.05, delay=0.005))
    ids = [sim_id(i) for i in range(6)]
    nodes = {nid: SyncSimNode(nid, MemOpStore(), random.Random(i), digests=True,
                              custody=MailCustody(nid, copies=4))
             for i, nid in enumerate(ids)}
    for nid, node in nodes.items():
        net.add_node(nid, node)
    a, b, c, d, e, to = ids
    key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    mail = nodes[a].edit(key, 0.0, kind="mail.sealed", doc_id=to, body=b"sealed",
                         expiry_ms=WALL0_MS + 3_600_000)
    bull = nodes[a].edit(key, 0.0, kind="bulletin.post", doc_id=bytes(16), body=b"news")
    net.replace_node(a, nodes[a])
    # a meets b and c (spray: 2 copies to b, 1 to c); b meets d (b's spare copy goes
    # to d); d meets e (d waits: e gets the bulletin only); finally e, then c, meet `to`
    for x, y in ((a, b), (a, c), (b, d), (d, e), (e, to), (c, to)):
        net.connect(x, y)
        net.run_for(20.0)
        net.disconnect(x, y)
        net.run_for(1.0)
    holders = {i for i, nid in enumerate(ids) if mail.op_id in nodes[nid].store}
    assert holders == {0, 1, 2, 3, 5}
    assert [bull.op_id in n.store for n in nodes.values()] == [True] * 6
    assert nodes[c].custody is not None and nodes[c].custody.delivered == 1
    assert nodes[a].custody is not None and nodes[a].custody.give(mail.op_id, e) == 0
