// wildwatch web page: upload photos, show one card per photo.
"use strict";

const $ = (sel) => document.querySelector(sel);
let keyRequired = false;

function headers() {
  const key = $("#apikey").value || localStorage.getItem("wildwatch-key") || "";
  if (key) localStorage.setItem("wildwatch-key", key);
  return key ? { "X-API-Key": key } : {};
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function bars(topK) {
  const box = el("div", { class: "bars", "aria-label": "top species" });
  for (const t of topK) {
    const pct = Math.round(t.probability * 1000) / 10;
    const fill = el("div", { class: "fill" });
    fill.style.width = pct + "%";
    box.append(el("div", { class: "bar" },
      el("span", { text: t.species.replace(/_/g, " ") }),
      el("div", { class: "track" }, fill),
      el("span", { text: pct + "%" })));
  }
  return box;
}

function sentence(text) {
  return text.charAt(0).toUpperCase() + text.slice(1) + (/[.?!]$/.test(text) ? "" : ".");
}

function card(pred, file) {
  const url = URL.createObjectURL(file);
  if (pred.error) {
    // the reason without the file name it starts with (shown once, below it)
    const reason = pred.error.startsWith(pred.source + ": ") ? pred.error.slice(pred.source.length + 2) : pred.error;
    return el("article", { class: "card error" },
      el("div", { class: "body" }, el("h2", { text: "Could not read this file" }),
        el("p", { class: "reason", text: sentence(reason) }), el("div", { class: "file", text: pred.source })));
  }
  const img = el("img", { src: url, alt: pred.common_name || pred.species });
  const body = el("div", { class: "body" });
  const article = el("article", { class: "card" + (pred.unknown ? " unknown" : "") + (pred.uncertain ? " uncertain" : "") },
    el("div", { class: "photo" }, img), body);
  if (pred.uncertain) {
    // not sure enough to name one: the two it is between, in words, and how sure of the first
    const first = (pred.common_name || "").split(" or ")[0];
    body.append(el("h2", { text: "Not sure: " + pred.common_name + "?" }),
      el("div", { text: "Confidence " + Math.round(pred.confidence * 100) + "% that it is the " + first }),
      el("p", { class: "note", text: "The model cannot tell these two apart on this photo. Look at the photo before acting on it." }));
    if (pred.note) body.append(el("p", { class: "note", text: pred.note }));
    body.append(bars(pred.top_k));
  } else if (pred.unknown) {
    // no confidence and no bars: the 11-class probabilities say nothing about a photo of none of them
    body.append(el("h2", { text: "Not one of the 11 species" }),
      el("p", { class: "note", text: sentence(pred.looks_like_text || "it does not look like any of the species the model knows") }));
  } else {
    const badge = el("span", { class: "badge", text: "IUCN " + pred.iucn_status + (pred.threatened ? " · threatened" : "") });
    badge.style.background = pred.status_colour || "#ccc";
    if ((pred.iucn_status || "").endsWith("CR")) badge.classList.add("cr");
    body.append(el("h2", { text: pred.common_name }),
      el("div", { text: "Confidence " + Math.round(pred.confidence * 100) + "%" }), badge);
    if (pred.note) body.append(el("p", { class: "note", text: pred.note }));
    body.append(bars(pred.top_k));
  }
  body.append(el("div", { class: "file", text: pred.source }));
  if (pred.heatmap_png_base64) {
    const heat = "data:image/png;base64," + pred.heatmap_png_base64;
    const button = el("button", { class: "toggle", type: "button", text: "Show heatmap" });
    button.addEventListener("click", () => {
      const on = img.src !== heat;
      img.src = on ? heat : url;
      button.textContent = on ? "Show photo" : "Show heatmap";
      article.dataset.heatmap = on ? "on" : "off";
    });
    body.append(button);
  }
  return article;
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  $("#message").textContent = "Classifying " + files.length + " photo" + (files.length > 1 ? "s" : "") + "…";
  const explain = $("#explain").checked ? "?explain=true" : "";
  try {
    const res = await fetch("/v1/classify" + explain, { method: "POST", body: form, headers: headers() });
    const data = await res.json();
    if (!res.ok) { $("#message").textContent = "Error " + res.status + ": " + data.detail; return; }
    // the newest upload first, its photos in the order they were chosen
    const batch = document.createDocumentFragment();
    data.predictions.forEach((p, i) => batch.append(card(p, files[i])));
    $("#cards").prepend(batch);
    $("#message").textContent = data.notice ? sentence(data.notice) : "";
  } catch (err) {
    $("#message").textContent = "Could not reach the server: " + err;
  }
}

async function loadEvents() {
  const res = await fetch("/v1/events", { headers: headers() });
  const data = await res.json().catch(() => ({}));
  const list = $("#event-list");
  list.replaceChildren();
  if (!res.ok) { $("#events-message").textContent = data.detail || "No events."; return; }
  $("#events-message").textContent = data.events.length ? data.events.length + " sightings, newest first" : "No sightings yet.";
  for (const ev of data.events.reverse()) {
    const img = el("img", { alt: ev.common_name || ev.species });
    // fetched with the API key header, which an <img src> could not send
    fetch(ev.snapshot_url, { headers: headers() }).then((r) => r.ok ? r.blob() : null)
      .then((b) => { if (b) img.src = URL.createObjectURL(b); });
    const badge = el("span", { class: "badge", text: "IUCN " + ev.iucn_status + (ev.threatened ? " · threatened" : "") });
    badge.style.background = ev.status_colour || "#ccc";
    list.append(el("article", { class: "card event" }, el("div", { class: "photo" }, img),
      el("div", { class: "body" }, el("h2", { text: ev.common_name || ev.species }), badge,
        el("div", { text: "Peak confidence " + Math.round(ev.peak_confidence * 100) + "%" }),
        el("div", { class: "file", text: ev.source + " · " + ev.wall_start + " → " + ev.wall_end }))));
  }
}

// text with the matched terms marked, built from text nodes (never HTML from a post)
function highlighted(text, terms) {
  const box = el("p", { class: "excerpt" });
  const low = text.toLowerCase();
  const found = [];
  for (const t of terms) {
    let i = low.indexOf(t.toLowerCase());
    while (t && i >= 0) { found.push([i, i + t.length]); i = low.indexOf(t.toLowerCase(), i + t.length); }
  }
  found.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [start, end] of found) {
    if (start < at) continue;
    box.append(document.createTextNode(text.slice(at, start)), el("mark", { text: text.slice(start, end) }));
    at = end;
  }
  box.append(document.createTextNode(text.slice(at)));
  return box;
}

