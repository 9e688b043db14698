// carmesh web app: this browser's own Ed25519 identity, and "I am safe" signed with it.
//
// On the first visit the browser makes an Ed25519 key pair with WebCrypto (the private
// key is not extractable) and keeps it in IndexedDB with its op chain: the seq, the id
// of its newest op (prev) and its newest hybrid-clock stamp.  A registration is a whole
// signed op envelope (sync/envelope.py), built here byte for byte as the car's
// MessagePack encoder would, and posted to /safety/op; the car verifies the signature
// and stores the op as if a peer had sent it, so the registrant is this key, not the
// car's.  Ops are put in an outbox in IndexedDB before they are posted and leave it only
// when the car has stored them, so a lost answer never makes a second op at one chain
// position (a fork).  A browser without Ed25519 in WebCrypto signs with the vendored
// @noble/curves (loaded only there); its private key is then bytes kept in IndexedDB,
// which cannot be made non-extractable (docs/web.md says so).
// Text reaches the page through textContent only.

const DB_NAME = "carmesh";
const STORE = "identity";
const ME = "me";
const utf8 = new TextEncoder();
const SIG_DOMAIN = utf8.encode("carmesh/op/1\0");
const SAFETY_DOMAIN = utf8.encode("carmesh/safety/1\0");
const KANA = /^[\u3041-\u309f\u30a0-\u30ff \u3000]*$/;
// a phone's clock may be far off after a disaster (no network time); the cars refuse an op
// stamped more than 5 minutes ahead, and order entries by time.  When the car's time (in
// the page) and ours differ by more than a minute, ours is taken as off by that much.
let clockSkewMs = 0;
const TOLERATED_SKEW_MS = 60_000;

export function setCarTime(carMs) {
  const skew = carMs - Date.now();
  clockSkewMs = Number.isFinite(skew) && Math.abs(skew) > TOLERATED_SKEW_MS ? skew : 0;
}

// ---------------------------------------------------------------- bytes

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let i = 0;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

// MessagePack as Python's msgpack.packb(use_bin_type=True) writes it: the smallest form
// of each unsigned integer, str8 for short strings, bin for bytes.  The car refuses an
// op whose encoding is not exactly its own (one op, one id).
function packInto(out, v) {
  const head = (tag, n, bytes) => {
    out.push(tag);
    for (let s = (bytes - 1) * 8; s >= 0; s -= 8) out.push(Number((BigInt(n) >> BigInt(s)) & 0xffn));
  };
  if (v === null) {
    out.push(0xc0);
  } else if (typeof v === "number" || typeof v === "bigint") {
    const n = BigInt(v);
    if (n < 0n || n >= 1n << 64n) throw new RangeError("unsigned 64-bit integers only");
    if (n < 128n) out.push(Number(n));
    else if (n < 1n << 8n) head(0xcc, n, 1);
    else if (n < 1n << 16n) head(0xcd, n, 2);
    else if (n < 1n << 32n) head(0xce, n, 4);
    else head(0xcf, n, 8);
  } else if (typeof v === "string") {
    const b = utf8.encode(v);
    if (b.length < 32) out.push(0xa0 | b.length);
    else if (b.length < 1 << 8) head(0xd9, b.length, 1);
    else if (b.length < 1 << 16) head(0xda, b.length, 2);
    else head(0xdb, b.length, 4);
    for (const x of b) out.push(x);
  } else if (v instanceof Uint8Array) {
    if (v.length < 1 << 8) head(0xc4, v.length, 1);
    else if (v.length < 1 << 16) head(0xc5, v.length, 2);
    else head(0xc6, v.length, 4);
    for (const x of v) out.push(x);
  } else if (Array.isArray(v)) {
    if (v.length < 16) out.push(0x90 | v.length);
    else head(0xdc, v.length, 2);
    for (const x of v) packInto(out, x);
  } else {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    if (entries.length < 16) out.push(0x80 | entries.length);
    else head(0xde, entries.length, 2);
    for (const [k, x] of entries) {
      packInto(out, k);
      packInto(out, x);
    }
  }
  return out;
}

export function pack(v) {
  return Uint8Array.from(packInto([], v));
}

// ---------------------------------------------------------------- IndexedDB

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

async function load(db) {
  return request(db.transaction(STORE).objectStore(STORE).get(ME));
}

