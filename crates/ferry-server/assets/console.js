// Ferry console: uploads with a progress bar, and the dashboard's charts. Loaded from the
// console itself (CSP default-src 'self'); htmx and its SSE extension do the rest.
"use strict";

// Uploads each chosen file as PUT-like POST of its bytes (the server streams it to S3, as
// multipart when large), showing the bytes sent; reloads the listing when all are stored.
function setUpUpload(input) {
  const bar = document.getElementById("upload-progress");
  const status = document.getElementById("upload-status");
  input.addEventListener("change", async () => {
    const files = Array.from(input.files || []);
    const total = files.reduce((n, f) => n + f.size, 0) || 1;
    let done = 0;
    bar.hidden = false;
    for (const file of files) {
      const key = (input.dataset.prefix || "") + file.name;
      status.textContent = "Uploading " + key + "…";
      const ok = await new Promise((resolve) => {
        const xhr = new XMLHttpRequest();
        xhr.open("POST", input.dataset.upload + "?key=" + encodeURIComponent(key));
        xhr.setRequestHeader("x-ferry-csrf", input.dataset.csrf);
        if (file.type) xhr.setRequestHeader("content-type", file.type);
        xhr.upload.onprogress = (e) => { bar.value = Math.floor(100 * (done + e.loaded) / total); };
        xhr.onload = () => resolve(xhr.status === 201 ? "" : (xhr.responseText || ("HTTP " + xhr.status)));
        xhr.onerror = () => resolve("the connection failed");
        xhr.send(file);
      });
      if (ok !== "") {
        status.textContent = "Upload of " + key + " failed: " + ok;
        return;
      }
      done += file.size;
      bar.value = Math.floor(100 * done / total);
    }
    // The listing is reloaded; the outcome is kept for the reloaded page to show.
    sessionStorage.setItem("ferry-upload-status", "Uploaded " + files.length + " file(s).");
    window.location.reload();
  });
}

// The dashboard's charts: lag and throughput per rule over the last hour, from the JSON the
// server sends as the `charts` event (and puts in the page at first).
const charts = { lag: null, throughput: null, rules: "" };

function drawCharts() {
  const holder = document.getElementById("charts-data");
  if (!holder || typeof uPlot === "undefined") return;
  let data;
  try { data = JSON.parse(holder.textContent || "{}"); } catch (e) { return; }
  if (!data.t) return;
  const rules = data.rules.map((r) => r.rule).join("\n");
  for (const [name, field] of [["lag", "lag"], ["throughput", "throughput"]]) {
    const el = document.getElementById("chart-" + name);
    if (!el) continue;
    const series = [data.t].concat(data.rules.map((r) => r[field]));
    if (charts[name] && charts.rules === rules) {
      charts[name].setData(series);
      continue;
    }
    if (charts[name]) charts[name].destroy();
    const opts = {
      width: Math.min(560, el.clientWidth || 560), height: 200,
      series: [{}].concat(data.rules.map((r, i) => ({ label: r.rule, stroke: ["#1d3557", "#e63946", "#2a9d8f", "#f4a261"][i % 4] }))),
    };
    charts[name] = new uPlot(opts, series, el);
  }
  charts.rules = rules;
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.querySelector("input[type=file][data-upload]");
  if (input) {
    setUpUpload(input);
    const said = sessionStorage.getItem("ferry-upload-status");
    if (said) {
      sessionStorage.removeItem("ferry-upload-status");
      document.getElementById("upload-status").textContent = said;
    }
  }
  drawCharts();
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target && e.target.id === "charts-data") drawCharts();
  });
});
