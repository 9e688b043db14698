"""The info service codec and its rate limiter (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.core.errors import RemoteProtocolError
from meshd.services import info


def test_request_and_answer_roundtrip() -> None:
    assert info.decode(info.encode_request(7)) == 7
    ans = info.decode(info.encode_answer(9, "car-1", "car", [(b"a" * 16, 256), (b"b" * 16, 300)]))
    assert isinstance(ans, info.InfoAnswer)
    assert (ans.request_id, ans.name, ans.role) == (9, "car-1", "car")
    assert ans.neighbours == [(b"a" * 16, 256), (b"b" * 16, 300)]


def test_bad_answers_refused() -> None:
    from meshd.core.codec import pack
    for bad in ({"k": "rep", "id": 1, "name": "x", "role": "car", "nb": [[b"short", 1]]},
                {"k": "rep", "id": 1, "name": "x", "role": "car", "nb": [[b"a" * 16, -1]]},
                {"k": "zzz", "id": 1}):
        with pytest.raises(RemoteProtocolError):
            info.decode(pack(bad))


def test_rate_limiter_per_source_and_total() -> None:
    rl = info.RateLimiter(per_source=2.0, total=5.0)
    t = 100.0
    assert [rl.allow(b"x", t) for _ in range(6)] == [True] * 4 + [False] * 2  # burst 2x rate
    assert rl.allow(b"x", t + 0.5)  # refilled one token
    many = [rl.allow(bytes([i]), t + 0.5) for i in range(20)]
    assert sum(many) <= 10  # the total bucket caps everyone together


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoder_only_raises_remote_errors(data: bytes) -> None:
    try:
        info.decode(data)
    except RemoteProtocolError:
        pass
