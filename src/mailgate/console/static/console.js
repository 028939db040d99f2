// mailgate console: the little the pages need a script for. Everything works
// without it except the live timeline, which falls back to reloading by hand.
"use strict";

document.addEventListener("click", (event) => {
  const back = event.target.closest("a[data-back]");
  if (back && history.length > 1) {
    event.preventDefault();
    history.back();
  }
});

// A message's page: swap in its live part whenever the message has a new event.
function follow(live) {
  let pending = false;
  const refresh = async () => {
    if (pending) return;
    pending = true;
    try {
      const answer = await fetch(live.dataset.live, { credentials: "same-origin" });
      if (answer.ok) {
        live.innerHTML = await answer.text();
        live.dataset.refreshed = String(Number(live.dataset.refreshed || 0) + 1);
      }
    } finally {
      pending = false;
    }
  };
  const stream = new EventSource(live.dataset.stream);
  // The stream names each event by its type; listen for every type there is.
  for (const type of (live.dataset.types || "").split(" ").filter(Boolean)) {
    stream.addEventListener(type, refresh);
  }
  // On (re)connecting, catch up with anything that happened in between.
  stream.addEventListener("open", () => {
    live.dataset.streaming = "yes";
    refresh();
  });
  window.addEventListener("pagehide", () => stream.close());
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && window.EventSource) follow(live);
});
