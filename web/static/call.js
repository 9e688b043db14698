// carmesh web app: calls from this browser, WebRTC end to end through the car mesh.
//
// Signalling goes over /call/ws to the car that serves the page (see web/calls.py); the car
// carries it over the mesh, sealed.  Media goes from this browser's RTCPeerConnection to
// the one candidate the car puts in the far SDP: a UDP socket of the car, which relays
// the packets over the mesh without decrypting them (DTLS-SRTP stays end to end).
// iceServers is empty: nothing outside the mesh is ever asked.  The DTLS fingerprints of
// this browser's SDP are signed with its own Ed25519 key (identity.js); the far end checks
// the signature, so no car can swap them.  The far side's offer or answer comes signed by
// the far node's key (and the far browser's, if one made it); callcheck.js checks it
// against the NodeId called or ringing, and a mismatch hangs up before any media flows.
// Text reaches the page through textContent only.
import { hex, identity, openDb, sign } from "/static/identity.js";
import { checkFar, fingerprintMessage } from "/static/callcheck.js";

const root = document.getElementById("call");
// the remote voice with the speaker off where the browser offers no choice of output: an
// earpiece-level volume (the phone held to the ear), full volume with the speaker on
const EARPIECE_VOLUME = 0.3;
const SPEAKER_LABEL = /speaker|スピーカー/i;
const EARPIECE_LABEL = /earpiece|receiver|handset|受話/i;

const WORDS = {
  ja: {
    ready: "発信できます", noIdentity: "このブラウザでは通話できません", connecting: "接続中…",
    dialling: "発信中…", ringing: "呼び出し中…", active: "通話中", incoming: "着信中…",
    busy: "話し中です", declined: "拒否されました", unreachable: "相手につながりません",
    timeout: "応答がありません（時間切れ）", "hung up": "通話を終了しました",
    "hung up by peer": "相手が通話を終了しました", cancelled: "発信を取り消しました",
    missed: "不在着信", failed: "通話できませんでした", error: "エラー", offline: "車との接続が切れました",
    rtt: "往復", loss: "損失", refused: (who) => `指紋が ${who} の署名と合わないため切断しました`,
    verifiedNode: "エンドツーエンド暗号化：相手の端末の鍵で確認済み", verifiedKey: "エンドツーエンド暗号化：相手の鍵",
  },
  en: {
    ready: "Ready to call", noIdentity: "This browser cannot make calls", connecting: "Connecting…",
    dialling: "Calling…", ringing: "Ringing…", active: "In call", incoming: "Incoming call…",
    busy: "Busy", declined: "Declined", unreachable: "Unreachable",
    timeout: "No answer (timeout)", "hung up": "Call ended",
    "hung up by peer": "The other side hung up", cancelled: "Call cancelled",
    missed: "Missed call", failed: "Call failed", error: "Error", offline: "Lost the car",
    rtt: "RTT", loss: "loss", refused: (who) => `Hung up: fingerprint not signed by ${who}`,
    verifiedNode: "End-to-end encrypted; checked against the node's own key", verifiedKey: "End-to-end encrypted; far key",
  },
};

function randomHex(n) {
  return hex(crypto.getRandomValues(new Uint8Array(n)));
}

class CallPage {
  constructor(el) {
    this.el = el;
    this.w = WORDS[el.dataset.lang] || WORDS.en;
    this.node = el.dataset.node;
    this.$ = (id) => document.getElementById(id);
    this.stateEl = this.$("call-state");
    this.qualityEl = this.$("call-quality");
    this.dial = this.$("call-dial");
    this.hangup = this.$("call-hangup");
    this.mute = this.$("call-mute");
    this.speaker = this.$("call-speaker");
    this.speakerOn = false;
    this.banner = this.$("call-incoming");
    this.audio = this.$("call-audio");
    this.level = this.$("call-level");
    this.me = null;
    this.ws = null;
    this.call = null; // {id, pc, local, startedAt}
    this.incoming = null; // call id ringing here
    this.incomingPeer = null; // the NodeId it rings from (its offer must be signed by it)
    // Answer in the banner of another page (ring.js) opens this page with ?answer=CALL
    const asked = new URLSearchParams(location.search).get("answer");
    this.pendingAnswer = asked && /^[0-9a-f]{32}$/.test(asked) ? asked : null;
    // a phone may keep the audio context suspended until the page is touched
    document.addEventListener("click", () => { if (this.ctx) this.ctx.resume().catch(() => {}); });
    this.dial.addEventListener("click", () => this.startCall().catch((e) => this.fail(e)));
    this.hangup.addEventListener("click", () => this.end("hangup"));
    this.mute.addEventListener("click", () => this.toggleMute());
    this.speaker.addEventListener("click", () => {
      this.speakerOn = !this.speakerOn;
      this.applySpeaker().catch(() => {});
    });
    this.$("call-answer").addEventListener("click", () => this.answer().catch((e) => this.fail(e)));
    this.$("call-decline").addEventListener("click", () => this.decline());
  }

