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

Every signalling message but ``ack`` is acknowledged and retransmitted
(``Outbox``); a message that exhausts its tries ends the call as
``unreachable``.  If an active call's media fails (aiortc gives up about 30 s
after media stops), the caller re-offers (generation + 1) as soon as a route
is back, for up to ``REOFFER_GIVE_UP_S``; the callee replaces its endpoint
when the re-offer arrives.

Control methods (``handlers()``): ``call`` returns as soon as the offer is
sent, with the call id; ``meshctl call`` then follows the ``call.*`` events
(subscribe first) until ``call.ended``.  ``answer``, ``decline``, ``hangup``
take a call id or a unique prefix of one; ``calls`` lists live and recent
calls with quality (RTT, jitter, loss from getStats).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from voice.callstate import CallInput, CallMachine, CallRole, CallState, CallStateError, EndReason
from voice.endpoint import Endpoint, Quality, check_media_options, load_media
from voice.relay import MediaFramer, RelaySocket, ice_credentials, strip_and_add_relay
from voice.signalling import CALL_ID_LEN, Dedup, Kind, Outbox, SigMessage

__all__ = ["REOFFER_GIVE_UP_S", "CallInfo", "VoiceService"]

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

#: payload of one mesh packet
#: a relayed media packet not sent within this long is dropped (stale voice), seconds
MEDIA_DEADLINE_S = 0.5
#: a caller keeps trying to re-offer a call whose media failed for this long, seconds
REOFFER_GIVE_UP_S = 60.0
#: how often a caller without a route retries the re-offer, seconds
REOFFER_RETRY_S = 1.0
#: how often call quality is sampled from getStats, seconds
QUALITY_EVERY_S = 1.0
#: no audio frame for this long in an active call counts as failed media (aiortc's own ICE
#: consent check gives up only after about 30 s); above the ~2 s a re-route takes, seconds
MEDIA_STALL_S = 6.0
#: ended calls kept for ``calls``
HISTORY = 50
_FINAL = {EndReason.BUSY: Kind.BUSY, EndReason.DECLINED: Kind.DECLINE, EndReason.TIMEOUT: Kind.TIMEOUT,
          EndReason.HUNG_UP_LOCAL: Kind.HANGUP, EndReason.FAILED: Kind.HANGUP}
_RECV = {Kind.OFFER: CallInput.RECV_OFFER, Kind.RINGING: CallInput.RECV_RINGING,
         Kind.ANSWER: CallInput.RECV_ANSWER, Kind.BUSY: CallInput.RECV_BUSY,
         Kind.DECLINE: CallInput.RECV_DECLINE, Kind.HANGUP: CallInput.RECV_HANGUP,
         Kind.TIMEOUT: CallInput.RECV_TIMEOUT}


