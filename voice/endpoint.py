"""The WebRTC endpoint in the daemon: aiortc with Opus, an audio source and an audio sink.

``Endpoint`` is the asyncio adapter around one ``RTCPeerConnection``.  It never
asks a STUN/TURN server (``iceServers=[]``: the default asks a public server and
stalls 5 s without internet); the node hands it SDPs whose only candidate is
the mesh relay (see ``voice.relay``).

Sources (``--play``): a file (anything FFmpeg reads), ``tone:HZ`` (a sine),
``mic`` (the default ALSA/Pulse capture device, where the machine has one),
``silence``.  Sinks (``--record``): a ``.wav`` file, ``speaker`` (the default
playback device, where present), or nothing.  The sink records, on the clock it
is given (the node's), the first and last audio frame: "setup time" is measured
to the first, the media watchdog reads the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaPlayer, MediaRecorder
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from meshd.core.errors import LocalProtocolError
from meshd.core.tasks import cancel_and_wait

__all__ = ["Endpoint", "Quality", "ToneTrack", "WavSink", "open_source"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
PTIME_S = 0.020
#: a pause between received frames longer than this counts as an audio gap, seconds
GAP_S = 0.2


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


def _tone_hz(spec: str) -> float:
    try:
        freq = float(spec[5:])
    except ValueError:
        raise LocalProtocolError(f"bad tone frequency in {spec!r}") from None
    if not 20 <= freq <= 20000:
        raise LocalProtocolError("tone frequency must be 20..20000 Hz")
    return freq


def _mic_format() -> str:
    """The FFmpeg input format for ``--play mic``: PulseAudio on a desktop session, else ALSA.

    Raises ``LocalProtocolError`` when this FFmpeg build has neither (PyAV's wheels
    often lack ``pulse``: opening it raised "no container format 'pulse'").
    """
    available = av.formats_available
    if "pulse" in available and Path("/run/user").exists():
        return "pulse"
    if "alsa" in available:
        return "alsa"
    raise LocalProtocolError("--play mic: this build of FFmpeg (PyAV) can read neither "
                             "PulseAudio nor ALSA input; play a file or tone:HZ instead")


def check_media_options(play: str | None, record: str | None) -> None:
    """Refuse a ``play`` source or ``record`` sink that could never work, before any call
    needs it (``LocalProtocolError`` with what is wrong)."""
    if play is not None and play.startswith("tone:"):
        _tone_hz(play)
    elif play == "mic":
        _mic_format()
    elif play not in (None, "silence", "mic") and not Path(str(play)).is_file():
        raise LocalProtocolError(f"no such file to play: {play}")
    if record not in (None, "speaker") and not Path(str(record)).parent.is_dir():
        raise LocalProtocolError(f"cannot record to {record}: "
                                 f"{Path(str(record)).parent} is not a directory")


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


class WavSink:
    """Consumes a remote audio track; writes 48 kHz mono 16-bit WAV (or only counts, with no path)."""

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
            if self.first_frame_at is None:
                self.first_frame_at = now
            elif self.last_frame_at is not None and now - self.last_frame_at > GAP_S:
                self.gaps.append((self.last_frame_at, now - self.last_frame_at))
            self.last_frame_at = now
            self.frames += 1
            if self._wav is not None:
                for out in self._resampler.resample(frame):
                    # small sequential writes to a local file: cheaper than a thread hop per frame
                    self._wav.write(out.to_ndarray().tobytes())

    async def stop(self) -> None:
        """Stop reading and close the file."""
        await cancel_and_wait(self._task)
        if self._wav is not None:
            self._wav.close()
            self._wav = None


@dataclass(frozen=True, slots=True)
class Quality:
    """Call quality from getStats: round-trip time, inbound jitter, inbound loss fraction."""

    rtt_ms: float | None
    jitter_ms: float | None
    loss: float | None
    packets_received: int
    packets_sent: int

    def to_json(self) -> dict[str, Any]:
        return {"rtt_ms": self.rtt_ms, "jitter_ms": self.jitter_ms, "loss": self.loss,
                "packets_received": self.packets_received, "packets_sent": self.packets_sent}


def _opus_only() -> list[Any]:
    caps = RTCRtpSender.getCapabilities("audio")
    return [c for c in caps.codecs if c.mimeType.lower() == "audio/opus"]


class Endpoint:
    """One aiortc peer connection for one call; ``on_state(str)`` sees its connection state changes."""

    def __init__(self, *, play: str | None, record: Path | str | None,
                 on_state: Callable[[str], None], label: str = "", append: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        loop = asyncio.get_running_loop()
        clock = clock or loop.time
        self._label = label
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._track, self._player = open_source(play)
        self._recorder: MediaRecorder | None = None
        self._recorder_task: asyncio.Future[None] | None = None
        self.sink = WavSink(None, clock)
        if record == "speaker":
            self._recorder = MediaRecorder("default", format="alsa")
        elif record is not None:
            self.sink = WavSink(Path(record), clock, append=append)
        self._on_state = on_state
        self.connected_at: float | None = None

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            if self._recorder is not None:
                self._recorder.addTrack(track)
                self._recorder_task = asyncio.ensure_future(self._recorder.start())
            else:
                self.sink.start(track)

        @self.pc.on("connectionstatechange")
        def _on_change() -> None:
            state = self.pc.connectionState
            if state == "connected" and self.connected_at is None:
                self.connected_at = clock()
            self._on_state(state)

    def _prefer_opus(self) -> None:
        for tr in self.pc.getTransceivers():
            if tr.kind == "audio":
                tr.setCodecPreferences(_opus_only())

    async def create_offer(self) -> str:
        """Our offer SDP (ICE gathered, end-of-candidates)."""
        self.pc.addTransceiver(self._track, direction="sendrecv")
        self._prefer_opus()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_offer(self, sdp: str) -> str:
        """Take the far offer (already carrying only the relay candidate); return our answer SDP."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self.pc.addTrack(self._track)
        self._prefer_opus()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        """Take the far answer (already carrying only the relay candidate)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def quality(self) -> Quality:
        """RTT, jitter and loss from getStats (None until measured)."""
        rtt: float | None = None
        jitter: float | None = None
        loss: float | None = None
        received = sent = 0
        with contextlib.suppress(Exception):  # getStats on a closing connection can raise anything
            report = await self.pc.getStats()
            for s in report.values():
                if s.type == "remote-inbound-rtp":
                    rtt = round(float(s.roundTripTime) * 1000.0, 2)
                elif s.type == "inbound-rtp":
                    received = int(s.packetsReceived)
                    jitter = round(float(s.jitter) / SAMPLE_RATE * 1000.0, 2)
                    total = s.packetsReceived + max(0, s.packetsLost)
                    loss = round(max(0, s.packetsLost) / total, 4) if total else None
                elif s.type == "outbound-rtp":
                    sent = int(s.packetsSent)
        return Quality(rtt, jitter, loss, received, sent)

    async def close(self) -> None:
        """Close the connection, the source and the sink."""
        with contextlib.suppress(Exception):  # aiortc teardown of a half-set-up connection
            await self.pc.close()
        await self.sink.stop()
        if self._recorder is not None:
            with contextlib.suppress(Exception):
                await self._recorder.stop()
        self._track.stop()
