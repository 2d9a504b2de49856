"""The real-image path: loading with clear errors, and MNIST-style preprocessing of any image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import as_mode, draw_digit
from PIL import Image

from mnistlab.data import images
from mnistlab.data.images import ImageError, image_to_array, images_to_tensor, load_image, preprocess_image
from mnistlab.errors import DataError


def _centre_of_mass(a: np.ndarray) -> tuple[float, float]:
    a = a.astype(np.float64)
    idx = np.arange(a.shape[0])
    return float(a.sum(1) @ idx / a.sum()), float(a.sum(0) @ idx / a.sum())


def _ink_box(a: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def _mnist_like(shape: str = "seven") -> np.ndarray:
    """A digit made the way MNIST's were: fitted in a 20x20 box, centred by mass in 28x28."""
    return preprocess_image(draw_digit(shape, (200, 200), dark_ink=False, stroke=22))


def assert_mnist_style(out: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert out.max() == 255
    assert out[0, 0] == out[0, -1] == out[-1, 0] == out[-1, -1] == 0
    assert max(_ink_box(out > 0)) in (20, 21)  # longer side scaled to 20 (+1 for resampling spill)
    cy, cx = _centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "1"])
@pytest.mark.parametrize("dark_ink", [True, False])
def test_every_mode_and_polarity_gives_the_same_digit(mode, dark_ink):
    drawing = draw_digit("seven", (90, 130), dark_ink=dark_ink)
    reference = preprocess_image(draw_digit("seven", (90, 130), dark_ink=True))
    out = preprocess_image(as_mode(drawing, mode, dark_ink=dark_ink))
    assert_mnist_style(out)
    assert np.abs(out.astype(int) - reference).mean() < 6  # same glyph whatever the encoding


@pytest.mark.parametrize("size", [(9, 12), (28, 28), (640, 480), (3000, 2200)])
def test_any_size_is_scaled_to_the_20px_box(size):
    out = preprocess_image(draw_digit("ring", size))
    assert_mnist_style(out)


def test_canvas_white_ink_on_transparent_is_not_lost():
    # RGB of transparent pixels is white too: compositing onto white would erase the drawing.
    gray = np.asarray(draw_digit("bar", (100, 100), dark_ink=False))
    rgba = np.stack([np.full_like(gray, 255)] * 3 + [gray], axis=-1)  # [H, W, 4]
    out = preprocess_image(Image.fromarray(rgba))
    assert_mnist_style(out)
    assert _ink_box(out > 0)[0] == 20  # the tall bar survived


def test_blank_and_flat_images_give_zeros():
    for img in (Image.new("L", (50, 50), 255), Image.new("RGB", (50, 50), (30, 30, 30)),
                Image.new("RGBA", (40, 40), (0, 0, 0, 0)), Image.new("L", (1, 1), 0)):
        out = preprocess_image(img)
        assert out.shape == (28, 28) and out.max() == 0


def test_faint_noise_is_not_blown_up_into_a_digit():
    rng = np.random.default_rng(0)
    noisy = (200 + rng.integers(-4, 5, size=(64, 64))).astype(np.uint8)
    assert preprocess_image(Image.fromarray(noisy)).max() == 0


def test_photo_like_input_with_noise_and_grey_paper():
    rng = np.random.default_rng(1)
    clean = np.asarray(draw_digit("seven", (300, 400)), dtype=np.float64)  # 0 ink, 255 paper
    photo = 60 + clean * 0.6 + rng.normal(0, 6, clean.shape)  # grey paper, dark ink, sensor noise
    out = preprocess_image(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).convert("RGB"))
    reference = preprocess_image(draw_digit("seven", (300, 400)))
    assert_mnist_style(out)
    assert np.abs(out.astype(int) - reference).mean() < 6


@pytest.mark.parametrize("seed", range(8))
def test_small_noisy_scan_under_uneven_light_is_cropped_to_the_digit(seed):
    # A digit some 30 px tall in a page a little larger, paper darker on one side and scanner
    # noise: neither the darker side nor the specks of noise may count as ink and widen the crop
    # (they did: the digit came out a third of its size, in a corner of the 20 px box).
    rng = np.random.default_rng(seed)
    clean = np.asarray(draw_digit("ring", (48, 44), stroke=3), dtype=np.float64) / 255  # 1 paper, 0 ink
    paper = 215 - 30 * np.linspace(0, 1, clean.shape[1])[None, :]
    scan = paper * clean + 50 * (1 - clean) + rng.normal(0, 9, clean.shape)
    out = preprocess_image(Image.fromarray(np.clip(scan, 0, 255).astype(np.uint8)))
    reference = preprocess_image(draw_digit("ring", (48, 44), stroke=3))
    assert_mnist_style(out)
    (h, w), (ref_h, ref_w) = _ink_box(out > 64), _ink_box(reference > 64)
    assert abs(h - ref_h) <= 1 and abs(w - ref_w) <= 1  # the same size as on clean paper