async function save(db, me) {
  const tx = db.transaction(STORE, "readwrite");
  tx.objectStore(STORE).put(me, ME);
  await new Promise((resolve, reject) => {
    tx.oncomplete = resolve;
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

// one tab at a time changes the identity record (two tabs must not sign at one seq)
function exclusive(fn) {
  if (navigator.locks) return navigator.locks.request("carmesh-identity", fn);
  return fn();
}

// ---------------------------------------------------------------- identity and ops

export class Unsupported extends Error {}

// the vendored Ed25519 (@noble/curves), imported the first time WebCrypto lacks it
let noble = null;
async function nobleEd25519() {
  if (!noble) {
    noble = import("./vendor/noble-curves/ed25519.js").then((m) => m.ed25519).catch((e) => {
      noble = null;
      throw new Unsupported(`no Ed25519 here: ${e}`);
    });
  }
  return noble;
}

async function makeIdentity() {
  let keys;
  try {
    keys = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  } catch {
    // no Ed25519 in this browser's WebCrypto: the vendored library, a 32-byte secret
    const ed = await nobleEd25519();
    const secret = crypto.getRandomValues(new Uint8Array(32));
    return {
      v: 1, privateKey: null, secret, pub: ed.getPublicKey(secret), seq: 0, prev: null,
      hlc: 0n, nonce: crypto.getRandomValues(new Uint8Array(16)), outbox: [],
    };
  }
  const pub = new Uint8Array(await crypto.subtle.exportKey("raw", keys.publicKey));
  return {
    v: 1, privateKey: keys.privateKey, pub, seq: 0, prev: null, hlc: 0n,
    nonce: crypto.getRandomValues(new Uint8Array(16)), outbox: [],
  };
}

// an Ed25519 signature of ``data`` by this browser's key (WebCrypto's, or the vendored one's)
export async function sign(me, data) {
  if (me.secret) return (await nobleEd25519()).sign(data, me.secret);
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, me.privateKey, data));
}

// does ``sig`` by public key ``pub`` verify over ``data`` (RFC 8032, as the cars check)
export async function verify(pub, sig, data) {
  let key;
  try {
    key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  } catch (e) {
    if (!(e instanceof DOMException) || e.name !== "NotSupportedError") throw e;
    return (await nobleEd25519()).verify(sig, data, pub, { zip215: false });
  }
  return crypto.subtle.verify({ name: "Ed25519" }, key, sig, data);
}

// this browser's identity record, made on the first call
export async function identity(db) {
  if (!globalThis.crypto || !crypto.subtle) throw new Unsupported("no WebCrypto here");
  return exclusive(async () => {
    let me = await load(db);
    if (!me) {
      me = await makeIdentity();
      await save(db, me);
    }
    return me;
  });
}

// the next op of ``me``'s chain, signed; ``me`` is advanced (the caller saves it).
// ``post`` says where the outbox sends it: {url, extra fields of the JSON} (default:
// /safety/op with {op})
async function signNext(me, kind, docId, body, post = undefined) {
  const seq = me.seq + 1;
  const wall = BigInt(Math.round(Date.now() + clockSkewMs)) << 16n;
  const hlc = wall > me.hlc ? wall : me.hlc + 1n;
  const signed = pack([1, kind, docId, me.pub, seq, me.prev, hlc, null, body]);
  const sig = await sign(me, concat(SIG_DOMAIN, signed));
  // the signed 9-array with its header bumped to 10 items and the signature as bin8
  const raw = concat([0x9a], signed.subarray(1), [0xc4, 0x40], sig);
  const opId = await sha256(raw);
  const before = { seq: me.seq, prev: me.prev, hlc: me.hlc };
  me.seq = seq;
  me.prev = opId;
  me.hlc = hlc;
  me.outbox.push(post ? { op: hex(raw), before, post } : { op: hex(raw), before });
  return hex(opId);
}

// an ephemeral op (seq 0, no prev, an expiry: sync/envelope.py) signed by this browser's key,
// outside its chain (a mail op: leaf.js); only the hybrid clock advances.  Answers
// {op: hex of the raw op, opId: hex}
export async function signEphemeral(db, kind, docId, body, expiryMs) {
  return exclusive(async () => {
    const me = await load(db);
    const wall = BigInt(Math.round(Date.now() + clockSkewMs)) << 16n;
    const hlc = wall > me.hlc ? wall : me.hlc + 1n;
    const signed = pack([1, kind, docId, me.pub, 0, null, hlc, Math.round(expiryMs), body]);
    const sig = await sign(me, concat(SIG_DOMAIN, signed));
    const raw = concat([0x9a], signed.subarray(1), [0xc4, 0x40], sig);
    me.hlc = hlc;
    await save(db, me);
    return { op: hex(raw), opId: hex(await sha256(raw)) };
  });
}

export async function personId(pub, nonce) {
  return (await sha256(concat(SAFETY_DOMAIN, pub, nonce))).subarray(0, 16);
}

// post every op in the outbox, oldest first; the answer to the newest, or an error
export async function flush(db) {
  return exclusive(async () => {
    const me = await load(db);
    let last = null;
    while (me.outbox.length) {
      const item = me.outbox[0];
      const resp = await fetch(item.post ? item.post.url : "/safety/op", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ ...(item.post ? item.post.extra : {}), op: item.op }),
        credentials: "same-origin",
      });
      const answer = await resp.json().catch(() => ({ error: resp.statusText }));
      if (resp.ok || resp.status === 409) { // stored now, or stored before (a replay)
        me.outbox.shift();
        await save(db, me);
        last = answer;
        continue;
      }
      if (resp.status === 400 && me.outbox.length === 1) {
        // refused for good and nothing chained after it: give the position back
        Object.assign(me, item.before);
        me.outbox = [];
        await save(db, me);
      }
      throw new Error(answer.error || `HTTP ${resp.status}`);
    }
    return last;
  });
}

