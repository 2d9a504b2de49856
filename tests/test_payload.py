"""The multipart fast path agrees with Starlette's full parser, and hands anything unusual to it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytest.importorskip("fastapi")

from starlette.datastructures import Headers  # noqa: E402
from starlette.formparsers import MultiPartParser  # noqa: E402

from mnistlab.serve.payload import _simple_multipart  # noqa: E402


def encode(files=None, data=None) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.headers["content-type"], request.read()


def full_parser(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    async def parse():
        async def stream():
            yield body

        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        return [(k, v.filename, await v.read()) if hasattr(v, "read") else (k, None, v.encode())
                for k, v in form.multi_items()]

    return asyncio.run(parse())


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) + b"\r\n--not-the-boundary\r\n\r\n"


@pytest.mark.parametrize("files,data", [
    ({"file": ("seven.png", PNG, "image/png")}, None),
    ([("files", ("a.png", PNG)), ("files", ("b.png", b"")), ("files", ("c d.png", PNG[::-1]))], None),
    ({"file": ("x.png", PNG)}, {"note": "hello", "top_k": "3"}),
])
def test_fast_path_matches_the_full_parser(files, data):
    ctype, body = encode(files, data)
    fast = _simple_multipart(ctype, body)
    assert fast is not None
    assert sorted(fast) == sorted(full_parser(ctype, body))


def test_crlf_epilogue_and_quoted_boundary():
    body = (b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + PNG + b"\r\n--b0--\r\n")
    assert _simple_multipart('multipart/form-data; boundary="b0"', body) == [("file", "a.png", PNG)]


@pytest.mark.parametrize("body", [
    b"",
    b"garbage",
    b"preamble\r\n--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxx\r\n--b0--",
    b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxx\r\n--b0",  # no final --
    b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nxx\r\n--b0--",  # no blank line
    b"--b0\r\nContent-Type: image/png\r\n\r\nxx\r\n--b0--",  # no Content-Disposition
    b"--b0\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Transfer-Encoding: base64\r\n\r\neHg=\r\n--b0--",
    b"--b0\r\nContent-Disposition: attachment; name=\"file\"\r\n\r\nxx\r\n--b0--",
    b"--b0\r\nbroken header\r\n\r\nxx\r\n--b0--",
])
def test_unusual_bodies_go_to_the_full_parser(body):
    assert _simple_multipart("multipart/form-data; boundary=b0", body) is None


def test_no_boundary_goes_to_the_full_parser():
    assert _simple_multipart("multipart/form-data", b"--b0\r\n\r\nxx\r\n--b0--") is None
