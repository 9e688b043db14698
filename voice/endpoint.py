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

aiortc, PyAV and numpy (about 60 MB and most of a second of CPU) load with the
node's first call (``load_media``, in a worker thread), not at start: the media half
lives in ``voice.media``, and this module imports none of it at the top.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd.core.errors import LocalProtocolError

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCPeerConnection
    from aiortc.contrib.media import MediaRecorder

__all__ = ["Endpoint", "Quality", "check_media_options", "load_media"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
PTIME_S = 0.020
#: a pause between received frames longer than this counts as an audio gap, seconds
GAP_S = 0.2


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
    import av  # only for --play mic; av is loaded lazily (see ``voice.media``)

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


@dataclass(frozen=True, slots=True)
class Quality:
    """Call quality from getStats: round-trip time, inbound jitter, inbound loss fraction."""

    rtt_ms: float | None
    jitter_ms: float | None
    loss: float | None
    packets_received: int
    packets_sent: int
    #: loss of what we send, as the far endpoint last reported it (RTCP receiver report)
    remote_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rtt_ms": self.rtt_ms, "jitter_ms": self.jitter_ms, "loss": self.loss,
                "packets_received": self.packets_received, "packets_sent": self.packets_sent,
                "remote_loss": self.remote_loss}


async def load_media() -> None:
    """Import the media half (aiortc, PyAV, numpy) in a worker thread, once.

    Importing it costs most of a second of CPU: on the loop thread that would stall hellos
    and forwarding; in a thread the loop keeps running (imports release the GIL between
    bytecodes).  Calls ``await`` this before building their first ``Endpoint``.
    """
    if "voice.media" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "voice.media")


class Endpoint:
    """One aiortc peer connection for one call; ``on_state(str)`` sees its connection state changes.

    aiortc and the media code are imported here, by the first call: a node that never
    calls never loads them.
    """

    def __init__(self, *, play: str | None, record: Path | str | None,
                 on_state: Callable[[str], None], label: str = "", append: bool = False,
                 clock: Callable[[], float] | None = None) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection
        from aiortc.contrib.media import MediaRecorder

        from voice.media import WavSink, open_source

        loop = asyncio.get_running_loop()
        clock = clock or loop.time
        self._label = label
        self.pc: RTCPeerConnection = RTCPeerConnection(RTCConfiguration(iceServers=[]))
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
        from voice.media import opus_only

        for tr in self.pc.getTransceivers():
            if tr.kind == "audio":
                tr.setCodecPreferences(opus_only())

    async def create_offer(self) -> str:
        """Our offer SDP (ICE gathered, end-of-candidates)."""
        self.pc.addTransceiver(self._track, direction="sendrecv")
        self._prefer_opus()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_offer(self, sdp: str) -> str:
        """Take the far offer (already carrying only the relay candidate); return our answer SDP."""
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        self.pc.addTrack(self._track)
        self._prefer_opus()
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        """Take the far answer (already carrying only the relay candidate)."""
        from aiortc import RTCSessionDescription

        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def quality(self) -> Quality:
        """RTT, jitter and loss from getStats (None until measured)."""
        rtt: float | None = None
        jitter: float | None = None
        loss: float | None = None
        remote_loss: float | None = None
        received = sent = 0
        with contextlib.suppress(Exception):  # getStats on a closing connection can raise anything
            report = await self.pc.getStats()
            for s in report.values():
                if s.type == "remote-inbound-rtp":
                    rtt = round(float(s.roundTripTime) * 1000.0, 2)
                    # RTCP's fraction lost since the previous report, in 256ths (RFC 3550 §6.4.1)
                    remote_loss = round(float(s.fractionLost) / 256.0, 4)
                elif s.type == "inbound-rtp":
                    received = int(s.packetsReceived)
                    jitter = round(float(s.jitter) / SAMPLE_RATE * 1000.0, 2)
                    total = s.packetsReceived + max(0, s.packetsLost)
                    loss = round(max(0, s.packetsLost) / total, 4) if total else None
                elif s.type == "outbound-rtp":
                    sent = int(s.packetsSent)
        return Quality(rtt, jitter, loss, received, sent, remote_loss)

    async def close(self) -> None:
        """Close the connection, the source and the sink."""
        with contextlib.suppress(Exception):  # aiortc teardown of a half-set-up connection
            await self.pc.close()
        await self.sink.stop()
        if self._recorder is not None:
            with contextlib.suppress(Exception):
                await self._recorder.stop()
        self._track.stop()
