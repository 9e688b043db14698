"""Hypothesis: replicas editing one document concurrently, synced in random orders, converge."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from library_replica.documents import Applied, Library
from library_replica.ops import new_doc_id
from library_replica.text import is_boundary
from sync.envelope import Op
from tests.library_replica.factory import Author, hlc

SNIPPETS = ["避難", "給水所", "🚗", "👩\u200d👧", "e\u0301", "が", "EV", "、", "。\n", "充電"]

_step = st.one_of(
    st.tuples(st.just("edit"), st.integers(0, 2), st.integers(0, 2**32)),
    st.tuples(st.just("sync"), st.integers(0, 2), st.integers(0, 2)),
)


def _mutate(text: str, rng: random.Random) -> str:
    bounds = [i for i in range(len(text) + 1) if is_boundary(text, i)]
    for _ in range(rng.randint(1, 3)):
        if text and rng.random() < 0.4:
            a, b = sorted(rng.sample(bounds, 2)) if len(bounds) > 1 else (0, 0)
            text = text[:a] + text[b:]
        else:
            p = rng.choice(bounds)
            text = text[:p] + rng.choice(SNIPPETS) + text[p:]
        bounds = [i for i in range(len(text) + 1) if is_boundary(text, i)]
    return text


@settings(max_examples=200, deadline=None)
@given(st.lists(_step, max_size=25), st.integers(0, 2**32))
def test_concurrent_edits_converge(steps: list[tuple[str, int, int]], seed: int) -> None:
    rng = random.Random(seed)
    authors = [Author() for _ in range(3)]
    libs = [Library() for _ in range(3)]
    held: list[dict[bytes, Op]] = [{} for _ in range(3)]
    d = new_doc_id(seed.to_bytes(8, "big"))
    [p] = libs[0].prepare_create(authors[0].pub, collection="work", title="t", body="避難所")
    create = authors[0].op(p.kind, d, p.body, hlc(1))
    for i in range(3):
        assert libs[i].apply(create) is Applied.APPLIED
        held[i][create.op_id] = create
    t = 2
    for kind, x, y in steps:
        if kind == "edit":
            view = libs[x].get(d)
            assert view is not None
            for p in libs[x].prepare_edit(d, authors[x].pub, body=_mutate(view.body, rng)):
                op = authors[x].op(p.kind, d, p.body, hlc(t))
                t += 1
                assert libs[x].apply(op) is Applied.APPLIED
                held[x][op.op_id] = op
        elif x != y:
            missing = [op for k, op in held[x].items() if k not in held[y]]
            rng.shuffle(missing)
            for op in missing:
                assert libs[y].apply(op) in (Applied.APPLIED, Applied.PENDING)
                held[y][op.op_id] = op
    everything = {k: op for h in held for k, op in h.items()}
    for i in range(3):
        missing = [op for k, op in everything.items() if k not in held[i]]
        rng.shuffle(missing)
        for op in missing:
            libs[i].apply(op)
    views = [lib.get(d) for lib in libs]
    assert all(v is not None for v in views)
    assert len({v.body for v in views if v is not None}) == 1
    assert all(lib.pending_count() == 0 for lib in libs)
    assert libs[0].state_vector(d) == libs[1].state_vector(d) == libs[2].state_vector(d)
    # a fresh replica fed everything in yet another order agrees too
    late = Library()
    order = list(everything.values())
    rng.shuffle(order)
    for op in order:
        late.apply(op)
    v = late.get(d)
    assert v is not None and views[0] is not None and v.body == views[0].body
