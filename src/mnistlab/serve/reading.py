"""``POST /read``: read the handwritten string in one image (the drawing page's string mode uses it).

The body is what ``/predict`` takes (multipart field 'file', JSON {"image": base64} or raw image
bytes); query ``expect_length`` (1-40) and ``charset`` (digits, letters, all or the characters)
constrain the answer. The reply is ``mnistlab read --json``'s object plus the model's name. Bad
parameters are a 422, a bad or blank image a 400: the client's input is never a 5xx. With
``Settings.read_model`` (``serve --read-model RUN``) the sequence reader of that run reads; else
the served classifier does, by segmentation.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.predict import Predictor
from mnistlab.read import StringReader
from mnistlab.serve.payload import PayloadError, extract_images, int_param, read_body
from mnistlab.serve.settings import Settings

MAX_CHARSET = 200  # characters in a charset parameter
READ_PARAMS = [
    {"name": "expect_length", "in": "query", "required": False, "description": "read exactly this many characters",
     "schema": {"type": "integer", "minimum": 1, "maximum": 40}},
    {"name": "charset", "in": "query", "required": False,
     "description": "allowed characters: digits (default), letters, all, or the characters themselves",
     "schema": {"type": "string", "maxLength": MAX_CHARSET}},
]


def add_read_route(app: FastAPI, predictor: Predictor, settings: Settings, body_doc: dict[str, Any]) -> None:
    """Register ``POST /read`` on ``app``."""
    base: Any = StringReader(predictor)
    model_name = predictor.name
    if getattr(settings, "read_model", None):  # the sequence reader needs torch: imported only then (ONNX serving has none)
        from mnistlab.read_ctc import CtcReader

        base = CtcReader.load(settings.read_model)
        model_name = base.name
    readers: dict[str | None, Any] = {None: base}

    def reader_for(charset: str | None) -> Any:
        if charset is not None and (not charset or len(charset) > MAX_CHARSET):
            raise PayloadError(422, f"charset must be 1 to {MAX_CHARSET} characters")
        if charset not in readers:
            try:
                readers[charset] = base.with_charset(charset)
            except ConfigError as err:
                raise PayloadError(422, str(err)) from None
            if len(readers) > 64:  # a bounded cache of the charsets clients use
                readers.pop(next(k for k in readers if k is not None))
        return readers[charset]

    @app.post("/read", openapi_extra={**body_doc, "parameters": READ_PARAMS})
    async def read_string(request: Request) -> JSONResponse:
        """Read the string of characters in one image, left to right, with a box per character."""
        expect = int_param(request.query_params, "expect_length", 1, 40)
        reader = reader_for(request.query_params.get("charset"))
        body = await read_body(request, settings.max_body_bytes)
        [(name, data)] = await extract_images(request, body, many=False, max_images=1)
        try:
            reading = await run_in_threadpool(reader.read, data, name=name, expect_length=expect,
                                              max_pixels=settings.max_pixels)
        except MnistlabError as err:  # not an image, blank, too many pixels
            raise PayloadError(400, str(err)) from None
        except Exception as err:  # an image PIL opens but cannot convert: still the client's input
            raise PayloadError(400, f"{name}: cannot read image ({type(err).__name__}: {err})") from None
        return JSONResponse({**reading.to_dict(), "model": model_name})
