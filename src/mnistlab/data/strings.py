"""Synthetic handwritten digit strings: digits placed left to right, rendered as scans.

One generator for training the sequence reader and for the reading benchmark: a string is a
row of 28x28 digit images (MNIST's, or any ``[N, 28, 28]`` uint8 set), each cropped to its ink
and placed with a gap from an overlap level (``LEVELS``, in MNIST pixels: wide gaps down to
overlaps), a little vertical jitter, then the whole sheared by a slant, scaled to a digit
height, and printed as dark ink on uneven light paper with noise and, sometimes, a ruling line.

``make_string`` draws the benchmark's strings (its draws are fixed: the published figures are
read from them). ``training_string`` draws from wider ranges for training: lengths 1-10, any
level or a mix, more slant and sizes; the caller passes the digits it may use (training
digits only) and a seeded generator, so each epoch's strings are fresh and reproducible.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

LEVELS = {"wide": (6, 14), "normal": (1, 5), "touching": (-1, 0), "overlap": (-5, -2)}  # gap in MNIST px
TRAIN_GAPS = (-7, 16)  # the widest range of gaps training strings draw from, MNIST px
DIGIT_PX = (16, 24, 40, 64, 120)  # digit heights of the benchmark's scans, pixels


def crop_digit(d: np.ndarray) -> np.ndarray:
    """A 28x28 uint8 digit cropped to its ink (pixels above 30); a blank one stays whole."""
    rows, cols = np.flatnonzero(d.max(1) > 30), np.flatnonzero(d.max(0) > 30)
    if not len(rows):
        return d
    return d[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def compose(digits: list[np.ndarray], gaps: list[int], rng: np.random.Generator) -> np.ndarray:
    """Bright-on-black canvas (float 0..1) of the digits placed left to right, gaps between them."""
    crops = [crop_digit(d) for d in digits]
    height = 28 + 8
    width = sum(c.shape[1] for c in crops) + sum(max(g, -20) for g in gaps) + 24
    canvas = np.zeros((height, max(width, 32)), dtype=np.float32)
    x = 12
    for k, c in enumerate(crops):
        h, w = c.shape
        y = 4 + (28 - h) // 2 + int(rng.integers(-2, 3))  # MNIST digits are 20 px tall, centred
        y = min(max(y, 0), height - h)
        region = canvas[y:y + h, x:x + w]
        np.maximum(region, c / 255.0, out=region)
        x += w + (gaps[k] if k < len(gaps) else 0)
    return canvas


def render(canvas: np.ndarray, rng: np.random.Generator, *, slant: float, digit_px: int,
           line: bool) -> Image.Image:
    """The canvas as a scan: sheared, scaled, dark ink on uneven light paper with noise."""
    h, w = canvas.shape
    img = Image.fromarray((canvas * 255).astype(np.uint8))
    pad = int(abs(slant) * h) + 2
    img = img.transform((w + 2 * pad, h), Image.AFFINE, (1, slant, -pad - slant * h / 2, 0, 1, 0),
                        resample=Image.BILINEAR)
    scale = digit_px / 20.0
    img = img.resize((max(8, round(img.width * scale)), max(8, round(h * scale))), Image.BILINEAR)
    ink = np.asarray(img, dtype=np.float32) / 255.0
    H, W = ink.shape
    if line:
        y = int(H * rng.uniform(0.55, 0.9))
        t = max(1, round(scale * rng.uniform(0.6, 1.2)))
        ink[y:y + t, :] = np.maximum(ink[y:y + t, :], rng.uniform(0.5, 0.9))
    paper = rng.uniform(170, 245)
    grad = rng.uniform(-30, 0) * np.linspace(0, 1, W)[None, :] + rng.uniform(-15, 0) * np.linspace(0, 1, H)[:, None]
    ink_level = rng.uniform(10, 90)
    page = paper + grad
    out = page - ink * (page - ink_level) + rng.normal(0, rng.uniform(2, 8), size=ink.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), mode="L")


def _text(labels: np.ndarray, idx: np.ndarray, classes: list[str] | None) -> str:
    return "".join(classes[int(labels[i])] if classes else str(int(labels[i])) for i in idx)


def make_string(images: np.ndarray, labels: np.ndarray, length: int, level: str,
                rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One benchmark string of ``length`` random digits from ``images`` [N, 28, 28] at overlap ``level``."""
    idx = rng.integers(0, len(images), size=length)
    lo, hi = LEVELS[level]
    gaps = [int(g) for g in rng.integers(lo, hi + 1, size=length - 1)]
    canvas = compose([images[i] for i in idx], gaps, rng)
    img = render(canvas, rng, slant=float(rng.uniform(-0.3, 0.3)), digit_px=int(rng.choice(DIGIT_PX)),
                 line=bool(rng.random() < 0.25))
    return img, _text(labels, idx, None)


def training_string(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator, *, max_length: int = 10,
                    classes: list[str] | None = None) -> tuple[Image.Image, str]:
    """One training string: 1..``max_length`` digits, gaps from one level's range, a wider mix or
    anything in ``TRAIN_GAPS``; slant -0.4..0.4; digit height 14-72 px (sometimes 120); a ruling
    line in one of four."""
    length = int(rng.integers(1, max_length + 1))
    idx = rng.integers(0, len(images), size=length)
    pick = int(rng.integers(0, len(LEVELS) + 2))
    if pick < len(LEVELS):  # one level, as the benchmark draws them, a little widened
        lo, hi = LEVELS[list(LEVELS)[pick]]
        lo, hi = lo - 1, hi + 1
    elif pick == len(LEVELS):  # overlaps up to the widest the benchmark has, and a little beyond
        lo, hi = TRAIN_GAPS[0], 1
    else:
        lo, hi = TRAIN_GAPS
    gaps = [int(g) for g in rng.integers(lo, hi + 1, size=max(0, length - 1))]
    canvas = compose([images[i] for i in idx], gaps, rng)
    digit_px = 120 if rng.random() < 0.05 else int(rng.integers(14, 73))
    img = render(canvas, rng, slant=float(rng.uniform(-0.4, 0.4)), digit_px=digit_px, line=bool(rng.random() < 0.25))
    return img, _text(labels, idx, classes)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (per-character accuracy is 1 - distance / length)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]
