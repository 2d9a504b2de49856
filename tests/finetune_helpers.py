"""Helpers for the fine-tuning tests: tiny parent artifacts and digits drawn with PIL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mnistlab.artifact import ModelCard, Preprocess, save_artifact
from mnistlab.models import create_model

DIGITS = [str(i) for i in range(10)]

# Seven-segment digits: which of the segments a..g each digit lights.
#    a
#  f   b
#    g
#  e   c
#    d
SEGMENTS = {
    "0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc",
    "5": "afgcd", "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg",
}
_ENDS = {  # segment -> (x0, y0, x1, y1) in a unit box, x to the right and y down
    "a": (0, 0, 1, 0), "b": (1, 0, 1, 0.5), "c": (1, 0.5, 1, 1), "d": (0, 1, 1, 1),
    "e": (0, 0.5, 0, 1), "f": (0, 0, 0, 0.5), "g": (0, 0.5, 1, 0.5),
}


def make_parent(folder: Path, arch: str = "cnn", *, classes: list[str] | None = None, seed: int = 0,
                **arch_args: Any) -> Path:
    """An (untrained) model artifact standing in for a pretrained run."""
    torch.manual_seed(seed)
    classes = classes or DIGITS
    model = create_model(arch, num_classes=len(classes), **arch_args)
    card = ModelCard(arch=model.arch_name, arch_args=dict(model.arch_args), classes=list(classes),
                     preprocess=Preprocess(mean=0.1307, std=0.3081), dataset="mnist",
                     metrics={"test_accuracy": 0.5})
    save_artifact(folder, model, card)
    return folder


def draw_digit(digit: str, rng: np.random.Generator, *, size: tuple[int, int], dark_on_light: bool,
               mode: str = "L") -> Image.Image:
    """A seven-segment ``digit`` drawn with jittered strokes into an image of ``size`` (w, h)."""
    w, h = size
    ink, paper = (20, 245) if dark_on_light else (250, 10)
    img = Image.new("L", (w, h), paper)
    draw = ImageDraw.Draw(img)
    ratio = rng.uniform(0.45, 0.6)  # width / height of the digit
    box_h = min(h * rng.uniform(0.5, 0.8), 0.7 * w / ratio)  # inside the frame, with a margin
    box_w = box_h * ratio
    x0 = rng.uniform(0.1 * w, max(0.1 * w, w - box_w - 0.1 * w))
    y0 = rng.uniform(0.05 * h, max(0.05 * h, h - box_h - 0.05 * h))
    width = max(1, int(box_h * rng.uniform(0.08, 0.14)))
    for seg in SEGMENTS[digit]:
        ax, ay, bx, by = _ENDS[seg]
        jitter = rng.normal(0, 0.03, size=4)
        pts = [(x0 + (ax + jitter[0]) * box_w, y0 + (ay + jitter[1]) * box_h),
               (x0 + (bx + jitter[2]) * box_w, y0 + (by + jitter[3]) * box_h)]
        draw.line(pts, fill=ink, width=width)
    if mode == "RGB":
        return Image.merge("RGB", (img, img, img))
    if mode == "RGBA":  # ink opaque, paper transparent, as a canvas export would be
        alpha = Image.eval(img, (lambda v: 255 - v) if dark_on_light else (lambda v: v))
        return Image.merge("RGBA", (img, img, img, alpha))
    return img
