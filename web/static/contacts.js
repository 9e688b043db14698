// carmesh web app: contacts pinned by key on /people.
//
// A contact is pinned by its Ed25519 key with the label it had when pinned, and kept in
// this browser only (localStorage).  Every reachable entry whose key is pinned shows the
// pinned label and the key's fingerprint; an entry whose name is the label or name of a
// pinned contact but whose key is another one is marked with a warning: a same-named
// stranger is never shown as the contact.  Text reaches the page through textContent only.

const STORE = "carmesh.contacts";
const MAX_CONTACTS = 500;

export function fingerprint(key) {
  return key.slice(0, 16).replace(/(.{4})(?=.)/g, "$1 ");
}

export function sameName(a, b) {
  const norm = (s) => String(s || "").normalize("NFKC").toLowerCase().replace(/\s+/g, " ").trim();
  return norm(a) !== "" && norm(a) === norm(b);
}

export function loadContacts() {
  try {
    const list = JSON.parse(localStorage.getItem(STORE) || "[]");
    return Array.isArray(list)
      ? list.filter((c) => c && /^[0-9a-f]{64}$/.test(c.key) && typeof c.label === "string")
      : [];
  } catch {
    return [];
  }
}

function saveContacts(list) {
  localStorage.setItem(STORE, JSON.stringify(list.slice(0, MAX_CONTACTS)));
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render(box) {
  const contacts = loadContacts();
  const byKey = new Map(contacts.map((c) => [c.key, c]));
  const entries = Array.from(document.querySelectorAll("#reachable li[data-name]"));
  for (const li of entries) {
    for (const old of li.querySelectorAll(".contact-mark, .contact-warning, .pin")) old.remove();
    const key = li.dataset.key;
    const pinned = key ? byKey.get(key) : undefined;
    if (pinned) {
      li.dataset.contact = "pinned";
      const mark = el("span", "contact-mark",
                      `★ ${box.dataset.pinned}: ${pinned.label} · ${box.dataset.fingerprint} ${fingerprint(key)}`);
      li.querySelector(".name").after(mark);
    } else {
      const twin = contacts.find((c) => sameName(c.label, li.dataset.name) || sameName(c.name, li.dataset.name));
      if (twin) {
        li.dataset.contact = "stranger";
        li.querySelector(".name").after(el("span", "contact-warning",
          `⚠ ${box.dataset.warning} · ${box.dataset.fingerprint} ${key ? fingerprint(key) : "?"}`));
      } else {
        delete li.dataset.contact;
      }
    }
    if (key) {
      const b = el("button", "pin", pinned ? box.dataset.unpin : box.dataset.pin);
      b.type = "button";
      b.addEventListener("click", () => {
        const now = loadContacts().filter((c) => c.key !== key);
        if (!pinned) now.push({ key, label: li.dataset.name, name: li.dataset.name, pinned_ms: Date.now() });
        saveContacts(now);
        render(box);
      });
      li.append(b);
    }
  }
  const list = document.getElementById("contacts");
  list.replaceChildren();
  const here = new Set(entries.map((li) => li.dataset.key).filter(Boolean));
  for (const c of contacts) {
    const li = el("li");
    li.dataset.key = c.key;
    li.append(el("strong", "name", `★ ${c.label}`), " ",
              el("code", "key", fingerprint(c.key)));
    if (!here.has(c.key)) li.append(el("span", "meta", box.dataset.away));
    list.append(li);
  }
  document.getElementById("no-contacts").hidden = contacts.length > 0;
  document.documentElement.dataset.contacts = "ready";
}

const box = document.getElementById("contacts-box");
if (box) render(box);
