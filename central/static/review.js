// trapedge review page: compare the anchor with one candidate at a time, side by side at equal size.
// No inline code anywhere (the page's CSP runs only this server's scripts); transforms are set
// through the CSSOM, which that CSP allows.
"use strict";

const $ = (id) => document.getElementById(id);
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const state = {view: null, selected: 0, zoom: {z: 1, tx: 0, ty: 0}, keypoints: false, pairs: new Map()};
const ZOOM_MIN = 1, ZOOM_MAX = 16, ZOOM_STEP = 1.25, PAN_STEP = 40;

// --- talking to the server --------------------------------------------------------------------

function loggedOut(response) {
  if (response.status !== 401) return false;
  window.location.assign("/login");
  return true;
}

async function getJSON(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  if (loggedOut(response)) return null;
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function post(path, body) {
  const response = await fetch(path, {method: "POST", credentials: "same-origin",
                                      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                                      body: JSON.stringify(body || {})});
  if (loggedOut(response)) return null;
  const answer = await response.json();
  if (!response.ok) {
    say(answer.error || response.statusText);
    return null;
  }
  return answer;
}

function say(text) { $("status").textContent = text; }

// --- what is shown ----------------------------------------------------------------------------

function kind(image) { return $("edges").checked && image.edge ? "edge" : "crop"; }

// a live sighting has a picture only when its device sends crops (alerts.embedding_crop_max_side)
function src(image) {
  const k = kind(image);
  return k === "crop" && !image.crop ? null : `/api/image/${encodeURIComponent(image.id)}/${k}`;
}

function describe(image) {
  const parts = [image.time ? image.time.replace("T", " ").slice(0, 19) : "", image.device];
  if (image.location) parts.push(image.location);
  return parts.filter(Boolean).join(" · ");
}

function showImage(el, image) {
  const url = image ? src(image) : null;
  el.nextElementSibling.hidden = url !== null || !image;
  el.hidden = url === null;
  if (url === null) el.removeAttribute("src");
  else if (el.getAttribute("src") !== url) el.src = url;
  el.dataset.kind = image ? kind(image) : "";
}

function individualLink(el, image) {
  el.textContent = image ? image.name : "";
  if (image) el.href = `/individual/${encodeURIComponent(image.id)}`;
  else el.removeAttribute("href");
}

function percent(p) { return `${Math.round(p * 100)}%`; }

function evidence(c) {
  const parts = [`cosine ${c.cosine.toFixed(3)}`];
  if (c.inliers !== null && c.inliers !== undefined) parts.push(`${c.inliers} inliers`);
  return parts.join(" · ");
}

function thumb(image) {
  const url = src(image);
  if (url === null) {
    const none = document.createElement("div");
    none.className = "noimg";
    none.textContent = "no picture";
    return none;
  }
  const el = document.createElement("img");
  el.src = url;
  el.alt = image.name;
  el.loading = "lazy";
  return el;
}

function line(text, testid) {
  const el = document.createElement("div");
  el.className = "line";
  el.textContent = text;
  el.title = text;
  if (testid) el.dataset.testid = testid;
  return el;
}

function card(c, index) {
  const box = document.createElement("div");
  box.className = "card";
  box.dataset.testid = "candidate";
  box.dataset.individual = c.individual;
  box.dataset.image = c.image_id;
  box.dataset.rank = c.rank;
  const head = document.createElement("div");
  head.className = "head";
  const rank = document.createElement("span");
  rank.textContent = `${index + 1}`;
  rank.className = "muted";
  rank.dataset.testid = "rank";
  const conf = document.createElement("span");
  conf.className = "conf";
  conf.dataset.testid = "confidence";
  conf.textContent = percent(c.p_same);
  conf.title = "P(same individual)";
  head.append(rank, conf);
  const best = c.images[0];
  box.append(thumb(best), head, line(evidence(c), "evidence"), line(describe(best), "where"),
             line(c.images.length > 1 ? `${best.name} +${c.images.length - 1} more` : best.name));
  box.addEventListener("click", () => select(index));
  return box;
}

function renderConflicts(conflicts) {
  $("conflicts").hidden = !conflicts.length;
  $("conflicts").replaceChildren(...conflicts.map((c) => {
    const el = document.createElement("div");
    el.dataset.testid = "conflict";
    el.textContent = `Conflict: "no match" between ${c.anchor_id} and ${c.candidate_id}, ` +
      `but confirmed links join them: ${c.path.join(" - ")}`;
    return el;
  }));
}

function render() {
  const view = state.view;
  $("queue").textContent = `${view.queue} anchors to review`;
  $("position").textContent = !view.anchor ? "" :
    view.position ? `anchor ${view.position} of ${view.queue}` : "this anchor is reviewed";
  $("undo").disabled = !view.can_undo;
  $("p-new").textContent = typeof view.p_new === "number" ? `P(new) ${percent(view.p_new)}` : "";
  $("done").classList.toggle("suggested", Boolean(view.new_individual));
  renderConflicts(view.conflicts);
  const anchor = view.anchor;
  showImage($("anchor-img"), anchor);
  individualLink($("anchor-name"), anchor);
  $("anchor-name").dataset.id = anchor ? anchor.id : "";
  $("anchor-meta").textContent = anchor ? describe(anchor) : "Nothing left to review.";
  $("candidates").replaceChildren(...view.candidates.map(card));
  for (const id of ["confirm", "no-match", "done", "skip", "back", "next"]) $(id).disabled = !anchor;
  if (anchor) {
    const url = new URL(window.location.href);
    url.searchParams.set("anchor", anchor.id);
    history.replaceState(null, "", url);
  }
  select(Math.min(state.selected, Math.max(0, view.candidates.length - 1)));
}

function selectedCandidate() { return state.view ? state.view.candidates[state.selected] : undefined; }

function select(index) {
  const candidates = state.view.candidates;
  state.selected = index;
  document.querySelectorAll("#candidates .card").forEach((el, i) => el.classList.toggle("selected", i === index));
  const c = candidates[index];
  const image = c ? c.images[0] : null;
  showImage($("candidate-img"), image);
  individualLink($("candidate-name"), image);
  $("selected-rank").textContent = c ? `Candidate ${index + 1}: ${percent(c.p_same)}` : "No candidate";
  $("candidate-meta").textContent = c ? `${describe(image)} · ${evidence(c)}` : "";
  $("confirm").disabled = $("no-match").disabled = !c;
  drawKeypoints();
}

// --- moving through the queue -----------------------------------------------------------------

async function load(query) {
  const view = await getJSON(`/api/anchor${query || ""}`);
  if (!view) return;
  const sameAnchor = state.view && state.view.anchor && view.anchor && state.view.anchor.id === view.anchor.id;
  state.view = view;
  if (!sameAnchor) {
    state.selected = 0;
    resetZoom();
  }
  render();
}

const loadAnchor = (id) => load(id ? `?id=${encodeURIComponent(id)}` : "");
const anchorId = () => (state.view && state.view.anchor ? state.view.anchor.id : null);

async function page(direction) {
  if (anchorId()) await load(`?${direction}=${encodeURIComponent(anchorId())}`);
}

async function decide(verdict) {
  const c = selectedCandidate();
  if (!c || !anchorId()) return;
  const answer = await post("/api/decision", {anchor: anchorId(), candidate: c.image_id, verdict});
  if (!answer) return;
  say(verdict === "match" ? `Confirmed: ${c.images[0].name}` : `No match: ${c.images[0].name}`);
  await loadAnchor(answer.next);
}

async function step(path, message) {
  if (!anchorId()) return;
  const name = state.view.anchor.name;
  const answer = await post(path, {anchor: anchorId()});
  if (!answer) return;
  say(`${message}: ${name}`);
  await loadAnchor(answer.next);
}

async function undo() {
  const answer = await post("/api/undo", {});
  if (!answer) return;
  if (!answer.undone) {
    say("Nothing to undo.");
    return;
  }
  say(`Undone: ${answer.undone.action.replace("_", " ")}`);
  await loadAnchor(answer.undone.anchor);
}

// --- synchronised zoom and pan: one transform for both images ----------------------------------

function applyZoom() {
  const {z, tx, ty} = state.zoom;
  const transform = `translate(${tx}px, ${ty}px) scale(${z})`;
  $("anchor-img").style.transform = transform;
  $("candidate-img").style.transform = transform;
  $("zoom-level").textContent = percent(z);
  drawKeypoints();
}

function resetZoom() {
  state.zoom = {z: 1, tx: 0, ty: 0};
  applyZoom();
}

// zoom by ``factor`` keeping the point (mx, my), relative to a view's centre, where it is
function zoomAt(factor, mx = 0, my = 0) {
  const {z, tx, ty} = state.zoom;
  const next = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, z * factor));
  const k = next / z;
  state.zoom = next === ZOOM_MIN ? {z: 1, tx: 0, ty: 0} : {z: next, tx: mx - k * (mx - tx), ty: my - k * (my - ty)};
  applyZoom();
}

