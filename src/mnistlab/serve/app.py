"""The HTTP app: a drawing page, prediction endpoints, health and the model card.

``create_app(settings)`` loads the model and returns a FastAPI app; importing this module loads
no model and starts nothing. Every image goes through the one preprocessing path (``Predictor.prepare``),
concurrent requests share forward passes through a :class:`MicroBatcher`, and ``POST /predict``
takes a short way past FastAPI's router (:class:`FastPath`). Speed figures: benchmarks/README.md.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from mnistlab import __version__
from mnistlab.errors import MnistlabError
from mnistlab.predict import Predictor, load_predictor, predictions_from_probs
from mnistlab.serve.batcher import MicroBatcher
from mnistlab.serve.explaining import add_explain_route
from mnistlab.serve.payload import PayloadError, bool_param, extract_images, int_param, read_body
from mnistlab.serve.reading import add_read_route
from mnistlab.serve.settings import Settings

STATIC = Path(__file__).parent / "static"
INLINE_DECODE_BYTES = 64 * 1024  # larger images are decoded in a worker thread, off the event loop

_BINARY = {"type": "string", "format": "binary"}
PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}},
    "application/json": {"schema": {"type": "object", "properties": {"image": {"type": "string", "description": "base64"}},
                                     "required": ["image"]}},
    "image/png": {"schema": _BINARY},
}}}
# Query options are read by hand (query_options), which keeps FastAPI's per-request work small; declared here for /docs.
TOP_K = {"name": "top_k", "in": "query", "required": False, "description": "length of the top_k list (default 3)",
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}
PREVIEW = {"name": "preview", "in": "query", "required": False, "schema": {"type": "boolean", "default": False},
           "description": "also return the 28x28 pixels the model saw"}
BATCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {"type": "array", "items": _BINARY}}}},
    "application/json": {"schema": {"type": "object", "properties": {"images": {"type": "array", "items": {"type": "string"}}}}},
}}}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


async def prepare(predictor: Predictor, name: str, data: bytes, max_pixels: int) -> np.ndarray:
    """The model's 28x28 view (uint8 [S, S]) of image bytes; bad images raise PayloadError 400.

    Images declaring more than ``max_pixels`` are refused from their header, before any pixel is
    decoded: a small body that decodes to hundreds of megabytes is an easy way to exhaust memory.
    """
    try:
        if len(data) > INLINE_DECODE_BYTES:
            return await run_in_threadpool(predictor.prepare_source, data, name, max_pixels)
        return predictor.prepare_source(data, name, max_pixels)
    except MnistlabError as err:  # not an image, corrupt, truncated, too many pixels
        raise PayloadError(400, str(err)) from None
    except Exception as err:  # an image PIL opens but cannot convert: still the client's input
        raise PayloadError(400, f"{name}: cannot process image ({type(err).__name__}: {err})") from None


def query_options(request: Request) -> tuple[int | None, bool]:
    """(top_k, preview) from the query string; invalid values are a 422 with a JSON error."""
    params = request.query_params
    return int_param(params, "top_k", 1, 1000), bool_param(params, "preview")


class FastPath:
    """ASGI middleware: ``POST path`` goes straight to ``handler``, past FastAPI's router, exception
    middleware and dependency machinery, which cost more CPU than the prediction itself. The
    route stays declared on the app for /docs; both call the same handler.
    """

    def __init__(self, app: ASGIApp, *, path: str, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.app, self.path, self.handler = app, path, handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        try:
            response = await self.handler(Request(scope, receive))
        except PayloadError as err:
            response = error_response(err.status, err.message)
        await response(scope, receive, send)


def model_info(predictor: Predictor) -> dict[str, Any]:
    """What GET /model answers: the model card plus how it is served."""
    s = predictor.size
    return {"name": predictor.name, "backend": predictor.backend, "classes": predictor.classes,
            "input": f"any image; preprocessed MNIST-style to {s}x{s} (see 'preview' in /predict?preview=true)",
            "card": predictor.card}


def _lifespan(batcher: MicroBatcher) -> Callable[[FastAPI], Any]:
    """Start-up and shut-down of a worker: freeze what start-up loaded, close the batcher at the end."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        # Everything loaded so far (libraries, model, app) lives as long as the process: move it out of
        # the collector's reach, so a full collection under load scans only request garbage. Without
        # this, each full collection paused the worker for ~50 ms, which set the p99 latency.
        gc.collect()
        gc.freeze()
        yield
        batcher.close()

    return lifespan


