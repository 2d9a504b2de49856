"""A proxy made of real handwriting that is not MNIST: the UCI optical digits that ship inside
scikit-learn (``sklearn.datasets.load_digits``: 1,797 digits written by 13 people who are not in
MNIST, scanned as 32x32 bitmaps and reduced to 8x8 blocks of 0-16 ink counts).

They are written here as the scans a user would bring: one 8x8 PNG per digit, dark ink on white
paper (``--polarity light``, the default) or white on black (``dark``). Tiny, blocky and thick,
they test what MNIST never shows: resolution. A proxy for "other writers and scanners", never the
target, and never a reason to give up MNIST test accuracy.

    pip install scikit-learn                                      # the data ships inside it
    python benchmarks/proxy_optdigits.py build /tmp/optdigits     # train/ (10 a class) and test/ (the rest)
    mnistlab eval RUN --dataset folder:/tmp/optdigits/test --json
    mnistlab finetune RUN --dataset folder:/tmp/optdigits --shots 10

``--upscale N`` writes each digit N times larger (nearest neighbour: the same blocks, more pixels);
``--part first|second`` keeps one half of the digits, in the data's order: choose on one, report the other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from proxy_digits import build_parser, save  # the folder tree and command line the two proxies share


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as float [N, 8, 8] ink in [0, 1] and int [N] labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("error: this proxy's images ship inside scikit-learn; fix: pip install scikit-learn")
    data = load_digits()
    return data.images / 16.0, data.target


def to_image(ink: np.ndarray, polarity: str, upscale: int) -> Image.Image:
    """One digit's ink [8, 8] in [0, 1] as a grayscale PNG-ready image."""
    grey = 255 * (1 - ink) if polarity == "light" else 255 * ink
    img = Image.fromarray(np.round(grey).astype(np.uint8), mode="L")
    return img.resize((8 * upscale, 8 * upscale), Image.NEAREST) if upscale > 1 else img


def build(root: Path, shots: int, seed: int, polarity: str, upscale: int, part: str) -> tuple[int, int]:
    """Write root/train/<digit>/ (``shots`` per class, seeded) and root/test/<digit>/ (the rest) of ``part``."""
    ink, labels = digits()
    half = len(labels) // 2
    keep = {"all": slice(None), "first": slice(0, half), "second": slice(half, None)}[part]
    ink, labels = ink[keep], labels[keep]
    rng = np.random.default_rng(seed)
    chosen = {int(i) for d in range(10) for i in rng.choice(np.flatnonzero(labels == d), size=shots, replace=False)}
    counts = [0, 0]
    for i, (image, label) in enumerate(zip(ink, labels, strict=True)):
        split = "train" if i in chosen else "test"
        save(to_image(image, polarity, upscale), root, split, str(label), f"{i:04d}")
        counts[split == "test"] += 1
    return counts[0], counts[1]


def main(argv: list[str] | None = None) -> int:
    p, b = build_parser(__doc__)
    b.add_argument("--polarity", choices=["light", "dark"], default="light",
                   help="light: dark ink on white paper (a scan); dark: white ink on black (MNIST's way)")
    b.add_argument("--upscale", type=int, default=1, help="write each digit this many times larger (nearest)")
    b.add_argument("--part", choices=["all", "first", "second"], default="all",
                   help="all digits, or the first or second half in the data's order (choose on one, report the other)")
    args = p.parse_args(argv)
    if args.upscale < 1:
        p.error(f"--upscale must be at least 1, got {args.upscale}")
    n_train, n_test = build(args.root, args.shots, args.seed, args.polarity, args.upscale, args.part)
    print(f"{args.root}: train/ {n_train} images, test/ {n_test} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
