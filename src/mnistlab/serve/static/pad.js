// What the page's panels share: drawing on a canvas with a mouse, pen or finger, posting an image
// to the server, and a status line. Loaded before app.js, explain.js and read.js.
"use strict";

const mnistlabPage = (() => {
  // The pointer's position in the canvas's own pixels (the canvas may be shown scaled).
  function canvasPoint(canvas, event) {
    const rect = canvas.getBoundingClientRect();
    return [(event.clientX - rect.left) * (canvas.width / rect.width), (event.clientY - rect.top) * (canvas.height / rect.height)];
  }

  // Calls start(point) when a stroke begins, move(points) as it goes (every coalesced point since
  // the last call) and end() when the pointer is lifted or the stroke is cancelled.
  function drawingPad(canvas, { start, move, end }) {
    let drawing = false;
    canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      canvas.setPointerCapture(event.pointerId);
      drawing = true;
      start(canvasPoint(canvas, event));
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!drawing) return;
      event.preventDefault();
      const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
      move((events.length ? events : [event]).map((e) => canvasPoint(canvas, e)));
    });
    for (const type of ["pointerup", "pointercancel"]) {
      canvas.addEventListener(type, () => {
        if (!drawing) return;
        drawing = false;
        end();
      });
    }
    return { isDrawing: () => drawing };
  }

  // POST an image as the multipart field "file"; resolves to {ok, status, body} with the JSON
  // answer (rejects only when the server cannot be reached).
  async function postImage(url, blob) {
    const form = new FormData();
    form.append("file", blob, "drawing.png");
    const response = await fetch(url, { method: "POST", body: form });
    let body;
    try {
      body = await response.json();
    } catch (err) {
      body = { error: `error ${response.status}` };
    }
    return { ok: response.ok, status: response.status, body };
  }

  // The error text of a failed answer.
  function errorText(answer) {
    return (answer.body && answer.body.error) || `error ${answer.status}`;
  }

  function canvasBlob(canvas) {
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }

  function setStatus(element, text, isError = false) {
    element.textContent = text;
    element.classList.toggle("error", isError);
  }

  return { canvasPoint, drawingPad, postImage, errorText, canvasBlob, setStatus };
})();
