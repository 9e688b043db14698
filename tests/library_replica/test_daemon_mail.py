"""The mail core the daemon uses (``library_replica.mail``): real signed ops, literal times."""

from __future__ import annotations

import itertools

import pytest

from library_replica.mail import (
    KIND_RECEIPT,
    KIND_SEALED,
    MAIL_LIFETIME_MS,
    MAX_MAIL_PER_AUTHOR,
    MailBox,
    MailItem,
    MailReceipt,
    prepare_mail,
    prepare_receipt,
)
from library_replica.ops import Refused, encode_body
from meshd.core.identity import Identity
from sync.envelope import Op, create_op

NOW = 1_800_000_000_000
_hlc = itertools.count(NOW << 16)


def _op(who: Identity, kind: str, doc_id: bytes, body: bytes, expiry_ms: int) -> Op:
    return create_op(who.signing_key, kind=kind, doc_id=doc_id, body=body, seq=0, prev=None,
                     hlc=next(_hlc), expiry_ms=expiry_ms)


def _mail(sender: Identity, recipient: Identity, text: str, name: str = "ann") -> Op:
    doc_id, body, expiry = prepare_mail(sender, recipient.node_id, recipient.x25519_pub, text,
                                        NOW, name)
    return _op(sender, KIND_SEALED, doc_id, body, expiry)


def test_queued_opened_by_the_recipient_only_then_delivered() -> None:
    ann, bob, cy = Identity.generate(), Identity.generate(), Identity.generate()
    op = _mail(ann, cy, "毛布があります")
    boxes = {n: MailBox(i) for n, i in (("ann", ann), ("bob", bob), ("cy", cy))}
    items = {}
    for n, box in boxes.items():
        box.authorize(op, NOW)
        items[n] = box.apply(op, NOW)
        assert isinstance(items[n], MailItem)
        assert box.apply(op, NOW) is None  # a duplicate
    assert [m.op_id for m in boxes["ann"].outbox()] == [op.op_id]
    assert boxes["ann"].delivered(op.op_id) is None
    assert boxes["bob"].carried() == 1 and boxes["bob"].unopened_for_me() == []
    carried = items["bob"]
    assert isinstance(carried, MailItem)
    assert boxes["bob"].open_for(carried) is None  # a carrier cannot open it
    (mine,) = boxes["cy"].unopened_for_me()
    opened = boxes["cy"].open_for(mine)
    assert opened is not None
    assert (opened.text, opened.sender, opened.sender_name) == ("毛布があります", ann.node_id, "ann")
    doc_id, body, expiry = prepare_receipt(cy, mine, NOW + 5)
    receipt = _op(cy, KIND_RECEIPT, doc_id, body, expiry)
    for box in boxes.values():
        box.authorize(receipt, NOW + 5)
        assert isinstance(box.apply(receipt, NOW + 5), MailReceipt)
    assert boxes["ann"].delivered(op.op_id) is not None
    assert boxes["cy"].unopened_for_me() == []  # its own receipt marks it opened


def test_a_receipt_from_anyone_but_the_recipient_does_not_count() -> None:
    ann, bob, cy = Identity.generate(), Identity.generate(), Identity.generate()
    op = _mail(ann, cy, "hello")
    mail = MailBox(ann).apply(op, NOW)
    assert isinstance(mail, MailItem)
    doc_id, body, expiry = prepare_receipt(bob, mail, NOW)
    forged = _op(bob, KIND_RECEIPT, doc_id, body, expiry)
    # the forged receipt arriving before or after the mail: neither delivers nor hides it
    for first, second in ((op, forged), (forged, op)):
        sender, recipient = MailBox(ann), MailBox(cy)
        for box in (sender, recipient):
            box.apply(first, NOW)
            box.apply(second, NOW)
        assert sender.delivered(op.op_id) is None
        assert [m.op_id for m in recipient.unopened_for_me()] == [op.op_id]


def test_rewrapped_mail_is_not_opened() -> None:
    ann, cy, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    good = _mail(ann, cy, "hello")
    # mallory copies ann's sealed message into an op of its own, claiming ann's keys
    stolen = _op(mallory, KIND_SEALED, good.doc_id, good.body, NOW + 1000)
    box = MailBox(cy)
    item = box.apply(stolen, NOW)
    assert isinstance(item, MailItem)
    assert box.open_for(item) is None
    assert sum(box.drops.counts.values()) == 1


def test_lifetime_shape_and_quota_are_enforced() -> None:
    ann, cy = Identity.generate(), Identity.generate()
    box = MailBox(cy)
    _, body, _ = prepare_mail(ann, cy.node_id, cy.x25519_pub, "x", NOW)
    too_long = _op(ann, KIND_SEALED, cy.node_id, body, NOW + MAIL_LIFETIME_MS + 3_600_000)
    with pytest.raises(Refused):
        box.authorize(too_long, NOW)
    with pytest.raises(Refused):
        box.authorize(_op(ann, KIND_SEALED, cy.node_id, encode_body({"x": b"1" * 32}),
                          NOW + 1000), NOW)
    for i in range(MAX_MAIL_PER_AUTHOR):
        op = _mail(ann, cy, f"m{i}")
        box.authorize(op, NOW)
        box.apply(op, NOW)
    with pytest.raises(Refused) as info:
        box.authorize(_mail(ann, cy, "one more"), NOW)
    assert info.value.reason == "quota"
    # expired mail is forgotten, and the quota frees up
    assert box.purge(NOW + MAIL_LIFETIME_MS + 1) == MAX_MAIL_PER_AUTHOR
    box.authorize(_mail(ann, cy, "again"), NOW)


def test_a_carrier_lists_a_leafs_unopened_mail_and_its_senders_deliveries() -> None:
    """What ``mail.inbox`` answers a browser: mail for it until it acknowledges, and receipts."""
    car, leaf, ann = Identity.generate(), Identity.generate(), Identity.generate()
    box = MailBox(car)
    # one millisecond: oldest first is then op id order
    first, second = sorted((_mail(ann, leaf, "one"), _mail(ann, leaf, "two")),
                           key=lambda op: op.op_id)
    other = _mail(ann, car, "for the car")
    for op in (first, second, other):
        box.apply(op, NOW)
    assert [m.op_id for m in box.unopened_for(leaf.node_id)] == [first.op_id, second.op_id]
    assert [m.op_id for m in box.unopened_for(leaf.node_id, limit=1)] == [first.op_id]
    assert box.delivered_by(ann.ed25519_pub) == {}
    item = box.unopened_for(leaf.node_id)[0]
    doc_id, body, expiry = prepare_receipt(leaf, item, NOW + 7)
    receipt = _op(leaf, KIND_RECEIPT, doc_id, body, expiry)
    box.apply(receipt, NOW + 7)
    assert [m.op_id for m in box.unopened_for(leaf.node_id)] == [second.op_id]
    # delivered at the receipt's own time (its hybrid clock's wall part)
    assert box.delivered_by(ann.ed25519_pub) == {first.op_id: receipt.hlc >> 16}
    assert box.delivered_by(leaf.ed25519_pub) == {}
