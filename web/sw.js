// carmesh service worker (served as /sw.js, scope "/"): the app shell from the cache at once,
// pages network-first with the copy of the last visit (or /offline) when the car is not there.
// web/pwa.py fills in the version and the shell list; see its docstring.
const VERSION = "__VERSION__";
const SHELL = "__SHELL__";
const STATIC = "static-" + VERSION;
const PAGES = "pages";
const MAX_PAGES = 60;
const NETWORK_TIMEOUT_MS = 4000;
// public pages kept for reading offline (never /messages, /safety: its car clock would be
// stale, or searches)
const SAVED = /^\/(library(\/[0-9a-fA-F]{4,32})?|board|people|ca)?$/;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(STATIC)
      .then((c) => c.addAll(SHELL.map((u) => new Request(u, { cache: "reload" }))))
      .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((keys) => Promise.all(keys.filter((k) => k !== STATIC && k !== PAGES)
        .map((k) => caches.delete(k))))
      .then(() => self.clients.claim()));
});

function timeout(ms) {
  return new Promise((_, reject) => setTimeout(() => reject(new Error("timeout")), ms));
}

async function trim(cache) {
  const keys = await cache.keys();
  for (let i = 0; i < keys.length - MAX_PAGES; i++) await cache.delete(keys[i]);
}

async function page(request, url) {
  const cache = await caches.open(PAGES);
  const save = SAVED.test(url.pathname) && url.search === "";
  try {
    const resp = await Promise.race([fetch(request), timeout(NETWORK_TIMEOUT_MS)]);
    if (save && resp.ok && resp.type === "basic") {
      await cache.delete(request);  // re-put moves it to the end (newest)
      await cache.put(request, resp.clone());
      await trim(cache);
    }
    return resp;
  } catch (err) {
    const saved = save ? await cache.match(request) : undefined;
    return saved || (await caches.match("/offline", { cacheName: STATIC })) || Response.error();
  }
}

async function asset(event, request) {
  const cache = await caches.open(STATIC);
  const hit = await cache.match(request);
  const fresh = fetch(request).then(async (resp) => {
    if (resp.ok && resp.type === "basic") await cache.put(request, resp.clone());
    return resp;
  });
  if (hit) {
    event.waitUntil(fresh.catch(() => undefined));  // refresh in the background
    return hit;
  }
  return fresh;
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (url.pathname.startsWith("/static/") || url.pathname === "/manifest.webmanifest") {
    event.respondWith(asset(event, request));
  } else if (request.mode === "navigate") {
    event.respondWith(page(request, url));
  }
});
