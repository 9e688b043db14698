// carmesh web app: live bulletins over server-sent events (/events).
// Builds elements with textContent only: bulletin text is never parsed as HTML.
const list = document.getElementById("bulletins");
const notice = document.getElementById("notice");
const empty = document.getElementById("no-bulletins");
const seen = new Set();
let loaded = false; // after the first batch, every bulletin not seen before is news

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

function show(b) {
  if (!list || document.getElementById("b-" + b.op_id)) return false;
  const li = el("li", "bulletin");
  li.id = "b-" + b.op_id;
  li.append(el("h3", "", b.title), el("p", "body", b.body));
  const meta = el("p", "meta", `${list.dataset.from} ${b.authority} · `);
  const t = el("time", "", when(b.issued_ms));
  t.dateTime = new Date(b.issued_ms).toISOString();
  meta.append(t);
  li.append(meta);
  list.prepend(li);
  if (empty) empty.hidden = true;
  return true;
}

function notify(title) {
  if (!notice) return;
  notice.textContent = `${notice.dataset.text}: ${title}`;
  notice.hidden = false;
}

let es = null;

function connect() {
  es = new EventSource("/events");
  es.addEventListener("bulletin", (e) => {
    const b = JSON.parse(e.data);
    const isNew = !seen.has(b.op_id);
    seen.add(b.op_id);
    const shown = show(b);
    // each (re)connection starts with every bulletin in force
    if (isNew && loaded && (shown || !list)) notify(b.title);
  });
  es.addEventListener("expired", (e) => {
    for (const id of JSON.parse(e.data).op_ids) {
      const li = document.getElementById("b-" + id);
      if (li) li.remove();
    }
    if (empty && list && !list.children.length) empty.hidden = false;
  });
  // sealed mail held by the car for this browser (a leaf, see leaf.js): fetched, opened here
  es.addEventListener("mail", () => {
    import("/static/leaf.js").then((m) => m.onMailEvent()).catch(() => {});
  });
  es.addEventListener("ready", () => {
    loaded = true;
    document.documentElement.dataset.live = "ready"; // for tests and styling: live updates on
  });
}

if (typeof EventSource !== "undefined") {
  connect();
  // attached as a leaf just now (a new session cookie): reconnect so mail events reach us
  document.addEventListener("carmesh-attached", () => {
    es.close();
    connect();
  });
}

// a browser that has attached before re-attaches to the car serving this page now and then
if (localStorage.getItem("carmesh-leaf-attached") !== null && !document.getElementById("leaf")) {
  import("/static/leaf.js").then((m) => m.keepAttached()).catch(() => {});
}
