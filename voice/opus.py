"""Opus for calls over the mesh: in-band FEC, loss concealment and a low-delay reorder buffer.

aiortc (1.16) as it comes suits a clean LAN, not a mesh of cars that loses packets:

- its Opus encoder (PyAV's libopus) sends 96 kbit/s CELT with no in-band FEC, so a receiver has
  nothing to rebuild a lost frame from;
- its Opus decoder (PyAV) cannot decode FEC nor conceal a lost frame (no PLC): a lost frame is
  a hole in the audio;
- its audio jitter buffer holds 4 frames (80 ms) before it gives out the first one, and after
  a lost packet waits until 16 more have arrived (320 ms), a delay it then keeps for the rest
  of the call.

``install()`` (called once when the media half loads, ``voice.media``) replaces the three for
every peer connection of this process:

- the encoder: 64 kbit/s ``voip`` with in-band FEC on and a 10 % expected loss (the encoder
  then spends bits on a low-rate copy of each frame in the next packet).  Opus decoders that
  do not use FEC ignore that copy, so it is safe with any far end; browsers use it.  DTX is
  left off: a far end that stops sending in silence looks like a lost path to the call's gap
  and quality counters;
- the decoder: libopus through ctypes.  A frame missing before the one just arrived is rebuilt
  from that packet's FEC copy, up to ``MAX_CONCEAL`` earlier missing frames are concealed by
  libopus's PLC, and every frame carries its RTP timestamp as ``pts`` (the recorder places
  samples by it and writes silence for a longer stretch);
- the reorder buffer: frames go out as soon as they are in order; a missing one is waited for
  while fewer than ``REORDER_HOLD`` later packets have arrived, then skipped (the decoder
  conceals it) and everything behind it goes out at once, so a loss never leaves extra delay.

Without a loadable libopus (``ctypes.util.find_library("opus")``) the decoder and buffer stay
aiortc's and only the encoder settings change.  The SDP advertises ``useinbandfec=1`` (RFC 7587)
so a browser sends FEC to us too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fractions
import threading
from typing import Any

import av
import numpy as np
from aiortc import codecs, rtcrtpreceiver, rtcrtpsender
from aiortc.codecs.base import Decoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from av.frame import Frame

SAMPLE_RATE = 48000
FRAME = 960  #: samples of a 20 ms frame, what every Opus sender of a call sends
MAX_FRAME = 5760  #: the longest Opus packet: 120 ms
MAX_CONCEAL = 5  #: missing frames concealed by PLC before one (100 ms); longer is silence
REORDER_HOLD = 2  #: later packets that may arrive before a missing one is given up
BUFFER = 64  #: packets the reorder buffer keeps at most
ENCODER_BITRATE = 64000
ENCODER_OPTIONS = {"application": "voip", "fec": "1", "packet_loss": "10"}
#: what our SDP's opus fmtp line says (RFC 7587): we decode FEC
FMTP = {"useinbandfec": 1, "minptime": 10}
_WRAP = 1 << 32
_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class _LibOpus:
    """The few libopus decoder calls, through ctypes (they release the GIL while they run)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                    ctypes.POINTER(ctypes.c_int16), ctypes.c_int, ctypes.c_int]
        lib.opus_decoder_destroy.restype = None
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        self.lib = lib


_lib: dict[str, _LibOpus] = {}
_lib_lock = threading.Lock()
_installed: list[bool] = []


def libopus() -> _LibOpus | None:
    """The system's libopus, loaded once; None if there is none."""
    with _lib_lock:
        if "opus" not in _lib:
            path = ctypes.util.find_library("opus")
            if path is None:
                return None
            try:
                _lib["opus"] = _LibOpus(path)
            except (OSError, AttributeError):
                return None
        return _lib["opus"]


class BundleFrame(JitterFrame):
    """The first frame the reorder buffer gives out, with the ones behind it: ``more`` holds
    (payload, RTP timestamp minus the first's).  The receiver rebases ``timestamp`` after the
    buffer (aiortc's timestamp mapper): the others follow it by their offsets."""

    def __init__(self, data: bytes, timestamp: int, more: list[tuple[bytes, int]]) -> None:
        super().__init__(data, timestamp)
        self.more = more


