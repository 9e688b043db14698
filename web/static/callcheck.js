// carmesh web app: the check of the far end's DTLS fingerprints in a call (pure: no page).
//
// The car that serves this page could swap the fingerprints in the SDP it hands the page
// and sit in the middle of the DTLS handshake.  So every offer or answer from the far side
// comes with the far node's Ed25519 signature over its fingerprints (voice/browser.py
// node_message) and that node's two public keys; the page checks the signature and that
// SHA-256(ed25519 ‖ x25519)[:16] is the NodeId it called (the URL) or that rang it.  If a
// browser on the far car made the SDP, its own signature (fingerprintMessage) is checked
// too.  Anything missing or not matching is refused: the page hangs up.
//
// The signed text, the same as voice/browser.py:
//   DOMAIN LF call id (32 hex) LF kind LF fingerprint LF ...
// with DOMAIN carmesh-call-fingerprint/1 (a browser) or carmesh-node-fingerprint/1 (a node).
import { hex, verify } from "./identity.js";

export const FP_DOMAIN = "carmesh-call-fingerprint/1";
export const NODE_FP_DOMAIN = "carmesh-node-fingerprint/1";
export const MAX_FINGERPRINTS = 8;
const utf8 = new TextEncoder();
const HEX = (n) => new RegExp(`^[0-9a-f]{${n}}$`);

export function fingerprints(sdp) {
  return [...String(sdp).matchAll(/^a=fingerprint:[ \t]*([^\r\n]*?)[ \t]*\r?$/gm)].map((m) => m[1]);
}

export function fingerprintMessage(callId, kind, sdp, domain = FP_DOMAIN) {
  return utf8.encode([domain, callId, kind, ...fingerprints(sdp)].join("\n"));
}

export function unhex(h) {
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.substr(2 * i, 2), 16);
  return out;
}

export async function nodeIdOf(edHex, xHex) {
  const both = new Uint8Array(64);
  both.set(unhex(edHex), 0);
  both.set(unhex(xHex), 32);
  return hex(new Uint8Array(await crypto.subtle.digest("SHA-256", both))).slice(0, 32);
}

async function verifies(keyHex, sigHex, data) {
  try {
    return await verify(unhex(keyHex), unhex(sigHex), data);
  } catch {
    return false;
  }
}

// Check the far SDP ``m`` ({sdp, node_sig, node_key, x, key, sig}) of ``kind`` ("offer" or
// "answer") in call ``callId`` against ``expect``: the NodeId (or a prefix of at least 8
// hex digits) this page called or that rang it.  A name (not hex) binds nothing: the car
// resolved it, so ``bound`` is false.  Returns {ok, node, who, bound, why}: ``node`` the
// signing node's id, ``who`` "node" (its own endpoint) or "key" (a browser there, m.key),
// ``why`` what did not match when not ``ok``.
export async function checkFar(callId, kind, m, expect) {
  const bad = (why) => ({ ok: false, node: null, who: null, bound: false, why });
  const fps = fingerprints(m.sdp || "");
  if (!fps.length || fps.length > MAX_FINGERPRINTS) return bad("fingerprints");
  if (!HEX(128).test(m.node_sig || "") || !HEX(64).test(m.node_key || "") || !HEX(64).test(m.x || "")) {
    return bad("unsigned");
  }
  if (!(await verifies(m.node_key, m.node_sig, fingerprintMessage(callId, kind, m.sdp, NODE_FP_DOMAIN)))) {
    return bad("node signature");
  }
  const node = await nodeIdOf(m.node_key, m.x);
  const want = String(expect || "").toLowerCase();
  const bound = /^[0-9a-f]{8,32}$/.test(want);
  if (bound && !node.startsWith(want)) return bad("another node");
  let who = "node";
  if (m.key || m.sig) {
    if (!HEX(64).test(m.key || "") || !HEX(128).test(m.sig || "")) return bad("browser signature");
    if (!(await verifies(m.key, m.sig, fingerprintMessage(callId, kind, m.sdp)))) return bad("browser signature");
    who = "key";
  }
  return { ok: true, node, who, bound, why: null };
}