@pytest.mark.parametrize("shape", ["seven", "ring"])  # (a straight bar cropped tight is all ink: no paper to see)
@pytest.mark.parametrize("dark_ink", [True, False])
def test_a_digit_cropped_tight_to_its_ink_is_read_like_one_with_a_margin(shape, dark_ink):
    # Datasets of real handwriting often crop each digit to its ink: the strokes touch the image's
    # edges, and the seven's bar is a whole border row. That ink is not paper (it used to be taken
    # for the paper's noise and wipe out the digit, or tilt the fitted paper level).
    drawing = draw_digit(shape, (120, 160), dark_ink=dark_ink, stroke=14)
    a = np.asarray(drawing)
    ink_rows, ink_cols = np.flatnonzero((a != a[0, 0]).any(1)), np.flatnonzero((a != a[0, 0]).any(0))
    tight = drawing.crop((ink_cols[0], ink_rows[0], ink_cols[-1] + 1, ink_rows[-1] + 1))
    out, reference = preprocess_image(tight), preprocess_image(drawing)
    assert_mnist_style(out)
    assert np.abs(out.astype(int) - reference).mean() < 6


def test_mnist_style_input_is_nearly_unchanged():
    digit = _mnist_like("seven")
    assert_mnist_style(digit)
    again = preprocess_image(Image.fromarray(digit))
    assert np.abs(again.astype(int) - digit).mean() < 0.5


def test_other_output_size():
    out = preprocess_image(draw_digit("bar"), size=56)
    assert out.shape == (56, 56) and max(_ink_box(out > 0)) in (40, 41)


def test_images_to_tensor():
    t = images_to_tensor([np.zeros((28, 28), np.uint8), np.full((28, 28), 7, np.uint8)])
    assert t.shape == (2, 1, 28, 28) and t.dtype == torch.uint8 and int(t[1].max()) == 7
    assert images_to_tensor([]).shape == (0, 1, 28, 28)


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_load_from_path_bytes_and_stream(tmp_path):
    data = _png_bytes(draw_digit())
    (tmp_path / "d.png").write_bytes(data)
    for source in (tmp_path / "d.png", str(tmp_path / "d.png"), data, io.BytesIO(data)):
        assert load_image(source).size == (120, 160)
    assert image_to_array(data).shape == (28, 28)


def test_load_errors_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image at all")
    full = _png_bytes(draw_digit(size=(300, 300)).convert("RGB"))
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    cases = {"empty.png": "empty file", "notes.png": "not an image", "cut.png": "corrupt or truncated"}
    for name, reason in cases.items():
        with pytest.raises(ImageError, match=rf"{name}: {reason}") as err:
            load_image(tmp_path / name)
        assert isinstance(err.value, DataError) and err.value.reason.startswith(reason)
    with pytest.raises(DataError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="upload.jpg: empty file"):
        load_image(b"", name="upload.jpg")


def test_too_large_is_refused_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("1", (10_000, 5_000)).save(big)  # 50 Mpixel, a few kB on disk
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageError, match=r"big.png: too large \(10000x5000"):
        load_image(big)
    assert not decoded
    monkeypatch.undo()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 99)
    with pytest.raises(ImageError, match="too large"):
        load_image(_png_bytes(Image.new("L", (10, 10))))
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 10)
    (tmp_path / "small.png").write_bytes(_png_bytes(Image.new("L", (5, 5))))
    for source in (tmp_path / "small.png", (tmp_path / "small.png").read_bytes(), io.BytesIO(b"x" * 11)):
        with pytest.raises(ImageError, match=r"too large \("):
            load_image(source)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"])
def test_formats(fmt):
    img = draw_digit("ring", (64, 64))
    out = image_to_array(_png_bytes(img, fmt))
    assert_mnist_style(out)


@pytest.mark.real_data
def test_real_mnist_digits_round_trip(real_data_dir: Path):
    from mnistlab.data.idx import read_idx

    digits = read_idx(real_data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")[:500]
    diffs = [np.abs(preprocess_image(Image.fromarray(d)).astype(int) - d).mean() for d in digits]
    assert np.mean(diffs) < 0.1 and np.max(diffs) < 2


def test_fast_percentile_matches_numpy():
    from mnistlab.data.images import _percentile

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 108, 1000):
        for values in (rng.random(n).astype(np.float32) * 255, rng.integers(0, 256, n).astype(np.float32)):
            for q in (0, 10, 50, 90, 100):
                assert _percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-6, abs=1e-4)