function pan(dx, dy) {
  state.zoom.tx += dx;
  state.zoom.ty += dy;
  applyZoom();
}

for (const view of [$("anchor-view"), $("candidate-view")]) {
  view.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = view.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, e.clientX - r.left - r.width / 2, e.clientY - r.top - r.height / 2);
  }, {passive: false});
  let drag = null;
  view.addEventListener("pointerdown", (e) => {
    drag = {x: e.clientX, y: e.clientY};
    view.setPointerCapture(e.pointerId);
    view.classList.add("dragging");
  });
  view.addEventListener("pointermove", (e) => {
    if (!drag) return;
    pan(e.clientX - drag.x, e.clientY - drag.y);
    drag = {x: e.clientX, y: e.clientY};
  });
  const stop = () => { drag = null; view.classList.remove("dragging"); };
  view.addEventListener("pointerup", stop);
  view.addEventListener("pointercancel", stop);
}

// --- matched keypoints, drawn between the two images on demand ---------------------------------

async function toggleKeypoints() {
  state.keypoints = !state.keypoints;
  $("toggle-keypoints").classList.toggle("on", state.keypoints);
  $("keypoints").hidden = !state.keypoints;
  await drawKeypoints();
}

async function pairsOf(anchor, candidate) {
  const key = `${anchor}|${candidate}`;
  if (!state.pairs.has(key)) {
    try {
      state.pairs.set(key, await getJSON(`/api/match?anchor=${encodeURIComponent(anchor)}` +
                                         `&candidate=${encodeURIComponent(candidate)}`));
    } catch (error) {
      state.pairs.set(key, {pairs: [], inliers: 0, matches: 0, error: error.message});
    }
  }
  return state.pairs.get(key);
}

