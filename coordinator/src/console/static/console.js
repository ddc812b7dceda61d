// kiln console: keeps each page's <main id="live"> current without reloading. Every
// POLL interval it fetches the same page as a fragment (?partial=1), rendered and escaped by
// the coordinator, and swaps it in; a fragment marked final (a finished build) ends the polling.
"use strict";
(function () {
  const main = document.getElementById("live");
  const stamp = document.getElementById("updated");
  if (!main || !main.dataset.poll) return;
  const every = Math.max(500, Number(main.dataset.interval) || 1500);
  let timer = null;
  async function refresh() {
    try {
      const r = await fetch(main.dataset.poll, { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) {
        location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
      if (!r.ok) {
        if (stamp) stamp.textContent = "update failed (HTTP " + r.status + "), retrying";
        return;
      }
      main.innerHTML = await r.text();
      if (stamp) stamp.textContent = "updated " + new Date().toLocaleTimeString();
      if (r.headers.get("X-Kiln-Final") === "1") {
        clearInterval(timer);
        if (stamp) stamp.textContent += " · finished";
      }
    } catch (e) {
      if (stamp) stamp.textContent = "coordinator unreachable, retrying";
    }
  }
  timer = setInterval(refresh, every);
})();
