// Live alert queue and click-to-enlarge faces. Plain JS, no inline script (the CSP forbids it).
// Text from alerts is only ever put into the page with textContent, so nothing in it can become markup.
"use strict";

function cell(tr, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  tr.appendChild(td);
  return td;
}

function alertRow(a) {
  const tr = document.createElement("tr");
  tr.className = "state-" + a.decision + " fresh";
  tr.dataset.id = String(a.id);
  const link = document.createElement("a");
  link.href = "/alerts/" + encodeURIComponent(String(a.id));
  link.textContent = a.time;
  cell(tr, "").appendChild(link);
  cell(tr, a.device_id + " / " + a.camera);
  cell(tr, a.subject_id === null ? "(sealed)" : a.subject_id).className = "subject";
  cell(tr, a.category);
  cell(tr, a.priority);
  cell(tr, a.score === null ? "" : a.score.toFixed(3) + " / " + a.threshold.toFixed(3));
  cell(tr, a.margin === null ? "" : a.margin.toFixed(3));
  cell(tr, a.decision_label);
  return tr;
}

function liveQueue(table) {
  let after = Number(table.dataset.after || "0");
  const query = table.dataset.query || "";
  const body = table.querySelector("tbody");
  const total = document.getElementById("total");
  const live = document.getElementById("live");
  async function poll() {
    try {
      const url = "/api/alerts/new?after=" + after + (query ? "&" + query : "");
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { window.location.assign("/login"); return; }
      if (!resp.ok) { throw new Error(String(resp.status)); }
      const data = await resp.json();
      for (const a of data.alerts) {
        body.insertBefore(alertRow(a), body.firstChild);
        if (total) { total.textContent = String(Number(total.textContent) + 1); }
      }
      after = data.last;
      if (live) { live.classList.remove("stale"); live.textContent = "live"; }
    } catch (e) {
      if (live) { live.classList.add("stale"); live.textContent = "reconnecting"; }
    }
    window.setTimeout(poll, 1000);
  }
  window.setTimeout(poll, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("queue");
  if (table && table.dataset.live === "1") { liveQueue(table); }
  for (const img of document.querySelectorAll("img.zoomable")) {
    img.addEventListener("click", () => img.classList.toggle("enlarged"));
  }
});
