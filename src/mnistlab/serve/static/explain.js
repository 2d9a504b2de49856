// The heat-map panel of the drawing page. Each time the page shows a prediction (app.js sets
// body[data-state="predicted"]), the drawing is sent to /explain and the answer's heat map (evidence
// for the class, 0 to 1, on the model's 28x28 grid) is drawn over the dimmed digit the model saw.
// At most one request is in flight; a prediction that arrives meanwhile is explained next.
"use strict";
(() => {
  const pad = document.getElementById("pad");
  const heat = document.getElementById("heat");
  const hctx = heat.getContext("2d");
  const methodEl = document.getElementById("heat-method");
  const statusEl = document.getElementById("heat-status");
  let busy = false;
  let again = false;

  function clear() {
    hctx.fillStyle = "#000";
    hctx.fillRect(0, 0, heat.width, heat.height);
    heat.dataset.state = "empty";
    heat.dataset.hot = "0";
    statusEl.textContent = "";
  }

  // blue -> cyan -> yellow -> red, as matplotlib's "jet" (the colours of `mnistlab explain`)
  function colour(t) {
    const c = (k) => 255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - k)));
    return [c(3), c(2), c(1)];
  }

  function draw(data) {
    const h = data.heat.length, w = data.heat[0].length;
    heat.width = w;
    heat.height = h;
    const img = hctx.createImageData(w, h);
    let hot = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const t = Math.sqrt(data.heat[y][x]), v = 0.4 * data.pixels[y][x]; // sqrt: faint evidence still shows
        const a = t > 0.1 ? 0.55 + 0.45 * t : 0;
        const [r, g, b] = colour(t);
        const i = 4 * (y * w + x);
        img.data[i] = (1 - a) * v + a * r;
        img.data[i + 1] = (1 - a) * v + a * g;
        img.data[i + 2] = (1 - a) * v + a * b;
        img.data[i + 3] = 255;
        if (a > 0) hot += 1;
      }
    }
    hctx.putImageData(img, 0, 0);
    heat.dataset.state = "explained";
    heat.dataset.hot = String(hot);
    heat.dataset.target = data.target;
    statusEl.textContent = `${data.method}: evidence for ${data.target} (${(100 * data.probability).toFixed(1)}%)`;
  }

  async function request() {
    if (busy) { again = true; return; }
    busy = true;
    again = false;
    try {
      const blob = await mnistlabPage.canvasBlob(pad);
      const answer = await mnistlabPage.postImage(`/explain?method=${encodeURIComponent(methodEl.value)}`, blob);
      if (document.body.dataset.state !== "predicted") return; // cleared while the request ran
      if (!answer.ok) {
        heat.dataset.state = "error";
        statusEl.textContent = mnistlabPage.errorText(answer);
        return;
      }
      draw(answer.body);
    } catch (err) {
      statusEl.textContent = `server unreachable: ${err.message}`;
    } finally {
      busy = false;
      if (again) request();
    }
  }

  new MutationObserver(() => {
    if (document.body.dataset.state === "predicted") request();
    else clear();
  }).observe(document.body, { attributes: true, attributeFilter: ["data-state"] });
  methodEl.addEventListener("change", () => {
    if (document.body.dataset.state === "predicted") request();
  });
  clear();
})();
