"""Frequency analysis of recorded WAV files (numpy FFT)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples as float in [-1, 1] (first channel) and the sample rate."""
    with wave.open(str(path), "rb") as w:
        rate, n, ch = w.getframerate(), w.getnframes(), w.getnchannels()
        raw = np.frombuffer(w.readframes(n), dtype=np.int16)
    return raw.reshape(-1, ch)[:, 0].astype(np.float64) / 32768.0, rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    """The frequency with the most energy (Hann window, DC and < 50 Hz ignored)."""
    if len(samples) < rate // 10:
        return 0.0
    spec = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1.0 / rate)
    spec[freqs < 50] = 0
    return float(freqs[int(np.argmax(spec))])


def tone_windows(samples: np.ndarray, rate: int, freq: float, window_s: float = 0.1,
                 tol_hz: float = 15.0, min_rms: float = 0.02) -> list[bool]:
    """For each window: does the tone ``freq`` dominate and is the window audible?"""
    step = int(rate * window_s)
    out = []
    for i in range(0, len(samples) - step + 1, step):
        w = samples[i:i + step]
        rms = float(np.sqrt(np.mean(w * w)))
        out.append(rms >= min_rms and abs(dominant_hz(w, rate) - freq) <= tol_hz)
    return out


def longest_gap_s(samples: np.ndarray, rate: int, freq: float, window_s: float = 0.1) -> float:
    """The longest stretch without the tone ``freq``, after it was first heard, in the
    recording's own timeline (a lost stretch is written as silence, never dropped), seconds."""
    windows = tone_windows(samples, rate, freq, window_s)
    if True not in windows:
        return float("inf")
    longest = run = 0
    for w in windows[windows.index(True):]:
        run = 0 if w else run + 1
        longest = max(longest, run)
    return longest * window_s