def create_app(settings: Settings) -> FastAPI:
    """Load the model named by ``settings`` and build the app around it."""
    predictor = load_predictor(settings.model, device=settings.device, threads=settings.threads)
    batcher = MicroBatcher(lambda px: predictor.run(px)[1], max_batch=settings.max_batch,
                           wait_s=settings.batch_wait_ms / 1000, in_thread=settings.batch_in_thread)
    page = (STATIC / "index.html").read_text()
    app = FastAPI(title="mnistlab", version=__version__, lifespan=_lifespan(batcher),
                  description=f"Image classification with model '{predictor.name}' ({predictor.backend}). "
                              "Draw at / ; POST images to /predict.")
    app.state.settings, app.state.predictor, app.state.batcher = settings, predictor, batcher
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(PayloadError)
    async def _payload_error(_: Request, err: PayloadError) -> JSONResponse:
        return error_response(err.status, err.message)

    async def classify(pixels: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        probs = await batcher.submit(pixels[:, None])  # [N, S, S] -> [N, 1, S, S]
        preds = predictions_from_probs(probs, predictor.classes, top_k or settings.top_k)
        return [{**p.to_dict(), "model": predictor.name} for p in preds]

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, with the model's name and how many images this worker process (pid) predicted."""
        return {"status": "ok", "model": predictor.name, "backend": predictor.backend,
                "images": batcher.images, "batches": batcher.batches, "pid": os.getpid()}

    @app.get("/model")
    async def model_card() -> dict[str, Any]:
        """The model card: architecture, classes, preprocessing, metrics, versions."""
        return model_info(predictor)

    async def predict_one(request: Request) -> JSONResponse:
        """Classify one image: multipart field 'file', JSON {"image": base64} or raw image bytes."""
        top_k, preview = query_options(request)
        body = await read_body(request, settings.max_body_bytes)
        [(name, data)] = await extract_images(request, body, many=False, max_images=1)
        pixels = await prepare(predictor, name, data, settings.max_pixels)
        [result] = await classify(pixels[None], top_k)
        if preview:
            result["preview"] = pixels.tolist()
        return JSONResponse(result)

    app.post("/predict", openapi_extra={**PREDICT_BODY, "parameters": [TOP_K, PREVIEW]})(predict_one)
    add_read_route(app, predictor, settings, PREDICT_BODY)  # POST /read: a string of characters
    add_explain_route(app, predictor, settings, PREDICT_BODY, prepare)  # POST /explain: the heat map over the digit
    app.add_middleware(FastPath, path="/predict", handler=predict_one)

    @app.post("/predict/batch", openapi_extra={**BATCH_BODY, "parameters": [TOP_K]})
    async def predict_batch(request: Request) -> JSONResponse:
        """Classify many images; a bad image gets an 'error' entry and the rest are still classified."""
        top_k, _ = query_options(request)
        body = await read_body(request, settings.max_body_bytes)
        items = await extract_images(request, body, many=True, max_images=settings.max_images)
        results: list[dict[str, Any]] = []
        good: list[tuple[int, np.ndarray]] = []
        for i, (name, data) in enumerate(items):
            try:
                good.append((i, await prepare(predictor, name, data, settings.max_pixels)))
                results.append({})
            except PayloadError as err:
                results.append({"name": name, "error": err.message})
        if good:
            preds = await classify(np.stack([px for _, px in good]), top_k)
            for (i, _), pred in zip(good, preds, strict=True):
                results[i] = {"name": items[i][0], **pred}
        return JSONResponse({"results": results, "model": predictor.name,
                             "failed": sum(1 for r in results if "error" in r)})

    return app


def create_app_from_env() -> FastAPI:
    """The app for a uvicorn worker process (``mnistlab serve --workers N``)."""
    return create_app(Settings.from_env())
