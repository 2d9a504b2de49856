"""The attribution heat map: POST /explain, and the drawing page drawing it over the digit in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("captum")
from deploy_helpers import digit_image, png_bytes, tiny_exported  # noqa: E402
from test_page import browser, draw, page, preview_pixels, server_url  # noqa: E402, F401  (fixtures and helpers)

from mnistlab.data.images import preprocess_image  # noqa: E402
from mnistlab.explain import METHODS  # noqa: E402
from mnistlab.serve.explaining import METHODS as SERVED_METHODS  # noqa: E402

pytestmark = pytest.mark.browser


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_server_names_the_same_methods():
    assert SERVED_METHODS == METHODS


def test_explain_endpoint_answers_a_heat_map_on_the_model_grid(server_url):  # noqa: F811
    png = png_bytes(digit_image("7", size=200))
    for method in METHODS:
        status, data = post(f"{server_url}/explain?method={method}", png)
        assert status == 200, data
        heat, pixels = np.array(data["heat"]), np.array(data["pixels"])
        assert heat.shape == pixels.shape == (28, 28) and heat.min() >= 0 and heat.max() <= 1
        assert np.array_equal(pixels, preprocess_image(Image.open(io.BytesIO(png))))  # the one preprocessing path
        assert data["method"] == method and 0 <= data["probability"] <= 1
        if method == "integrated-gradients":  # from a blank baseline: no evidence where there is no ink
            assert heat.max() == 1.0 and (heat[pixels == 0] == 0).all()
    status, data = post(f"{server_url}/explain?method=integrated-gradients&target=3", png)
    assert status == 200 and data["target"] == "3" and data["index"] == 3
    assert post(f"{server_url}/explain?method=shap", png)[0] == 422
    assert post(f"{server_url}/explain?target=10", png)[0] == 422
    assert post(f"{server_url}/explain", b"not an image")[0] == 400


def test_an_onnx_model_has_no_explanations():
    from fastapi.testclient import TestClient

    from mnistlab.serve import Settings, create_app

    _, onnx_file = tiny_exported()
    with TestClient(create_app(Settings(model=str(onnx_file)))) as client:
        res = client.post("/explain", content=png_bytes(digit_image("7")), headers={"Content-Type": "image/png"})
    assert res.status_code == 409 and "PyTorch model" in res.json()["error"]


def heat_canvas(page) -> np.ndarray:  # noqa: F811
    data = page.evaluate("""() => {
        const c = document.getElementById('heat');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""")
    return np.array(data, dtype=np.int32).reshape(28, 28, 4)[..., :3]


def test_the_page_draws_the_heat_map_over_the_digit_as_it_is_read(page):  # noqa: F811
    assert page.evaluate("document.getElementById('heat').dataset.state") == "empty"
    draw(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a 7
    page.wait_for_function("document.getElementById('heat').dataset.state === 'explained'")
    time.sleep(0.8)  # the last throttled prediction, then its explanation
    page.wait_for_function("document.getElementById('heat').dataset.state === 'explained'")
    rgb = heat_canvas(page)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 8  # the heat colours; the dimmed digit is gray
    ink = preview_pixels(page) > 0
    assert coloured.sum() >= 5 and int(page.evaluate("document.getElementById('heat').dataset.hot")) >= 5
    assert not (coloured & ~ink).any()  # integrated gradients from a blank image: colour only on the ink
    # the gray under the colours is the digit the model saw: dimmed to 40% where nothing is coloured
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    seen = preprocess_image(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    plain = ~coloured
    assert np.abs(rgb[..., 0][plain] - np.floor(0.4 * seen[plain])).max() <= 1
    assert "integrated-gradients: evidence for" in page.text_content("#heat-status")

    page.select_option("#heat-method", "occlusion")
    page.wait_for_function("document.getElementById('heat-status').textContent.startsWith('occlusion')")
    page.click("#clear")
    assert page.evaluate("document.getElementById('heat').dataset.state") == "empty"
    assert heat_canvas(page).sum() == 0
