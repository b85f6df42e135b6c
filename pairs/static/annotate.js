// toon-pairs annotate: four clicks per image (eye centres, mouth corners), undo, a preview of
// the aligned crop from the server, and saving into the --landmarks JSON. No libraries.
//
// Coordinates sent to the server are pixel indices of the image (pixel (i, j) has its centre
// at x = j, y = i, as dlib's landmarks): a click at continuous image position u gives u - 0.5.
"use strict";

const COLORS = ["#e8202a", "#1f5fff", "#f5a300", "#13a84a"];
const LABELS = ["1", "2", "3", "4"];
const MIN_SHOWN = 480;  // CSS pixels: narrower images are scaled up to this width

const state = {
  images: [],   // from /api/state
  index: 0,     // the image shown
  points: [],   // [[x, y], ...] clicked on it, at most 4
  image: null,  // the loaded HTMLImageElement
  previewUrl: null,
  previewSeq: 0,
};

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = kind || "";
}

function draw() {
  if (!state.image) return;
  ctx.drawImage(state.image, 0, 0);
  // Markers keep the same size on screen whatever the display scale.
  const scale = canvas.width / canvas.getBoundingClientRect().width || 1;
  const r = 6 * scale;
  ctx.lineWidth = 2 * scale;
  ctx.font = `${Math.round(13 * scale)}px sans-serif`;
  state.points.forEach(([x, y], i) => {
    const cx = x + 0.5, cy = y + 0.5;  // index -> canvas position
    ctx.strokeStyle = "#fff";
    ctx.beginPath(); ctx.arc(cx, cy, r + ctx.lineWidth, 0, 2 * Math.PI); ctx.stroke();
    ctx.strokeStyle = COLORS[i];
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.stroke();
    ctx.beginPath();
    ctx.moveTo(cx - r / 2, cy); ctx.lineTo(cx + r / 2, cy);
    ctx.moveTo(cx, cy - r / 2); ctx.lineTo(cx, cy + r / 2);
    ctx.stroke();
    ctx.fillStyle = COLORS[i];
    ctx.fillText(LABELS[i], cx + r + 3 * scale, cy - r);
  });
}

function updateControls() {
  const n = state.points.length;
  const names = state.order || ["eye_left", "eye_right", "mouth_left", "mouth_right"];
  const words = ["left eye", "right eye", "left mouth corner", "right mouth corner"];
  const img = state.images[state.index];
  $("prompt").textContent = !img ? "No images." :
    n < 4 ? `Click the ${words[n]} (${names[n]}), as seen in the image.` :
    "Four points set: check the crop, then save.";
  $("prompt").dataset.step = String(n);
  [...$("order").children].forEach((li, i) => li.classList.toggle("done", i < n));
  $("undo").disabled = n === 0;
  $("clear").disabled = n === 0;
  $("save").disabled = n !== 4;
  $("prev").disabled = state.index <= 0;
  $("next").disabled = state.index >= state.images.length - 1;
  [...$("list").children].forEach((li, i) => {
    li.classList.toggle("current", i === state.index);
    li.classList.toggle("saved", !!state.images[i].saved);
  });
}

function clearPreview() {
  state.previewSeq++;
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  $("preview").removeAttribute("src");
  $("preview").dataset.state = "empty";
}

async function errorText(resp) {
  try {
    return (await resp.json()).error || `HTTP ${resp.status}`;
  } catch (e) {
    return `HTTP ${resp.status}`;
  }
}

