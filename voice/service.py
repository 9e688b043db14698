"""The voice service: call signalling over ``sig``, the mesh relay over ``media``, aiortc endpoints.

Theory of operation
-------------------
``VoiceService`` is the asyncio adapter that joins the pure cores
(``CallMachine`` per call, ``Outbox``/``Dedup`` for signalling reliability,
``MediaFramer``) to the node (``NodeApi``), the relay sockets and the aiortc
endpoints.

Dialling: the caller's node builds its endpoint and relay socket, creates an
offer and sends it sealed to the callee (``meshd.core.seal``, context ``sig``:
encrypted to the callee's X25519 key and signed by the caller's node key, so
the DTLS fingerprints in the SDP cannot be swapped by a relay).  The callee's
node answers RINGING at once, publishes ``call.incoming`` and, on ``answer``
(or ``--auto-answer``), opens its own relay socket, hands its endpoint the
offer with the relay as the only candidate, and sends the answer back; the
caller's node does the same with the answer.  From then on every datagram an
endpoint sends to its relay socket crosses the mesh as ``media`` packets with
the call's flow id, packet by packet, so the call follows reroutes.

The call logic is pure and lives in one ``voice.session.CallSession`` per
call (state machine, signalling outbox and dedup, re-offer and media-setup
policy, timers); this adapter feeds it inputs with ``now`` from **one clock**,
the node's monotonic ``NodeApi.now()`` (packet handlers get the same value),
seals and sends what it wants sent, acts on its events (build an endpoint,
hand it an answer, re-offer, tear down), and re-arms one asyncio timer at the
earliest deadline any session reports.  Tasks that build media belong to their
call and are cancelled with it.

Control methods (``handlers()``): ``call`` returns as soon as the offer is
sent, with the call id; ``meshctl call`` then follows the ``call.*`` events
(subscribe first) until ``call.ended``.  ``answer``, ``decline``, ``hangup``
take a call id or a unique prefix of one; ``calls`` lists live and recent
calls with quality (RTT, jitter, loss from getStats).

Browser calls (``browser.dial``, ``browser.offer``, ``browser.answer``, for the
web app): the browser is the endpoint instead of aiortc.  The car opens the
call's relay socket on its *browser-facing* address and hands the browser the
far SDP with that socket as the only candidate, exactly as it hands aiortc the
mesh relay candidate; the browser's own SDP crosses the mesh untouched (the far
node strips its candidates), with the browser's signature over its DTLS
fingerprints (``voice.browser``), which the far node checks; every offer and
answer a node sends also carries the node's own signature over its
fingerprints (``SigMessage.node_sig``), which the car serving a far browser
hands the page with the node's keys (``_far_keys``) for the page's own check
(``web/static/callcheck.js``), so that car cannot swap them.  The car sees
only ciphertext; "audio" for its media watchdog is SRTP packets relayed to the
browser.  Answer SDPs for the browser are published as ``call.browser`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.core.codec import DropCounter
from meshd.core.errors import ControlError, LocalProtocolError, RemoteProtocolError
from meshd.core.identity import NodeId, short_id
from meshd.core.packet import MeshPacket, Service
from meshd.core.seal import ReplayCache, open_sealed, seal
from meshd.core.tasks import cancel_and_wait
from meshd.services.api import Metric, NodeApi
from voice.browser import check_node, check_person, node_message
from voice.callstate import CallRole, CallState, CallStateError
from voice.endpoint import Endpoint, Quality, check_media_options, load_media
from voice.relay import (
    DedupeWindow,
    MediaFramer,
    PacketKind,
    Redundancy,
    RelaySocket,
    classify,
    ice_credentials,
    strip_and_add_relay,
)
from voice.session import (
    MEDIA_SETUP_S,
    MEDIA_STALL_S,
    REOFFER_GIVE_UP_S,
    AcceptOffer,
    CallSession,
    Ended,
    MediaStalled,
    ReofferDue,
    StateChanged,
    TakeAnswer,
)
from voice.signalling import CALL_ID_LEN, MAX_SDP, Kind, SigMessage

__all__ = ["MEDIA_SETUP_S", "MEDIA_STALL_S", "REOFFER_GIVE_UP_S", "CallInfo", "VoiceService"]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

#: a relayed media packet not sent within this long is dropped (stale voice), seconds
MEDIA_DEADLINE_S = 0.5
#: whether a call's SRTP crosses the mesh twice: ``auto`` (once the call's loss exceeds
#: 1 %), ``on`` or ``off`` (``bench/voice.py --redundancy`` sets it for a run)
MEDIA_REDUNDANCY = "auto"
#: the second copy of an SRTP packet follows the first after this long, seconds (0: at once).
#: At once, both copies leave in the same QUIC packet (aioquic coalesces DATAGRAM frames sent
#: together) and share its fate: measured, PESQ 2.65 against 3.86 with 5 ms at 5 % per link
#: over 3 relays (docs/benchmarks.md, Call quality)
MEDIA_COPY_DELAY_S = 0.005
#: how often call quality is sampled from getStats (and audio progress read), seconds
QUALITY_EVERY_S = 1.0
#: ended calls kept for ``calls``
HISTORY = 50
#: live calls of browsers this car serves, at most (each holds a UDP socket)
MAX_BROWSER_CALLS = 16
#: what to do when a host offers WebRTC no address at all (aioice skips 127.0.0.1)
NO_ADDRESS_HINT = ("this host offers WebRTC no usable address (aioice skips 127.0.0.1): add one, "
                   "e.g. `sudo ip addr add 127.0.0.2/8 dev lo` on a loopback-only host, or run "
                   "meshd with --interface on a real network")
OTHER_HINT = ("the endpoint could not reach the mesh relay socket on {host}: check that local "
              "UDP is not filtered (firewall) and that both nodes run the same carmesh version")

@dataclass(slots=True)
class _Call:
    """The adapter's side of one call: the pure session plus the endpoint, relay and tasks."""

    session: CallSession
    peer: NodeId
    peer_name: str
    framer: MediaFramer  # payloads up to the node's max_payload
    play: str | None = None
    record: str | None = None
    endpoint: Endpoint | None = None
    endpoint_generation: int = 0
    relay: RelaySocket | None = None
    answering: bool = False
    quality: Quality | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    #: a browser is this side's endpoint (the relay socket faces it); its key
    browser: bytes | None = None
    #: the browser key that signed the far endpoint's fingerprints (checked), if a browser
    person: bytes | None = None
    person_sig: bytes | None = None
    #: the far node's signature over the fingerprints of its offer or answer (checked), which
    #: this car hands its browser with the SDP (``voice.browser.node_message``)
    far_node_sig: bytes | None = None
    #: browser calls: SRTP relayed to the browser, first and last (node clock)
    rtp_first_at: float | None = None
    rtp_last_at: float | None = None
    browser_ufrag: str | None = None
    #: two copies of each SRTP packet on the mesh (decided from the endpoint's loss)
    redundancy: Redundancy = field(default_factory=lambda: Redundancy(MEDIA_REDUNDANCY))
    #: digests of SRTP/SRTCP from the mesh, to drop the far side's second copies
    dedupe: DedupeWindow = field(default_factory=DedupeWindow)
    copies_sent: int = 0  # second copies sent
    copies_dropped: int = 0  # second copies received and dropped

    @property
    def call_id(self) -> bytes:
        return self.session.call_id

    @property
    def state(self) -> CallState:
        return self.session.state


