// carmesh web app: register the service worker (/sw.js) and say when a page is a saved copy.
const words = {
  ja: "オフライン: 前に保存したページを表示しています",
  en: "Offline: showing the copy saved on your last visit",
};

// Over HTTPS the browser refuses a service worker whose certificate it does not trust (a
// car's self-signed one): try only on http://localhost or a car with the community's.
const trusted = location.protocol === "http:" || document.documentElement.dataset.cert === "community";
if ("serviceWorker" in navigator && trusted) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => undefined);
}

function offlineBanner() {
  let bar = document.getElementById("offline-bar");
  if (navigator.onLine || document.getElementById("offline-text")) {
    if (bar) bar.hidden = true;
    return;
  }
  if (!bar) {
    bar = document.createElement("p");
    bar.id = "offline-bar";
    bar.className = "offline";
    bar.setAttribute("role", "status");
    bar.textContent = words[document.documentElement.lang] || words.en;
    document.body.insertBefore(bar, document.querySelector("main"));
  }
  bar.hidden = false;
}

window.addEventListener("online", offlineBanner);
window.addEventListener("offline", offlineBanner);
offlineBanner();