@dataclass(slots=True)
class _Call:
    call_id: bytes
    peer: NodeId
    peer_name: str
    machine: CallMachine
    flow_id: int
    framer: MediaFramer  # payloads up to the node's max_payload
    play: str | None = None
    record: str | None = None
    outbox: Outbox = field(default_factory=Outbox)
    endpoint: Endpoint | None = None
    relay: RelaySocket | None = None
    generation: int = 0
    offer_sdp: str | None = None  # the callee keeps the offer until answered
    final_number: int = 0  # the message that ended the call, if we sent it
    offer_number: int = 0
    answering: bool = False
    reoffer_since: float | None = None
    reoffer_next: float | None = None
    quality: Quality | None = None
    dialled_at: float = 0.0
    first_audio_at: float | None = None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


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
    setup_ms: float | None
    quality: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "peer": self.peer, "peer_name": self.peer_name,
                "role": self.role, "state": self.state, "reason": self.reason,
                "flow_id": self.flow_id, "duration_s": self.duration_s, "setup_ms": self.setup_ms,
                "quality": self.quality}


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
        self._dedup = Dedup()
        self._calls: OrderedDict[bytes, _Call] = OrderedDict()
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
                "hangup": self._h_hangup, "calls": self._h_calls}

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
        self._local(call, CallInput.DECLINE)
        return self._info(call).to_json()

    async def _h_hangup(self, params: dict[str, Any]) -> dict[str, Any]:
        call = self._find(params)
        self._local(call, CallInput.HANGUP)
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
            states[self._state(c).value] += 1
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

    async def dial(self, peer: NodeId, *, play: str | None, record: str | None) -> CallInfo:
        """Start a call to ``peer``; returns once the offer is sent (raise ``ControlError`` if impossible)."""
        if peer == self._node.identity.node_id:
            raise ControlError("bad_request", "cannot call this node itself")
        ann = self._node.announcement_of(peer)
        if ann is None:
            raise ControlError("unreachable", f"no announcement of {short_id(peer)}: not reachable")
        now = self._loop.time()
        call = _Call(secrets.token_bytes(CALL_ID_LEN), peer, ann.name,
                     CallMachine(CallRole.CALLER, now), 1 + secrets.randbelow(2**32 - 1),
                     play=play, record=record, dialled_at=now,
                     framer=MediaFramer(self._node.max_payload))
        try:
            await self._new_endpoint(call)
        except LocalProtocolError as exc:
            await self._teardown_media(call)
            raise ControlError("bad_request", str(exc)) from None
        self._remember(call)
        call.machine.process(CallInput.DIAL, now)
        self._publish_state(call)
        assert call.endpoint is not None
        try:
            sdp = await call.endpoint.create_offer()
        except Exception as exc:  # adapter boundary: aiortc/aioice can raise anything here
            logger.exception("[call %s] could not create the offer", call.call_id.hex()[:8])
            if call.machine.state is not CallState.ENDED:
                self._transition(call, CallInput.MEDIA_FAILED)
            raise ControlError("failed", f"could not set up media: {exc}") from None
        if call.machine.state is not CallState.DIALLING:
            return self._info(call)  # hung up while gathering
        call.offer_number = self._send(call, Kind.OFFER, sdp=sdp)
        return self._info(call)

    async def answer(self, call_id: bytes, *, play: str | None, record: str | None) -> None:
        """Answer a ringing incoming call (raise ``ControlError`` if it is not one)."""
        call = self._calls.get(call_id)
        if call is None:
            raise ControlError("not_found", "no such call")
        if call.machine.role is not CallRole.CALLEE or call.machine.state is not CallState.RINGING:
            raise ControlError("failed", f"call is {call.machine.state.value}, not ringing in")
        if call.answering:
            raise ControlError("failed", "call is being answered already")
        call.answering = True
        call.play, call.record = play, record
        call.dialled_at = self._loop.time()
        try:
            await self._accept_offer(call)
        except LocalProtocolError as exc:  # a --play file that does not exist, a bad tone
            call.answering = False
            await self._teardown_media(call)
            raise ControlError("bad_request", str(exc)) from None
        except Exception as exc:  # adapter boundary: aiortc/aioice can raise anything here
            logger.exception("[call %s] could not answer", call.call_id.hex()[:8])
            if self._state(call) is not CallState.ENDED:
                self._transition(call, CallInput.MEDIA_FAILED)
            raise ControlError("failed", f"could not set up media: {exc}") from None
        after = self._state(call)  # the awaits above may have changed it
        if after is CallState.RINGING:
            self._transition(call, CallInput.ANSWER)
        elif after is CallState.ENDED:
            await self._teardown_media(call)  # the caller gave up while we were setting up

    def hangup(self, call_id: bytes) -> None:
        """Hang up (or decline, if it rings in) a call; no-op for an ended one."""
        call = self._calls.get(call_id)
        if call is None or call.machine.state is CallState.ENDED:
            return
        ringing_in = call.machine.role is CallRole.CALLEE and call.machine.state is CallState.RINGING
        self._local(call, CallInput.DECLINE if ringing_in else CallInput.HANGUP)

    async def close(self) -> None:
        """Hang up every live call, close endpoints and relay sockets."""
        self._closed = True
        for call in list(self._calls.values()):
            if call.machine.state not in (CallState.ENDED, CallState.IDLE):
                with contextlib.suppress(CallStateError):
                    self._transition(call, CallInput.HANGUP)
        await cancel_and_wait(self._quality_task)
        for call in list(self._calls.values()):
            for t in list(call.tasks):
                t.cancel()
            await self._teardown_media(call)
        if self._timer is not None:
            self._timer.cancel()

    # ------------------------------------------------------------------ call internals

    @staticmethod
    def _state(call: _Call) -> CallState:
        # read through a call so that mypy does not keep a narrowing across an await
        return call.machine.state

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        # looked up on use, so the service can be built before the daemon's loop runs
        return asyncio.get_running_loop()

    def _remember(self, call: _Call) -> None:
        if self._quality_task is None and not self._closed and not self._running:
            self._quality_task = self._loop.create_task(self._sample_quality())
        self._calls[call.call_id] = call
        self._flows[(call.peer, call.flow_id)] = call
        ended = [c for c in self._calls.values() if c.machine.state is CallState.ENDED
                 and not c.outbox.pending]
        while len(self._calls) > HISTORY and ended:
            old = ended.pop(0)
            self._calls.pop(old.call_id, None)
            self._flows.pop((old.peer, old.flow_id), None)

    def _info(self, call: _Call) -> CallInfo:
        m = call.machine
        end = m.ended_at if m.ended_at is not None else self._loop.time()
        duration = round(end - m.answered_at, 3) if m.answered_at is not None else None
        setup = (round((call.first_audio_at - call.dialled_at) * 1000, 1)
                 if call.first_audio_at is not None else None)
        return CallInfo(call.call_id.hex(), call.peer.hex(), call.peer_name, m.role.value,
                        m.state.value, m.reason.value if m.reason else None, call.flow_id, duration,
                        setup, call.quality.to_json() if call.quality else None)

    def _spawn(self, call: _Call, coro: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:  # the adapter's outer boundary: aiortc can raise anything
                logger.exception("[call %s] media setup failed", call.call_id.hex()[:8])
                if call.machine.state is not CallState.ENDED:
                    with contextlib.suppress(CallStateError):
                        self._transition(call, CallInput.MEDIA_FAILED)
        task = self._loop.create_task(run())
        call.tasks.add(task)
        task.add_done_callback(call.tasks.discard)

    async def _new_endpoint(self, call: _Call) -> None:
        await self._teardown_media(call)
        await load_media()  # aiortc and PyAV, off the loop, by the node's first call
        label = f"[call {call.call_id.hex()[:8]}] "

        def forward(data: bytes, twice: bool, call: _Call = call) -> None:
            self._forward_media(call, data, twice)

        call.relay = await RelaySocket.open(self.relay_host, forward, drops=self.drops, label=label)
        generation = call.generation

        def on_state(state: str, call: _Call = call) -> None:
            self._on_endpoint_state(call, generation, state)

        # a re-offered call (generation > 0) keeps recording into the same file
        call.endpoint = Endpoint(play=call.play, record=call.record, on_state=on_state, label=label,
                                 append=call.generation > 0)

    async def _teardown_media(self, call: _Call) -> None:
        relay, endpoint = call.relay, call.endpoint
        call.relay = call.endpoint = None
        if relay is not None:
            relay.close()
        if endpoint is not None:
            if call.first_audio_at is None and endpoint.sink.first_frame_at is not None:
                call.first_audio_at = endpoint.sink.first_frame_at
            q = await endpoint.quality()
            if q.packets_received or q.packets_sent:
                call.quality = q
            await endpoint.close()

    async def _accept_offer(self, call: _Call) -> None:
        """Callee: build the endpoint for the stored offer and send the answer."""
        offer = call.offer_sdp
        assert offer is not None
        remote = ice_credentials(offer)
        await self._new_endpoint(call)
        assert call.relay is not None and call.endpoint is not None
        relay = call.relay
        relay.set_credentials(remote, None)
        answer = await call.endpoint.accept_offer(strip_and_add_relay(offer, *relay.address))
        relay.set_credentials(remote, ice_credentials(answer).ufrag)
        if call.machine.state not in (CallState.ENDED,):
            self._send(call, Kind.ANSWER, sdp=answer)

    async def _take_answer(self, call: _Call, sdp: str) -> None:
        """Caller: hand the endpoint the answer with our relay as its only candidate."""
        if call.endpoint is None or call.relay is None:
            return
        local = ice_credentials(call.endpoint.pc.localDescription.sdp)
        call.relay.set_credentials(ice_credentials(sdp), local.ufrag)
        await call.endpoint.accept_answer(strip_and_add_relay(sdp, *call.relay.address))

    async def _reoffer(self, call: _Call) -> None:
        call.generation += 1
        await self._new_endpoint(call)
        assert call.endpoint is not None
        sdp = await call.endpoint.create_offer()
        if call.machine.state is CallState.ACTIVE:
            if call.offer_number:
                call.outbox.ack(call.offer_number)
            call.offer_number = self._send(call, Kind.OFFER, sdp=sdp)
            logger.info("[call %s] media lost: re-offered (generation %d)", call.call_id.hex()[:8],
                        call.generation)

    def _on_endpoint_state(self, call: _Call, generation: int, state: str) -> None:
        if generation != call.generation or call.machine.state is not CallState.ACTIVE:
            return
        self._node.publish("call.media", {"call_id": call.call_id.hex(), "state": state})
        # aiortc closes the connection itself when ICE consent expires: a close we did not ask
        # for (ours bump the generation or end the call first) is a failure too; "stalled" is
        # our own watchdog (no audio for MEDIA_STALL_S)
        if state in ("failed", "closed", "stalled"):
            now = self._loop.time()
            if call.reoffer_since is None:
                call.reoffer_since = now
            if call.machine.role is CallRole.CALLER:
                call.reoffer_next = now
            self._arm()

    def _forward_media(self, call: _Call, data: bytes, twice: bool) -> None:
        try:
            payloads = call.framer.split(data)
        except ValueError:
            self.drops.drop("media-too-large", call.call_id.hex()[:8])
            return
        deadline = self._loop.time() + MEDIA_DEADLINE_S
        for _ in range(2 if twice else 1):
            for p in payloads:
                self._node.send_packet(call.peer, Service.MEDIA, p, flow_id=call.flow_id,
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
            call.relay.deliver(data)
            if call.first_audio_at is None and call.endpoint is not None \
                    and call.endpoint.sink.first_frame_at is not None:
                call.first_audio_at = call.endpoint.sink.first_frame_at
                self._node.publish("call.audio", {
                    "call_id": call.call_id.hex(), "setup_ms": self._info(call).setup_ms})

    # ------------------------------------------------------------------ signalling

    def _send(self, call: _Call, kind: Kind, *, sdp: str | None = None) -> int:
        number = call.outbox.next_number()
        msg = SigMessage(kind, call.call_id, number, sdp=sdp, generation=call.generation,
                         flow_id=call.flow_id)
        data = msg.encode()
        call.outbox.add(number, data, self._loop.time())
        self._send_sealed(call.peer, data)
        self._arm()
        return number

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
        if msg.kind is Kind.ACK:
            call = self._calls.get(msg.call_id)
            if call is not None and call.peer == pkt.source:
                call.outbox.ack(msg.acked)
            return
        self._send_sealed(pkt.source, SigMessage(Kind.ACK, msg.call_id, 0, acked=msg.number).encode())
        if not self._dedup.first_time(msg.call_id, msg.number):
            return
        call = self._calls.get(msg.call_id)
        if call is not None and call.peer != pkt.source:
            self.drops.drop("sig-wrong-peer", peer, "call id of another peer")
            return
        if call is None:
            if msg.kind is Kind.OFFER:
                self._incoming(pkt.source, msg, now)
            else:
                self.drops.drop("sig-unknown-call", peer, msg.kind.value)
            return
        self._remote(call, msg, now)

    def _incoming(self, source: NodeId, msg: SigMessage, now: float) -> None:
        ann = self._node.announcement_of(source)
        call = _Call(msg.call_id, source, ann.name if ann else "", CallMachine(CallRole.CALLEE, now),
                     msg.flow_id, offer_sdp=msg.sdp, generation=msg.generation,
                     framer=MediaFramer(self._node.max_payload))
        try:
            ice_credentials(msg.sdp or "")
        except RemoteProtocolError as exc:
            self.drops.drop(exc.reason, short_id(source), "offer")
            return
        self._remember(call)
        call.machine.process(CallInput.RECV_OFFER, now)
        live = sum(1 for c in self._calls.values()
                   if c.machine.state in (CallState.DIALLING, CallState.RINGING, CallState.ACTIVE))
        if live > self.max_calls or self._closed:
            self._transition(call, CallInput.REFUSE_BUSY)
            return
        self._send(call, Kind.RINGING)
        self._node.publish("call.incoming", {
            **self._info(call).to_json(), "auto_answer": self.auto_answer})
        self._publish_state(call)
        if self.auto_answer:
            self._spawn(call, self.answer(call.call_id, play=self.answer_play,
                                          record=self.answer_record))

    def _remote(self, call: _Call, msg: SigMessage, now: float) -> None:
        state = call.machine.state
        if state is CallState.ENDED:
            return
        try:
            tr = call.machine.process(_RECV[msg.kind], now)
        except CallStateError as exc:
            self.drops.drop("sig-state", short_id(call.peer), str(exc))
            return
        if msg.kind is Kind.OFFER and state is CallState.ACTIVE and msg.generation > call.generation:
            # the caller re-offers after media was lost
            call.generation = msg.generation
            call.offer_sdp = msg.sdp
            call.reoffer_since = None
            self._spawn(call, self._accept_offer(call))
        elif msg.kind is Kind.ANSWER and call.machine.role is CallRole.CALLER \
                and msg.generation == call.generation and msg.sdp is not None:
            call.outbox.ack(call.offer_number)
            call.reoffer_since = call.reoffer_next = None
            self._spawn(call, self._take_answer(call, msg.sdp))
        if tr.after is not tr.before:
            self._publish_state(call)
            if tr.after is CallState.ENDED:
                self._ended(call)

    def _local(self, call: _Call, event: CallInput) -> None:
        try:
            self._transition(call, event)
        except CallStateError as exc:
            raise ControlError("failed", str(exc)) from None

    def _transition(self, call: _Call, event: CallInput) -> None:
        tr = call.machine.process(event, self._loop.time())
        if tr.after is tr.before:
            return
        self._publish_state(call)
        if tr.after is CallState.ENDED:
            assert tr.reason is not None
            kind = _FINAL.get(tr.reason)
            call.outbox.clear()
            if kind is not None and tr.before is not CallState.IDLE:
                call.final_number = self._send(call, kind)
            self._ended(call)

    def _ended(self, call: _Call) -> None:
        if call.machine.reason is not EndReason.HUNG_UP_LOCAL and call.final_number == 0:
            call.outbox.clear()

        async def finish() -> None:
            await self._teardown_media(call)
            self._node.publish("call.ended", self._info(call).to_json())

        self._spawn(call, finish())
        self._arm()

    def _publish_state(self, call: _Call) -> None:
        self._node.publish("call.state", self._info(call).to_json())

    # ------------------------------------------------------------------ timers

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadlines: list[float] = []
        for call in self._calls.values():
            for t in (call.machine.get_timer(), call.outbox.get_timer(), call.reoffer_next):
                if t is not None:
                    deadlines.append(t)
            if call.reoffer_since is not None and call.machine.role is CallRole.CALLEE:
                deadlines.append(call.reoffer_since + REOFFER_GIVE_UP_S)
        if deadlines and not self._closed:
            self._timer = self._loop.call_at(min(deadlines), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        for call in list(self._calls.values()):
            resend, failed = call.outbox.due(now)
            for _n, data in resend:
                self._send_sealed(call.peer, data)
            if failed and call.machine.state is not CallState.ENDED:
                if call.reoffer_since is not None and call.machine.role is CallRole.CALLER:
                    call.reoffer_next = now + REOFFER_RETRY_S  # the re-offer was lost: try again
                else:
                    with contextlib.suppress(CallStateError):
                        self._transition(call, CallInput.SEND_FAILED)
            tr = call.machine.handle_timer(now)
            if tr is not None and tr.after is CallState.ENDED:
                call.outbox.clear()
                if tr.reason is EndReason.TIMEOUT:
                    call.final_number = self._send(call, Kind.TIMEOUT)
                self._publish_state(call)
                self._ended(call)
            self._reoffer_tick(call, now)
        self._arm()

    def _reoffer_tick(self, call: _Call, now: float) -> None:
        if call.reoffer_since is None or call.machine.state is not CallState.ACTIVE:
            return
        if now >= call.reoffer_since + REOFFER_GIVE_UP_S:
            call.reoffer_since = call.reoffer_next = None
            with contextlib.suppress(CallStateError):
                self._transition(call, CallInput.MEDIA_FAILED)
            return
        if call.machine.role is CallRole.CALLER and call.reoffer_next is not None \
                and now >= call.reoffer_next:
            if self._node.announcement_of(call.peer) is None or not self._probe_route(call):
                call.reoffer_next = now + REOFFER_RETRY_S
                return
            call.reoffer_next = None
            self._spawn(call, self._reoffer(call))

    def _probe_route(self, call: _Call) -> bool:
        # an empty media packet: the far side counts and drops it; True if a route exists
        return self._node.send_packet(call.peer, Service.MEDIA, b"\x02", flow_id=call.flow_id)

    async def _sample_quality(self) -> None:
        while True:
            await asyncio.sleep(QUALITY_EVERY_S)
            for call in list(self._calls.values()):
                ep = call.endpoint
                if ep is not None and call.machine.state is CallState.ACTIVE:
                    call.quality = await ep.quality()
                    self._check_media(call, ep)

    def _check_media(self, call: _Call, ep: Endpoint) -> None:
        """Audio that stopped arriving for ``MEDIA_STALL_S`` fails the media like ICE would."""
        last = ep.sink.last_frame_at
        if last is None or call.reoffer_since is not None or call.endpoint is not ep:
            return
        if self._loop.time() - last >= MEDIA_STALL_S:
            logger.info("[call %s] no audio for %.1f s: media failed", call.call_id.hex()[:8],
                        self._loop.time() - last)
            self._on_endpoint_state(call, call.generation, "stalled")


def _opt_str(params: dict[str, Any], key: str) -> str | None:
    v = params.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ControlError("bad_request", f"{key} must be a string")
    if key in ("play", "record") and not (v.startswith("tone:") or v in ("mic", "speaker", "silence")):
        return os.path.abspath(v)
    return v