// where a point given as fractions of the picture lands on screen, or null when outside its view
function onScreen(img, u, v) {
  const box = img.getBoundingClientRect();  // transformed: scale and translation included
  const view = img.parentElement.getBoundingClientRect();
  const s = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
  const x = box.left + (box.width - img.naturalWidth * s) / 2 + u * img.naturalWidth * s;
  const y = box.top + (box.height - img.naturalHeight * s) / 2 + v * img.naturalHeight * s;
  return x < view.left || x > view.right || y < view.top || y > view.bottom ? null : [x, y];
}

async function drawKeypoints() {
  const canvas = $("keypoints");
  const c = selectedCandidate();
  const a = $("anchor-img"), b = $("candidate-img");
  if (!state.keypoints || !c || !anchorId()) {
    canvas.dataset.lines = "0";
    return;
  }
  const wanted = [anchorId(), c.image_id];
  const found = await pairsOf(...wanted);
  if (!state.keypoints || anchorId() !== wanted[0] || (selectedCandidate() || {}).image_id !== wanted[1]) return;
  const rect = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(rect.width * ratio);
  canvas.height = Math.round(rect.height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, -rect.left * ratio, -rect.top * ratio);
  let drawn = 0;
  if (a.naturalWidth && b.naturalWidth && !a.hidden && !b.hidden) {
    found.pairs.forEach(([ax, ay, bx, by], i) => {
      const p = onScreen(a, ax, ay), q = onScreen(b, bx, by);
      if (!p || !q) return;
      g.strokeStyle = g.fillStyle = `hsl(${(i * 47) % 360}, 90%, 60%)`;
      g.lineWidth = 1.2;
      g.beginPath();
      g.moveTo(...p);
      g.lineTo(...q);
      g.stroke();
      for (const [x, y] of [p, q]) {
        g.beginPath();
        g.arc(x, y, 3, 0, 2 * Math.PI);
        g.fill();
      }
      drawn += 1;
    });
  }
  canvas.dataset.lines = String(drawn);
  canvas.dataset.inliers = String(found.inliers);
  say(found.error ? `Keypoints: ${found.error}` : `${found.inliers} matched keypoints (${found.matches} before RANSAC)`);
}

$("anchor-img").addEventListener("load", drawKeypoints);
$("candidate-img").addEventListener("load", drawKeypoints);
window.addEventListener("resize", drawKeypoints);

// --- search, history, help --------------------------------------------------------------------

let searchTimer = null;
let searchActive = 0;

async function search() {
  const query = $("search").value.trim();
  const list = $("search-results");
  if (!query) {
    list.hidden = true;
    return;
  }
  const found = await getJSON(`/api/individuals?q=${encodeURIComponent(query)}`);
  if (!found) return;
  searchActive = 0;
  list.replaceChildren(...(found.length ? found : [null]).map((ind, i) => {
    const item = document.createElement("li");
    if (!ind) {
      item.textContent = "No individual found.";
      item.className = "muted";
      return item;
    }
    item.dataset.testid = "search-result";
    item.classList.toggle("active", i === 0);
    const link = document.createElement("a");
    link.href = `/individual/${encodeURIComponent(ind.cover)}`;
    link.textContent = `${ind.name} · ${ind.count} image${ind.count === 1 ? "" : "s"} · ` +
                       `last seen ${ind.last_seen.slice(0, 10)}`;
    item.append(link);
    return item;
  }));
  list.hidden = false;
}

