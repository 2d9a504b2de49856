// The drawing page. The canvas is sent as a PNG to /predict?preview=true; the server runs the one
// preprocessing path and answers with the probabilities and the 28x28 pixels it fed the model,
// so the page never preprocesses on its own. While drawing, at most one request is in flight and
// requests start at most every THROTTLE_MS; the final state is always sent when a stroke ends.
"use strict";

const THROTTLE_MS = 120;
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const preview = document.getElementById("preview");
const pctx = preview.getContext("2d");
const bars = document.getElementById("bars");
const labelEl = document.getElementById("label");
const probEl = document.getElementById("prob");
const statusEl = document.getElementById("status");
const widthEl = document.getElementById("width");

let classes = [];
let last = null;
let hasInk = false;
let inFlight = false;
let pending = false;
let lastSent = 0;
let timer = null;
let generation = 0; // bumped by Clear so late answers for an old drawing are dropped

const setStatus = (text, isError = false) => mnistlabPage.setStatus(statusEl, text, isError);

function buildBars(names) {
  bars.innerHTML = "";
  for (const name of names) {
    const row = document.createElement("div");
    row.style.display = "contents";
    row.dataset.cls = name;
    row.innerHTML = `<span></span><div class="bar"><div></div></div><span class="num">0.000</span>`;
    row.children[0].textContent = name;
    bars.appendChild(row);
  }
}

function resetView() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  pctx.fillStyle = "#000";
  pctx.fillRect(0, 0, preview.width, preview.height);
  preview.dataset.ink = "0";
  labelEl.innerHTML = "&nbsp;";
  probEl.textContent = "draw with mouse or finger";
  document.body.dataset.state = "empty";
  buildBars(classes);
  hasInk = false;
}

function strokeTo(p) {
  ctx.strokeStyle = "#fff";
  ctx.fillStyle = "#fff";
  ctx.lineWidth = Number(widthEl.value);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  if (last) {
    ctx.beginPath();
    ctx.moveTo(last[0], last[1]);
    ctx.lineTo(p[0], p[1]);
    ctx.stroke();
  } else {
    ctx.beginPath();
    ctx.arc(p[0], p[1], ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  last = p;
  hasInk = true;
}

const drawingPad = mnistlabPage.drawingPad(pad, {
  start(p) {
    last = null;
    strokeTo(p);
    schedule();
  },
  move(points) {
    for (const p of points) strokeTo(p);
    schedule();
  },
  end() {
    last = null;
    schedule(true);
  },
});

document.getElementById("clear").addEventListener("click", () => {
  generation += 1;
  clearTimeout(timer);
  pending = false;
  resetView();
  setStatus("");
});

widthEl.addEventListener("input", () => {
  document.getElementById("width-value").textContent = widthEl.value;
});

document.getElementById("upload").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  e.target.value = "";
  if (!file) return;
  generation += 1;
  showUpload(file);
  send(file, generation);
});

function showUpload(file) {
  const img = new Image();
  img.onload = () => {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    ctx.drawImage(img, (pad.width - img.width * s) / 2, (pad.height - img.height * s) / 2, img.width * s, img.height * s);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
}

// Send now if nothing is in flight and the throttle allows; otherwise remember to send later.
function schedule(final = false) {
  if (!hasInk) return;
  if (inFlight) { pending = true; return; }
  const wait = final ? 0 : Math.max(0, THROTTLE_MS - (performance.now() - lastSent));
  clearTimeout(timer);
  timer = setTimeout(async () => {
    const gen = generation; // read before the await: a Clear during toBlob must drop this drawing
    const blob = await mnistlabPage.canvasBlob(pad);
    if (gen === generation) send(blob, gen);
  }, wait);
}

async function send(blob, gen) {
  inFlight = true;
  pending = false;
  lastSent = performance.now();
  try {
    const answer = await mnistlabPage.postImage(`/predict?preview=true&top_k=${Math.max(1, classes.length)}`, blob);
    if (gen !== generation) return;
    if (!answer.ok) { setStatus(mnistlabPage.errorText(answer), true); return; }
    render(answer.body);
    setStatus("");
  } catch (err) {
    setStatus(`server unreachable: ${err.message}`, true);
  } finally {
    inFlight = false;
    if (pending && gen === generation) schedule(!drawingPad.isDrawing());
  }
}

function render(data) {
  labelEl.textContent = data.label;
  probEl.textContent = `probability ${(100 * data.probability).toFixed(1)}%`;
  for (const row of bars.children) {
    const p = data.probabilities[row.dataset.cls] || 0;
    row.children[1].firstElementChild.style.width = `${(100 * p).toFixed(1)}%`;
    row.children[2].textContent = p.toFixed(3);
    row.classList.toggle("best", row.dataset.cls === data.label);
  }
  if (data.preview) drawPreview(data.preview);
  document.body.dataset.state = "predicted";
}

function drawPreview(rows) {
  const h = rows.length, w = rows[0].length;
  preview.width = w;
  preview.height = h;
  const img = pctx.createImageData(w, h);
  let ink = 0;
  rows.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (y * w + x);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
    img.data[i + 3] = 255;
    if (v > 0) ink += 1;
  }));
  pctx.putImageData(img, 0, 0);
  preview.dataset.ink = String(ink);
}

async function loadModel() {
  try {
    const info = await (await fetch("/model")).json();
    classes = info.classes;
    const card = info.card || {};
    const acc = card.metrics && card.metrics.test_accuracy;
    document.getElementById("model").textContent =
      `model ${info.name}: ${card.arch || "?"} on ${card.dataset || "custom data"}` +
      (acc ? `, test accuracy ${(100 * acc).toFixed(2)}%` : "") + ` (${info.backend})`;
  } catch (err) {
    setStatus(`cannot read the model card: ${err.message}`, true);
  }
  resetView();
}

resetView();
loadModel();