@dataclass(frozen=True, slots=True)
class CallInfo:
    """A call as the control API shows it."""

    call_id: str
    peer: str
    peer_name: str
    role: str
    state: str
    reason: str | None
    flow_id: int
    duration_s: float | None
    answer_ms: float | None
    setup_ms: float | None
    quality: dict[str, Any] | None
    detail: str | None = None
    person: str | None = None
    browser: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "peer": self.peer, "peer_name": self.peer_name,
                "role": self.role, "state": self.state, "reason": self.reason,
                "flow_id": self.flow_id, "duration_s": self.duration_s,
                "answer_ms": self.answer_ms, "setup_ms": self.setup_ms,
                "quality": self.quality, "detail": self.detail, "person": self.person,
                "browser": self.browser}


class VoiceService:
    """Calls for one node: register with ``VoiceService(node, ...)``, serve ``handlers()``, ``await close()``."""

    def __init__(self, node: NodeApi, *, auto_answer: bool, answer_play: Path | None,
                 answer_record: Path | None, relay_host: str = "127.0.0.1",
                 max_calls: int = 1) -> None:
        self._node = node
        self.auto_answer = auto_answer
        self.answer_play = str(answer_play) if answer_play is not None else None
        self.answer_record = str(answer_record) if answer_record is not None else None
        check_media_options(self.answer_play, self.answer_record)
        self.relay_host = relay_host
        self.max_calls = max_calls
        self.drops = DropCounter(logger)
        self._replay = ReplayCache()
        self._calls: OrderedDict[bytes, _Call] = OrderedDict()
        #: set when a call may have become active: the quality sampler sleeps on it while
        #: no call is (an idle node wakes for nothing)
        self._maybe_active = asyncio.Event()
        self._flows: dict[tuple[NodeId, int], _Call] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._quality_task: asyncio.Task[None] | None = None
        self._running = False  # run() samples quality; without it, a task started on first use
        self._closed = False
        node.register_service(Service.SIG, self._on_sig)
        node.register_service(Service.MEDIA, self._on_media)

    # ------------------------------------------------------------------ control API

    def handlers(self) -> dict[str, Handler]:
        """Control methods: call, answer, decline, hangup, calls."""
        return {"call": self._h_call, "answer": self._h_answer, "decline": self._h_decline,
                "hangup": self._h_hangup, "calls": self._h_calls,
                "browser.dial": self._h_browser_dial, "browser.offer": self._h_browser_offer,
                "browser.answer": self._h_browser_answer, "browser.refuse": self._h_browser_refuse}

    async def _h_call(self, params: dict[str, Any]) -> dict[str, Any]:
        node = params.get("node")
        if not isinstance(node, str) or not node:
            raise ControlError("bad_request", "call needs a NODE")
        play, record = _opt_str(params, "play"), _opt_str(params, "record")
        peer = self._node.resolve(node)
        info = await self.dial(peer, play=play, record=record)
        return info.to_json()

    async def _h_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        call = self._find(params)
        play, record = _opt_str(params, "play"), _opt_str(params, "record")
        await self.answer(call.call_id, play=play, record=record)
        return self._info(call).to_json()

    async def _h_decline(self, params: dict[str, Any]) -> dict[str, Any]:
        call = self._find(params)
        self._local(call, call.session.decline)
        return self._info(call).to_json()

    async def _h_hangup(self, params: dict[str, Any]) -> dict[str, Any]:
        call = self._find(params)
        self._local(call, call.session.hangup)
        return self._info(call).to_json()

    async def _h_calls(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"calls": [self._info(c).to_json() for c in self._calls.values()]}

    def _find(self, params: dict[str, Any]) -> _Call:
        q = params.get("call")
        if not isinstance(q, str) or not q:
            raise ControlError("bad_request", "need a CALL id")
        q = q.lower()
        hits = [c for c in self._calls.values() if c.call_id.hex().startswith(q)]
        if not hits:
            raise ControlError("not_found", f"no call {q}")
        if len(hits) > 1:
            raise ControlError("ambiguous", f"{q} matches {len(hits)} calls",
                               {"candidates": [{"node_id": c.call_id.hex(), "name": c.peer_name}
                                               for c in hits]})
        return hits[0]

    # ------------------------------------------------------------------ NodeService seam

    def stream_services(self) -> dict[str, Callable[[NodeId, Any], Awaitable[None]]]:
        """Voice uses no neighbour streams: everything is end to end."""
        return {}

    def neighbour_up(self, peer: NodeId) -> None:
        """Calls follow routes, not neighbours: nothing to do."""

    def neighbour_lost(self, peer: NodeId) -> None:
        """Calls follow routes, not neighbours: nothing to do."""

    async def run(self) -> None:
        """Sample call quality until cancelled (the node runs this in its task group)."""
        self._running = True
        try:
            await self._sample_quality()
        finally:
            self._running = False

    # ------------------------------------------------------------------ public API

    def calls(self) -> list[CallInfo]:
        """Live and recent calls, oldest first."""
        return [self._info(c) for c in self._calls.values()]

    def metrics(self) -> list[Metric]:
        """``MetricsSource``: calls by state, media-relay drops, and this service's drops."""
        states = dict.fromkeys((s.value for s in CallState), 0)
        for c in self._calls.values():
            states[c.session.state.value] += 1
        drops = dict(self.drops.counts)
        relay = sum(n for r, n in drops.items() if r.startswith(("relay-", "media-", "stun-")))
        return [
            Metric("carmesh_calls", "gauge", "Calls this node takes part in (live and recent), "
                   "by state.", ("state",), tuple(((s,), float(n)) for s, n in states.items())),
            Metric("carmesh_relay_drops_total", "counter",
                   "Packets for others this node could not forward, by where they were lost.",
                   ("where",), ((("media_relay",), float(relay)),)),
            Metric("carmesh_drops_total", "counter", "Refused or malformed input, by reason.",
                   ("reason",), tuple(((r,), float(n)) for r, n in sorted(drops.items()))),
        ]

    def info(self, call_id: bytes) -> CallInfo:
        """One call as the control API shows it; raise ``KeyError`` if unknown."""
        return self._info(self._calls[call_id])

    def session(self, call_id: bytes) -> CallSession:
        """The pure session of a call (tests read generation and timers from it)."""
        return self._calls[call_id].session

    def endpoint(self, call_id: bytes) -> Endpoint | None:
        """The call's current WebRTC endpoint, if any."""
        return self._calls[call_id].endpoint

    async def dial(self, peer: NodeId, *, play: str | None, record: str | None) -> CallInfo:
        """Start a call to ``peer``; returns once the offer is sent (raise ``ControlError`` if impossible)."""
        if peer == self._node.identity.node_id:
            raise ControlError("bad_request", "cannot call this node itself")
        ann = self._node.announcement_of(peer)
        if ann is None:
            raise ControlError("unreachable", f"no announcement of {short_id(peer)}: not reachable")
        now = self._node.now()
        session = CallSession(secrets.token_bytes(CALL_ID_LEN), CallRole.CALLER,
                              1 + secrets.randbelow(2**32 - 1), now)
        call = _Call(session, peer, ann.name, MediaFramer(self._node.max_payload),
                     play=play, record=record)
        try:
            await self._new_endpoint(call)
        except LocalProtocolError as exc:
            await self._teardown_media(call)
            raise ControlError("bad_request", str(exc)) from None
        self._remember(call)
        session.dial(self._node.now())
        self._flush(call)
        assert call.endpoint is not None
        try:
            sdp = await call.endpoint.create_offer()
        except Exception as exc:  # adapter boundary: aiortc/aioice can raise anything here
            logger.exception("[call %s] could not create the offer", call.call_id.hex()[:8])
            session.media_failed(self._node.now(), f"could not set up media: {exc}")
            self._flush(call)
            raise ControlError("failed", f"could not set up media: {exc}") from None
        session.media_hint = self._hint(sdp)
        session.offer(sdp, self._node.now(), node_sig=self._node_sig(call, Kind.OFFER, sdp))
        self._flush(call)
        return self._info(call)

    async def answer(self, call_id: bytes, *, play: str | None, record: str | None) -> None:
        """Answer a ringing incoming call (raise ``ControlError`` if it is not one)."""
        call = self._calls.get(call_id)
        if call is None:
            raise ControlError("not_found", "no such call")
        if call.session.role is not CallRole.CALLEE or call.state is not CallState.RINGING:
            raise ControlError("failed", f"call is {call.state.value}, not ringing in")
        if call.answering:
            raise ControlError("failed", "call is being answered already")
        call.answering = True
        call.play, call.record = play, record
        call.session.begin_answer(self._node.now())
        try:
            await self._accept_offer(call)
        except LocalProtocolError as exc:  # a --play file that does not exist, a bad tone
            call.answering = False
            call.session.answering_at = None
            await self._teardown_media(call)
            raise ControlError("bad_request", str(exc)) from None
        except Exception as exc:  # adapter boundary: aiortc/aioice can raise anything here
            logger.exception("[call %s] could not answer", call.call_id.hex()[:8])
            call.session.media_failed(self._node.now(), f"could not set up media: {exc}")
            self._flush(call)
            raise ControlError("failed", f"could not set up media: {exc}") from None
        if _ended(call):
            await self._teardown_media(call)  # the caller gave up while we were setting up

    def hangup(self, call_id: bytes) -> None:
        """Hang up (or decline, if it rings in) a call; no-op for an ended one."""
        call = self._calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            return
        call.session.hangup(self._node.now())
        self._flush(call)

    async def close(self) -> None:
        """Hang up every live call, close endpoints and relay sockets."""
        self._closed = True
        for call in list(self._calls.values()):
            if call.state not in (CallState.ENDED, CallState.IDLE):
                with contextlib.suppress(CallStateError):
                    call.session.hangup(self._node.now())
                    self._flush(call)
        await cancel_and_wait(self._quality_task)
        for call in list(self._calls.values()):
            for t in list(call.tasks):
                await cancel_and_wait(t)
            await self._teardown_media(call)
        if self._timer is not None:
            self._timer.cancel()

    # ------------------------------------------------------------------ call internals

    def _local(self, call: _Call, action: Callable[[float], None]) -> None:
        try:
            action(self._node.now())
        except CallStateError as exc:
            raise ControlError("failed", str(exc)) from None
        self._flush(call)

    def _remember(self, call: _Call) -> None:
        if self._quality_task is None and not self._closed and not self._running:
            self._quality_task = asyncio.get_running_loop().create_task(self._sample_quality())
        self._calls[call.call_id] = call
        self._flows[(call.peer, call.session.flow_id)] = call
        ended = [c for c in self._calls.values() if c.state is CallState.ENDED
                 and not c.session.pending]
        while len(self._calls) > HISTORY and ended:
            old = ended.pop(0)
            self._calls.pop(old.call_id, None)
            self._flows.pop((old.peer, old.session.flow_id), None)

    def _info(self, call: _Call) -> CallInfo:
        s = call.session
        return CallInfo(call.call_id.hex(), call.peer.hex(), call.peer_name, s.role.value,
                        s.state.value, s.reason.value if s.reason else None, s.flow_id,
                        s.duration_s(self._node.now()), s.answer_ms(), s.setup_ms(),
                        call.quality.to_json() if call.quality else None, s.detail,
                        call.person.hex() if call.person else None, call.browser is not None)

    def _hint(self, local_sdp: str) -> str:
        if "typ host" not in local_sdp:
            return NO_ADDRESS_HINT
        return OTHER_HINT.format(host=self.relay_host)

    def _spawn(self, call: _Call, coro: Awaitable[Any]) -> None:
        """Run media work for ``call``; the call owns the task (cancelled with it at close)."""
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the adapter's outer boundary: aiortc can raise anything
                logger.exception("[call %s] media setup failed", call.call_id.hex()[:8])
                call.session.media_failed(self._node.now(), f"could not set up media: {exc}")
                self._flush(call)
        task = asyncio.get_running_loop().create_task(run())
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)

    async def _new_endpoint(self, call: _Call) -> None:
        await self._teardown_media(call)
        await load_media()  # aiortc and PyAV, off the loop, by the node's first call
        label = f"[call {call.call_id.hex()[:8]}] "

        def forward(data: bytes, twice: bool, call: _Call = call) -> None:
            self._forward_media(call, data, twice)

        call.relay = await RelaySocket.open(self.relay_host, forward, drops=self.drops, label=label)
        generation = call.endpoint_generation = call.session.generation

        def on_state(state: str, call: _Call = call) -> None:
            self._on_endpoint_state(call, generation, state)

        # a re-offered call (generation > 0) keeps recording into the same file
        call.endpoint = Endpoint(play=call.play, record=call.record, on_state=on_state, label=label,
                                 append=generation > 0, clock=self._node.now)

    async def _teardown_media(self, call: _Call) -> None:
        relay, endpoint = call.relay, call.endpoint
        call.relay = call.endpoint = None
        if relay is not None:
            relay.close()
        if endpoint is not None:
            self._feed_audio(call, endpoint, call.endpoint_generation)
            q = await endpoint.quality()
            if q.packets_received or q.packets_sent:
                call.quality = q
            await endpoint.close()

    async def _accept_offer(self, call: _Call) -> None:
        """Callee: build the endpoint for the stored offer and send the answer."""
        offer = call.session.offer_sdp
        assert offer is not None
        remote = ice_credentials(offer)
        await self._new_endpoint(call)
        assert call.relay is not None and call.endpoint is not None
        relay = call.relay
        relay.set_credentials(remote, None)
        answer = await call.endpoint.accept_offer(strip_and_add_relay(offer, *relay.address))
        relay.set_credentials(remote, ice_credentials(answer).ufrag)
        call.session.media_hint = self._hint(answer)
        call.session.send_answer(answer, self._node.now(),
                                 node_sig=self._node_sig(call, Kind.ANSWER, answer))
        self._flush(call)

    async def _take_answer(self, call: _Call, sdp: str) -> None:
        """Caller: hand the endpoint the answer with our relay as its only candidate."""
        if call.endpoint is None or call.relay is None:
            return
        local = ice_credentials(call.endpoint.pc.localDescription.sdp)
        call.relay.set_credentials(ice_credentials(sdp), local.ufrag)
        await call.endpoint.accept_answer(strip_and_add_relay(sdp, *call.relay.address))

    async def _reoffer(self, call: _Call) -> None:
        generation = call.session.begin_reoffer()
        await self._new_endpoint(call)
        assert call.endpoint is not None
        sdp = await call.endpoint.create_offer()
        if call.session.offer(sdp, self._node.now(),
                              node_sig=self._node_sig(call, Kind.OFFER, sdp)):
            logger.info("[call %s] media lost: re-offered (generation %d)", call.call_id.hex()[:8],
                        generation)
        self._flush(call)

    def _node_sig(self, call: _Call, kind: Kind, sdp: str) -> bytes:
        """This node's signature over the fingerprints of an SDP it sends (for a far browser)."""
        return self._node.identity.sign(node_message(call.call_id, kind, sdp))

    def _check_far(self, source: NodeId, msg: SigMessage) -> bytes | None:
        """The browser key that signed ``msg``, if any; raise if a signature does not match."""
        ann = self._node.announcement_of(source)
        if ann is not None:
            check_node(msg, ann.ed25519_pub)
        return check_person(msg)

    def _on_endpoint_state(self, call: _Call, generation: int, state: str) -> None:
        if generation != call.session.generation or call.state is not CallState.ACTIVE:
            return
        self._node.publish("call.media", {"call_id": call.call_id.hex(), "state": state})
        # aiortc closes the connection itself when ICE consent expires: a close we did not ask
        # for (ours bump the generation or end the call first) is a failure too
        call.session.media_state(generation, state, self._node.now())
        self._flush(call)

    def _feed_audio(self, call: _Call, ep: Endpoint, generation: int) -> None:
        if call.session.audio(generation, ep.sink.first_frame_at, ep.sink.last_frame_at):
            self._node.publish("call.audio", {"call_id": call.call_id.hex(),
                                              "answer_ms": call.session.answer_ms(),
                                              "setup_ms": call.session.setup_ms()})

    def _forward_media(self, call: _Call, data: bytes, twice: bool) -> None:
        try:
            payloads = call.framer.split(data)
        except ValueError:
            self.drops.drop("media-too-large", call.call_id.hex()[:8])
            return
        # the one read of the loop clock: ``send_packet`` deadlines are the link layer's, which
        # keeps them on ``loop.time()`` (meshd.links.manager.send_datagram); no call logic uses it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MEDIA_DEADLINE_S
        self._send_media(call, payloads, deadline)
        if twice:
            self._send_media(call, payloads, deadline)
        elif call.redundancy.active and classify(data) is PacketKind.RTP:
            call.copies_sent += 1
            if MEDIA_COPY_DELAY_S > 0:
                loop.call_later(MEDIA_COPY_DELAY_S, self._send_media, call, payloads, deadline)
            else:
                self._send_media(call, payloads, deadline)

    def _send_media(self, call: _Call, payloads: list[bytes], deadline: float) -> None:
        if call.relay is None or call.relay.closed:
            return  # a delayed copy after the call's media ended
        for p in payloads:
            self._node.send_packet(call.peer, Service.MEDIA, p, flow_id=call.session.flow_id,
                                   deadline=deadline)

    def _on_media(self, pkt: MeshPacket, now: float) -> None:
        if pkt.payload == b"\x02":
            return  # a caller's route probe before a re-offer
        call = self._flows.get((pkt.source, pkt.flow_id))
        if call is None or call.relay is None:
            self.drops.drop("media-unknown-flow", short_id(pkt.source))
            return
        try:
            data = call.framer.join(pkt.payload)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(pkt.source), str(exc))
            return
        if data is not None:
            if classify(data) is PacketKind.RTP and call.dedupe.seen(data):
                call.copies_dropped += 1  # the second copy (Redundancy): expected, not a drop
                return
            call.relay.deliver(data)
            if call.browser is not None:
                self._browser_audio(call, data, now)
                return
            ep = call.endpoint
            if call.session.first_audio_at is None and ep is not None \
                    and ep.sink.first_frame_at is not None:
                self._feed_audio(call, ep, call.endpoint_generation)
                self._flush(call)

    # ------------------------------------------------------------------ signalling

    def _flush(self, call: _Call) -> None:
        """Send what the session wants sent, act on its events, re-arm the timer."""
        s = call.session
        for body in s.messages_to_send():
            self._send_sealed(call.peer, body)
        while (ev := s.next_event()) is not None:
            if isinstance(ev, StateChanged):
                self._maybe_active.set()
                self._node.publish("call.state", self._info(call).to_json())
            elif isinstance(ev, AcceptOffer):
                if call.browser is None:  # a browser re-offer is not supported yet
                    self._spawn(call, self._accept_offer(call))
            elif isinstance(ev, TakeAnswer):
                if call.browser is not None:
                    self._browser_take_answer(call, ev.sdp)
                else:
                    self._spawn(call, self._take_answer(call, ev.sdp))
            elif isinstance(ev, MediaStalled):
                logger.info("[call %s] no audio for %.1f s: media failed", call.call_id.hex()[:8],
                            ev.silent_s)
                self._node.publish("call.media", {"call_id": call.call_id.hex(),
                                                  "state": "stalled"})
            elif isinstance(ev, ReofferDue):
                if call.browser is None and self._node.announcement_of(call.peer) is not None \
                        and self._probe_route(call):
                    self._spawn(call, self._reoffer(call))
            elif isinstance(ev, Ended):
                if s.detail and ev.reason.value == "failed":
                    logger.warning("[call %s] failed: %s", call.call_id.hex()[:8], s.detail)
                self._spawn(call, self._finish(call))
        self._arm()

    async def _finish(self, call: _Call) -> None:
        await self._teardown_media(call)
        self._node.publish("call.ended", self._info(call).to_json())

    def _send_sealed(self, peer: NodeId, body: bytes) -> bool:
        ann = self._node.announcement_of(peer)
        if ann is None:
            return False
        sealed = seal(self._node.identity, ann.x25519_pub, peer, body, context=b"sig",
                      timestamp_ms=self._node.wall_ms())
        return self._node.send_message(peer, Service.SIG, sealed)

    def _on_sig(self, pkt: MeshPacket, now: float) -> None:
        peer = short_id(pkt.source)
        try:
            opened = open_sealed(self._node.identity, pkt.payload, source=pkt.source, context=b"sig")
            self._replay.check(opened, self._node.wall_ms())
            msg = SigMessage.decode(opened.body)
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, peer, str(exc))
            return
        call = self._calls.get(msg.call_id)
        if call is not None and call.peer != pkt.source:
            self.drops.drop("sig-wrong-peer", peer, "call id of another peer")
            return
        if call is not None and msg.kind in (Kind.OFFER, Kind.ANSWER) \
                and call.state is not CallState.ENDED:
            try:
                person = self._check_far(pkt.source, msg)
            except RemoteProtocolError as exc:
                self.drops.drop(exc.reason, peer, str(exc))
                call.session.media_failed(now, f"{msg.kind.value} refused: {exc}")
                self._flush(call)
                return
            if person is not None:
                call.person, call.person_sig = person, msg.person_sig
            call.far_node_sig = msg.node_sig
        if call is None:
            if msg.kind is Kind.ACK:
                return
            # acknowledged even if refused: the sender stops retransmitting
            self._send_sealed(pkt.source, SigMessage(Kind.ACK, msg.call_id, 0,
                                                     acked=msg.number).encode())
            if msg.kind is Kind.OFFER:
                self._incoming(pkt.source, msg, now)
            else:
                self.drops.drop("sig-unknown-call", peer, msg.kind.value)
            return
        try:
            call.session.receive(msg, now)
        except CallStateError as exc:
            self.drops.drop("sig-state", peer, str(exc))
        self._flush(call)

    def _incoming(self, source: NodeId, msg: SigMessage, now: float) -> None:
        try:
            ice_credentials(msg.sdp or "")
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(source), "offer")
            return
        ann = self._node.announcement_of(source)
        session = CallSession(msg.call_id, CallRole.CALLEE, msg.flow_id, now,
                              generation=msg.generation, offer_sdp=msg.sdp)
        session.receive(msg, now)  # IDLE -> RINGING; its ack was sent above, drop the copy
        session.messages_to_send()
        call = _Call(session, source, ann.name if ann else "", MediaFramer(self._node.max_payload))
        self._remember(call)
        try:
            call.person = self._check_far(source, msg)
            call.person_sig, call.far_node_sig = msg.person_sig, msg.node_sig
        except RemoteProtocolError as exc:  # a fingerprint altered in transit: never rings
            self.drops.drop(exc.reason, short_id(source), str(exc))
            session.media_failed(now, f"offer refused: {exc}")
            self._flush(call)
            return
        live = sum(1 for c in self._calls.values()
                   if c.state in (CallState.DIALLING, CallState.RINGING, CallState.ACTIVE))
        if live > self.max_calls or self._closed:
            session.refuse_busy(now)
            self._flush(call)
            return
        session.ring(now)
        self._node.publish("call.incoming", {
            **self._info(call).to_json(), "auto_answer": self.auto_answer})
        self._flush(call)
        if self.auto_answer:
            self._spawn(call, self.answer(call.call_id, play=self.answer_play,
                                          record=self.answer_record))

    # ------------------------------------------------------------------ browser calls

    async def _h_browser_dial(self, params: dict[str, Any]) -> dict[str, Any]:
        node = params.get("node")
        if not isinstance(node, str) or not node:
            raise ControlError("bad_request", "call needs a NODE")
        call_id, sdp, person = _browser_sdp(params, Kind.OFFER)
        host = _host(params)
        peer = self._node.resolve(node)
        if peer == self._node.identity.node_id:
            raise ControlError("bad_request", "cannot call this car itself")
        if call_id in self._calls:
            raise ControlError("bad_request", "call id in use")
        live = sum(1 for c in self._calls.values()
                   if c.browser is not None and c.state is not CallState.ENDED)
        if live >= MAX_BROWSER_CALLS or self._closed:
            raise ControlError("failed", "this car carries as many browser calls as it can")
        ann = self._node.announcement_of(peer)
        if ann is None:
            raise ControlError("unreachable", f"no announcement of {short_id(peer)}: not reachable")
        now = self._node.now()
        session = CallSession(call_id, CallRole.CALLER, 1 + secrets.randbelow(2**32 - 1), now)
        call = _Call(session, peer, ann.name, MediaFramer(self._node.max_payload),
                     browser=person[0], browser_ufrag=ice_credentials(sdp).ufrag)
        await self._browser_relay(call, host)
        self._remember(call)
        session.dial(self._node.now())
        session.offer(sdp, self._node.now(), person, self._node_sig(call, Kind.OFFER, sdp))
        self._flush(call)
        return self._info(call).to_json()

    async def _h_browser_offer(self, params: dict[str, Any]) -> dict[str, Any]:
        """A ringing call's offer for a browser: the car's browser-facing socket its only candidate."""
        call = self._find(params)
        host = _host(params)
        offer = call.session.offer_sdp
        if call.session.role is not CallRole.CALLEE or call.state is not CallState.RINGING \
                or offer is None:
            raise ControlError("failed", f"call is {call.state.value}, not ringing in")
        if call.answering or call.endpoint is not None:
            raise ControlError("failed", "call is being answered already")
        if call.relay is None:
            await self._browser_relay(call, host)
        assert call.relay is not None
        call.relay.set_credentials(ice_credentials(offer), None)
        return {"call_id": call.call_id.hex(),
                "sdp": strip_and_add_relay(offer, *call.relay.address), **self._far_keys(call)}

    async def _h_browser_answer(self, params: dict[str, Any]) -> dict[str, Any]:
        call_id, sdp, person = _browser_sdp(params, Kind.ANSWER)
        call = self._calls.get(call_id)
        if call is None:
            raise ControlError("not_found", "no such call")
        offer = call.session.offer_sdp
        if call.session.role is not CallRole.CALLEE or call.state is not CallState.RINGING \
                or call.relay is None or offer is None or call.answering:
            raise ControlError("failed", f"call is {call.state.value}, not ringing in")
        call.answering = True
        call.browser = person[0]
        call.relay.set_credentials(ice_credentials(offer), ice_credentials(sdp).ufrag)
        call.session.begin_answer(self._node.now())
        call.session.send_answer(sdp, self._node.now(), person,
                                 self._node_sig(call, Kind.ANSWER, sdp))
        self._flush(call)
        return self._info(call).to_json()

    async def _h_browser_refuse(self, params: dict[str, Any]) -> dict[str, Any]:
        """The browser found the far SDP's fingerprints not signed by the far node (its own
        check, ``web/static/callcheck.js``): the call fails, and the far end is told so."""
        call = self._find(params)
        why = params.get("why")
        if not isinstance(why, str) or not why.isprintable() or not 0 < len(why) <= 64:
            raise ControlError("bad_request", "why: up to 64 printable characters")
        if call.browser is None and (call.relay is None or call.endpoint is not None):
            raise ControlError("failed", "not a browser's call")
        if call.state is not CallState.ENDED:
            self.drops.drop("browser-refused", short_id(call.peer), why)
            call.session.media_failed(self._node.now(),
                                      f"the browser refused the far fingerprints: {why}")
            self._flush(call)
        return self._info(call).to_json()

    async def _browser_relay(self, call: _Call, host: str) -> None:
        label = f"[call {call.call_id.hex()[:8]}] "

        def forward(data: bytes, twice: bool, call: _Call = call) -> None:
            self._forward_media(call, data, twice)

        try:
            call.relay = await RelaySocket.open(host, forward, drops=self.drops, label=label)
        except OSError as exc:
            raise ControlError("failed", f"cannot open a relay socket on {host}: {exc}") from None

    def _browser_take_answer(self, call: _Call, sdp: str) -> None:
        """Caller browser: the far answer goes to it with the car's socket as the only candidate."""
        relay = call.relay
        if relay is None:
            return
        relay.set_credentials(ice_credentials(sdp), call.browser_ufrag)
        self._node.publish("call.browser", {
            "call_id": call.call_id.hex(), "kind": "answer",
            "sdp": strip_and_add_relay(sdp, *relay.address), **self._far_keys(call)})

    def _far_keys(self, call: _Call) -> dict[str, Any]:
        """For the browser's own check of the far SDP (``web/static/callcheck.js``): the
        far browser's key and signature if a browser made it, the far node's signature and
        its two public keys (SHA-256(ed ‖ x)[:16] is its NodeId), and its name."""
        ann = self._node.announcement_of(call.peer)
        return {"key": call.person.hex() if call.person else None,
                "sig": call.person_sig.hex() if call.person_sig else None,
                "node_sig": call.far_node_sig.hex() if call.far_node_sig else None,
                "node_key": ann.ed25519_pub.hex() if ann else None,
                "x": ann.x25519_pub.hex() if ann else None,
                "peer": call.peer.hex(), "name": call.peer_name}

    def _browser_audio(self, call: _Call, data: bytes, now: float) -> None:
        if classify(data) is not PacketKind.RTP:
            return
        if call.rtp_first_at is None:
            call.rtp_first_at = now
        call.rtp_last_at = now
        if call.session.audio(call.session.generation, call.rtp_first_at, call.rtp_last_at):
            self._node.publish("call.audio", {"call_id": call.call_id.hex(),
                                              "answer_ms": call.session.answer_ms(),
                                              "setup_ms": call.session.setup_ms()})
            self._flush(call)

    # ------------------------------------------------------------------ timers

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadlines = [t for c in self._calls.values() if (t := c.session.get_timer()) is not None]
        if deadlines and not self._closed:
            delay = max(0.0, min(deadlines) - self._node.now())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._node.now()
        for call in list(self._calls.values()):
            t = call.session.get_timer()
            if t is None or t > now:
                continue
            ep = call.endpoint
            if ep is not None:  # the freshest audio progress before the media watchdog looks
                self._feed_audio(call, ep, call.endpoint_generation)
            call.session.handle_timer(now)
            self._flush(call)
        self._arm()

    def _probe_route(self, call: _Call) -> bool:
        # an empty media packet: the far side counts and drops it; True if a route exists
        return self._node.send_packet(call.peer, Service.MEDIA, b"\x02",
                                      flow_id=call.session.flow_id)

    async def _sample_quality(self) -> None:
        while True:
            if not any(c.state is CallState.ACTIVE for c in self._calls.values()):
                self._maybe_active.clear()
                await self._maybe_active.wait()
            await asyncio.sleep(QUALITY_EVERY_S)
            for call in list(self._calls.values()):
                ep = call.endpoint
                if ep is not None and call.state is CallState.ACTIVE:
                    call.quality = await ep.quality()
                    q = call.quality
                    # what the far endpoint reports of our stream; our own inbound loss
                    # where it reports nothing yet (the path is taken to lose alike both ways)
                    loss = max((x for x in (q.loss, q.remote_loss) if x is not None), default=None)
                    if call.redundancy.observe(loss):
                        logger.info("[call %s] loss %.1f %%: SRTP now crosses the mesh twice",
                                    call.call_id.hex()[:8], 100 * (loss or 0.0))
                    if call.endpoint is ep:
                        self._feed_audio(call, ep, call.endpoint_generation)


