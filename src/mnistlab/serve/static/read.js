// String mode of the drawing page: write several digits in a row (a postal code) on the wide pad
// and see them read. The pad (dark ink on white paper) is sent as a PNG to /read when a stroke
// ends; the server cuts it into characters, prepares each by the one preprocessing path and
// answers with the text, a confidence per character and for the string, and a box per
// character, which are drawn over the pad. Drawing and posting go through pad.js, as app.js's do.
"use strict";

(() => {
  const pad = document.getElementById("string-pad");
  if (!pad) return;
  const ctx = pad.getContext("2d");
  const boxes = document.getElementById("string-boxes");
  const bctx = boxes.getContext("2d");
  const textEl = document.getElementById("string-text");
  const confEl = document.getElementById("string-conf");
  const charsEl = document.getElementById("string-chars");
  const statusEl = document.getElementById("string-status");
  const lengthEl = document.getElementById("string-length");
  const panel = document.getElementById("string-mode");

  let last = null;
  let hasInk = false;
  let generation = 0; // bumped by Clear and by every new stroke: an answer for an older drawing is dropped
  let timer = null;

  const setStatus = (text, isError = false) => mnistlabPage.setStatus(statusEl, text, isError);

  function reset() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    bctx.clearRect(0, 0, boxes.width, boxes.height);
    textEl.innerHTML = "&nbsp;";
    confEl.textContent = "write a few digits in a row";
    charsEl.innerHTML = "";
    panel.dataset.state = "empty";
    panel.dataset.chars = "0";
    hasInk = false;
    setStatus("");
  }

  function stroke(from, to) {
    ctx.strokeStyle = "#111";
    ctx.lineWidth = Math.max(6, pad.height / 16);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
    hasInk = true;
  }

  function show(result) {
    textEl.textContent = result.text || "(nothing)";
    confEl.textContent = `confidence ${result.confidence.toFixed(3)}`;
    charsEl.innerHTML = "";
    bctx.clearRect(0, 0, boxes.width, boxes.height);
    bctx.lineWidth = 2;
    bctx.font = "16px system-ui, sans-serif";
    for (const c of result.chars) {
      const [x0, y0, x1, y1] = c.box;
      const colour = c.confidence >= 0.9 ? "#16a34a" : "#dc2626";
      bctx.strokeStyle = colour;
      bctx.fillStyle = colour;
      bctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      bctx.fillText(c.char, x0 + 2, Math.max(14, y0 - 3));
      const item = document.createElement("li");
      item.textContent = `${c.char}  ${c.confidence.toFixed(3)}`;
      charsEl.appendChild(item);
    }
    panel.dataset.chars = String(result.chars.length);
    panel.dataset.state = "read";
  }

  function send() {
    if (!hasInk) return;
    const mine = generation;
    const n = parseInt(lengthEl.value, 10);
    const query = Number.isInteger(n) && n > 0 ? `?expect_length=${n}` : "";
    panel.dataset.state = "reading";
    mnistlabPage.canvasBlob(pad).then(async (blob) => {
      try {
        const answer = await mnistlabPage.postImage(`/read${query}`, blob);
        if (mine !== generation) return;
        if (!answer.ok) {
          setStatus(mnistlabPage.errorText(answer), true);
          panel.dataset.state = "error";
          return;
        }
        setStatus("");
        show(answer.body);
      } catch (err) {
        if (mine === generation) {
          setStatus(`cannot reach the server (${err})`, true);
          panel.dataset.state = "error";
        }
      }
    });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(send, 250); // one request after the writer pauses, not one per stroke
  }

  mnistlabPage.drawingPad(pad, {
    start(p) {
      clearTimeout(timer);
      generation += 1;
      panel.dataset.state = "drawing";
      last = p;
      stroke(last, last);
    },
    move(points) {
      for (const p of points) {
        stroke(last, p);
        last = p;
      }
    },
    end: schedule,
  });
  document.getElementById("string-clear").addEventListener("click", () => {
    generation += 1;
    clearTimeout(timer);
    reset();
  });
  lengthEl.addEventListener("change", schedule);
  reset();
})();
