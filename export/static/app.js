// The try-it page of toon-serve: pick or drop a photo, POST it to v1/toonify, show both
// images side by side and offer the result for download. Plain JS, no libraries.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file");
  const drop = $("drop");
  const status = $("status");
  const original = $("original");
  const result = $("result");
  const download = $("download");
  const keyRow = $("key-row");
  const keyInput = $("api-key");
  const formatSelect = $("format");
  const EXT = { png: "png", jpeg: "jpg", webp: "webp" };

  let photo = null; // the File being shown
  let originalUrl = null;
  let resultUrl = null;
  let busy = 0; // a counter, so a late answer to an older request is ignored

  function say(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function authHeaders() {
    const key = keyInput.value.trim();
    return key ? { Authorization: "Bearer " + key } : {};
  }

  function mode() {
    return document.querySelector('input[name="mode"]:checked').value;
  }

  async function showModel() {
    try {
      const r = await fetch("v1/model", { headers: authHeaders() });
      if (r.status === 401) {
        keyRow.hidden = false;
        return;
      }
      if (!r.ok) return;
      const m = await r.json();
      $("model-info").textContent =
        `Model ${m.file}: ${m.size}×${m.size} px faces on ${m.device}.`;
    } catch (e) {
      /* the page still works without the footer */
    }
  }

  function pick(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      say(`${file.name} is not an image.`, true);
      return;
    }
    photo = file;
    if (originalUrl) URL.revokeObjectURL(originalUrl);
    originalUrl = URL.createObjectURL(file);
    original.src = originalUrl;
    toonify();
  }

  async function toonify() {
    if (!photo) return;
    const ticket = ++busy;
    const format = formatSelect.value;
    result.removeAttribute("src");
    result.dataset.state = "pending";
    download.hidden = true;
    say("Toonifying…");
    let r;
    try {
      r = await fetch(`v1/toonify?mode=${mode()}&format=${format}`, {
        method: "POST",
        body: photo,
        headers: { ...authHeaders(), "Content-Type": photo.type || "application/octet-stream" },
      });
    } catch (e) {
      if (ticket === busy) {
        result.dataset.state = "error";
        say(`Could not reach the server (${e.message}).`, true);
      }
      return;
    }
    if (ticket !== busy) return;
    if (!r.ok) {
      let message = r.statusText;
      try {
        message = (await r.json()).error || message;
      } catch (e) {
        /* not JSON: keep the status text */
      }
      if (r.status === 401) {
        keyRow.hidden = false;
        keyInput.focus();
      }
      result.dataset.state = "error";
      say(`${message} (HTTP ${r.status})`, true);
      return;
    }
    const blob = await r.blob();
    if (ticket !== busy) return;
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    result.onload = () => {
      result.dataset.state = "done";
    };
    result.src = resultUrl;
    const stem = (photo.name || "photo").replace(/\.[^.]*$/, "");
    download.href = resultUrl;
    download.download = `${stem}_toon.${EXT[format]}`;
    download.hidden = false;
    let summary = "Done.";
    try {
      const report = JSON.parse(r.headers.get("X-Toon-Report") || "{}");
      const n = report.faces ? report.faces.length : 0;
      const ms = report.timings_ms ? Math.round(report.timings_ms.total) : null;
      summary = `${n} face${n === 1 ? "" : "s"} toonified` + (ms !== null ? ` in ${ms} ms.` : ".");
    } catch (e) {
      /* no report: a plain "Done." */
    }
    say(summary);
  }

  fileInput.addEventListener("change", () => pick(fileInput.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    pick(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      fileInput.click();
    }
  });
  formatSelect.addEventListener("change", toonify);
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", toonify);
  }
  keyInput.addEventListener("change", () => {
    showModel();
    toonify();
  });
  showModel();
})();
