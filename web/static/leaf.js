// carmesh web app: this browser as a leaf of the mesh — its X25519 key, attachment to the car,
// and sealed messages made and opened here (the car forwards ciphertext it cannot read).
//
// Keys: the Ed25519 key of identity.js (signing) and an X25519 key made here with WebCrypto
// (agreement; the private key is not extractable), both in IndexedDB.  The browser's NodeId is
// SHA-256(ed25519 ‖ x25519)[:16], as every node's (meshd/core/identity.py).
//
// Sealing is meshd/core/seal.py byte for byte: an ephemeral X25519 key, HKDF-SHA256 (salt =
// ephemeral public ‖ recipient public, info = "carmesh/seal/1\0" ‖ context), ChaCha20-Poly1305
// (vendored @noble/ciphers; WebCrypto has no ChaCha) with a zero nonce under that fresh key,
// over an inner MessagePack map {ed, x, t, id, b, s}; s = Ed25519 over (domain ‖ context ‖ 0 ‖
// recipient NodeId ‖ ephemeral public ‖ t as u64 ‖ id ‖ body).  Opening checks that the
// sender's keys hash to the packet source the car reports and the signature.
//
// Attachment (docs/protocols.md, "Leaves"): the car gives a fresh challenge; the browser signs a
// node announcement of its own naming the car as gateway, and a proof over the challenge; the
// car then routes the browser's NodeId to itself.  Messages, conversations and their states are
// kept in IndexedDB only: the car never sees plaintext.  Text reaches pages through textContent.

import { chacha20poly1305 } from "./vendor/noble-ciphers/chacha.js";
import { hex, identity, pack, setCarTime, sign, signEphemeral, Unsupported, verify } from "./identity.js";

const utf8 = new TextEncoder();
const DB_NAME = "carmesh";
const STORE = "identity";
const LEAF = "leaf";
const MAIL = "mail";
const SEAL_DOMAIN = utf8.encode("carmesh/seal/1\0");
const ANNOUNCE_DOMAIN = utf8.encode("carmesh/announce/1\0");
const ATTACH_DOMAIN = utf8.encode("carmesh/leaf-attach/1\0");
const SEND_DOMAIN = utf8.encode("carmesh/leaf-send/1\0");
const MSG = utf8.encode("msg");
const MAIL_CONTEXT = utf8.encode("mail");
// mail lives at most 7 days (library_replica/mail.py); a little less, for a phone clock ahead
const MAIL_LIFETIME_MS = 7 * 24 * 3600_000 - 10 * 60_000;
const ZERO_NONCE = new Uint8Array(12);
const MAX_MAIL = 1000;
const MAX_SEALED = 64 * 1024;
// re-attach after this long (a car keeps an attachment for an hour: docs/protocols.md)
const REATTACH_MS = 5 * 60_000;
const ATTACHED_KEY = "carmesh-leaf-attached";
let skewMs = 0;

export { Unsupported };

// ---------------------------------------------------------------- bytes

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

export function unhex(s) {
  if (typeof s !== "string" || s.length % 2 || /[^0-9a-f]/i.test(s)) throw new Error("bad hex");
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
  return out;
}

