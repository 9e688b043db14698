// carmesh web app: the /messages page — attach this browser to the car, send sealed messages,
// read the ones received (opened here), delivery states and unread marks.  Crypto and storage
// are leaf.js's; this module only draws (textContent only: message text is never HTML).
import {
  attach, keys, lookup, mail, openDb, receive, receiveMail, sendText, Unsupported, updateMail,
} from "./leaf.js";
import { hex } from "./identity.js";

const root = document.getElementById("leaf");
const nameForm = document.getElementById("name-form");
const attachButton = document.getElementById("attach-button");
const attachState = document.getElementById("attach-state");
const sendForm = document.getElementById("send-form");
const sendButton = document.getElementById("send-button");
const sendResult = document.getElementById("send-result");
const list = document.getElementById("conversations");
const peersList = document.getElementById("known-peers");
const STATES = JSON.parse(root.dataset.states);
const REATTACH_MS = 10 * 60_000;
// mail for this browser comes with sync, not as a live event: asked for this often
const MAILBOX_MS = 20_000;
const open = new Set(); // conversations the user opened on this page

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function when(ms) {
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

function show(el_, text, cls) {
  el_.textContent = text;
  el_.className = cls;
  el_.hidden = false;
}

let db;

async function render() {
  const items = await mail(db);
  const byPeer = new Map();
  for (const m of items) {
    if (!byPeer.has(m.peer)) byPeer.set(m.peer, []);
    byPeer.get(m.peer).push(m);
  }
  const convs = [...byPeer.entries()].sort((a, b) => b[1].at(-1).t - a[1].at(-1).t);
  list.replaceChildren();
  peersList.replaceChildren();
  if (!convs.length) list.append(el("li", "empty", root.dataset.none));
  for (const [peer, msgs] of convs) {
    const name = msgs.findLast((m) => m.dir === "in")?.peerName || msgs.at(-1).peerName || peer.slice(0, 8);
    const unread = msgs.filter((m) => m.dir === "in" && !m.read).length;
    const li = el("li", "conversation");
    li.dataset.peer = peer;
    const details = el("details");
    details.open = open.has(peer);
    const summary = el("summary");
    summary.append(el("strong", "", name), " ", el("code", "", peer.slice(0, 8)));
    if (unread) {
      const badge = el("span", "unread", `${unread} ${root.dataset.unread}`);
      badge.dataset.count = String(unread);
      summary.append(" ", badge);
    }
    details.append(summary);
    const ol = el("ol", "thread");
    for (const m of msgs) {
      const item = el("li", `msg ${m.dir}${m.dir === "in" && !m.read ? " new" : ""}`);
      item.dataset.id = m.id;
      item.dataset.state = m.state;
      item.append(el("p", "text", m.text));
      const meta = el("p", "meta", `${when(m.t)} · ${STATES[m.state] || m.state}`);
      if (m.error) meta.append(` (${m.error})`);
      item.append(meta);
      ol.append(item);
    }
    details.append(ol);
    const reply = el("button", "reply", "↩");
    reply.type = "button";
    reply.addEventListener("click", () => {
      sendForm.elements.to.value = peer;
      sendForm.elements.text.focus();
    });
    details.append(reply);
    const renderedOpen = details.open;
    details.addEventListener("toggle", async () => {
      if (details.open === renderedOpen) return; // the toggle event of drawing it open
      if (!details.open) return open.delete(peer);
      open.add(peer);
      if (unread) await markRead(peer);
    });
    // unread until the conversation is opened, or (open already) a message in it is tapped
    ol.addEventListener("click", () => {
      if (unread) markRead(peer);
    });
    li.append(details);
    list.append(li);
    const opt = el("option");
    opt.value = peer;
    opt.label = name;
    peersList.append(opt);
  }
}

async function markRead(peer) {
  await updateMail(db, (items) => {
    for (const m of items) if (m.peer === peer) m.read = true;
  });
  await render();
}

async function doAttach(name) {
  attachState.textContent = root.dataset.attaching;
  const res = await attach(db, name);
  attachState.textContent = `${root.dataset.attached} (${res.name})`;
  document.documentElement.dataset.leaf = "attached";
  root.dataset.leafId = res.id;
  return res;
}

async function main() {
  try {
    db = await openDb();
    const k = await keys(db);
    const id = hex(k.id);
    const code = document.getElementById("my-leaf");
    code.textContent = id.slice(0, 8);
    code.title = id;
    nameForm.elements.name.value = k.leaf.name || "";
  } catch (e) {
    document.documentElement.dataset.leaf = "unsupported";
    show(attachState, `${root.dataset.unsupported} (${e.message || e})`, "problem");
    if (!(e instanceof Unsupported)) console.error(e);
    return;
  }
  await render();
  try {
    await doAttach();
  } catch (e) {
    show(attachState, String(e.message || e), "problem");
  }
  attachButton.disabled = false;
  sendButton.disabled = false;
  setInterval(() => doAttach().catch(() => {}), REATTACH_MS);
  document.addEventListener("carmesh-mail", () => render());
  const mailbox = () => receiveMail(db, { notify: false }).then(render).catch(() => {});
  receive(db, { notify: false }).then(render).catch(() => {}).finally(mailbox);
  setInterval(mailbox, MAILBOX_MS);
  nameForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    attachButton.disabled = true;
    try {
      await doAttach(nameForm.elements.name.value.trim());
    } catch (e) {
      show(attachState, String(e.message || e), "problem");
    } finally {
      attachButton.disabled = false;
    }
  });
  sendForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const to = sendForm.elements.to.value.trim();
    const text = sendForm.elements.text.value;
    sendButton.disabled = true;
    sendResult.hidden = true;
    try {
      const peer = await lookup(to);
      open.add(peer.node_id);
      // out of reach: straight to mail, carried car to car (also when a send finds no route)
      await sendText(db, peer, text, render, { asMail: peer.reachable === false });
      sendForm.elements.text.value = "";
      await render();
    } catch (e) {
      show(sendResult, String(e.message || e), "problem");
    } finally {
      sendButton.disabled = false;
    }
  });
}

main();
