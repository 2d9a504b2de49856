"""Coverage-guided fuzz target (atheris) over mnistlab's parsers of untrusted input.

The first byte picks the parser: IDX file, image, CSV file, ``key=value`` override, request
body. Each must return a result or raise the project's own error; anything else is a crash.

    python tests/fuzz_target.py -runs=100000 -max_len=4096   # or: pytest tests/test_fuzz.py -m slow
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy  # noqa: F401  (imported before instrumenting: only mnistlab's own code is instrumented)
import PIL.Image  # noqa: F401
import torch  # noqa: F401

with atheris.instrument_imports(include=["mnistlab"]):
    from mnistlab.config import apply_overrides, config_from_dict
    from mnistlab.data.csvdata import load_csv
    from mnistlab.data.idx import read_idx
    from mnistlab.data.images import load_image, preprocess_image
    from mnistlab.errors import MnistlabError
    from mnistlab.serve.payload import PayloadError, extract_images, int_param

from starlette.requests import Request  # noqa: E402

SCRATCH = Path(tempfile.mkdtemp(prefix="mnistlab-atheris-"))
CTYPES = ["multipart/form-data; boundary=b", "application/json", "image/png", "text/plain", ""]


def _idx(data: bytes) -> None:
    path = SCRATCH / "f.idx"
    path.write_bytes(data)
    read_idx(path)


def _image(data: bytes) -> None:
    preprocess_image(load_image(data, name="fuzz", max_pixels=4_000_000))


def _csv(data: bytes) -> None:
    path = SCRATCH / "train.csv"
    path.write_bytes(data)
    load_csv(path, "train", spec="csv:fuzz")


def _override(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    config_from_dict(apply_overrides({}, [line for line in text.splitlines() if line][:4]))
    int_param({"k": text[:50]}, "k", 1, 1000)


def _body(data: bytes) -> None:
    ctype = CTYPES[data[0] % len(CTYPES)] if data else ""
    body = data[1:]
    headers = [(b"content-type", ctype.encode())] if ctype else []
    request = Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""})
    asyncio.run(extract_images(request, body, many=bool(data[:1]) and data[0] >= 128, max_images=4))


PARSERS = [_idx, _image, _csv, _override, _body]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    try:
        PARSERS[data[0] % len(PARSERS)](data[1:])
    except (MnistlabError, PayloadError):
        pass


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