// register this browser's own person record as safe (the same record each time: a new
// registration replaces the whole record, so the form is filled with the last name)
export async function registerSafe(db, { name, reading, place, note }) {
  reading = reading.normalize("NFKC").trim();
  if (!KANA.test(reading)) throw new Error("よみがな: kana only / reading: kana only");
  await exclusive(async () => {
    const me = await load(db);
    const body = { b: name.slice(0, 64), s: "safe", a: place || undefined, t: note || undefined,
                   i: me.nonce, n: name, r: reading, c: "" };
    await signNext(me, "safety.person", await personId(me.pub, me.nonce), pack(body));
    me.profile = { name, reading }; // the next visit's form starts from these
    await save(db, me); // in the outbox before it is sent
  });
  return flush(db);
}

// register another person (a family member, a neighbour) with this browser's key as the
// registrant: a fresh nonce, so a new record each time (safety.py: person id = hash of
// registrant key and nonce); the nonces are kept so this browser could correct them later
export async function registerOther(db, { name, reading, status, place, note }) {
  reading = reading.normalize("NFKC").trim();
  if (!KANA.test(reading)) throw new Error("よみがな: kana only / reading: kana only");
  let pid;
  await exclusive(async () => {
    const me = await load(db);
    const nonce = crypto.getRandomValues(new Uint8Array(16));
    const by = me.profile ? me.profile.name.slice(0, 64) : "";
    const body = { b: by, s: status, a: place || undefined, t: note || undefined,
                   i: nonce, n: name, r: reading, c: "" };
    pid = await personId(me.pub, nonce);
    await signNext(me, "safety.person", pid, pack(body));
    me.others = [...(me.others || []), { id: hex(pid), nonce, name }].slice(-200);
    await save(db, me); // in the outbox before it is sent
  });
  return flush(db);
}

// sign ops whose bodies the car composed (a library correction: web/library_edit.py) as
// the next ops of this browser's chain, then send them; ``ops`` are {kind, docId, body}
// with bytes, ``post`` as in signNext
export async function signAndSend(db, ops, post) {
  await exclusive(async () => {
    const me = await load(db);
    for (const o of ops) await signNext(me, o.kind, o.docId, o.body, post);
    await save(db, me); // in the outbox before it is sent
  });
  return flush(db);
}

// ---------------------------------------------------------------- the page

function show(el, text, cls) {
  el.textContent = text;
  el.className = cls;
  el.hidden = false;
}

async function main() {
  const form = document.getElementById("safe-form");
  if (!form) return;
  const button = document.getElementById("safe-button");
  const keyEl = document.getElementById("my-key");
  const result = document.getElementById("safe-result");
  setCarTime(Number(form.dataset.now));
  let db;
  let me;
  try {
    db = await openDb();
    me = await identity(db);
  } catch (e) {
    document.documentElement.dataset.identity = "unsupported";
    keyEl.textContent = "—";
    show(result, `${form.dataset.noEd25519} (${e.message || e})`, "problem");
    return;
  }
  const key = hex(me.pub);
  keyEl.textContent = key.slice(0, 16);
  keyEl.title = key;
  keyEl.dataset.key = key;
  if (me.profile) { // a correction starts from the record as registered (last writer wins)
    for (const k of ["name", "reading"]) if (!form.elements[k].value) form.elements[k].value = me.profile[k];
  }
  button.disabled = false;
  document.documentElement.dataset.identity = "ready";
  if (me.outbox.length) flush(db).catch(() => {}); // what an earlier visit could not send
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const val = (k) => String(f.get(k) || "").trim();
    button.disabled = true;
    show(result, form.dataset.signing, "meta");
    try {
      const res = await registerSafe(db, { name: val("name"), reading: val("reading"),
                                           place: val("place"), note: val("note") });
      const p = res && res.person;
      show(result, `${form.dataset.registered}: ${p ? p.name : val("name")}`, "ok");
      if (res) result.dataset.op = res.op_id;
    } catch (e) {
      show(result, `${form.dataset.failed}: ${e.message || e}`, "problem");
    } finally {
      button.disabled = false;
    }
  });
  const other = document.getElementById("other-form");
  if (!other) return;
  const otherButton = document.getElementById("other-button");
  const otherResult = document.getElementById("other-result");
  otherButton.disabled = false;
  other.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(other);
    const val = (k) => String(f.get(k) || "").trim();
    otherButton.disabled = true;
    show(otherResult, other.dataset.signing, "meta");
    try {
      const res = await registerOther(db, { name: val("name"), reading: val("reading"),
                                            status: val("status"), place: val("place"),
                                            note: val("note") });
      const p = res && res.person;
      show(otherResult, `${other.dataset.registered}: ${p ? p.name : val("name")}`, "ok");
      if (res) otherResult.dataset.op = res.op_id;
      other.reset(); // the next person starts from an empty form
    } catch (e) {
      show(otherResult, `${other.dataset.failed}: ${e.message || e}`, "problem");
    } finally {
      otherButton.disabled = false;
    }
  });
}

main();
