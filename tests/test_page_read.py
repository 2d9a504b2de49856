"""The drawing page's string mode in headless Chromium: write digits in a row, see them read with boxes."""

from __future__ import annotations

import pytest
from test_page import browser, page, server_url  # noqa: F401  (the page fixtures: server, Chromium, a fresh page)

pytestmark = pytest.mark.browser


def write(page, strokes: list[list[tuple[float, float]]]) -> None:  # noqa: F811
    """Drag the mouse along each stroke, given as fractions of the string pad's width and height."""
    page.locator("#string-pad").scroll_into_view_if_needed()  # below the single-digit panels on small screens
    box = page.locator("#string-pad").bounding_box()
    for points in strokes:
        xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
        page.mouse.move(*xy[0])
        page.mouse.down()
        for x, y in xy[1:]:
            page.mouse.move(x, y, steps=6)
        page.mouse.up()


def read_after(page, strokes) -> dict:  # noqa: F811
    """Write ``strokes``, wait for the page to show its reading, and return the last /read answer."""
    answers = []
    page.on("response", lambda r: answers.append(r) if "/read" in r.url and r.request.method == "POST" else None)
    write(page, strokes)
    page.wait_for_function("document.getElementById('string-mode').dataset.state === 'read'")
    assert answers and answers[-1].status == 200
    return answers[-1].json()


def test_string_mode_reads_each_written_digit_with_a_box(page):  # noqa: F811
    panel = "document.getElementById('string-mode').dataset"
    assert page.evaluate(f"{panel}.state") == "empty"
    body = read_after(page, [[(x, 0.2), (x, 0.8)] for x in (0.2, 0.4, 0.6, 0.8)])  # four separate strokes
    assert len(body["chars"]) == 4 == int(page.evaluate(f"{panel}.chars"))
    assert page.text_content("#string-text").strip() == body["text"] and len(body["text"]) == 4
    lefts = [c["box"][0] for c in body["chars"]]
    assert lefts == sorted(lefts)
    # the boxes are drawn over the pad where the strokes are: some pixels of the overlay are painted
    painted = page.evaluate("""() => {
        const c = document.getElementById('string-boxes');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;
    }""")
    assert painted > 100
    assert page.locator("#string-chars li").count() == 4


def test_string_mode_expected_length_and_clear(page):  # noqa: F811
    panel = "document.getElementById('string-mode').dataset"
    page.fill("#string-length", "3")
    with page.expect_request(lambda r: "/read?expect_length=3" in r.url):
        read_after(page, [[(0.2, 0.2), (0.2, 0.8)], [(0.5, 0.2), (0.5, 0.8)], [(0.8, 0.2), (0.8, 0.8)]])
    assert len(page.text_content("#string-text").strip()) == 3
    page.click("#string-clear")
    assert page.evaluate(f"{panel}.state") == "empty" and page.evaluate(f"{panel}.chars") == "0"
    # the single-digit pad still works beside it
    assert page.evaluate("document.body.dataset.state") == "empty"