  show(state, text, reason) {
    this.stateEl.textContent = text;
    this.stateEl.dataset.state = state;
    if (reason) this.stateEl.dataset.reason = reason;
    else delete this.stateEl.dataset.reason;
    delete this.stateEl.dataset.why;
  }

  fail(e) {
    this.show("error", `${this.w.error}: ${e.message || e}`);
    this.cleanup();
  }

  async start() {
    try {
      this.me = await identity(await openDb());
    } catch (e) {
      this.show("unsupported", `${this.w.noIdentity} (${e.message || e})`);
      return;
    }
    this.connect();
  }

  connect() {
    this.show("connecting", this.w.connecting);
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/call/ws`);
    ws.addEventListener("open", () => {
      this.ws = ws;
      this.dial.disabled = false;
      this.show("idle", this.w.ready);
      if (this.pendingAnswer && !this.call) {
        this.incoming = this.pendingAnswer;
        this.incomingPeer = this.node; // ring.js opened /call/<the ringing node's id>
        this.pendingAnswer = null;
        history.replaceState(null, "", location.pathname);
        this.answer().catch((e) => this.fail(e));
      }
    });
    ws.addEventListener("message", (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      this.onMessage(m).catch((e) => this.fail(e));
    });
    ws.addEventListener("close", () => {
      this.ws = null;
      this.dial.disabled = true;
      if (this.call) this.cleanup();
      this.show("offline", this.w.offline);
      setTimeout(() => this.connect(), 3000);
    });
  }

  send(m) {
    if (this.ws) this.ws.send(JSON.stringify(m));
  }

  async sign(callId, kind, sdp) {
    const sig = await sign(this.me, fingerprintMessage(callId, kind, sdp));
    return { key: hex(this.me.pub), sig: hex(sig) };
  }

  async newPeer(callId) {
    // the context is made in the click (a user gesture), so it runs
    this.ctx = this.ctx || new AudioContext();
    const pc = new RTCPeerConnection({ iceServers: [] });
    const local = await navigator.mediaDevices.getUserMedia({ audio: true });
    for (const t of local.getTracks()) pc.addTrack(t, local);
    pc.addEventListener("track", (ev) => this.onTrack(ev));
    pc.addEventListener("connectionstatechange", () => {
      const c = this.call;
      if (c && c.pc === pc && pc.connectionState === "connected" && !this.el.dataset.connectedMs) {
        this.el.dataset.connectedMs = String(Math.round(performance.now() - c.startedAt));
      }
    });
    this.call = { id: callId, pc, local, startedAt: performance.now(), heard: false };
    for (const k of ["connectedMs", "answerMs", "heardMs", "carSetupMs", "maxGapMs", "verified", "verifiedNode"]) delete this.el.dataset[k];
    this.$("call-verified").hidden = true;
    this.stats = setInterval(() => this.quality(), 1000);
    this.speakerOn = false; // each call starts at the ear
    await this.applySpeaker();
    return pc;
  }

  async startCall() {
    if (this.call || !this.ws) return;
    this.dial.disabled = true;
    const callId = randomHex(16);
    const pc = await this.newPeer(callId);
    await pc.setLocalDescription(await pc.createOffer());
    const sdp = pc.localDescription.sdp;
    this.show("dialling", this.w.dialling);
    this.buttons(true);
    this.send({ t: "dial", node: this.node, call_id: callId, sdp, ...(await this.sign(callId, "offer", sdp)) });
  }

  async answer() {
    if (!this.incoming || this.call) return;
    this.banner.hidden = true;
    const callId = this.incoming;
    const peer = this.incomingPeer;
    this.incoming = this.incomingPeer = null;
    await this.newPeer(callId);
    this.call.expect = peer;
    this.buttons(true);
    this.send({ t: "offer", call_id: callId });
  }

  decline() {
    if (!this.incoming) return;
    this.send({ t: "decline", call_id: this.incoming });
    this.incoming = null;
    this.banner.hidden = true;
  }

  end(kind) {
    if (!this.call) return;
    this.send({ t: kind, call_id: this.call.id });
  }

  toggleMute() {
    if (!this.call) return;
    const tracks = this.call.local.getAudioTracks();
    const muted = tracks.length && tracks[0].enabled;
    for (const t of tracks) t.enabled = !muted;
    this.mute.textContent = muted ? this.mute.dataset.unmute : this.mute.dataset.mute;
    this.mute.setAttribute("aria-pressed", muted ? "true" : "false");
  }

  // Speaker on: the loudspeaker output where the browser lets the page choose one
  // (setSinkId), at full volume; off: the earpiece output if there is one, else the same
  // output at an earpiece-level volume.  The state is aria-pressed (and data-sink/volume).
  async applySpeaker() {
    const on = this.speakerOn;
    this.speaker.setAttribute("aria-pressed", on ? "true" : "false");
    let sink = null;
    let earpiece = false;
    if (typeof this.audio.setSinkId === "function" && navigator.mediaDevices.enumerateDevices) {
      const outs = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audiooutput");
      const ear = outs.find((d) => EARPIECE_LABEL.test(d.label))
        || outs.find((d) => d.deviceId === "communications");
      const loud = outs.find((d) => SPEAKER_LABEL.test(d.label));
      const fallback = outs.find((d) => d.deviceId === "default") || outs[0];
      const pick = (on ? loud : ear) || fallback;
      earpiece = !on && pick !== undefined && pick === ear;
      if (pick && this.speakerOn === on) {
        try {
          await this.audio.setSinkId(pick.deviceId);
          sink = pick.deviceId;
        } catch {
          sink = null; // not allowed here: the volume alone tells ear from speaker
        }
      }
    }
    if (this.speakerOn !== on) return; // pressed again meanwhile: that press applies
    this.audio.volume = on || (earpiece && sink !== null) ? 1.0 : EARPIECE_VOLUME;
    this.speaker.dataset.sink = sink === null ? "" : sink;
    this.speaker.dataset.earpiece = earpiece && sink !== null ? "1" : "";
    this.speaker.dataset.volume = String(this.audio.volume);
  }

  buttons(inCall) {
    this.dial.hidden = inCall;
    this.hangup.hidden = !inCall;
    this.mute.hidden = !inCall;
    this.speaker.hidden = !inCall;
  }

  async onMessage(m) {
    const c = this.call;
    if (m.t === "incoming") {
      if (c || this.incoming) return; // busy here: the car's own limit answers busy
      this.incoming = m.call_id;
      this.incomingPeer = m.peer;
      this.$("call-incoming-peer").textContent = m.peer_name || (m.peer || "").slice(0, 8);
      this.banner.hidden = false;
      this.show("incoming", this.w.incoming);
      if (navigator.vibrate) navigator.vibrate([300, 200, 300]);
      return;
    }
    if (m.t === "state" && m.call_id === this.incoming && m.state === "ended") {
      this.incoming = null; // the caller gave up
      this.banner.hidden = true;
      this.show("ended", this.w[m.reason] || m.reason, m.reason);
      return;
    }
    if (!c || m.call_id !== c.id) {
      if (m.t === "error") this.show("error", `${this.w.error}: ${m.message}`);
      return;
    }
    if (m.t === "answer") {
      if (!(await this.checked(c, "answer", m, this.node))) return;
      await c.pc.setRemoteDescription({ type: "answer", sdp: m.sdp });
    } else if (m.t === "offer") {
      if (!(await this.checked(c, "offer", m, c.expect || this.node))) return;
      await c.pc.setRemoteDescription({ type: "offer", sdp: m.sdp });
      await c.pc.setLocalDescription(await c.pc.createAnswer());
      const sdp = c.pc.localDescription.sdp;
      this.send({ t: "answer", call_id: c.id, sdp, ...(await this.sign(c.id, "answer", sdp)) });
    } else if (m.t === "audio") {
      if (m.setup_ms != null) this.el.dataset.carSetupMs = String(m.setup_ms);
    } else if (m.t === "state") {
      if (m.state === "ended") {
        const text = this.w[m.reason] || m.reason;
        this.show("ended", m.detail ? `${text}: ${m.detail}` : text, m.reason);
        this.cleanup();
      } else if (m.state) {
        if (m.state === "active" && m.answer_ms != null) this.el.dataset.answerMs = String(m.answer_ms);
        this.show(m.state, this.w[m.state] || m.state);
      }
    } else if (m.t === "error") {
      this.cleanup();
      if (m.code === "unreachable") this.show("ended", this.w.unreachable, "unreachable");
      else this.show("error", `${this.w.error}: ${m.message}`);
    }
  }

  // the far SDP's fingerprints, signed by the node ``expect`` (and by the far browser, if
  // one made it: callcheck.js); if not, hang up before any media: a car swapped them
  async checked(c, kind, m, expect) {
    const r = await checkFar(c.id, kind, m, expect);
    if (!r.ok) { // the call fails at both ends ("failed", not hung up or declined)
      this.send({ t: "refuse", call_id: c.id, why: r.why });
      this.cleanup();
      this.show("refused", this.w.refused(m.name || expect || "?"), "fingerprint");
      this.stateEl.dataset.why = r.why;
      return false;
    }
    this.el.dataset.verified = r.who;
    this.el.dataset.verifiedNode = r.node;
    const v = this.$("call-verified");
    v.textContent = r.who === "node" ? `${this.w.verifiedNode} ${r.node.slice(0, 16)}`
      : `${this.w.verifiedKey} ${m.key.slice(0, 16)} (${r.node.slice(0, 16)})`;
    v.hidden = false;
    return true;
  }

  onTrack(ev) {
    const stream = ev.streams[0] || new MediaStream([ev.track]);
    this.audio.srcObject = stream;
    this.audio.play().catch(() => {});
    // read the remote stream itself: createMediaElementSource(<audio>) reads silence
    const src = this.ctx.createMediaStreamSource(stream);
    const an = this.ctx.createAnalyser();
    an.fftSize = 8192;
    src.connect(an);
    const freq = new Float32Array(an.frequencyBinCount);
    const time = new Float32Array(an.fftSize);
    const binHz = this.ctx.sampleRate / an.fftSize;
    let lastHz = 0;
    let steady = 0;
    this.meter = setInterval(() => {
      an.getFloatTimeDomainData(time);
      let sum = 0;
      for (const v of time) sum += v * v;
      const rms = Math.sqrt(sum / time.length);
      an.getFloatFrequencyData(freq);
      let best = Math.ceil(50 / binHz);
      for (let i = best; i < freq.length; i++) if (freq[i] > freq[best]) best = i;
      const hz = Math.round(best * binHz);
      steady = rms >= 0.01 && Math.abs(hz - lastHz) <= 10 ? steady + 1 : 0;
      lastHz = hz;
      this.level.value = Math.min(1, rms * 4);
      Object.assign(this.level.dataset, { hz: String(hz), rms: rms.toFixed(4), steady: String(steady) });
      const c = this.call;
      const now = performance.now();
      if (c && !c.heard && rms >= 0.01) {
        c.heard = true;
        this.el.dataset.heardMs = String(Math.round(now - c.startedAt));
      }
      // the longest silence since the first sound (a reroute shows here), in 200 ms steps
      if (c && c.heard) {
        if (rms < 0.01) c.silentSince = c.silentSince || now;
        else if (c.silentSince) {
          const gap = Math.round(now - c.silentSince);
          c.silentSince = 0;
          if (gap > Number(this.el.dataset.maxGapMs || 0)) this.el.dataset.maxGapMs = String(gap);
        }
      }
    }, 200);
  }

  async quality() {
    const c = this.call;
    if (!c) return;
    let rtt = null, lost = 0, got = 0, concealedS = 0;
    (await c.pc.getStats()).forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime != null) rtt = s.currentRoundTripTime;
      if (s.type === "inbound-rtp" && s.kind === "audio") {
        lost += s.packetsLost || 0;
        got += s.packetsReceived || 0;
        // samples the receiver made up for audio that did not come (its own timeline)
        if (s.totalSamplesDuration > 0 && s.totalSamplesReceived > 0) {
          concealedS += (s.concealedSamples || 0) * s.totalSamplesDuration / s.totalSamplesReceived;
        }
      }
    });
    if (rtt == null && !got) return;
    const loss = got + lost ? (100 * lost) / (got + lost) : 0;
    this.qualityEl.hidden = false;
    this.qualityEl.textContent = `${this.w.rtt} ${rtt == null ? "—" : Math.round(rtt * 1000)} ms · ${this.w.loss} ${loss.toFixed(1)} %`;
    this.qualityEl.dataset.rttMs = rtt == null ? "" : String(Math.round(rtt * 1000));
    this.qualityEl.dataset.lossPct = loss.toFixed(2);
    // what this browser's receiver counted: packets lost (by RTP sequence number; a jump of
    // more than about a second is taken for a restart and not counted) and the audio it
    // concealed, in ms of its own timeline (a reroute's gap shows there)
    this.qualityEl.dataset.lost = String(lost);
    this.qualityEl.dataset.received = String(got);
    this.qualityEl.dataset.concealedMs = String(Math.round(1000 * concealedS));
  }

  cleanup() {
    const c = this.call;
    this.call = null;
    clearInterval(this.stats);
    clearInterval(this.meter);
    if (c) {
      for (const t of c.local.getTracks()) t.stop();
      c.pc.close();
    }
    this.audio.srcObject = null;
    this.buttons(false);
    this.dial.disabled = !this.ws;
  }
}

if (root) new CallPage(root).start();
