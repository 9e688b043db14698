// carmesh web app: correct a library document in this browser's own name.
//
// The browser has no Yjs: it sends the new text to the car (POST /library/ID/prepare
// with its key and chain head), the car composes the change and answers the unsigned op
// bodies under a nonce; the page shows what will be signed (how many changes, characters
// added and removed, the signing key) and, when the user confirms, signs the bodies as
// the next ops of its own chain (identity.js) and posts each with the nonce to
// /library/op.  The car checks that they are exactly what it prepared for this key.
// Text reaches the page through textContent only.

import { Unsupported, flush, hex, identity, openDb, setCarTime, signAndSend } from "./identity.js";

function show(el, text, cls) {
  el.textContent = text;
  el.className = cls;
  el.hidden = false;
}

function unhex(s) {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

async function main() {
  const form = document.getElementById("edit-form");
  if (!form) return;
  const save = document.getElementById("edit-save");
  const confirmBox = document.getElementById("edit-confirm");
  const signButton = document.getElementById("edit-sign");
  const result = document.getElementById("edit-result");
  const view = document.getElementById("edit-view");
  const docId = form.dataset.doc;
  setCarTime(Number(form.dataset.now));
  let db;
  try {
    db = await openDb();
    await identity(db);
  } catch (e) {
    document.documentElement.dataset.identity = "unsupported";
    const why = e instanceof Unsupported ? form.dataset.noEd25519 : form.dataset.failed;
    show(result, `${why} (${e.message || e})`, "problem");
    return;
  }
  let prepared = null;
  save.disabled = false;
  document.documentElement.dataset.identity = "ready";

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    save.disabled = true;
    confirmBox.hidden = true;
    prepared = null;
    show(result, form.dataset.preparing, "meta");
    try {
      await flush(db); // earlier ops of this chain first: the car composes after them
      const me = await identity(db);
      const f = new FormData(form);
      const resp = await fetch(`/library/${docId}/prepare`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ key: hex(me.pub), seq: me.seq, prev: me.prev ? hex(me.prev) : null,
                               body: String(f.get("body") || ""), title: String(f.get("title") || "") }),
      });
      const answer = await resp.json().catch(() => ({ error: resp.statusText }));
      if (!resp.ok) throw new Error(answer.error || `HTTP ${resp.status}`);
      if (!answer.ops.length) { // the text and title as they are: nothing to sign
        show(result, form.dataset.noChange, "meta");
        return;
      }
      prepared = answer;
      document.getElementById("edit-count").textContent = String(answer.ops.length);
      document.getElementById("edit-added").textContent = String(answer.inserted);
      document.getElementById("edit-removed").textContent = String(answer.deleted);
      const keyEl = document.getElementById("edit-key");
      keyEl.textContent = hex(me.pub).slice(0, 16);
      keyEl.title = hex(me.pub);
      result.hidden = true;
      confirmBox.hidden = false;
      signButton.focus();
    } catch (e) {
      show(result, `${form.dataset.failed}: ${e.message || e}`, "problem");
    } finally {
      save.disabled = false;
    }
  });

  document.getElementById("edit-cancel").addEventListener("click", () => {
    prepared = null;
    confirmBox.hidden = true;
  });

  signButton.addEventListener("click", async () => {
    if (!prepared) return;
    const p = prepared;
    prepared = null;
    signButton.disabled = true;
    show(result, form.dataset.signing, "meta");
    try {
      const ops = p.ops.map((o) => ({ kind: o.kind, docId: unhex(p.doc_id), body: unhex(o.body) }));
      const res = await signAndSend(db, ops, { url: "/library/op", extra: { nonce: p.nonce } });
      confirmBox.hidden = true;
      show(result, form.dataset.published, "ok");
      if (res) result.dataset.op = res.op_id;
      view.hidden = false;
    } catch (e) {
      show(result, `${form.dataset.failed}: ${e.message || e}`, "problem");
    } finally {
      signButton.disabled = false;
    }
  });
}

main();