async function post(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

async function requestPreview() {
  clearPreview();
  if (state.points.length !== 4) return;
  const seq = state.previewSeq;
  $("preview").dataset.state = "loading";
  const resp = await post("api/preview", { index: state.index, points: state.points });
  if (seq !== state.previewSeq) return;  // points changed meanwhile
  if (!resp.ok) {
    $("preview").dataset.state = "error";
    setStatus(await errorText(resp), "error");
    return;
  }
  state.previewUrl = URL.createObjectURL(await resp.blob());
  $("preview").onload = () => {
    if (seq === state.previewSeq) $("preview").dataset.state = "done";
  };
  $("preview").src = state.previewUrl;
  setStatus("Preview ready. Save, or undo to move a point.", "");
}

function changed(keepStatus) {
  draw();
  updateControls();
  if (state.points.length === 4) {
    requestPreview();
  } else {
    clearPreview();
    if (keepStatus !== true) setStatus(`${state.points.length} of 4 points.`, "");
  }
}

function addPoint(event) {
  if (!state.image || state.points.length >= 4) return;
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width) - 0.5;
  const y = (event.clientY - rect.top) * (canvas.height / rect.height) - 0.5;
  state.points.push([Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
  changed();
}

function undo() {
  if (state.points.length) {
    state.points.pop();
    changed();
  }
}

async function save() {
  if (state.points.length !== 4) return;
  const img = state.images[state.index];
  const resp = await post("api/save", { index: state.index, points: state.points });
  if (!resp.ok) {
    setStatus(await errorText(resp), "error");
    return;
  }
  const out = await resp.json();
  img.saved = true;
  img.points = state.points.map((p) => p.slice());
  setStatus(`Saved ${out.file} to ${out.landmarks}.`, "saved");
  updateControls();
  const next = state.images.findIndex((im, i) => i > state.index && !im.saved);
  if (next >= 0) await show(next, true);
}

async function show(index, keepStatus) {
  state.index = index;
  const img = state.images[index];
  state.points = img.points ? img.points.map((p) => p.slice()) : [];
  state.image = null;
  clearPreview();
  updateControls();
  canvas.dataset.state = "loading";
  const el = new Image();
  el.onload = () => {
    if (state.index !== index) return;
    canvas.width = el.naturalWidth;
    canvas.height = el.naturalHeight;
    // Small images are shown larger (sharp pixels) so that a click can be placed precisely.
    canvas.style.width = el.naturalWidth < MIN_SHOWN ? `${MIN_SHOWN}px` : "";
    state.image = el;
    canvas.dataset.state = "ready";
    canvas.dataset.index = String(index);
    changed(keepStatus);
    if (keepStatus !== true && !img.saved) setStatus(`${img.file}: 0 of 4 points.`, "");
    if (img.note) setStatus(img.note, "");
  };
  el.onerror = async () => {
    canvas.dataset.state = "error";
    const resp = await fetch(`api/image/${index}`);
    setStatus(`${img.file}: ${await errorText(resp)}`, "error");
  };
  el.src = `api/image/${index}`;
}

async function start() {
  const resp = await fetch("api/state");
  if (!resp.ok) {
    setStatus(await errorText(resp), "error");
    return;
  }
  const s = await resp.json();
  state.images = s.images;
  state.order = s.order;
  $("where").textContent = `${s.images.length} image(s) in ${s.root}; saving to ${s.landmarks}`;
  $("preview").width = $("preview").height = Math.min(256, s.size);
  const list = $("list");
  s.images.forEach((im, i) => {
    const li = document.createElement("li");
    li.textContent = im.file;
    li.addEventListener("click", () => show(i));
    list.appendChild(li);
  });
  const first = s.images.findIndex((im) => !im.saved);
  if (s.images.length) await show(first >= 0 ? first : 0);
  document.body.dataset.ready = "1";
}

canvas.addEventListener("click", addPoint);
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { state.points = []; changed(); });
$("save").addEventListener("click", save);
$("prev").addEventListener("click", () => state.index > 0 && show(state.index - 1));
$("next").addEventListener("click", () => {
  if (state.index < state.images.length - 1) show(state.index + 1);
});
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
    return;
  }
  if (e.key === "z" || e.key === "Backspace") { e.preventDefault(); undo(); }
  else if (e.key === "Enter") { e.preventDefault(); save(); }
  else if (e.key === "n") $("next").click();
  else if (e.key === "p") $("prev").click();
});
start();
