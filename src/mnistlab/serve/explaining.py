"""``POST /explain``: the attribution heat map of one image (the drawing page draws it over the digit).

The body is what ``/predict`` takes (multipart field 'file', JSON {"image": base64} or raw image
bytes); query ``method`` picks the attribution (``mnistlab.explain.METHODS``, default
integrated-gradients) and ``target`` the class index (default: the predicted one). The reply holds
the 28x28 pixels the model saw, the heat map on the same grid (evidence for the target, 0 to 1),
the target and its probability. A model served from an ``.onnx`` file has no gradients: 409.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mnistlab.errors import MnistlabError
from mnistlab.predict import Predictor
from mnistlab.serve.payload import PayloadError, extract_images, int_param, read_body
from mnistlab.serve.settings import Settings

# mnistlab.explain.METHODS, named here so that serving an .onnx file never imports torch (a test keeps them equal)
METHODS = ("saliency", "integrated-gradients", "gradcam", "occlusion")
EXPLAIN_PARAMS = [
    {"name": "method", "in": "query", "required": False, "description": "attribution method",
     "schema": {"type": "string", "enum": list(METHODS), "default": "integrated-gradients"}},
    {"name": "target", "in": "query", "required": False, "description": "class index to explain (default: predicted)",
     "schema": {"type": "integer", "minimum": 0, "maximum": 10_000}},
]


Prepare = Callable[[Predictor, str, bytes, int], Awaitable[np.ndarray]]  # serve.app.prepare: bytes -> uint8 [S, S]


def add_explain_route(app: FastAPI, predictor: Predictor, settings: Settings, body_doc: dict[str, Any],
                      prepare: Prepare) -> None:
    """Register ``POST /explain`` on ``app``; images are prepared by ``prepare`` (as /predict does, bad
    ones a 400), and the model with its stages is loaded on first use."""
    state: dict[str, Any] = {}
    lock = threading.Lock()  # one explanation at a time: each is a burst of forward and backward passes

    def model():
        if "model" not in state:  # the predictor's model is BatchNorm-folded, without the stages Grad-CAM reads
            from mnistlab.artifact import load_artifact

            state["model"] = load_artifact(predictor.source)[0]
        return state["model"]

    def run(pixels: np.ndarray, method: str, target: int | None) -> dict[str, Any]:
        import torch

        from mnistlab.explain import explain

        batch = torch.from_numpy(np.ascontiguousarray(pixels))[None, None]  # [S, S] -> [1, 1, S, S]
        with lock:
            result = explain(model(), batch, mean=predictor.mean, std=predictor.std, method=method, target=target,
                             autocontrast=predictor.autocontrast, temperature=predictor.temperature)
        t = int(result.targets[0])
        return {"method": method, "target": predictor.classes[t], "index": t,
                "probability": float(result.probabilities[0, t]),
                "label": predictor.classes[int(result.probabilities[0].argmax())],
                "heat": np.round(result.heat()[0], 3).tolist(), "pixels": pixels.tolist(), "model": predictor.name}

    @app.post("/explain", openapi_extra={**body_doc, "parameters": EXPLAIN_PARAMS})
    async def explain_image(request: Request) -> JSONResponse:
        """Which pixels of one image the model's answer rests on: a heat map over its 28x28 view."""
        method = request.query_params.get("method", "integrated-gradients")
        if method not in METHODS:
            raise PayloadError(422, f"method must be one of {', '.join(METHODS)}")
        target = int_param(request.query_params, "target", 0, len(predictor.classes) - 1)
        if predictor.backend != "torch":
            raise PayloadError(409, "explanations need the PyTorch model: serve the run directory, not the .onnx file")
        body = await read_body(request, settings.max_body_bytes)
        [(name, data)] = await extract_images(request, body, many=False, max_images=1)
        pixels = await prepare(predictor, name, data, settings.max_pixels)
        try:
            return JSONResponse(await run_in_threadpool(run, pixels, method, target))
        except MnistlabError as err:  # gradcam on a model without convolutions or tokens
            raise PayloadError(400, str(err)) from None
