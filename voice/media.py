"""The media half of the daemon's WebRTC endpoint: audio sources and sinks over aiortc and PyAV.

Imported only when a call builds its first ``Endpoint`` (``voice.endpoint``): aiortc,
PyAV and numpy cost the daemon about 60 MB of memory and most of a second of start-up,
and a node that relays but never calls needs none of them.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCRtpSender
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from meshd.core.errors import LocalProtocolError
from meshd.core.tasks import cancel_and_wait
from voice import opus
from voice.endpoint import GAP_S, PTIME_S, SAMPLE_RATE, _mic_format, _tone_hz

opus.install()  # FEC, loss concealment, a low-delay reorder buffer: see voice/opus.py

__all__ = ["MediaPlayer", "ToneTrack", "WavSink", "open_source", "opus_only"]


class ToneTrack(AudioStreamTrack):
    """A sine tone of ``freq_hz`` at 48 kHz mono, paced in real time by the loop clock."""

    kind = "audio"

    def __init__(self, freq_hz: float, amplitude: float = 0.5) -> None:
        super().__init__()
        self._freq = freq_hz
        self._amp = amplitude
        self._n = 0
        self._t0: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        samples = int(SAMPLE_RATE * PTIME_S)
        if self._t0 is None:
            self._t0 = loop.time()
        else:
            wait = self._t0 + self._n / SAMPLE_RATE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(samples) + self._n) / SAMPLE_RATE
        pcm = (np.sin(2 * math.pi * self._freq * t) * self._amp * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._n
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self._n += samples
        return frame


def open_source(spec: str | None) -> tuple[MediaStreamTrack, MediaPlayer | None]:
    """The audio track for a ``--play`` value (None or ``silence``: silence) and its player, if any."""
    if spec is None or spec == "silence":
        return AudioStreamTrack(), None
    if spec.startswith("tone:"):
        return ToneTrack(_tone_hz(spec)), None
    if spec == "mic":
        fmt = _mic_format()
        try:
            player = MediaPlayer("default", format=fmt)
        except (ValueError, OSError, av.FFmpegError) as exc:  # no such format, no device
            raise LocalProtocolError(f"--play mic: cannot open the microphone ({fmt}: {exc}); "
                                     "play a file or tone:HZ instead") from None
    else:
        if not Path(spec).is_file():
            raise LocalProtocolError(f"no such file: {spec}")
        player = MediaPlayer(spec)
    if player.audio is None:
        raise LocalProtocolError(f"{spec}: no audio stream")
    return player.audio, player


_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


def _wav_header(data_bytes: int) -> bytes:
    return _WAV_HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, 1, SAMPLE_RATE,
                            SAMPLE_RATE * 2, 2, 16, b"data", data_bytes)


class _WavFile:
    """48 kHz mono 16-bit PCM WAV, written as it comes; ``append`` continues an earlier recording
    of this format (a re-offered call keeps one file), anything else is overwritten."""

    def __init__(self, path: Path, append: bool) -> None:
        self._data = 0
        self._f: BinaryIO
        if append and path.is_file() and path.stat().st_size >= _WAV_HEADER.size:
            with path.open("rb") as f:
                head = f.read(_WAV_HEADER.size)
            if head[8:36] == _wav_header(0)[8:36] and head[36:40] == b"data":
                self._f = path.open("r+b")
                self._f.seek(0, 2)
                self._data = self._f.tell() - _WAV_HEADER.size
                return
        self._f = path.open("wb")
        self._f.write(_wav_header(0))

    def write(self, pcm: bytes) -> None:
        self._f.write(pcm)
        self._data += len(pcm)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(_wav_header(self._data))
        self._f.close()


#: the longest stretch of silence one gap may add to a recording: a far end's RTP timestamp is
#: its own to choose, and the wall clock bounds what it can claim as well
MAX_FILL_S = 30.0
FILL_SLACK_S = 0.2
_RTP_WRAP = 1 << 32


class WavSink:
    """Consumes a remote audio track; writes 48 kHz mono 16-bit WAV (or only counts, with no path).

    A stretch the network lost is written as silence, placed by the frames' RTP timestamps
    (``pts``), so the recording keeps the call's duration: samples missing between two frames
    are filled up to what the wall clock allows (the sender's timestamps never make this sink's
    audio longer than the time since its first frame, plus ``FILL_SLACK_S``) and at most
    ``MAX_FILL_S`` at once.
    ``on_frame(now, pcm)``, when set, sees every decoded frame (48 kHz mono int16) as it comes.
    """

    def __init__(self, path: Path | None, clock: Callable[[], float], *, append: bool = False) -> None:
        self.path = path
        self._append = append
        self._clock = clock
        self.first_frame_at: float | None = None
        self.last_frame_at: float | None = None
        self.frames = 0
        #: (loop time, seconds) of every pause longer than ``GAP_S`` between received frames
        self.gaps: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None
        self._wav: _WavFile | None = None
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        #: the RTP timestamp just past the last frame written, and the samples of silence written
        self._next_pts: int | None = None
        self.filled_samples = 0
        self._samples = 0  #: written (or that would have been, with no file): frames and fill
        self.on_frame: Callable[[float, Any], None] | None = None

    def start(self, track: MediaStreamTrack) -> None:
        """Start reading ``track`` until it ends or ``stop`` is called."""
        if self.path is not None:
            self._wav = _WavFile(self.path, self._append)
        self._task = asyncio.get_running_loop().create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):
                continue
            now = self._clock()
            waited = 0.0 if self.last_frame_at is None else now - self.last_frame_at
            if self.first_frame_at is None:
                self.first_frame_at = now
            elif waited > GAP_S:
                self.gaps.append((self.last_frame_at or now, waited))
            self.last_frame_at = now
            self.frames += 1
            missing = self._missing(frame, now)
            if self._wav is not None or self.on_frame is not None:
                for out in self._resampler.resample(frame):
                    pcm = out.to_ndarray().reshape(-1)
                    self._samples += len(pcm) + missing
                    if self.on_frame is not None:
                        self.on_frame(now, pcm)
                    if self._wav is not None:
                        if missing:
                            self._wav.write(bytes(2 * missing))
                            self.filled_samples += missing
                            missing = 0
                        # small sequential writes to a local file: cheaper than a thread hop per frame
                        self._wav.write(pcm.tobytes())

    def _missing(self, frame: av.AudioFrame, now: float) -> int:
        """Samples (48 kHz) lost just before ``frame``, by its RTP timestamp, bounded by the
        time since the first frame (``now``) less what was already written."""
        if frame.pts is None or frame.sample_rate != SAMPLE_RATE:
            return 0
        pts = int(frame.pts) % _RTP_WRAP
        expected, self._next_pts = self._next_pts, (pts + frame.samples) % _RTP_WRAP
        if expected is None:
            return 0
        ahead = (pts - expected) % _RTP_WRAP
        if ahead >= _RTP_WRAP // 2:  # a frame from the past (reordered or a reset): nothing lost
            return 0
        since = now - (self.first_frame_at if self.first_frame_at is not None else now)
        bound = int((since + FILL_SLACK_S) * SAMPLE_RATE) - self._samples
        return max(0, min(ahead, bound, int(MAX_FILL_S * SAMPLE_RATE)))

    async def stop(self) -> None:
        """Stop reading and close the file."""
        await cancel_and_wait(self._task)
        if self._wav is not None:
            self._wav.close()
            self._wav = None


def opus_only() -> list[Any]:
    """Opus alone (its fmtp says we decode in-band FEC: ``voice.opus.install``)."""
    caps = RTCRtpSender.getCapabilities("audio")
    return [c for c in caps.codecs if c.mimeType.lower() == "audio/opus"]


