"""Digit-string benchmark for `mnistlab read`: whole-string and per-character accuracy.

Strings are built from MNIST *test* digits (never seen in training) and rendered as scans:
each digit cropped to its ink and placed left to right with a gap drawn from its overlap level
(`wide` 6-14 px, `normal` 1-5 px, `touching` -1..0 px, `overlap` -5..-2 px, on the 28-px MNIST
scale), a little vertical jitter, the whole string sheared by a slant of -0.3..0.3, scaled to a
digit height of 16-120 px, and printed as dark ink (grey level 10-90) on light paper (170-245)
with a brightness gradient across the page, Gaussian noise (sigma 2-8) and, in one string of
four, a ruling line under or through the digits. Lengths 3 to 10.

    MNISTLAB_DATA_DIR=... OMP_NUM_THREADS=1 python benchmarks/read.py RUN --per-cell 40 --seeds 0 1 2

For every (length, overlap level, seed) cell it reads `--per-cell` strings with
`mnistlab.read.StringReader` (segmentation + the run's classifier) and records whole-string
accuracy (the text equals the truth) and per-character accuracy (1 - edit distance / length),
then gives the mean and spread over seeds. With `--expect-length` the reader is told the length.
Writes benchmarks/results/read-<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

LEVELS = {"wide": (6, 14), "normal": (1, 5), "touching": (-1, 0), "overlap": (-5, -2)}  # gap in MNIST px
LENGTHS = list(range(3, 11))
RESULTS = Path(__file__).parent / "results"


def crop_digit(d: np.ndarray) -> np.ndarray:
    """A 28x28 uint8 MNIST digit cropped to its ink."""
    rows, cols = np.flatnonzero(d.max(1) > 30), np.flatnonzero(d.max(0) > 30)
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


def make_string(images: np.ndarray, labels: np.ndarray, length: int, level: str,
                rng: np.random.Generator) -> tuple[Image.Image, str]:
    """One rendered string of ``length`` random digits from ``images`` at overlap ``level``."""
    idx = rng.integers(0, len(images), size=length)
    lo, hi = LEVELS[level]
    gaps = [int(g) for g in rng.integers(lo, hi + 1, size=length - 1)]
    canvas = compose([images[i] for i in idx], gaps, rng)
    img = render(canvas, rng, slant=float(rng.uniform(-0.3, 0.3)), digit_px=int(rng.choice([16, 24, 40, 64, 120])),
                 line=bool(rng.random() < 0.25))
    return img, "".join(str(int(labels[i])) for i in idx)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def mnist_test(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    from mnistlab.data.dataset import load_dataset

    data = load_dataset("mnist", "test", data_dir=data_dir, progress=False)
    return data.images[:, 0].numpy(), data.labels.numpy()


def run_cell(reader, images, labels, length: int, level: str, seed: int, n: int, expect: bool) -> dict:
    rng = np.random.default_rng([seed, length, list(LEVELS).index(level)])
    right, chars, total = 0, 0.0, 0
    misses = []
    for _ in range(n):
        img, truth = make_string(images, labels, length, level, rng)
        got = reader.read(img, name="string", expect_length=length if expect else None).text
        right += got == truth
        chars += max(0, len(truth) - edit_distance(got, truth))
        total += len(truth)
        if got != truth and len(misses) < 3:
            misses.append([truth, got])
    return {"length": length, "level": level, "seed": seed, "n": n, "string_acc": right / n,
            "char_acc": chars / total, "misses": misses}


def summarize(cells: list[dict]) -> str:
    def stat(vals):
        a = np.array(vals) * 100
        return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"

    lines = ["| length | " + " | ".join(f"{lv} string / char (%)" for lv in LEVELS) + " |",
             "|---:|" + "---:|" * len(LEVELS)]
    for length in LENGTHS:
        row = [str(length)]
        for lv in LEVELS:
            cs = [c for c in cells if c["length"] == length and c["level"] == lv]
            if not cs:
                row.append("")
                continue
            row.append(f"{stat([c['string_acc'] for c in cs])} / {stat([c['char_acc'] for c in cs])}")
        lines.append("| " + " | ".join(row) + " |")
    for lv in [*LEVELS, None]:
        cs = [c for c in cells if lv is None or c["level"] == lv]
        seeds = sorted({c["seed"] for c in cs})
        per_seed_s = [np.mean([c["string_acc"] for c in cs if c["seed"] == s]) for s in seeds]
        per_seed_c = [np.mean([c["char_acc"] for c in cs if c["seed"] == s]) for s in seeds]
        lines.append(f"\n{lv or 'all levels'}, all lengths: string {stat(per_seed_s)}%, char {stat(per_seed_c)}%")
    five = [c for c in cells if c["length"] == 5]
    seeds = sorted({c["seed"] for c in five})
    s5 = [np.mean([c["string_acc"] for c in five if c["seed"] == s]) for s in seeds]
    c5 = [np.mean([c["char_acc"] for c in five if c["seed"] == s]) for s in seeds]
    lines.append(f"\n5-digit strings, all four levels: string {stat(s5)}%, char {stat(c5)}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from mnistlab.fileio import atomic_write_text
    from mnistlab.predict import load_predictor
    from mnistlab.read import StringReader

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run directory or artifact")
    p.add_argument("--per-cell", type=int, default=40, help="strings per (length, level, seed) cell")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    p.add_argument("--expect-length", action="store_true", help="tell the reader each string's length")
    p.add_argument("--name", default="default", help="results file: benchmarks/results/read-NAME.{json,md}")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    reader = StringReader(load_predictor(args.model))
    images, labels = mnist_test(args.data_dir)
    cells, t0 = [], time.perf_counter()
    for seed in args.seeds:
        for length in args.lengths:
            for level in LEVELS:
                cell = run_cell(reader, images, labels, length, level, seed, args.per_cell, args.expect_length)
                cells.append(cell)
                print(f"seed {seed} length {length:2d} {level:8s} string {cell['string_acc']:.3f} "
                      f"char {cell['char_acc']:.3f} {cell['misses'][:1]}", file=sys.stderr, flush=True)
    table = summarize(cells)
    meta = {"model": str(args.model), "per_cell": args.per_cell, "seeds": args.seeds,
            "expect_length": args.expect_length, "seconds": round(time.perf_counter() - t0, 1),
            "python": platform.python_version(), "torch": torch.__version__, "machine": platform.processor() or platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"read-{args.name}.json", json.dumps({"meta": meta, "cells": cells}, indent=1))
    atomic_write_text(RESULTS / f"read-{args.name}.md", f"{json.dumps(meta)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