def _ended(call: _Call) -> bool:
    # read through a function so that mypy keeps no narrowing across an await
    return call.state is CallState.ENDED


def _browser_sdp(params: dict[str, Any], kind: Kind) -> tuple[bytes, str, tuple[bytes, bytes]]:
    """(call id, SDP, (browser key, signature)) of a browser's offer or answer, checked."""
    try:
        call_id = bytes.fromhex(str(params.get("call_id", "")))
        key = bytes.fromhex(str(params.get("key", "")))
        sig = bytes.fromhex(str(params.get("sig", "")))
    except ValueError:
        raise ControlError("bad_request", "call_id, key and sig are hex") from None
    sdp = params.get("sdp")
    if not isinstance(sdp, str) or len(sdp) > MAX_SDP:
        raise ControlError("bad_request", "sdp must be a string of at most 16 KiB")
    if len(call_id) != CALL_ID_LEN or len(key) != 32 or len(sig) != 64:
        raise ControlError("bad_request", "call_id is 16 bytes, key 32, sig 64")
    msg = SigMessage(kind, call_id, 0, sdp=sdp, person_key=key, person_sig=sig)
    try:
        ice_credentials(sdp)
        check_person(msg)
    except RemoteProtocolError as exc:
        raise ControlError("bad_request", str(exc)) from None
    return call_id, sdp, (key, sig)


def _host(params: dict[str, Any]) -> str:
    host = params.get("host")
    try:
        return str(ipaddress.ip_address(str(host)))
    except ValueError:
        raise ControlError("bad_request", "host must be an IP address") from None


def _opt_str(params: dict[str, Any], key: str) -> str | None:
    v = params.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ControlError("bad_request", f"{key} must be a string")
    if key in ("play", "record") and not (v.startswith("tone:") or v in ("mic", "speaker", "silence")):
        return os.path.abspath(v)
    return v
