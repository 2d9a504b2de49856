"""The drawing page in headless Chromium: draw, see a prediction and the 28x28 preview; clear; upload; touch."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("MNISTLAB_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from deploy_helpers import CLASSES, digit_image, png_bytes, tiny_artifact  # noqa: E402

from mnistlab.data.images import preprocess_image  # noqa: E402
from mnistlab.serve import Settings, create_app  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    import uvicorn

    app = create_app(Settings(model=str(tiny_artifact()), threads=1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the test server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(has_touch=True, viewport={"width": 900, "height": 700})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(server_url + "/")
    page.wait_for_function("document.querySelectorAll('#bars > div').length === 10")
    yield page
    context.close()
    assert not errors, errors


def preview_pixels(page) -> np.ndarray:
    """The preview canvas as uint8 [28, 28] (its red channel; the preview is gray)."""
    data = page.evaluate("""() => {
        const c = document.getElementById('preview');
        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    }""")
    return np.array(data, dtype=np.uint8).reshape(28, 28, 4)[..., 0]


def draw(page, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through ``points`` given as fractions of the pad's width and height."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_draw_a_stroke_and_see_prediction_and_preview(page):
    assert page.evaluate("document.body.dataset.state") == "empty"
    assert "cnn" in page.text_content("#model")
    draw(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])  # a 7
    page.wait_for_function("document.body.dataset.state === 'predicted' && document.querySelector('#preview').dataset.ink > 0")
    assert page.text_content("#label").strip() in CLASSES
    assert "probability" in page.text_content("#prob")
    widths = page.eval_on_selector_all("#bars .bar > div", "els => els.map(e => parseFloat(e.style.width) || 0)")
    assert len(widths) == 10 and sum(widths) == pytest.approx(100, abs=1.0)
    # the preview is exactly the server's preprocessing of what was drawn (one path, no JS preprocessing)
    time.sleep(0.5)  # let the last throttled request land
    page.wait_for_function("document.body.dataset.state === 'predicted'")
    url = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    drawn = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(preview_pixels(page), preprocess_image(drawn))


def test_clear_resets_and_upload_predicts(page, tmp_path):
    draw(page, [(0.5, 0.15), (0.5, 0.85)])
    page.wait_for_function("document.body.dataset.state === 'predicted'")
    page.click("#clear")
    assert page.evaluate("document.body.dataset.state") == "empty"
    assert preview_pixels(page).sum() == 0
    path = tmp_path / "zero.png"
    path.write_bytes(png_bytes(digit_image("0", size=120, dark_on_light=True)))
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.body.dataset.state === 'predicted'")
    assert np.array_equal(preview_pixels(page), preprocess_image(Image.open(path)))


def test_clear_during_a_stroke_send_stays_clear(page):
    """Clear while the stroke's PNG is being encoded: the late answer for the old drawing is dropped."""
    # a slow encoder (as on a loaded machine) makes the race certain instead of rare
    page.evaluate("""() => {
        const encode = mnistlabPage.canvasBlob;
        mnistlabPage.canvasBlob = (c) => new Promise((r) => setTimeout(() => r(encode(c)), 400));
    }""")
    draw(page, [(0.3, 0.2), (0.7, 0.8)])
    page.click("#clear")
    time.sleep(1.5)  # the encoder's delay and the tiny model's answer
    assert page.evaluate("document.body.dataset.state") == "empty"
    assert preview_pixels(page).sum() == 0


def test_finger_tap_draws_and_predicts(page):
    box = page.locator("#pad").bounding_box()
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_function("document.body.dataset.state === 'predicted'")
    assert page.text_content("#label").strip() in CLASSES