class ReorderBuffer:
    """aiortc's ``JitterBuffer`` interface for audio: ``add(packet) -> (False, frame or None)``.

    One RTP packet is one Opus frame.  Sequence numbers are 16 bits and wrap; a packet from
    before what was given out, a duplicate or one too far ahead of the buffer resets or is
    dropped, and the buffer never holds more than ``BUFFER`` packets.
    """

    capacity = BUFFER

    def __init__(self) -> None:
        self._next: int | None = None  #: the sequence number to give out next
        self._held: dict[int, tuple[bytes, int]] = {}

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = int(packet.sequence_number)
        item = (bytes(getattr(packet, "_data", b"")), int(packet.timestamp))
        if self._next is None:
            self._next = seq
        ahead = (seq - self._next) & 0xFFFF
        if ahead >= 0x8000:  # already given out (or skipped): too late to use
            return False, None
        if ahead >= BUFFER:  # a jump (the far end restarted, or a long outage): start over there
            self._held.clear()
            self._next = seq
        self._held[seq] = item
        out: list[tuple[bytes, int]] = []
        while self._held:
            if self._next in self._held:
                out.append(self._held.pop(self._next))
                self._next = (self._next + 1) & 0xFFFF
            elif len(self._held) >= REORDER_HOLD:
                self._next = (self._next + 1) & 0xFFFF  # give the missing one up
            else:
                break
        if not out:
            return False, None
        (data, ts), rest = out[0], out[1:]
        return False, BundleFrame(data, ts, [(d, (t - ts) % _WRAP) for d, t in rest])


class ConcealingOpusDecoder(Decoder):
    """Opus decoding with FEC and PLC by RTP timestamp; frames are stereo s16 at 48 kHz."""

    def __init__(self, lib: _LibOpus) -> None:
        self._lib = lib.lib
        err = ctypes.c_int(0)
        self._dec = self._lib.opus_decoder_create(SAMPLE_RATE, 2, ctypes.byref(err))
        if not self._dec or err.value != 0:
            raise OSError(f"opus_decoder_create failed ({err.value})")
        self._pcm = (ctypes.c_int16 * (MAX_FRAME * 2))()
        self._next_ts: int | None = None
        self._last = FRAME
        self.concealed = 0
        self.recovered = 0

    def __del__(self) -> None:
        dec, self._dec = getattr(self, "_dec", None), None
        if dec:
            self._lib.opus_decoder_destroy(dec)

    def _run(self, data: bytes | None, samples: int, fec: bool, ts: int) -> av.AudioFrame | None:
        n = self._lib.opus_decode(self._dec, data, len(data) if data else 0, self._pcm,
                                  min(samples, MAX_FRAME), 1 if fec else 0)
        if n <= 0:
            return None
        pcm = np.ctypeslib.as_array(self._pcm)[: n * 2].copy()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = ts
        frame.time_base = _TIME_BASE
        return frame

    def _one(self, data: bytes, ts: int) -> list[av.AudioFrame]:
        out: list[av.AudioFrame] = []
        if self._next_ts is not None:
            ahead = (ts - self._next_ts) % _WRAP
            if ahead >= _WRAP // 2:  # older than what was decoded: too late
                return out
            lost = ahead // self._last
            for i in range(min(lost, MAX_CONCEAL + 1)):
                at = (self._next_ts + i * self._last) % _WRAP
                if i == lost - 1:  # the frame just before this packet: its FEC copy
                    f = self._run(data, self._last, True, (ts - self._last) % _WRAP)
                    self.recovered += f is not None
                elif i < MAX_CONCEAL:
                    f = self._run(None, self._last, False, at)
                    self.concealed += f is not None
                else:
                    break
                if f is not None:
                    out.append(f)
        f = self._run(data, MAX_FRAME, False, ts)
        if f is not None:
            out.append(f)
            self._last = max(120, min(f.samples, MAX_FRAME))
            self._next_ts = (ts + f.samples) % _WRAP
        return out

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        base = encoded_frame.timestamp
        frames: list[Frame] = []
        frames += self._one(encoded_frame.data, base)
        for data, offset in getattr(encoded_frame, "more", ()):
            frames += self._one(data, (base + offset) % _WRAP)
        return frames


def install() -> None:
    """Put the encoder settings, the decoder and the reorder buffer in place for aiortc (once)."""
    if _installed:
        return
    _installed.append(True)
    lib = libopus()
    for c in codecs.CODECS["audio"]:  # our offers and answers: a=fmtp:111 useinbandfec=1;...
        if c.mimeType.lower() == "audio/opus":
            c.parameters = {**c.parameters, **FMTP}
    sender: Any = rtcrtpsender  # patched by name: aiortc has no hook for these
    receiver: Any = rtcrtpreceiver
    get_encoder, get_decoder = sender.get_encoder, receiver.get_decoder

    def encoder(codec: Any) -> Any:
        enc = get_encoder(codec)
        if isinstance(enc, OpusEncoder):  # the codec context opens on its first frame
            enc.codec.bit_rate = ENCODER_BITRATE
            enc.codec.options = dict(ENCODER_OPTIONS)
        return enc

    sender.get_encoder = encoder
    if lib is None:
        return

    def decoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "audio/opus":
            return ConcealingOpusDecoder(lib)
        return get_decoder(codec)

    jitter_buffer = receiver.JitterBuffer

    def buffer(capacity: int, prefetch: int = 0, is_video: bool = False) -> Any:
        return jitter_buffer(capacity, prefetch, is_video) if is_video else ReorderBuffer()

    receiver.get_decoder = decoder
    receiver.JitterBuffer = buffer
