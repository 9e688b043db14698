"""voice.opus: FEC and PLC rebuild lost frames, the reorder buffer puts packets in order and
drops what comes too late; real libopus (PyAV's encoder with our settings, ctypes decoder)."""

from __future__ import annotations

import fractions
import itertools
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("aiortc")

from aiortc.codecs.opus import OpusEncoder  # noqa: E402

from voice import opus  # noqa: E402

pytestmark = pytest.mark.skipif(opus.libopus() is None, reason="no libopus on this machine")


@dataclass
class Pkt:
    sequence_number: int
    timestamp: int
    _data: bytes = field(repr=False)


def _encoded(frames: int, freq: float = 440.0) -> list[tuple[bytes, int]]:
    enc = OpusEncoder()
    enc.codec.bit_rate = opus.ENCODER_BITRATE
    enc.codec.options = dict(opus.ENCODER_OPTIONS)
    out: list[tuple[bytes, int]] = []
    for i in range(frames):
        t = (np.arange(opus.FRAME) + i * opus.FRAME) / opus.SAMPLE_RATE
        pcm = (np.sin(2 * np.pi * freq * t) * 10000).astype(np.int16)
        f = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        f.sample_rate = opus.SAMPLE_RATE
        f.pts = i * opus.FRAME
        f.time_base = fractions.Fraction(1, opus.SAMPLE_RATE)
        data, ts = enc.encode(f)
        out += [(d, ts) for d in data]
    return out


def _play(packets: list[Pkt]) -> tuple[list[object], opus.ConcealingOpusDecoder]:
    lib = opus.libopus()
    assert lib is not None
    buf, dec = opus.ReorderBuffer(), opus.ConcealingOpusDecoder(lib)
    frames: list[object] = []
    for p in packets:
        _, jf = buf.add(p)
        if jf is not None:
            frames += dec.decode(jf)
    return frames, dec


def _pkts(enc: list[tuple[bytes, int]], seq0: int = 65500, ts0: int = (1 << 32) - 5000) -> list[Pkt]:
    return [Pkt((seq0 + i) & 0xFFFF, (ts0 + ts) % (1 << 32), d) for i, (d, ts) in enumerate(enc)]


def test_random_loss_is_rebuilt_to_the_full_duration_across_both_wraps() -> None:
    pkts = _pkts(_encoded(250))
    rnd = random.Random(3)
    # the last ones arrive: a loss at the very end has nothing after it to be rebuilt from
    kept = [p for i, p in enumerate(pkts) if i < 2 or i >= len(pkts) - 3 or rnd.random() >= 0.2]
    frames, dec = _play(kept)
    samples = sum(f.samples for f in frames)  # type: ignore[attr-defined]
    assert samples == len(pkts) * opus.FRAME
    assert dec.recovered > 10  # single losses come back from the next packet's FEC copy
    assert dec.concealed > 0  # runs of losses are concealed
    pts = [f.pts for f in frames]  # type: ignore[attr-defined]
    assert all((b - a) % (1 << 32) == opus.FRAME for a, b in itertools.pairwise(pts))


def test_reordered_packets_come_out_in_order_and_a_late_one_is_dropped() -> None:
    pkts = _pkts(_encoded(20), seq0=10, ts0=0)
    order = [0, 1, 3, 2, 4, 5, 7, 8, 9, 6, *range(10, 20)]  # 6 arrives after 2 later ones
    frames, _ = _play([pkts[i] for i in order])
    pts = [f.pts for f in frames]  # type: ignore[attr-defined]
    assert pts == sorted(pts)
    assert pts == [i * opus.FRAME for i in range(20)]  # 6 was concealed/FEC'd, its late copy dropped


def test_a_long_outage_conceals_briefly_then_leaves_the_timestamp_jump() -> None:
    pkts = _pkts(_encoded(200), seq0=0, ts0=0)
    frames, dec = _play(pkts[:50] + pkts[150:])
    assert dec.concealed == opus.MAX_CONCEAL
    pts = [f.pts for f in frames]  # type: ignore[attr-defined]
    assert pts[50 + opus.MAX_CONCEAL] == 150 * opus.FRAME  # the rest is the recorder's to fill
    assert len(frames) == 50 + opus.MAX_CONCEAL + 50


def test_hostile_packets_are_bounded() -> None:
    lib = opus.libopus()
    assert lib is not None
    buf, dec = opus.ReorderBuffer(), opus.ConcealingOpusDecoder(lib)
    rnd = random.Random(7)
    for _ in range(2000):
        data = rnd.randbytes(rnd.randrange(0, 1500))
        _, jf = buf.add(Pkt(rnd.randrange(1 << 16), rnd.randrange(1 << 32), data))
        assert len(buf._held) <= opus.BUFFER
        if jf is not None:
            for f in dec.decode(jf):
                assert f.samples <= opus.MAX_FRAME  # type: ignore[attr-defined]

