// carmesh web app: an incoming call rings on every page (the call page does it itself).
//
// Listens on /call/ws; a call that rings this car shows a banner with Answer (opens the
// call page, which answers it: WebRTC lives there) and Decline, vibrates where the phone
// can, and beeps where the browser lets a page make sound.  Text via textContent only.
const WORDS = {
  ja: { incoming: "着信", answer: "応答", decline: "拒否" },
  en: { incoming: "Incoming call", answer: "Answer", decline: "Decline" },
};

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

class Ringer {
  constructor() {
    this.w = WORDS[document.documentElement.lang] || WORDS.en;
    this.ws = null;
    this.ringing = null; // call id
    this.banner = null;
    this.beeper = null;
  }

  connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/call/ws`);
    ws.addEventListener("open", () => {
      this.ws = ws;
      document.documentElement.dataset.ring = "ready";
    });
    ws.addEventListener("message", (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      if (m.t === "incoming" && !this.ringing) this.ring(m);
      else if (m.t === "state" && m.call_id === this.ringing && m.state === "ended") this.stop();
    });
    ws.addEventListener("close", () => {
      this.ws = null;
      delete document.documentElement.dataset.ring;
      this.stop();
      setTimeout(() => this.connect(), 5000);
    });
  }

  ring(m) {
    this.ringing = m.call_id;
    const b = el("div", "ring");
    b.id = "ring";
    b.setAttribute("role", "alert");
    const who = el("p", "", `${this.w.incoming}: `);
    who.append(el("strong", "", m.peer_name || String(m.peer || "").slice(0, 8)));
    const answer = el("a", "ring-answer", this.w.answer);
    answer.id = "ring-answer";
    answer.href = `/call/${encodeURIComponent(m.peer)}?answer=${encodeURIComponent(m.call_id)}`;
    const decline = el("button", "ring-decline", this.w.decline);
    decline.id = "ring-decline";
    decline.type = "button";
    decline.addEventListener("click", () => {
      if (this.ws) this.ws.send(JSON.stringify({ t: "decline", call_id: this.ringing }));
      this.stop();
    });
    b.append(who, answer, decline);
    document.body.prepend(b);
    this.banner = b;
    if (navigator.vibrate) navigator.vibrate([400, 200, 400, 200, 400]);
    this.beep();
  }

  beep() {
    try {
      const ctx = new AudioContext();
      if (ctx.state !== "running") return; // no sound before the user touched the page
      const tone = () => {
        const o = ctx.createOscillator();
        const g = ctx.createGain();
        o.frequency.value = 880;
        g.gain.value = 0.2;
        o.connect(g).connect(ctx.destination);
        o.start();
        o.stop(ctx.currentTime + 0.4);
      };
      tone();
      this.beeper = setInterval(tone, 1500);
      this.ctx = ctx;
    } catch {
      // a page without WebAudio still shows the banner
    }
  }

  stop() {
    this.ringing = null;
    clearInterval(this.beeper);
    if (this.ctx) this.ctx.close().catch(() => {});
    this.ctx = null;
    if (this.banner) this.banner.remove();
    this.banner = null;
  }
}

if (!document.getElementById("call") && "WebSocket" in window) new Ringer().connect();