function u64(n) {
  const out = new Uint8Array(8);
  let v = BigInt(n);
  for (let i = 7; i >= 0; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export async function nodeIdOf(ed, x) {
  return (await sha256(concat(ed, x))).subarray(0, 16);
}

// MessagePack decoding, strict and bounded: maps with string keys, str, bin, unsigned ints,
// nil, bools, arrays; anything else (or trailing bytes) is refused.
export function unpack(data, maxItems = 64) {
  let i = 0;
  let items = 0;
  const dec = new TextDecoder("utf-8", { fatal: true });
  const need = (n) => {
    if (i + n > data.length) throw new Error("truncated");
  };
  const uint = (n) => {
    need(n);
    let v = 0n;
    for (let k = 0; k < n; k++) v = (v << 8n) | BigInt(data[i++]);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const bytes = (n) => {
    need(n);
    const out = data.slice(i, i + n);
    i += n;
    return out;
  };
  const one = (depth) => {
    if (++items > maxItems || depth > 4) throw new Error("too deep or too many items");
    need(1);
    const t = data[i++];
    if (t < 0x80) return t;
    if (t >= 0x80 && t <= 0x8f) return map(t & 0x0f, depth);
    if (t >= 0x90 && t <= 0x9f) return arr(t & 0x0f, depth);
    if (t >= 0xa0 && t <= 0xbf) return dec.decode(bytes(t & 0x1f));
    switch (t) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bytes(uint(1));
      case 0xc5: return bytes(uint(2));
      case 0xc6: return bytes(uint(4));
      case 0xcc: return uint(1);
      case 0xcd: return uint(2);
      case 0xce: return uint(4);
      case 0xcf: return uint(8);
      case 0xd9: return dec.decode(bytes(uint(1)));
      case 0xda: return dec.decode(bytes(uint(2)));
      case 0xdb: return dec.decode(bytes(uint(4)));
      case 0xdc: return arr(uint(2), depth);
      case 0xde: return map(uint(2), depth);
      default: throw new Error(`unsupported MessagePack type 0x${t.toString(16)}`);
    }
  };
  const map = (n, depth) => {
    const out = Object.create(null);
    for (let k = 0; k < n; k++) {
      const key = one(depth + 1);
      if (typeof key !== "string") throw new Error("map key is not a string");
      out[key] = one(depth + 1);
    }
    return out;
  };
  const arr = (n, depth) => {
    const out = [];
    for (let k = 0; k < n; k++) out.push(one(depth + 1));
    return out;
  };
  const v = one(0);
  if (i !== data.length) throw new Error("trailing bytes");
  return v;
}

function field(m, key, check) {
  const v = m[key];
  if (!check(v)) throw new Error(`sealed message: bad field ${key}`);
  return v;
}
const isBytes = (n) => (v) => v instanceof Uint8Array && (n === undefined || v.length === n);

// ---------------------------------------------------------------- storage

function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

export async function openDb() {
  const r = indexedDB.open(DB_NAME, 1);
  r.onupgradeneeded = () => r.result.createObjectStore(STORE);
  return request(r);
}

async function get(db, key) {
  return request(db.transaction(STORE).objectStore(STORE).get(key));
}

async function put(db, key, value) {
  const tx = db.transaction(STORE, "readwrite");
  tx.objectStore(STORE).put(value, key);
  await new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

function locked(name, fn) {
  if (navigator.locks) return navigator.locks.request(name, fn);
  return fn();
}

// ---------------------------------------------------------------- keys

// { ed: identity record (Ed25519), x: {privateKey, pub}, id: NodeId, leaf: stored leaf record }
export async function keys(db) {
  const me = await identity(db);
  const leaf = await locked("carmesh-leaf", async () => {
    let rec = await get(db, LEAF);
    if (!rec) {
      let pair;
      try {
        pair = await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
      } catch (e) {
        throw new Unsupported(`X25519: ${e}`);
      }
      const pub = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
      rec = { v: 1, xPrivate: pair.privateKey, xpub: pub, seq: 0, name: "" };
      await put(db, LEAF, rec);
    }
    return rec;
  });
  return { me, leaf, id: await nodeIdOf(me.pub, leaf.xpub) };
}


async function agree(privateKey, pub) {
  const key = await crypto.subtle.importKey("raw", pub, { name: "X25519" }, false, []);
  return new Uint8Array(await crypto.subtle.deriveBits({ name: "X25519", public: key },
                                                       privateKey, 256));
}

async function sealKey(shared, ephPub, rcptPub, context) {
  const ikm = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
  return new Uint8Array(await crypto.subtle.deriveBits(
    { name: "HKDF", hash: "SHA-256", salt: concat(ephPub, rcptPub),
      info: concat(SEAL_DOMAIN, context) }, ikm, 256));
}

function signedPart(context, recipient, ephPub, ts, mid, body) {
  return concat(SEAL_DOMAIN, context, [0], recipient, ephPub, u64(ts), mid, body);
}

// meshd.core.seal.seal: ``body`` sealed to (rcptX, rcptId) by this browser
export async function seal(k, rcptX, rcptId, body, { context = MSG, timestampMs } = {}) {
  const eph = await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"]);
  const ephPub = new Uint8Array(await crypto.subtle.exportKey("raw", eph.publicKey));
  const shared = await agree(eph.privateKey, rcptX);
  const ts = timestampMs ?? Math.round(Date.now() + skewMs);
  const mid = crypto.getRandomValues(new Uint8Array(12));
  const sig = await sign(k.me, signedPart(context, rcptId, ephPub, ts, mid, body));
  const inner = pack({ ed: k.me.pub, x: k.leaf.xpub, t: ts, id: mid, b: body, s: sig });
  const key = await sealKey(shared, ephPub, rcptX, context);
  return concat(ephPub, chacha20poly1305(key, ZERO_NONCE).encrypt(inner));
}

// meshd.core.seal.open_sealed: decrypt and verify, or throw
export async function openSealed(k, data, source, { context = MSG } = {}) {
  if (data.length > MAX_SEALED || data.length < 48) throw new Error("sealed message: size");
  const ephPub = data.subarray(0, 32);
  let inner;
  try {
    const key = await sealKey(await agree(k.leaf.xPrivate, ephPub), ephPub, k.leaf.xpub, context);
    inner = chacha20poly1305(key, ZERO_NONCE).decrypt(data.subarray(32));
  } catch (e) {
    throw new Error("sealed message did not decrypt");
  }
  const m = unpack(inner);
  const ed = field(m, "ed", isBytes(32));
  const x = field(m, "x", isBytes(32));
  const t = field(m, "t", (v) => Number.isSafeInteger(v) && v >= 0);
  const id = field(m, "id", isBytes(12));
  const body = field(m, "b", isBytes());
  const sig = field(m, "s", isBytes(64));
  const sender = await nodeIdOf(ed, x);
  if (!equal(sender, source)) throw new Error("sealed sender is not the packet source");
  if (!(await verify(ed, sig, signedPart(context, k.id, ephPub, t, id, body)))) {
    throw new Error("sealed message signature");
  }
  return { sender, ed, x, t, id, body, mid: data.slice(0, 32) };
}

// ---------------------------------------------------------------- the car

async function post(path, payload) {
  const resp = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(payload), credentials: "same-origin",
  });
  const answer = await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) {
    const err = new Error(answer.error || `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return answer;
}

// attach this browser to the car serving the page (a signed announcement and a proof)
export async function attach(db, name) {
  const k = await keys(db);
  const ch = await post("/messages/challenge", {});
  skewMs = ch.now_ms - Date.now();
  setCarTime(ch.now_ms); // the hybrid clock of the ops this browser signs (mail)
  const gateway = unhex(ch.gateway);
  const challenge = unhex(ch.challenge);
  return locked("carmesh-leaf", async () => {
    const rec = await get(db, LEAF);
    if (name !== undefined) rec.name = String(name).slice(0, 64);
    const shown = rec.name || `web-${hex(k.id).slice(0, 8)}`;
    // the seqno follows the car's clock (seconds), and always grows: a newer attachment wins
    rec.seq = Math.max(rec.seq + 1, Math.floor(ch.now_ms / 1000));
    const body = pack({ v: ch.version, ed: k.me.pub, x: rec.xpub, seq: rec.seq, ts: ch.now_ms,
                        name: shown, role: "phone", gw: gateway });
    const signature = await sign(k.me, concat(ANNOUNCE_DOMAIN, body));
    const proof = await sign(k.me, concat(ATTACH_DOMAIN, challenge, gateway, k.id));
    await put(db, LEAF, rec);
    const res = await post("/messages/attach", {
      announcement: hex(body), signature: hex(signature), proof: hex(proof),
      challenge: ch.challenge,
    });
    localStorage.setItem(ATTACHED_KEY, JSON.stringify({ at: Date.now(), leaf: res.leaf }));
    document.dispatchEvent(new CustomEvent("carmesh-attached", { detail: res }));
    return { ...res, name: shown, id: hex(k.id) };
  });
}

export function attachedRecently() {
  try {
    const a = JSON.parse(localStorage.getItem(ATTACHED_KEY) || "null");
    return a && Date.now() - a.at < REATTACH_MS ? a : null;
  } catch {
    return null;
  }
}

export function everAttached() {
  return localStorage.getItem(ATTACHED_KEY) !== null;
}

export async function lookup(query) {
  return post("/messages/key", { node: query });
}

// seal ``body`` for ``peer`` ({node_id, x25519}) and hand the ciphertext to the car
export async function sendSealed(db, peer, body) {
  const k = await keys(db);
  const dest = unhex(peer.node_id);
  const sealed = await seal(k, unhex(peer.x25519), dest, body);
  const signature = await sign(k.me, concat(SEND_DOMAIN, k.id, dest, sealed));
  const wire = { to: peer.node_id, sealed: hex(sealed), signature: hex(signature) };
  return { mid: hex(sealed.subarray(0, 32)), wire };
}

export async function postSealed(wire) {
  return post("/messages/send", wire);
}

// ---------------------------------------------------------------- conversations

export async function mail(db) {
  return (await get(db, MAIL)) || [];
}

export async function updateMail(db, fn) {
  return locked("carmesh-mail", async () => {
    const items = (await get(db, MAIL)) || [];
    const out = fn(items) || items;
    out.sort((a, b) => a.t - b.t);
    await put(db, MAIL, out.slice(-MAX_MAIL));
    return out;
  });
}

// a text to ``peer``: kept (state "sending"), sealed, handed to the car, retried until the
// recipient's sealed acknowledgement comes back or the retries run out (a page left open)
const RETRY_MS = [2000, 4000, 8000, 16000];

// the car takes request bodies up to 16 KiB and hex doubles the sealed bytes
const MAX_TEXT_BYTES = 6000;

export async function sendText(db, peer, text, onChange, { asMail = false } = {}) {
  if (utf8.encode(text).length > MAX_TEXT_BYTES) {
    throw new Error(`at most ${MAX_TEXT_BYTES} bytes (about 2,000 Japanese characters)`);
  }
  const body = pack({ k: "text", text });
  const { mid, wire } = await sendSealed(db, peer, body);
  const id = mid.slice(0, 24);
  await updateMail(db, (items) => {
    items.push({ id, mid, dir: "out", peer: peer.node_id, peerName: peer.name, text,
                 t: Date.now(), state: "sending", read: true });
  });
  onChange?.();
  const setState = async (state, extra = {}) => {
    let changed = false;
    await updateMail(db, (items) => {
      const m = items.find((x) => x.mid === mid);
      if (m && m.state !== "delivered" && m.state !== state) {
        Object.assign(m, { state, ...extra });
        changed = true;
      }
    });
    if (changed) onChange?.();
  };
  let tries = 0;
  const attempt = async () => {
    const now = (await mail(db)).find((x) => x.mid === mid);
    if (!now || now.state === "delivered" || now.state === "failed") return;
    tries += 1;
    try {
      const res = asMail ? { status: "unreachable" } : await postSealed(wire);
      if (res.status !== "sent" && tries === 1) {
        // no route: carried as mail car to car until the person is in reach
        try {
          const opId = await postMail(db, peer, text);
          await setState("mail", { mailOp: opId });
        } catch (e) {
          await setState("unreachable", { error: String(e.message || e) });
        }
        return;
      }
      await setState(res.status === "sent" ? "sent" : "unreachable");
    } catch (e) {
      await setState("refused", { error: String(e.message || e) });
      return;
    }
    if (tries <= RETRY_MS.length) setTimeout(attempt, RETRY_MS[tries - 1]);
    else await setState("unconfirmed");
  };
  await attempt();
  return id;
}

// ---------------------------------------------------------------- mail (car to car)

// library_replica/mail.py's prepare_mail, made here: the text sealed to ``peer`` (context
// "mail", with our name: the recipient may hold no announcement of us) in a ``mail.sealed``
// op signed by this browser's own key; the car verifies and stores it like a peer's op and
// sync carries it car to car.  Answers the op id (hex)
export async function postMail(db, peer, text) {
  const k = await keys(db);
  const dest = unhex(peer.node_id);
  const name = k.leaf.name || `web-${hex(k.id).slice(0, 8)}`;
  const sealed = await seal(k, unhex(peer.x25519), dest, pack({ k: "text", text, n: name }),
                            { context: MAIL_CONTEXT });
  const { op, opId } = await signEphemeral(db, "mail.sealed", dest,
                                           pack({ x: k.leaf.xpub, s: sealed }),
                                           Date.now() + skewMs + MAIL_LIFETIME_MS);
  await post("/messages/mail", { op });
  return opId;
}

// mail any car brought for this browser: opened here (the seal's key must be the op's
// author), stored, acknowledged with a ``mail.receipt`` op we sign; and our own mail the
// recipient acknowledged is marked delivered
export async function receiveMail(db, { notify = true } = {}) {
  const k = await keys(db);
  const ans = await post("/messages/inbox", { author: hex(k.me.pub) });
  const news = [];
  let changed = false;
  for (const item of ans.mail) {
    let o;
    let m;
    try {
      o = await openSealed(k, unhex(item.sealed), unhex(item.from), { context: MAIL_CONTEXT });
      if (hex(o.ed) !== item.author) throw new Error("sealed by another key than the op's author");
      m = unpack(o.body);
    } catch (e) {
      console.warn("carmesh: a mail was refused:", e.message); // eslint-disable-line
      continue;
    }
    if (m.k !== "text" || typeof m.text !== "string") continue;
    const id = item.op_id.slice(0, 24);
    const from = hex(o.sender);
    const name = typeof m.n === "string" && m.n ? m.n.slice(0, 64) : from.slice(0, 8);
    let fresh = false;
    await updateMail(db, (items) => {
      if (items.some((x) => x.id === id && x.peer === from)) return;
      fresh = true;
      items.push({ id, mid: item.op_id, dir: "in", peer: from, peerName: name, text: m.text,
                   t: o.t, received: Date.now(), state: "received", read: false, via: "mail" });
    });
    try { // every car stops offering it, and the sender sees it delivered
      const { op } = await signEphemeral(db, "mail.receipt", o.sender,
                                         pack({ x: k.leaf.xpub, r: unhex(item.op_id) }),
                                         Date.now() + skewMs + MAIL_LIFETIME_MS);
      await post("/messages/mail", { op });
    } catch (e) {
      console.warn("carmesh: mail receipt not sent:", e.message); // eslint-disable-line
    }
    if (fresh) {
      news.push({ id, from, name, text: m.text });
      changed = true;
    }
  }
  const delivered = ans.delivered || {};
  if (Object.keys(delivered).length) {
    await updateMail(db, (items) => {
      for (const x of items) {
        if (x.mailOp && delivered[x.mailOp] && x.state !== "delivered") {
          x.state = "delivered";
          changed = true;
        }
      }
    });
  }
  if (changed) document.dispatchEvent(new CustomEvent("carmesh-mail", { detail: news }));
  if (news.length && notify) showNotice(news[news.length - 1].name);
  return news;
}

// fetch what the car holds for us, open it, store it, acknowledge texts, release it
export async function receive(db, { notify = true } = {}) {
  let held;
  try {
    held = (await post("/messages/held", {})).messages;
  } catch (e) {
    if (e.status === 401 && everAttached()) { // the car forgot us (restarted): attach again
      await attach(db);
      held = (await post("/messages/held", {})).messages;
    } else {
      throw e;
    }
  }
  const k = await keys(db);
  const news = [];
  const done = [];
  for (const h of held) {
    done.push(h.id);
    let o;
    try {
      o = await openSealed(k, unhex(h.data), unhex(h.from));
    } catch (e) {
      console.warn("carmesh: a held message was refused:", e.message); // eslint-disable-line
      continue;
    }
    let m;
    try {
      m = unpack(o.body);
    } catch {
      continue;
    }
    const from = hex(o.sender);
    if ((m.k === "ack" || m.k === "nack") && m.ref instanceof Uint8Array) {
      const ref = hex(m.ref);
      await updateMail(db, (items) => {
        const mine = items.find((x) => x.mid === ref && x.peer === from);
        if (mine) {
          mine.state = m.k === "ack" ? "delivered" : "failed";
          if (m.k === "nack") mine.error = String(m.why || "");
        }
      });
      continue;
    }
    if (m.k !== "text" || typeof m.text !== "string") continue;
    const id = hex(o.mid).slice(0, 24);
    let fresh = false;
    await updateMail(db, (items) => {
      if (items.some((x) => x.id === id && x.peer === from)) return;
      fresh = true;
      items.push({ id, mid: hex(o.mid), dir: "in", peer: from,
                   peerName: h.from_name || from.slice(0, 8), text: m.text, t: o.t,
                   received: Date.now(), state: "received", read: false });
    });
    // acknowledged every time (a lost acknowledgement is repaired by the sender's retry)
    const ack = pack({ k: "ack", ref: o.mid });
    try {
      const { wire } = await sendSealed(db, { node_id: from, x25519: hex(o.x) }, ack);
      await postSealed(wire);
    } catch (e) {
      console.warn("carmesh: acknowledgement not sent:", e.message); // eslint-disable-line
    }
    if (fresh) news.push({ id, from, name: h.from_name || from.slice(0, 8), text: m.text });
  }
  if (done.length) {
    await post("/messages/release", { ids: done });
    // new texts, or delivery states changed by acknowledgements: pages redraw
    document.dispatchEvent(new CustomEvent("carmesh-mail", { detail: news }));
  }
  if (news.length && notify) showNotice(news[news.length - 1].name);
  return news;
}

// a held packet, then mail carried car to car
async function receiveAll(db) {
  const news = await receive(db);
  try {
    return news.concat(await receiveMail(db));
  } catch (e) {
    console.warn("carmesh: mail not fetched:", e.message); // eslint-disable-line
    return news;
  }
}

export function showNotice(name) {
  const notice = document.getElementById("notice");
  if (!notice) return;
  notice.textContent = `${notice.dataset.mailText || "New message"}: ${name}`;
  notice.dataset.kind = "mail";
  notice.hidden = false;
}

// from live.js: the car says mail is held for us
export async function onMailEvent() {
  const db = await openDb();
  return receiveAll(db);
}

// from live.js on every page of a browser that has attached before: attach again to this
// car if it has been a while (a car restarted, or this is another car: it re-attaches here)
export async function keepAttached() {
  if (!everAttached() || attachedRecently()) return null;
  const db = await openDb();
  return attach(db);
}
