"""The HTTP API on a tiny untrained model: answers, the one preprocessing path, limits and bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from deploy_helpers import CLASSES, bomb_png, digit_image, png_bytes, tiny_artifact, tiny_exported  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.data.images import preprocess_image  # noqa: E402
from mnistlab.predict import load_predictor  # noqa: E402
from mnistlab.serve import Settings, create_app  # noqa: E402
from mnistlab.serve.batcher import MicroBatcher  # noqa: E402

SEVEN = png_bytes(digit_image("7"))
OK_ERRORS = {400, 413, 415, 422}


@pytest.fixture(scope="module")
def artifact():
    return tiny_artifact()


@pytest.fixture(scope="module")
def client(artifact):
    with TestClient(create_app(Settings(model=str(artifact), threads=1))) as c:
        yield c


def check_prediction(body: dict, top_k: int = 3) -> None:
    assert body["label"] in CLASSES
    assert set(body["probabilities"]) == set(CLASSES)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["probability"] == pytest.approx(max(body["probabilities"].values()))
    assert [t["label"] for t in body["top_k"]][0] == body["label"] and len(body["top_k"]) == top_k
    assert body["model"] == "tiny-model"


def test_health_model_page_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["classes"] == CLASSES and info["card"]["arch"] == "cnn" and info["backend"] == "torch"
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text and "/static/app.js" in page.text
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/predict?preview=true" in js.text
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict/batch", "/health", "/model"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]


def test_predict_multipart_json_raw_agree(client):
    multipart = client.post("/predict", files={"file": ("seven.png", SEVEN, "image/png")})
    assert multipart.status_code == 200
    check_prediction(multipart.json())
    b64 = base64.b64encode(SEVEN).decode()
    as_json = client.post("/predict", json={"image": b64}).json()
    data_url = client.post("/predict", json={"image": "data:image/png;base64," + b64}).json()
    raw = client.post("/predict", content=SEVEN, headers={"content-type": "image/png"}).json()
    for other in (as_json, data_url, raw):
        assert other["probabilities"] == pytest.approx(multipart.json()["probabilities"], abs=1e-6)


def test_preview_is_the_one_preprocessing_path(client, artifact):
    img = digit_image("7", size=300, mode="RGB", dark_on_light=True)  # a photo-like scan: dark ink on white
    body = client.post("/predict?preview=true&top_k=10", files={"file": ("s.png", png_bytes(img))}).json()
    check_prediction(body, top_k=10)
    expected = preprocess_image(img)
    assert np.array_equal(np.array(body["preview"], dtype=np.uint8), expected)
    offline = load_predictor(artifact).predict_pixels(expected[None])[0]
    assert body["label"] == offline.label
    assert body["probabilities"] == pytest.approx(offline.probabilities, abs=1e-5)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16", "CMYK", "LA"])
def test_image_modes_are_accepted(client, mode):
    img = digit_image("0", size=64, mode="RGB" if mode == "CMYK" else "L")
    img = img.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(img, dtype=np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    r = client.post("/predict", files={"file": ("x", png_bytes(img, fmt))})
    assert r.status_code == 200, r.text
    check_prediction(r.json())


def test_blank_and_tiny_images_predict(client):
    for img in (Image.new("L", (280, 280), 0), Image.new("RGB", (1, 1), "white"), Image.new("L", (3000, 20), 255)):
        r = client.post("/predict?preview=true", files={"file": ("x.png", png_bytes(img))})
        assert r.status_code == 200, r.text
    assert np.array(client.post("/predict?preview=true", files={"file": ("b.png", png_bytes(Image.new("L", (9, 9))))})
                    .json()["preview"]).sum() == 0


def test_batch_keeps_going_past_bad_images(client):
    files = [("files", ("a.png", SEVEN, "image/png")), ("files", ("bad.png", b"not an image", "image/png")),
             ("files", ("c.png", png_bytes(digit_image("1")), "image/png"))]
    body = client.post("/predict/batch", files=files).json()
    assert body["failed"] == 1 and len(body["results"]) == 3
    check_prediction(body["results"][0])
    assert body["results"][1]["name"] == "bad.png" and "not an image" in body["results"][1]["error"]
    assert body["results"][2]["name"] == "c.png" and body["results"][2]["label"] in CLASSES
    single = client.post("/predict", files={"file": ("a.png", SEVEN)}).json()
    assert body["results"][0]["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    as_json = client.post("/predict/batch", json={"images": [base64.b64encode(SEVEN).decode()] * 2}).json()
    assert as_json["failed"] == 0 and len(as_json["results"]) == 2


def test_top_k(client):
    assert len(client.post("/predict?top_k=5", files={"file": ("a.png", SEVEN)}).json()["top_k"]) == 5
    assert len(client.post("/predict?top_k=50", files={"file": ("a.png", SEVEN)}).json()["top_k"]) == 10
    for bad in ("top_k=0", "top_k=abc", "top_k=-1", "preview=maybe"):
        r = client.post(f"/predict?{bad}", files={"file": ("a.png", SEVEN)})
        assert r.status_code == 422 and r.json()["error"]


TRUNCATED = SEVEN[: len(SEVEN) // 2]
BAD_REQUESTS = {
    "not an image": dict(files={"file": ("a.txt", b"hello, world " * 10, "text/plain")}),
    "zero bytes": dict(files={"file": ("empty.png", b"", "image/png")}),
    "truncated png": dict(files={"file": ("cut.png", TRUNCATED, "image/png")}),
    "corrupt png body": dict(files={"file": ("bad.png", SEVEN[:40] + bytes(200) + SEVEN[240:], "image/png")}),
    "missing file field": dict(files={"image": ("a.png", SEVEN, "image/png")}),
    "text field named file": dict(data={"file": "not a file"}, files={"other": ("x.png", b"x")}),
    "multipart without boundary": dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
    "garbage multipart": dict(content=b"\x00\xff" * 100, headers={"content-type": "multipart/form-data; boundary=abc"}),
    "bad base64": dict(json={"image": "this is *not* base64!"}),
    "base64 of text": dict(json={"image": base64.b64encode(b"plain text").decode()}),
    "image not a string": dict(json={"image": 42}),
    "json list": dict(json=[1, 2, 3]),
    "json missing key": dict(json={"picture": "abc"}),
    "invalid json": dict(content=b"{not json", headers={"content-type": "application/json"}),
    "bomb header": dict(content=bomb_png(8000, 8000), headers={"content-type": "image/png"}),
    "huge bomb header": dict(content=bomb_png(60000, 60000), headers={"content-type": "image/png"}),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_input_is_a_400_with_a_json_error(client, name):
    r = client.post("/predict", **BAD_REQUESTS[name])
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_decompression_bomb_rejected_before_decoding(client):
    start = time.perf_counter()
    r = client.post("/predict", content=bomb_png(30000, 30000), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "too large" in r.json()["error"]
    assert time.perf_counter() - start < 2.0  # 900 megapixels would take far longer to decode


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_unsupported_content_type_is_415(client, ctype):
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/predict", content=SEVEN, headers=headers)
    assert r.status_code == 415 and "Content-Type" in r.json()["error"]
    assert client.post("/predict/batch", content=SEVEN, headers={"content-type": "image/png"}).status_code == 415


def test_body_limit_is_413_with_or_without_content_length(artifact):
    app = create_app(Settings(model=str(artifact), max_body_bytes=10_000, max_images=4))
    with TestClient(app) as small:
        big = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)))
        assert len(big) > 10_000
        r = small.post("/predict", files={"file": ("big.png", big)})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: the server must count while reading
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        r = small.post("/predict", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413
        r = small.post("/predict/batch", files=[("files", ("a.png", SEVEN))] * 5)
        assert r.status_code == 413 and "limit is 4" in r.json()["error"]
        assert small.post("/predict", files={"file": ("a.png", SEVEN)}).status_code == 200


def test_pixel_limit_rejects_small_bodies_that_decode_huge(client, artifact):
    solid = png_bytes(Image.new("L", (5000, 4000)))  # 20 megapixels in a body of a few kilobytes
    assert len(solid) < 100_000
    r = client.post("/predict", content=solid, headers={"content-type": "image/png"})
    assert r.status_code == 400 and "limit is 16,000,000" in r.json()["error"]
    with TestClient(create_app(Settings(model=str(artifact), max_pixels=100 * 100))) as strict:
        assert strict.post("/predict", files={"file": ("a.png", png_bytes(digit_image("7", size=101)))}).status_code == 400
        assert strict.post("/predict", files={"file": ("a.png", png_bytes(digit_image("7", size=100)))}).status_code == 200


def test_default_limit_is_2mb(client):
    r = client.post("/predict", content=b"\x00" * (2 * 1024 * 1024 + 1), headers={"content-type": "image/png"})
    assert r.status_code == 413


def test_random_bytes_never_cause_a_500(client):
    rng = np.random.default_rng(0)
    for i in range(40):
        blob = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        if i % 4 == 0:  # a valid PNG header with a damaged remainder
            blob = SEVEN[:64] + blob
        for kwargs in (dict(files={"file": ("x.png", blob)}), dict(content=blob, headers={"content-type": "image/png"}),
                       dict(content=blob, headers={"content-type": "application/json"}),
                       dict(content=blob, headers={"content-type": "multipart/form-data; boundary=----x"})):
            assert client.post("/predict", **kwargs).status_code in OK_ERRORS | {200}
            assert client.post("/predict/batch", **kwargs).status_code in OK_ERRORS | {200}


def test_concurrent_requests_are_answered_correctly(client):
    images = [png_bytes(digit_image(k, size=s)) for k in "017" for s in (100, 280)]
    expected = [client.post("/predict", files={"file": ("x.png", b)}).json()["probabilities"] for b in images]

    async def fire():
        import httpx

        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await asyncio.gather(*[ac.post("/predict", files={"file": ("x.png", images[i % 6])}) for i in range(48)])

    for i, r in enumerate(asyncio.run(fire())):
        assert r.status_code == 200
        assert r.json()["probabilities"] == pytest.approx(expected[i % 6], abs=1e-5)


@pytest.mark.parametrize("in_thread", [False, True])
def test_micro_batcher_gathers_concurrent_work(in_thread):
    calls = []

    def slow_double(x):
        calls.append(len(x))
        time.sleep(0.01)
        return x * 2

    batcher = MicroBatcher(slow_double, max_batch=16, in_thread=in_thread)

    async def fire():
        first = await batcher.submit(np.full((1, 3), -1))  # alone: runs at once, in a batch of one
        rest = await asyncio.gather(*[batcher.submit(np.full((1 + i % 2, 3), i)) for i in range(40)])
        return first, rest

    first, rest = asyncio.run(fire())
    assert np.array_equal(first, np.full((1, 3), -2))
    for i, rows in enumerate(rest):
        assert np.array_equal(rows, np.full((1 + i % 2, 3), 2 * i))
    assert calls[0] == 1 and sum(calls) == 61 and len(calls) <= 6 and max(calls) <= 16
    assert batcher.batches == len(calls) and batcher.images == 61
    batcher.close()

    failing = MicroBatcher(lambda x: 1 / 0, in_thread=in_thread)
    with pytest.raises(ZeroDivisionError):
        asyncio.run(failing.submit(np.zeros((1, 1))))
    failing.close()


def test_onnx_model_is_served_the_same(client):
    pytest.importorskip("onnxruntime")
    onnx_file = tiny_exported()[1]
    with TestClient(create_app(Settings(model=str(onnx_file)))) as onnx_client:
        assert onnx_client.get("/model").json()["backend"] == "onnxruntime"
        a = onnx_client.post("/predict", files={"file": ("a.png", SEVEN)}).json()
    b = client.post("/predict", files={"file": ("a.png", SEVEN)}).json()
    assert a["model"] == "tiny" and a["label"] == b["label"]
    assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_onnx_model_is_served_without_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
            "from fastapi.testclient import TestClient\n"
            "from mnistlab.serve import Settings, create_app\n"
            f"with TestClient(create_app(Settings(model={str(tiny_exported()[1])!r}))) as c:\n"
            f"    r = c.post('/predict', content={SEVEN!r}, headers={{'content-type': 'image/png'}})\n"
            "    print(r.status_code, r.json()['label'])\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    status, label = done.stdout.split()
    assert status == "200" and label in CLASSES


def test_fast_path_takes_only_post_predict_and_maps_payload_errors():
    from starlette.responses import JSONResponse, PlainTextResponse

    from mnistlab.serve.app import FastPath
    from mnistlab.serve.payload import PayloadError

    calls = []

    async def inner(scope, receive, send):
        calls.append(("app", scope["method"], scope["path"]))
        await PlainTextResponse("app")(scope, receive, send)

    async def handler(request):
        calls.append(("fast", request.method, request.url.path))
        if request.query_params.get("fail"):
            raise PayloadError(415, "no")
        return JSONResponse({"ok": 1})

    fast = TestClient(FastPath(inner, path="/predict", handler=handler))
    assert fast.post("/predict").json() == {"ok": 1}
    assert fast.get("/predict").text == "app" and fast.post("/predict/batch").text == "app"
    r = fast.post("/predict?fail=1")
    assert r.status_code == 415 and r.json() == {"error": "no", "status": 415}
    assert [c[0] for c in calls] == ["fast", "app", "app", "fast"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-worker sockets are used on Linux")
@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_workers_share_the_port_restart_and_stop_on_ctrl_c(inherited):
    """Ctrl-C stops the server also when it starts with SIGINT ignored (as a shell's background job does)."""
    import http.client
    import signal
    import socket

    pytest.importorskip("onnxruntime")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_exported()[1]), "--workers", "2",
                               "--port", str(port)], env=env, start_new_session=True,
                              preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if inherited == "ignored" else None,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def health_pids(connections: int, deadline: float) -> set[int]:
        """The worker pids that answer /health on ``connections`` fresh connections (waiting for start-up)."""
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            for _ in range(connections):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/health")
                    pids.add(json.loads(conn.getresponse().read())["pid"])
                    conn.close()
                except OSError:
                    time.sleep(0.2)
        return pids

    try:
        first = health_pids(32, time.monotonic() + 90)
        assert len(first) == 2, "connections did not reach both workers"
        os.kill(min(first), signal.SIGKILL)  # a crashed worker is replaced
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (health_pids(32, deadline) - first):
            time.sleep(0.2)
        assert health_pids(32, time.monotonic() + 30) - first, "the killed worker was not replaced"
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 0, out
    assert "starting another" in out