function searchKeys(e) {
  const items = [...$("search-results").querySelectorAll("li[data-testid=search-result]")];
  if (e.key === "Escape") {
    $("search").value = "";
    $("search-results").hidden = true;
    $("search").blur();
  } else if ((e.key === "ArrowDown" || e.key === "ArrowUp") && items.length) {
    e.preventDefault();
    searchActive = (searchActive + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
    items.forEach((el, i) => el.classList.toggle("active", i === searchActive));
  } else if (e.key === "Enter" && items.length) {
    e.preventDefault();
    window.location.assign(items[searchActive].querySelector("a").href);
  }
}

async function toggleHistory() {
  const box = $("history");
  if (!box.hidden) {
    box.hidden = true;
    return;
  }
  const steps = await getJSON("/api/history?limit=30");
  if (!steps) return;
  $("history-list").replaceChildren(...steps.map((s) => {
    const item = document.createElement("li");
    item.textContent = `${s.at.replace("T", " ").slice(0, 19)}  ${s.action.replace("_", " ")}  ${s.anchor_id}` +
                       (s.candidate_id ? ` / ${s.candidate_id}` : "") + (s.undone_at ? "  (undone)" : "");
    return item;
  }));
  if (!steps.length) $("history-list").textContent = "Nothing yet.";
  box.hidden = false;
}

function closeOverlays() {
  $("help").hidden = true;
  $("history").hidden = true;
}

function openIndividual(image) {
  if (image) window.location.assign(`/individual/${encodeURIComponent(image.id)}`);
}

// --- the keyboard -----------------------------------------------------------------------------

const KEYS = {
  Enter: () => decide("match"), c: () => decide("match"), n: () => decide("no_match"),
  d: () => step("/api/done", "Done, a new individual"), s: () => step("/api/skip", "Skipped"), u: undo,
  ArrowRight: () => page("after"), j: () => page("after"), ArrowLeft: () => page("before"), b: () => page("before"),
  "+": () => zoomAt(ZOOM_STEP), "=": () => zoomAt(ZOOM_STEP), "-": () => zoomAt(1 / ZOOM_STEP), 0: resetZoom,
  k: toggleKeypoints, e: () => { $("edges").checked = !$("edges").checked; render(); },
  a: () => openIndividual(state.view && state.view.anchor), i: () => openIndividual((selectedCandidate() || {}).images?.[0]),
  "/": () => $("search").focus(), y: toggleHistory, "?": () => { $("help").hidden = !$("help").hidden; },
  Escape: closeOverlays,
};
const PAN_KEYS = {ArrowLeft: [PAN_STEP, 0], ArrowRight: [-PAN_STEP, 0], ArrowUp: [0, PAN_STEP], ArrowDown: [0, -PAN_STEP]};

document.addEventListener("keydown", (e) => {
  if (e.target === $("search")) return searchKeys(e);
  if (e.ctrlKey || e.metaKey || e.altKey || (e.target.tagName === "SELECT")) return;
  if (e.shiftKey && PAN_KEYS[e.key]) {
    e.preventDefault();
    return pan(...PAN_KEYS[e.key]);
  }
  if (/^[1-9]$/.test(e.key) && state.view && Number(e.key) <= state.view.candidates.length) {
    return select(Number(e.key) - 1);
  }
  const action = KEYS[e.key];
  if (!action) return;
  if (!$("help").hidden && e.key !== "?" && e.key !== "Escape") closeOverlays();
  e.preventDefault();
  action();
});

// --- buttons ----------------------------------------------------------------------------------

$("confirm").addEventListener("click", () => decide("match"));
$("no-match").addEventListener("click", () => decide("no_match"));
$("done").addEventListener("click", KEYS.d);
$("skip").addEventListener("click", KEYS.s);
$("undo").addEventListener("click", undo);
$("next").addEventListener("click", KEYS.j);
$("back").addEventListener("click", KEYS.b);
$("zoom-in").addEventListener("click", KEYS["+"]);
$("zoom-out").addEventListener("click", KEYS["-"]);
$("zoom-reset").addEventListener("click", resetZoom);
$("toggle-keypoints").addEventListener("click", toggleKeypoints);
$("edges").addEventListener("change", render);
$("help-button").addEventListener("click", KEYS["?"]);
$("history-button").addEventListener("click", toggleHistory);
for (const id of ["help", "history"]) $(id).addEventListener("click", closeOverlays);
$("search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 120);
});
$("export-format").addEventListener("change", () => {
  $("export").href = `/api/export?format=${encodeURIComponent($("export-format").value)}`;
});
$("logout").addEventListener("click", async () => {
  await post("/logout", {});
  window.location.assign("/login");
});
// buttons keep no focus, so that Enter always means "confirm" rather than "press the last button again"
document.querySelectorAll("button").forEach((el) => el.addEventListener("mouseup", () => el.blur()));

loadAnchor(new URL(window.location.href).searchParams.get("anchor"));