function safeLink(url) {
  return /^https?:\/\//i.test(url) ? el("a", { href: url, rel: "noopener noreferrer", target: "_blank", text: url })
    : el("span", { text: url });
}

const MARKS = [["reviewed", "Reviewed"], ["reported", "Reported to agency"], ["not_relevant", "Not relevant"]];

async function loadCases() {
  const res = await fetch("/v1/cases", { headers: headers() });
  const data = await res.json().catch(() => ({}));
  const list = $("#case-list");
  list.replaceChildren();
  if (!res.ok) { $("#cases-message").textContent = data.detail || "No cases."; return; }
  $("#cases-message").textContent = data.cases.length ? data.cases.length + " cases, most likely trade first" : "No cases yet.";
  for (const c of data.cases) {
    const img = el("img", { alt: c.species || "case photo" });
    fetch(c.thumbnail_url, { headers: headers() }).then((r) => r.ok ? r.blob() : null)
      .then((b) => { if (b) img.src = URL.createObjectURL(b); });
    const first = c.posts[0] || { text: "" };
    const links = el("ul", { class: "links" });
    for (const p of c.posts) if (p.link) links.append(el("li", {}, safeLink(p.link), el("span", { text: " · " + (p.account || p.site) })));
    const buttons = el("div", { class: "marks" });
    for (const [status, label] of MARKS) {
      const b = el("button", { type: "button", class: "mark" + (c.status === status ? " on" : ""), "data-status": status, text: label });
      b.addEventListener("click", async () => {
        const r = await fetch("/v1/cases/" + c.id + "/status", { method: "POST", body: JSON.stringify({ status }),
          headers: { ...headers(), "Content-Type": "application/json" } });
        if (r.ok) loadCases();
      });
      buttons.append(b);
    }
    list.append(el("article", { class: "card case", id: "case-" + c.id, "data-status": c.status },
      el("div", { class: "photo" }, img),
      el("div", { class: "body" },
        el("h2", { text: (c.rank ? "#" + c.rank + " · " : "") + "Case " + c.id + " · score " + c.score.toFixed(3) + (c.species ? " · " + c.species.replace(/_/g, " ") + " (" + c.iucn_status + ")" : "") }),
        el("p", { class: "note", text: c.reason }),
        highlighted(first.text.slice(0, 400), c.terms),
        el("div", { class: "file", text: c.posts.length + " posts · " + c.accounts.length + " accounts · " + c.sites.join(", ") + " · " + c.status.replace("_", " ") }),
        links, buttons)));
  }
  const wanted = location.hash.startsWith("#case-") && document.getElementById(location.hash.slice(1));
  if (wanted) wanted.scrollIntoView();
}

function setup() {
  const drop = $("#drop");
  $("#files").addEventListener("change", (e) => upload([...e.target.files]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); upload([...e.dataTransfer.files]); });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("active", t === tab));
      document.querySelectorAll(".panel").forEach((p) => { p.hidden = p.id !== tab.dataset.tab; });
      if (tab.dataset.tab === "events") loadEvents();
      if (tab.dataset.tab === "cases") loadCases();
    });
  }
  // an alert's review link (…/#case-12) opens the review queue at that case
  if (location.hash.startsWith("#case-")) {
    $("#tab-cases").click();
  }
  fetch("/health").then((r) => r.json()).then((h) => {
    keyRequired = h.api_key_required;
    $("#keybox").hidden = !keyRequired;
    // heatmaps only where the server can draw them (PyTorch installed)
    $("#explain-option").hidden = !h.explain;
    $("#explain").checked = h.explain;
    $("#apikey").value = localStorage.getItem("wildwatch-key") || "";
  });
}

setup();
