// trapedge: one individual's page, every image with its date, camera and location.
"use strict";

const $ = (id) => document.getElementById(id);
const imageId = decodeURIComponent(window.location.pathname.split("/").pop());
const when = (time) => (time ? time.replace("T", " ").slice(0, 19) : "date unknown");

function figure(image) {
  const box = document.createElement("figure");
  box.tabIndex = 0;
  box.dataset.testid = "individual-image";
  box.dataset.id = image.id;
  let picture;
  if (image.crop) {
    picture = document.createElement("img");
    picture.src = `/api/image/${encodeURIComponent(image.id)}/crop`;
    picture.alt = image.name;
    picture.loading = "lazy";
  } else {
    picture = document.createElement("div");
    picture.className = "noimg";
    picture.textContent = "no picture sent";
  }
  const caption = document.createElement("figcaption");
  const lines = [["date", when(image.time)], ["camera", image.device], ["location", image.location || "unknown"],
                 ["name", image.name]];
  caption.append(...lines.map(([testid, text]) => {
    const el = document.createElement("div");
    el.dataset.testid = testid;
    el.textContent = testid === "name" ? text : `${testid}: ${text}`;
    return el;
  }));
  box.append(picture, caption);
  return box;
}

function row(d) {
  const tr = document.createElement("tr");
  for (const text of [when(d.at), d.verdict.replace("_", " "), d.anchor, d.candidate]) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  return tr;
}

async function load() {
  const response = await fetch(`/api/individual?id=${encodeURIComponent(imageId)}`, {credentials: "same-origin"});
  if (response.status === 401) {
    window.location.assign("/login");
    return;
  }
  const view = await response.json();
  if (!response.ok) {
    $("error").hidden = false;
    $("error").textContent = view.error;
    return;
  }
  document.title = `trapedge: ${view.name}`;
  $("name").textContent = view.name;
  $("count").textContent = String(view.count);
  $("first-seen").textContent = when(view.first_seen);
  $("last-seen").textContent = when(view.last_seen);
  $("devices").textContent = view.devices.join(", ");
  $("gallery").replaceChildren(...view.images.map(figure));
  $("links").replaceChildren(...view.decisions.map(row));
  const first = $("gallery").querySelector("figure");
  if (first) first.focus();
}

function back() {
  if (document.referrer && new URL(document.referrer).origin === window.location.origin) history.back();
  else window.location.assign("/");
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const figures = [...document.querySelectorAll("#gallery figure")];
  const at = figures.indexOf(document.activeElement);
  if (e.key === "Escape" || e.key === "r") {
    e.preventDefault();
    back();
  } else if ((e.key === "ArrowRight" || e.key === "ArrowLeft") && figures.length) {
    e.preventDefault();
    const next = at < 0 ? 0 : (at + (e.key === "ArrowRight" ? 1 : figures.length - 1)) % figures.length;
    figures[next].focus();
  }
});
$("back").addEventListener("click", (e) => {
  e.preventDefault();
  back();
});
load();
